"""ROUGE-1/2/L/Lsum exactly as Google's ``rouge-score`` computes them (tokenisation included)."""

from __future__ import annotations

import re
from collections import Counter

from ftlab.evaluate.metrics.common import check_pairs, ngram_counts

# ----------------------------------------------------------------------------------------
# ROUGE (the definitions of Google's rouge-score package, which replicates ROUGE-1.5.5)
# ----------------------------------------------------------------------------------------

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")
_ALPHANUMERIC_TOKEN = re.compile(r"^[a-z0-9]+$")


def rouge_tokenize(text: str, use_stemmer: bool = False) -> list[str]:
    """ROUGE's tokeniser: lower-case, turn every character outside ``[a-z0-9]`` into a space,
    split on whitespace; with ``use_stemmer`` words longer than 3 characters are reduced by
    the Porter stemmer (NLTK's, the one rouge-score uses).

    Accented and non-Latin letters are *removed*: "café" becomes "caf", Chinese text yields no
    tokens at all. ROUGE is an English-only metric; use chrF for other languages.

    Example:
        >>> rouge_tokenize("The café's menu, 2024!")
        ['the', 'caf', 's', 'menu', '2024']
    """
    text = _NON_ALPHANUMERIC.sub(" ", text.lower())
    tokens = text.split()
    if use_stemmer:
        stemmer = _porter_stemmer()
        tokens = [stemmer.stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _ALPHANUMERIC_TOKEN.match(t)]


_STEMMER = None


def _porter_stemmer():
    global _STEMMER
    if _STEMMER is None:
        from nltk.stem import porter  # installed with rouge-score

        _STEMMER = porter.PorterStemmer()
    return _STEMMER


def _prf(overlap: float, n_pred: int, n_ref: int) -> dict:
    # ROUGE-N divides by max(count, 1): an empty side gives precision/recall 0, not an error.
    precision = overlap / max(n_pred, 1)
    recall = overlap / max(n_ref, 1)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f": f}


def _lcs_table(a: list, b: list) -> list[list[int]]:
    # table[i][j] = length of the longest common subsequence of a[:i] and b[:j]
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            if a[i - 1] == b[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    return table


def _lcs_positions(ref: list, cand: list) -> list[int]:
    """Positions in ``ref`` of one longest common subsequence (the one ROUGE-1.5.5 picks:
    walking back from the end, prefer dropping a reference token on ties)."""
    table = _lcs_table(ref, cand)
    i, j, positions = len(ref), len(cand), []
    while i > 0 and j > 0:
        if ref[i - 1] == cand[j - 1]:
            positions.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions[::-1]


def _rouge_lsum(ref_sents: list[list[str]], pred_sents: list[list[str]]) -> dict:
    """Summary-level LCS (ROUGE paper, section 3.2) with ROUGE-1.5.5's guard against
    counting one token twice."""
    m = sum(map(len, ref_sents))
    n = sum(map(len, pred_sents))
    if not ref_sents or not pred_sents or not m or not n:
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    ref_left = Counter(t for s in ref_sents for t in s)
    pred_left = Counter(t for s in pred_sents for t in s)
    hits = 0
    for ref in ref_sents:
        # union over candidate sentences of the reference tokens each LCS uses
        union = sorted(set().union(*(_lcs_positions(ref, cand) for cand in pred_sents)))
        for token in (ref[i] for i in union):
            if ref_left[token] > 0 and pred_left[token] > 0:
                hits += 1
                ref_left[token] -= 1
                pred_left[token] -= 1
    precision, recall = hits / n, hits / m
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f": f}


def rouge_scores(prediction: str, reference: str, *, use_stemmer: bool = False) -> dict:
    """ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum of one prediction against one reference.

    Both texts are tokenised with :func:`rouge_tokenize`. Each entry is
    ``{"precision", "recall", "f"}`` with F = 2PR/(P+R) (0.0 if P+R = 0):

    - ROUGE-N: overlap = Σ over n-grams g of min(count_pred(g), count_ref(g));
      P = overlap / max(#pred n-grams, 1), R = overlap / max(#ref n-grams, 1).
    - ROUGE-L: L = length of the longest common subsequence of the token lists;
      P = L / #pred tokens, R = L / #ref tokens (all 0.0 if either side has no tokens).
    - ROUGE-Lsum: both texts are split into sentences at newlines (empty lines dropped);
      for every reference sentence, take the union of its LCS with each predicted sentence;
      hits = the tokens of those unions, each token counted at most as often as it occurs
      in both texts; P = hits / #pred tokens, R = hits / #ref tokens. Without newlines it
      equals ROUGE-L.

    Example:
        >>> s = rouge_scores("the cat sat on the mat", "the cat lay on the mat")
        >>> round(s["rouge1"]["f"], 3), round(s["rouge2"]["f"], 3), round(s["rougeL"]["f"], 3)
        (0.833, 0.6, 0.833)
    """
    pred = rouge_tokenize(prediction, use_stemmer)
    ref = rouge_tokenize(reference, use_stemmer)
    result = {}
    for n in (1, 2):
        p_counts, r_counts = ngram_counts(pred, n), ngram_counts(ref, n)
        overlap = sum((p_counts & r_counts).values())
        result[f"rouge{n}"] = _prf(overlap, sum(p_counts.values()), sum(r_counts.values()))
    if pred and ref:
        lcs = _lcs_table(ref, pred)[-1][-1]
        precision, recall = lcs / len(pred), lcs / len(ref)
        f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        result["rougeL"] = {"precision": precision, "recall": recall, "f": f}
    else:
        result["rougeL"] = {"precision": 0.0, "recall": 0.0, "f": 0.0}

    def sentences(text):
        return [rouge_tokenize(s, use_stemmer) for s in text.split("\n") if s]

    result["rougeLsum"] = _rouge_lsum(sentences(reference), sentences(prediction))
    return result


def rouge(predictions, references, *, use_stemmer: bool = False) -> dict:
    """Corpus ROUGE: the mean over examples of each pair's F-measure (see :func:`rouge_scores`),
    for ``rouge1``, ``rouge2``, ``rougeL`` and ``rougeLsum``; values in [0, 1].

    This is the plain mean that Hugging Face ``evaluate`` reports with ``use_aggregator=False``
    followed by averaging (its default bootstrap aggregator gives nearly the same number).

    Example:
        >>> rouge(["a b c", "x y"], ["a b c", "x z"])["rouge1"]
        0.75
    """
    predictions, references = list(predictions), list(references)
    check_pairs("rouge", predictions, references)
    totals = Counter()
    for p, r in zip(predictions, references):
        for name, score in rouge_scores(p, r, use_stemmer=use_stemmer).items():
            totals[name] += score["f"]
    return {name: totals[name] / len(predictions)
            for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
