"""BLEU and chrF exactly as ``sacrebleu`` computes them (the 13a tokeniser, smoothing, brevity penalty)."""

from __future__ import annotations

import math
import re
from collections import Counter

from ftlab.evaluate.metrics.common import check_pairs, ngram_counts

# ----------------------------------------------------------------------------------------
# BLEU and chrF (the definitions of sacrebleu 2.x, whose signature we also print)
# ----------------------------------------------------------------------------------------

SACREBLEU_VERSION = "2.6.0"  # the sacrebleu release whose definitions are reproduced here

# mteval-v13a's tokeniser as sacrebleu writes it: split off most ASCII symbols, and periods
# and commas unless they sit between digits, and a dash that follows a digit.
_TOKENIZE_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(line: str) -> str:
    """The ``13a`` tokeniser of WMT's mteval-v13a.pl (sacrebleu's default), tokens joined by spaces.

    Example:
        >>> tokenize_13a("Hello, world! It costs $3.50.")
        'Hello , world ! It costs $ 3.50 .'
    """
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&")
                .replace("&lt;", "<").replace("&gt;", ">"))
    line = f" {line} "
    for pattern, replacement in _TOKENIZE_13A:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def _as_reference_lists(name, predictions, references) -> list[list[str]]:
    predictions, references = list(predictions), list(references)
    check_pairs(name, predictions, references)
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, r in enumerate(refs):
        if not r or not all(isinstance(x, str) for x in r):
            raise TypeError(f"{name}: references[{i}] must be a string or a non-empty list of "
                            "strings (several references for one prediction)")
    return refs


def _nrefs(refs) -> str:
    counts = {len(r) for r in refs}
    return str(counts.pop()) if len(counts) == 1 else "var"


class BLEUResult(dict):
    """BLEU's result: ``score`` (0-100), ``precisions`` (%), ``bp``, ``sys_len``, ``ref_len``,
    ``counts``, ``totals`` and the ``signature`` that says how it was computed. A ``dict``
    whose keys also read as attributes (``result.score``)."""

    __getattr__ = dict.__getitem__

    def __str__(self):
        p = "/".join(f"{x:.1f}" for x in self["precisions"])
        return (f"BLEU = {self['score']:.2f} {p} (BP = {self['bp']:.3f} ratio = "
                f"{self['sys_len'] / max(self['ref_len'], 1):.3f} hyp_len = {self['sys_len']} "
                f"ref_len = {self['ref_len']})  [{self['signature']}]")


_SMOOTH_VALUES = {"none": None, "exp": None, "floor": 0.1, "add-k": 1}


def _smoothed_precisions(matches: list[int], totals: list[int], smooth: str, max_order: int) -> list[float]:
    """p_n in percent for n = 1..max_order, with sacrebleu's handling of zero matches (see :func:`bleu`)."""
    matches, totals = list(matches), list(totals)
    precisions = [0.0] * max_order
    if not any(matches):
        return precisions
    halvings = 1.0
    for n in range(max_order):
        if smooth == "add-k" and n > 0:
            matches[n] += 1
            totals[n] += 1
        if totals[n] == 0:
            break  # nothing predicted at this order (or higher): precision stays 0
        if matches[n] == 0:
            if smooth == "exp":
                halvings *= 2
                precisions[n] = 100.0 / (halvings * totals[n])
            elif smooth == "floor":
                precisions[n] = 100.0 * _SMOOTH_VALUES["floor"] / totals[n]
        else:
            precisions[n] = 100.0 * matches[n] / totals[n]
    return precisions


