"""Exercises of notebook 07: alignment — a DPO loss by hand, and GRPO's three pieces written as functions
(the group-relative advantage, the clipped policy-gradient term, the k3 KL estimator).

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import math

from ftlab.exercises.checkers import Function, Number, exercise


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


def _grpo_cases(kind):
    """Test inputs built lazily (torch is imported only when an exercise is checked)."""
    import torch

    g = torch.Generator().manual_seed(7)
    if kind == "advantages":  # (rewards, group_size): a mixed group, an all-equal group, groups of 2
        return [(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), 4),
                (torch.rand(12, generator=g), 3), (torch.tensor([0.2, 0.9, 0.5, 0.5]), 2)]
    if kind == "clipped":  # (ratio, advantage, epsilon): ratios on both sides of the clip range, both signs of A
        ratio = torch.tensor([0.5, 0.79, 1.0, 1.1, 1.3, 2.0])
        return [(ratio, torch.tensor(1.5), 0.2), (ratio, torch.tensor(-0.7), 0.2),
                (torch.rand(5, generator=g) * 2, torch.randn(5, generator=g), 0.1)]
    logps = -torch.rand(6, generator=g) * 3  # (logp, ref_logp) of the same tokens
    return [(logps, logps - 0.3 * torch.randn(6, generator=g)), (logps, logps)]


@exercise(
    "align.group_advantages_fn", Function(lambda: _grpo_cases("advantages"), rtol=1e-4, atol=1e-5),
    question="Write group_advantages(rewards, group_size): rewards is a 1-D tensor, the group_size completions of "
             "each prompt next to each other. Return each reward minus its group's mean, divided by the group's "
             "sample std + 1e-4.",
    mistakes=[
        (lambda: (lambda r, G: (r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True)).reshape(-1)),
         "You subtracted the mean but did not divide by the group's std."),
        (lambda: (lambda r, G: ((r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True))
                                / (r.view(-1, G).std(1, unbiased=False, keepdim=True) + 1e-4)).reshape(-1)),
         "That is the population std (divide by n); GRPO (and TRL) use the sample std (divide by n - 1)."),
        (lambda: (lambda r, G: (r - r.mean()) / (r.std() + 1e-4)),
         "You normalised over the whole batch; GRPO's baseline is each prompt's own group (view(-1, group_size))."),
    ],
    explanation="rewards [1, 0, 0, 1]: mean 0.5, sample std 0.577, advantages +-0.866. A group whose rewards are all "
                "equal gets advantage 0 everywhere: it teaches nothing.",
)
def _group_advantages_fn():
    def group_advantages(rewards, group_size):
        grouped = rewards.float().view(-1, group_size)  # one row per prompt
        centred = grouped - grouped.mean(dim=1, keepdim=True)  # the group's mean is the baseline
        return (centred / (grouped.std(dim=1, keepdim=True) + 1e-4)).reshape(-1)  # sample std (n - 1)

    return group_advantages


@exercise(
    "align.clipped_term_fn", Function(lambda: _grpo_cases("clipped"), rtol=1e-5, atol=1e-6),
    question="Write clipped_term(ratio, advantage, epsilon): GRPO's (and PPO's) per-token policy-gradient term to "
             "MINIMISE, -min(ratio x A, clip(ratio, 1 - epsilon, 1 + epsilon) x A).",
    mistakes=[
        (lambda: (lambda r, a, e: -r.clamp(1 - e, 1 + e) * a),
         "You always use the clipped ratio; the min keeps the unclipped term where it is the more pessimistic one."),
        (lambda: (lambda r, a, e: _minimum(r * a, r.clamp(1 - e, 1 + e) * a)),
         "Sign: the objective is maximised, so the loss is MINUS the min."),
        (lambda: (lambda r, a, e: -_maximum(r * a, r.clamp(1 - e, 1 + e) * a)),
         "max instead of min: the clip must only ever make the objective smaller (pessimistic)."),
    ],
    explanation="With A > 0 the gain stops at ratio 1 + eps; with A < 0 the gain stops at 1 - eps; outside that "
                "range the gradient is 0, so one batch cannot move the policy far from the one that sampled it.",
)
def _clipped_term_fn():
    def clipped_term(ratio, advantage, epsilon):
        clipped = ratio.clamp(1 - epsilon, 1 + epsilon)  # the ratio kept within [1 - eps, 1 + eps]
        return -_minimum(ratio * advantage, clipped * advantage)  # pessimistic of the two, negated to minimise

    return clipped_term


@exercise(
    "align.k3_kl_fn", Function(lambda: _grpo_cases("kl"), rtol=1e-5, atol=1e-6),
    question="Write k3(logp, ref_logp): the per-token KL estimator GRPO adds (times beta), exp(d) - d - 1 with "
             "d = ref_logp - logp.",
    mistakes=[
        (lambda: (lambda lp, ref: lp - ref), "That is k1, log(pi / ref): unbiased but it can be negative per token."),
        (lambda: (lambda lp, ref: (lp - ref).exp() - (lp - ref) - 1),
         "Direction: d = ref_logp - logp (the estimator of KL(pi || ref) from samples of pi)."),
    ],
    explanation="k3 is >= 0 on every token and 0 exactly where policy and reference agree, and its mean over "
                "samples of the policy is KL(policy || reference).",
)
def _k3_kl_fn():
    def k3(logp, ref_logp):
        d = ref_logp - logp  # log(ref / pi) of the sampled token
        return d.exp() - d - 1  # >= 0, since e^d >= 1 + d

    return k3


def _minimum(a, b):
    import torch

    return torch.minimum(a, b)


def _maximum(a, b):
    import torch

    return torch.maximum(a, b)
