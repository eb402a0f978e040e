"""How an answer to a course task is scored (the tasks are in ``ftlab.data.course``), and how a
forgetting probe's free-form answer is matched.

Example:
    >>> score_example("classify", " Billing.", "billing")
    1.0
"""

from __future__ import annotations

import re

from ftlab.data.course import TASKS
from ftlab.evaluate.metrics.answers import exact_match, json_field_accuracy, token_f1


def score_example(task: str, prediction: str, reference: str) -> float:
    """Score one model answer against the reference answer; 1.0 is perfect, 0.0 is wrong.

    - ``extract_json``: field-level accuracy (``ftlab.metrics.json_field_accuracy``): the fraction of
      the reference's four keys the prediction reproduces exactly. The whole answer must be one JSON
      object -- prose or Markdown fences around it make it invalid and score 0.0, because the program
      that consumes it would fail too.
    - ``classify``: 1.0 if the answer, SQuAD-normalised (lower case, no punctuation, no articles), is
      exactly the label; "Billing." counts, "The category is billing" does not.
    - ``rewrite``: exact string match after stripping surrounding whitespace (the output has exactly
      one correct form, so anything else is wrong).
    - ``qa``: SQuAD token F1 (``ftlab.metrics.token_f1``). We use F1 rather than exact match so an
      answer that contains the value in a short sentence gets partial credit; a verbose answer
      scores low, the bare value scores 1.0. ``exact_match`` is in ``ftlab.metrics`` for the
      stricter view.

    Example:
        >>> score_example("extract_json", '{"customer":"Ana Silva","order_id":null,"product":"x","quantity":1}',
        ...               '{"customer":"Ana Silva","order_id":null,"product":"x","quantity":2}')
        0.75
        >>> score_example("qa", "ParcelGo", "ParcelGo"), score_example("rewrite", "2024-03-05 ", "2024-03-05")
        (1.0, 1.0)
    """
    if not isinstance(prediction, str):
        raise TypeError(f"score_example: prediction must be a str, got {type(prediction).__name__}")
    if task == "extract_json":
        return json_field_accuracy(prediction, reference)
    if task == "classify":
        return exact_match(prediction, reference)
    if task == "rewrite":
        return float(prediction.strip() == reference.strip())
    if task == "qa":
        return token_f1(prediction, reference)
    raise ValueError(f"score_example: unknown task {task!r}; the course tasks are {list(TASKS)}")


def score_probe(prediction: str, answers: list[str]) -> bool:
    """True if any accepted answer occurs in the prediction as a whole word or phrase (any case).

    Probe answers are free-form sentences ("The capital of France is Paris."), so we look for the
    key word rather than compare whole strings. "Whole word" matters for numbers: the answer "7"
    must not be found inside "129.9999967527" -- a digit, letter or decimal point next to the
    match disqualifies it.

    Example:
        >>> score_probe("The capital of France is Paris.", ["paris"])
        True
        >>> score_probe("There are 17 of them.", ["7", "seven"])
        False
    """
    for answer in answers:
        pattern = r"(?<![\w.])" + re.escape(answer.strip()) + r"(?![\w]|\.\d)"
        if re.search(pattern, prediction, flags=re.IGNORECASE):
            return True
    return False