def bleu(predictions, references, *, lowercase: bool = False, tokenize: str = "13a",
         smooth: str = "exp", max_order: int = 4) -> BLEUResult:
    """Corpus BLEU (Papineni et al. 2002) exactly as sacrebleu computes it by default.

    Definition. Each text is (optionally lower-cased,) right-stripped and tokenised with
    :func:`tokenize_13a` (or split on spaces with ``tokenize="none"``). For each
    prediction and n = 1..max_order, matches_n = Σ_g min(count_pred(g), max over its
    references of count_ref(g)) over its n-grams g, and total_n = #pred n-grams. These are
    summed over the *corpus* before dividing — corpus BLEU is not a mean of sentence BLEUs.
    p_n = matches_n / total_n. The reference length of a prediction is that of its
    reference closest in length (the shorter on ties); c = Σ prediction lengths,
    r = Σ reference lengths; brevity penalty BP = 1 if c >= r, else exp(1 - r/c) (0 if c = 0).
    BLEU = 100 · BP · exp((1/N) Σ_n log p_n).

    Zero counts, as sacrebleu handles them: if no n-gram matches at all, BLEU = 0; with
    ``smooth="exp"`` (default, NIST's method) the k-th order with zero matches gets
    p_n = 1 / (2^k · total_n); with ``"none"`` a zero p_n makes BLEU 0; ``"floor"`` uses
    0.1 / total_n; ``"add-k"`` adds 1 to matches and totals for n > 1. An order with no
    predicted n-grams at all makes BLEU 0.

    ``references[i]`` is a string, or a list of strings for several references.

    Example:
        >>> r = bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
        >>> round(r.score, 6), r.signature
        (100.0, 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0')
    """
    refs = _as_reference_lists("bleu", predictions, references)
    if tokenize not in ("13a", "none"):
        raise ValueError(f"bleu: tokenize must be '13a' or 'none', got {tokenize!r}")
    if smooth not in _SMOOTH_VALUES:
        raise ValueError(f"bleu: smooth must be one of {list(_SMOOTH_VALUES)}, got {smooth!r}")

    def prep(text: str) -> list[str]:
        text = text.lower() if lowercase else text
        text = text.rstrip()
        return (tokenize_13a(text) if tokenize == "13a" else text).split()

    def all_ngrams(tokens):
        counts = Counter()
        for n in range(1, max_order + 1):
            counts.update(ngram_counts(tokens, n))
        return counts

    matches, totals = [0] * max_order, [0] * max_order
    sys_len = ref_len = 0
    for prediction, its_refs in zip(predictions, refs):
        pred_tokens = prep(prediction)
        ref_counts, ref_lens = Counter(), []
        for ref in its_refs:
            tokens = prep(ref)
            ref_lens.append(len(tokens))
            ref_counts |= all_ngrams(tokens)  # | keeps the max count over references
        sys_len += len(pred_tokens)
        ref_len += min(ref_lens, key=lambda r: (abs(len(pred_tokens) - r), r))
        for gram, count in all_ngrams(pred_tokens).items():
            totals[len(gram) - 1] += count
            matches[len(gram) - 1] += min(count, ref_counts[gram])

    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    counts, total_counts = list(matches), list(totals)
    precisions = _smoothed_precisions(matches, totals, smooth, max_order)
    # sacrebleu floors log(0) at -9999999999 instead of failing, which makes BLEU 0.0
    log_mean = sum(math.log(p) if p > 0 else -9999999999 for p in precisions) / max_order
    score = bp * math.exp(log_mean) if any(matches) else 0.0
    smooth_sig = smooth if _SMOOTH_VALUES[smooth] is None else f"{smooth}[{_SMOOTH_VALUES[smooth]:.2f}]"
    signature = (f"nrefs:{_nrefs(refs)}|case:{'lc' if lowercase else 'mixed'}|eff:no|"
                 f"tok:{tokenize}|smooth:{smooth_sig}|version:{SACREBLEU_VERSION}")
    return BLEUResult(score=score, precisions=precisions, bp=bp, sys_len=sys_len,
                      ref_len=ref_len, counts=counts, totals=total_counts, signature=signature)


_CHRF_PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _chrf_words(text: str) -> list[str]:
    # chrF++ word n-grams: split on whitespace, then detach one punctuation mark from the end
    # (or else from the start) of each word longer than one character.
    words = []
    for w in text.split():
        if len(w) == 1:
            words.append(w)
        elif w[-1] in _CHRF_PUNCTUATION:
            words += [w[:-1], w[-1]]
        elif w[0] in _CHRF_PUNCTUATION:
            words += [w[0], w[1:]]
        else:
            words.append(w)
    return words


