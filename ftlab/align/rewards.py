"""Verifiable rewards for GRPO: programs that score a completion, no reward model.

A reward function takes ``(completion, record)`` and returns a float; ``record`` is the prompt's
record (it carries ``reference`` - the correct answer - and ``task``). The course tasks have answers
a program can check, which is what makes GRPO usable without human labels:

- ``json_reward`` (``extract_json``): half for valid JSON, half for the fraction of fields right;
- ``label_reward`` (``classify``): 1 for exactly the right label, else 0;
- ``format_reward``: 1 for a bare answer no longer than ``max_chars`` (no "Sure! Here is ..."), else 0;
- ``task_reward``: the task's own reward (``score_example`` for ``rewrite`` and ``qa``);
- ``length_reward``: longer is better, up to a cap - *gameable on purpose*: the notebook shows the
  policy learning to ramble (reward hacking) while its task score does not improve.

``score_completions`` calls them and stops with a clear error if one raises or returns NaN/inf,
naming the function and the completion.
"""

from __future__ import annotations

import math

import torch

from ftlab.evaluate.scoring import score_example
from ftlab.evaluate import is_valid_json, json_field_accuracy, exact_match

CHATTY_OPENINGS = ("sure", "of course", "here is", "here's", "certainly", "the answer is")


class RewardError(ValueError):
    """A reward function raised or returned a value that is not a finite number."""


def json_reward(completion: str, record: dict) -> float:
    """0.5 if the whole completion is one JSON object, plus 0.5 x the fraction of reference fields it gets right."""
    if not is_valid_json(completion) or not completion.strip().startswith("{"):
        return 0.0
    return 0.5 + 0.5 * json_field_accuracy(completion, record["reference"])


def label_reward(completion: str, record: dict) -> float:
    """1.0 if the completion is exactly the reference label (SQuAD-normalised), else 0.0."""
    return exact_match(completion, record["reference"])


def format_reward(completion: str, record: dict, max_chars: int = 200) -> float:
    """1.0 for a bare answer: non-empty, no chatty opening, at most ``max_chars`` characters."""
    text = completion.strip()
    return float(bool(text) and len(text) <= max_chars and not text.lower().startswith(CHATTY_OPENINGS))


def task_reward(completion: str, record: dict) -> float:
    """The reward of the record's task: ``json_reward``, ``label_reward``, else ``score_example``."""
    task = record.get("task")
    if task == "extract_json":
        return json_reward(completion, record)
    if task == "classify":
        return label_reward(completion, record)
    return score_example(task, completion, record["reference"])


def length_reward(completion: str, record: dict, target_chars: int = 200) -> float:
    """min(1, characters / target_chars): a *gameable* reward, rewarding length rather than quality."""
    return min(1.0, len(completion) / target_chars)


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def score_completions(reward_fns, completions: list[str], records: list[dict], weights=None) -> torch.Tensor:
    """The weighted sum of every reward function, per completion: a float tensor ``(len(completions),)``.

    ``records[i]`` is the record of ``completions[i]``. A function that raises, or returns something
    that is not a finite number, stops the run with a ``RewardError`` naming it and the completion.
    """
    reward_fns = list(reward_fns) if isinstance(reward_fns, (list, tuple)) else [reward_fns]
    weights = list(weights) if weights is not None else [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise ValueError(f"score_completions: {len(weights)} weights for {len(reward_fns)} reward functions.")
    if len(records) != len(completions):
        raise ValueError(f"score_completions: {len(completions)} completions but {len(records)} records.")
    totals = []
    for completion, record in zip(completions, records):
        total = 0.0
        for fn, w in zip(reward_fns, weights):
            try:
                value = fn(completion, record)
            except Exception as e:  # noqa: BLE001 - re-raised with the context a user needs
                raise RewardError(f"reward function {_name(fn)!r} raised {type(e).__name__}: {e} on the completion "
                                  f"{completion[:200]!r}. Fix: make it return a float for every string, "
                                  "including empty or malformed answers (score those 0.0).") from e
            raw = value
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = float("nan")
            if not math.isfinite(value):
                raise RewardError(f"reward function {_name(fn)!r} returned {raw!r} on the completion "
                                  f"{completion[:200]!r}. Fix: return a finite float (0.0 for an answer it "
                                  "cannot score), never NaN, inf or None.")
            total += w * value
        totals.append(total)
    return torch.tensor(totals, dtype=torch.float32)
