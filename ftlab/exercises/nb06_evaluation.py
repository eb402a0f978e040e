"""Exercises of notebook 06: evaluation — token F1, grounding, test-set size.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import math

from ftlab.exercises.checkers import Function, Number, exercise


# =========================================================================== notebook 06 (helper N5)
# Exercises of 06_evaluation: token F1 by hand, a word-level grounding check, sizing a test set.


@exercise(
    "evaluate.token_f1_verbose", Number(rtol=1e-3),
    question="Reference 'ParcelGo', prediction 'It was shipped with ParcelGo.' What is the SQuAD token F1?",
    mistakes=[
        (lambda: 0.2, "That is the precision (1 shared word of 5); F1 also uses the recall (1 of 1): 2PR/(P+R)."),
        (lambda: 1.0, "That is the recall; the four extra words lower the precision to 1/5."),
        (lambda: 0.0, "That is exact match; token F1 gives partial credit for the shared word 'parcelgo'."),
        (lambda: 2 * (1 / 6) / (1 + 1 / 6), "Punctuation is removed before splitting: 'parcelgo.' becomes 'parcelgo', "
                                             "so there are 5 predicted words, not 6."),
    ],
    explanation="Padding a right value with words costs precision: F1 = 1/3 here, and 1.0 for the bare value.",
)
def _token_f1_verbose():
    pred = "it was shipped with parcelgo".split()  # lower case, punctuation removed, no article to drop
    ref = ["parcelgo"]
    overlap = 1  # 'parcelgo' occurs in both
    precision, recall = overlap / len(pred), overlap / len(ref)  # 1/5 and 1/1
    return 2 * precision * recall / (precision + recall)  # = 1/3


_GROUNDING_STOP = frozenset({"a", "an", "the", "is", "was", "it", "of", "to", "in", "order", "status"})


def _grounding_cases():
    row = "| BW-990054 | Quentin Silva | 2025-06-30 | AeroKettle Mini | qty 2 | $39.90 | ParcelGo | Graz | returned |"
    return [
        ("returned", row, _GROUNDING_STOP),
        ("It was RETURNED.", row, _GROUNDING_STOP),  # case and punctuation must not matter
        ("shipped to Vienna", row, _GROUNDING_STOP),  # nothing grounded
        ("The order went to Graz", row, _GROUNDING_STOP),  # 'went' is not in the row: 1 of 2 content words
        ("BW-990054 returned on 2025-07-01", row, _GROUNDING_STOP),  # digits split into tokens
        ("", row, _GROUNDING_STOP),  # claims nothing
        ("the of it", row, _GROUNDING_STOP),  # only function words: claims nothing
        ("Graz Graz Vienna", row, _GROUNDING_STOP),  # counted per occurrence
        ("returned", row, frozenset()),  # with no stopwords
        ("Kettle Mini", row, _GROUNDING_STOP),  # 'kettle' is only part of the token 'aerokettle'
    ]


def _words_lower(text):
    import re

    return re.findall(r"[a-z0-9]+", text.lower())


@exercise(
    "evaluate.grounded_fraction", Function(_grounding_cases),
    question="Write grounded_fraction(answer, context, stopwords): tokens = re.findall(r'[a-z0-9]+', text.lower()) "
             "minus stopwords; return the fraction of the answer's tokens found among the context's tokens "
             "(1.0 if the answer has no content token).",
    mistakes=[
        (lambda: (lambda answer, context, stopwords: (lambda a: sum(t in context.lower() for t in a) / len(a) if a else 1.0)(
            [t for t in _words_lower(answer) if t not in stopwords])),
         "You searched the context as one string: 'to' is found inside 'Quentin'. Compare whole tokens (a set of the context's tokens)."),
        (lambda: (lambda answer, context, stopwords: (lambda a, c: sum(t in c for t in a) / len(a) if a else 1.0)(
            _words_lower(answer), set(_words_lower(context)))),
         "Drop the stopwords first: function words like 'the' or 'was' say nothing about whether the answer is grounded."),
        (lambda: (lambda answer, context, stopwords: (lambda a, c: sum(t in c for t in a) / len(a) if a else 0.0)(
            [t for t in _words_lower(answer) if t not in stopwords], set(_words_lower(context)) - set(stopwords))),
         "An answer with no content word claims nothing, so nothing in it is made up: return 1.0, not 0.0."),
        (lambda: (lambda answer, context, stopwords: (lambda a, c: len(set(a) & c) / len(c) if c else 1.0)(
            [t for t in _words_lower(answer) if t not in stopwords], set(_words_lower(context)) - set(stopwords))),
         "That is the share of the context used by the answer; the check asks how much of the ANSWER is in the context."),
    ],
    explanation="A word-level check: it catches invented words, not a wrong value copied from the context.",
)
def _grounded_fraction():
    import re

    def grounded_fraction(answer, context, stopwords):
        def words(text):
            return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in stopwords]

        claimed, available = words(answer), set(words(context))
        if not claimed:
            return 1.0  # nothing claimed, nothing made up
        return sum(t in available for t in claimed) / len(claimed)

    return grounded_fraction


@exercise(
    "evaluate.ci_sample_size", Number(rtol=0, atol=0.5),
    question="How many test examples give a 95% CI half-width of at most 0.05 for an accuracy, in the worst case "
             "p = 0.5 (z = 1.96)?",
    mistakes=[
        (lambda: 384, "384.16 must be rounded UP: 384 examples give a half-width just above 0.05."),
        (lambda: 400, "That uses z = 2; with z = 1.96 the answer is 385 (400 is a fine, slightly safer round number)."),
        (lambda: 20, "Square it: n = (z / half-width)^2 · p(1-p), the square root is in the half-width formula."),
        (lambda: 1537, "That is for a half-width of 0.025 (or a full width of 0.05); the question asks for ±0.05."),
        (lambda: 97, "That is for ±0.10; a half-width of 0.05 needs four times as many examples."),
    ],
    explanation="n = ⌈(1.96/0.05)² · 0.25⌉ = 385; halving the interval costs four times the examples.",
)
def _ci_sample_size():
    z, p, half_width = 1.96, 0.5, 0.05
    return math.ceil((z / half_width) ** 2 * p * (1 - p))  # 384.16 -> 385