def _chrf_ngrams(text: str, char_order: int, word_order: int, whitespace: bool) -> list[Counter]:
    chars = text if whitespace else "".join(text.split())
    grams = [Counter(chars[i:i + n] for i in range(len(chars) - n + 1))
             for n in range(1, char_order + 1)]
    words = _chrf_words(text) if word_order else []
    grams += [Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
              for n in range(1, word_order + 1)]
    return grams


def _chrf_from_stats(stats: list[list[int]], beta: float, eps_smoothing: bool) -> float:
    factor = beta ** 2
    if eps_smoothing:
        eps, total = 1e-16, 0.0
        for n_pred, n_ref, n_match in stats:
            p = n_match / n_pred if n_pred > 0 else eps
            r = n_match / n_ref if n_ref > 0 else eps
            denom = factor * p + r
            total += (1 + factor) * p * r / denom if denom > 0 else eps
        return 100 * total / len(stats)
    # default: average P and R over the orders where both sides have n-grams, then F-beta
    precisions = [m / p for p, r, m in stats if p > 0 and r > 0]
    recalls = [m / r for p, r, m in stats if p > 0 and r > 0]
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 100 * (1 + factor) * p * r / (factor * p + r) if p + r else 0.0


class CHRFResult(dict):
    """chrF's result: ``score`` (0-100) and ``signature``; keys also read as attributes."""

    __getattr__ = dict.__getitem__

    def __str__(self):
        name = "chrF" + "+" * (self["word_order"])
        return f"{name}{self['beta']} = {self['score']:.2f}  [{self['signature']}]"


def chrf(predictions, references, *, char_order: int = 6, word_order: int = 0, beta: float = 2,
         lowercase: bool = False, whitespace: bool = False, eps_smoothing: bool = False) -> CHRFResult:
    """Corpus chrF (Popović 2015); chrF++ with ``word_order=2``. As sacrebleu computes it.

    Definition. Whitespace is removed (unless ``whitespace=True``) and character n-grams
    for n = 1..char_order are counted (plus word n-grams for n = 1..word_order, punctuation
    split off the words). For each prediction, per order: n_pred = #pred n-grams (counted as
    0 if the reference has none of that order), n_ref = #ref n-grams, n_match = Σ_g
    min(count_pred(g), count_ref(g)); with several references, the one giving the highest
    sentence chrF is used. The three counts are summed over the corpus. Then, over the
    orders where n_pred > 0 and n_ref > 0: P = mean of n_match/n_pred, R = mean of
    n_match/n_ref, and chrF = 100 · (1+β²)·P·R / (β²·P + R) (0 if no order qualifies);
    β = 2 weighs recall twice as much as precision. ``eps_smoothing=True`` switches to the
    original script's definition (F-beta per order, averaged over all orders).

    Unlike BLEU it needs no tokeniser, so it treats accents and non-Latin scripts fairly.

    Example:
        >>> round(chrf(["the cat sat"], ["the cat sat"]).score, 1)
        100.0
    """
    refs = _as_reference_lists("chrf", predictions, references)

    def prep(text):
        return text.lower() if lowercase else text

    totals = [[0, 0, 0] for _ in range(char_order + word_order)]
    for prediction, its_refs in zip(predictions, refs):
        pred_grams = _chrf_ngrams(prep(prediction), char_order, word_order, whitespace)
        best, best_f = None, -1.0
        for ref in its_refs:
            ref_grams = _chrf_ngrams(prep(ref), char_order, word_order, whitespace)
            stats = [[sum(p.values()) if r else 0, sum(r.values()), sum((p & r).values())]
                     for p, r in zip(pred_grams, ref_grams)]
            f = _chrf_from_stats(stats, beta, eps_smoothing)
            if f > best_f:
                best, best_f = stats, f
        for total, stat in zip(totals, best):
            for k in range(3):
                total[k] += stat[k]
    score = _chrf_from_stats(totals, beta, eps_smoothing)
    signature = (f"nrefs:{_nrefs(refs)}|case:{'lc' if lowercase else 'mixed'}|"
                 f"eff:{'no' if eps_smoothing else 'yes'}|nc:{char_order}|nw:{word_order}|"
                 f"space:{'yes' if whitespace else 'no'}|version:{SACREBLEU_VERSION}")
    return CHRFResult(score=score, signature=signature, beta=beta, word_order=word_order)
