"""What the metrics share: n-gram counts, and the check that predictions and references pair up."""

from __future__ import annotations

from collections import Counter


def ngram_counts(tokens: list, n: int) -> Counter:
    """How often each run of ``n`` consecutive tokens occurs."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def check_pairs(name, predictions, references):
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} "
                         "references; they must pair up one to one")
    if not predictions:
        raise ValueError(f"{name}: no examples")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"{name}: prediction {i} is {type(p).__name__}, expected str")
