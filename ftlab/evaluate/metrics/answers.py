"""Short answers, structured output and labels: SQuAD normalisation, exact match, token F1, JSON, classification.

Each definition is in its function's docstring; ``tests/test_metrics.py`` checks them against SQuAD's
evaluation script and scikit-learn. The package docstring (``metrics/__init__.py``) has an example.
"""

from __future__ import annotations

import json
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
