"""Exercises of notebook 07: alignment — a DPO loss by hand, a group-relative advantage.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import math

from ftlab.exercises.checkers import Number, exercise


def _logsigmoid(x):
    return -math.log1p(math.exp(-x))


@exercise(
    "align.dpo_loss", Number(rtol=1e-3),
    question="Policy log-probs: chosen -12.0, rejected -15.0. Reference: chosen -13.0, rejected -14.0. "
             "beta = 0.5. What is the DPO (sigmoid) loss of this pair?",
    mistakes=[
        (lambda: -_logsigmoid(0.5 * ((-12.0) - (-15.0))),
         "You compared the policy's own log-probs; DPO compares log-RATIOS to the reference: "
         "(policy - reference) for chosen minus the same for rejected."),
        (lambda: -_logsigmoid((-12.0 + 13.0) - (-15.0 + 14.0)), "You left out beta: the margin is beta x (2.0)."),
        (lambda: _logsigmoid(0.5 * 2.0), "The loss is MINUS log sigmoid (a positive number)."),
        (lambda: -_logsigmoid(-0.5 * 2.0), "Sign: chosen's log-ratio minus rejected's, not the other way round."),
    ],
    explanation="The margin of implicit rewards is 0.5 x ((-12 + 13) - (-15 + 14)) = 1.0, so the loss is "
                "-log sigmoid(1.0) = 0.313: already below log 2 = 0.693, the loss at no preference.",
)
def _dpo_loss():
    beta = 0.5
    chosen_logratio = -12.0 - (-13.0)  # +1: the policy likes the chosen answer more than the reference did
    rejected_logratio = -15.0 - (-14.0)  # -1: and the rejected answer less
    margin = beta * (chosen_logratio - rejected_logratio)  # 1.0: difference of the implicit rewards
    return -_logsigmoid(margin)  # = log(1 + e^-1) = 0.3133


@exercise(
    "align.group_advantage", Number(rtol=1e-3),
    question="GRPO samples 4 completions of one prompt; their rewards are [1, 0, 0, 1]. What are their "
             "group-relative advantages (reward minus group mean, over the group's sample std + 1e-4)? "
             "Answer as a list of 4 numbers.",
    mistakes=[
        (lambda: [0.5, -0.5, -0.5, 0.5], "You subtracted the mean but did not divide by the group's std."),
        (lambda: [0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4), 0.5 / (0.5 + 1e-4)],
         "That is the population std (divide by n = 4); GRPO (and TRL) use the sample std (divide by n - 1 = 3)."),
        (lambda: [1.0, 0.0, 0.0, 1.0], "Those are the rewards; the advantage is relative to the group's mean."),
    ],
    explanation="mean 0.5, sample std sqrt((4 x 0.25) / 3) = 0.577, so +-0.5 / 0.5775 = +-0.866. "
                "If all four rewards were equal, every advantage would be 0 and the step would teach nothing.",
)
def _group_advantage():
    rewards = [1.0, 0.0, 0.0, 1.0]
    mean = sum(rewards) / len(rewards)  # 0.5
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))  # sample std: 0.5774
    return [(r - mean) / (std + 1e-4) for r in rewards]  # [0.866, -0.866, -0.866, 0.866]
