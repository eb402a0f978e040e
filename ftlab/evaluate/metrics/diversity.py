"""Diversity of generated text: distinct-n and repetition rate."""

from __future__ import annotations

from collections import Counter

from ftlab.evaluate.metrics.common import ngram_counts

# ----------------------------------------------------------------------------------------
# Diversity: distinct-n and repetition (to catch mode collapse)
# ----------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts, n: int = 2) -> float:
    """Distinct-n (Li et al. 2016): #unique n-grams / #n-grams, pooled over all ``texts``.

    Texts are lower-cased and split on whitespace; n-grams never cross text boundaries.
    1.0 means no n-gram occurs twice anywhere; a model that answers everything the same way
    (mode collapse) drives it towards 0. Returns 0.0 if the texts contain no n-gram.

    Example:
        >>> distinct_n(["the cat", "the dog"], n=1)   # 3 unique of 4
        0.75
    """
    counts = Counter()
    for text in texts:
        counts.update(ngram_counts(_words(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def repetition_rate(texts, n: int = 3) -> float:
    """Mean over texts of the fraction of a text's n-grams that repeat an earlier n-gram of
    the *same* text: 1 - #unique n-grams / #n-grams (lower-cased, whitespace words).

    It catches degenerate loops ("I think I think I think ..."). Texts with fewer than n
    words have no n-grams and are skipped; 0.0 if no text has any.

    Example:
        >>> repetition_rate(["a b a b a b", "one two three four"], n=2)   # (1 - 2/5 + 0) / 2
        0.3
    """
    rates = []
    for text in texts:
        grams = ngram_counts(_words(text), n)
        total = sum(grams.values())
        if total:
            rates.append(1 - len(grams) / total)
    return sum(rates) / len(rates) if rates else 0.0
