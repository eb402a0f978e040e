"""Error bars on scores: the percentile bootstrap, and the paired difference between two models.

With 100 examples an accuracy of 0.60 is really "somewhere between about 0.50 and 0.70".
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------


def bootstrap_ci(scores, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0):
    """Percentile bootstrap confidence interval for the mean of ``scores``: ``(low, high)``.

    Draw ``n_resamples`` samples of the same size *with replacement* from the scores
    (a seeded ``numpy`` generator, so the interval is repeatable), take each sample's mean,
    and return the (1-confidence)/2 and (1+confidence)/2 percentiles of those means. It
    assumes the examples are a random sample of the kind of data you care about, and says
    nothing about bias in how they were chosen. NaN scores are left out.

    For the difference between two models on the *same* examples, pass the per-example
    differences (``b - a``): that paired interval is much narrower than the two separate
    intervals suggest, because both models face the same easy and hard examples.

    Example:
        >>> low, high = bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
        >>> low < 0.7 < high
        True
    """
    x = np.asarray(list(scores), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("bootstrap_ci: no scores (empty, or all NaN)")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // x.size)  # bound the index matrix's memory for big test sets
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        means[start:start + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def paired_difference(scores_a, scores_b, **bootstrap_kwargs) -> dict:
    """Mean of ``b - a`` over the same examples, its bootstrap CI, and ``p_not_better``: the
    fraction of bootstrap resamples in which b's mean is not above a's (a one-sided
    bootstrap p-value for "b is better than a").

    Example:
        >>> d = paired_difference([0, 0, 1, 0], [1, 1, 1, 0])
        >>> d["diff"]
        0.5
    """
    a, b = np.asarray(list(scores_a), float), np.asarray(list(scores_b), float)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.size} scores vs {b.size}; they must be the same examples")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = b[keep] - a[keep]
    if d.size == 0:
        raise ValueError("paired_difference: no examples scored by both")
    low, high = bootstrap_ci(d, **bootstrap_kwargs)
    rng = np.random.default_rng(bootstrap_kwargs.get("seed", 0) + 1)
    resampled = d[rng.integers(0, d.size, size=(1000, d.size))].mean(axis=1)
    return {"diff": float(d.mean()), "ci": (low, high), "p_not_better": float((resampled <= 0).mean()),
            "n": int(d.size)}
