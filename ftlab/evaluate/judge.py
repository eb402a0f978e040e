"""An optional LLM judge with a written rubric, for answers no metric can check.

Off unless you pass one; any local model works (a small one judges badly: measure it).
"""

from __future__ import annotations

import math
import re

from ftlab.evaluate.generate import generate_answers


# ----------------------------------------------------------------------------------------
# LLM-as-judge (optional)
# ----------------------------------------------------------------------------------------

JUDGE_RUBRIC = """You grade answers written by an AI assistant. Compare the assistant's answer with the correct reference answer.

Task the assistant was given:
{question}

Correct reference answer:
{reference}

Assistant's answer:
{prediction}

Grade the assistant's answer from 1 to 5:
5 = means exactly what the reference says, in the format the task asked for, nothing added.
4 = correct and complete, but with small format differences or a few extra words.
3 = partly correct: some of the needed information is right, some is missing or wrong.
2 = wrong, but about the right subject.
1 = wrong, empty, off topic, or a refusal.

Reply with one digit (1-5) and nothing else."""


class LLMJudge:
    """A judge that asks a local chat model to grade answers with a written rubric.

    ``judge(questions, references, predictions)`` returns one score per answer in [0, 1]:
    the first digit 1-5 in the judge's reply, mapped by (grade - 1) / 4; NaN if the reply
    has no such digit (counted as ``unparsed`` in the results, never guessed).

    Any model that ``ftlab.load_model`` loads works as the judge; so does any function with
    the same call signature (a wrapper around a local server, a rule, a human's spreadsheet),
    which is all ``evaluate_model(judge=...)`` relies on. Judges have known biases (they
    favour long answers, their own style, and the first of two options); check a judge
    against exact metrics on examples where those are reliable before trusting it elsewhere.

    Example:
        >>> judge = LLMJudge(*load_model("smollm2-135m-instruct"))                 # doctest: +SKIP
        >>> evaluate_model(model, tok, records, judge=judge).judge                  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, rubric: str = JUDGE_RUBRIC, *, batch_size: int = 8,
                 max_new_tokens: int = 8, progress: bool = True):
        for key in ("{question}", "{reference}", "{prediction}"):
            if key not in rubric:
                raise ValueError(f"LLMJudge: the rubric must contain the placeholder {key}")
        self.model, self.tokenizer, self.rubric = model, tokenizer, rubric
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self.last_replies: list[str] = []

    def prompt(self, question: str, reference: str, prediction: str) -> str:
        return self.rubric.format(question=question, reference=reference, prediction=prediction or "(empty)")

    @staticmethod
    def parse(reply: str) -> float:
        """(grade - 1) / 4 for the first digit 1-5 in ``reply``; NaN if there is none."""
        match = re.search(r"[1-5]", reply)
        return (int(match.group()) - 1) / 4 if match else math.nan

    def __call__(self, questions, references, predictions) -> list[float]:
        prompts = [self.prompt(q, r, p) for q, r, p in zip(questions, references, predictions)]
        self.last_replies = generate_answers(self.model, self.tokenizer, prompts,
                                             max_new_tokens=self.max_new_tokens,
                                             batch_size=self.batch_size, progress=self.progress)
        return [self.parse(r) for r in self.last_replies]
