"""Exercises of notebook 09: continued pretraining — near-duplicates by word 3-grams, and the tokens a
plain-text batch trains.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

from ftlab.exercises.checkers import Number, exercise

# Two sentences in the style of the domain corpus's policy pages (used by the exercise and its test).
JACCARD_A = "Refunds take 5 to 7 working days."
JACCARD_B = "Refunds take 5 to 7 days."


@exercise(
    "cpt.shingle_jaccard", Number(rtol=1e-3),
    question=f"Word 3-gram Jaccard similarity (lower case, punctuation removed) of {JACCARD_A!r} and {JACCARD_B!r}?",
    mistakes=[
        (lambda: 3 / 5, "You divided the shared 3-grams by the first text's 3-grams only; Jaccard divides by the union."),
        (lambda: 6 / 7, "That is the Jaccard of single words; near-duplicate detection compares word 3-grams."),
        (lambda: 3 / 9, "The union counts a shared 3-gram once: 5 + 4 - 3 = 6 distinct 3-grams, not 9."),
    ],
    explanation="Three 3-grams are shared ('refunds take 5', 'take 5 to', '5 to 7') out of six distinct ones: 0.5. "
                "One changed word breaks every 3-gram it is part of, so near copies score well below 1.",
)
def _shingle_jaccard():
    a = ["refunds take 5", "take 5 to", "5 to 7", "to 7 working", "7 working days"]  # 7 words -> 5 3-grams
    b = ["refunds take 5", "take 5 to", "5 to 7", "to 7 days"]  # 6 words -> 4 3-grams
    shared = len(set(a) & set(b))  # 3
    return shared / len(set(a) | set(b))  # 3 / 6 = 0.5


@exercise(
    "cpt.trained_tokens", Number(rtol=0, atol=0.5),
    question="Continued pretraining trains every token of plain text. A batch holds 4 documents of 92, 100, 120 "
             "and 88 tokens, padded to 120. How many tokens does the loss of this batch average over?",
    mistakes=[
        (lambda: 400, "The first token of each document has no context before it, so nothing predicts it: "
                      "a document of n tokens gives n - 1 predictions."),
        (lambda: 480, "Padding is never trained (its labels are -100); and the first token of each document is not predicted."),
        (lambda: 476, "Padding is never trained (its labels are -100): count only the documents' own tokens."),
    ],
    explanation="Every position except a document's first one predicts its token: 91 + 99 + 119 + 87 = 396. "
                "In instruction tuning only the answer's tokens would count; here the whole text teaches.",
)
def _trained_tokens():
    lengths = [92, 100, 120, 88]
    return sum(n - 1 for n in lengths)  # the first token of each document is context only

