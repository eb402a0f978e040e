"""The alignment losses, each a few lines of tensor maths on log-probabilities.

=========  =====================================================  ==========================================
loss       inputs                                                 normalisation
=========  =====================================================  ==========================================
DPO        summed log-probs of chosen/rejected, policy and ref     per *sequence*: sums over tokens, mean over pairs
IPO        the same, plus each side's token count                  per *token*: log-ratios divided by length
ORPO       *mean* log-prob per token of chosen/rejected, NLL       per *token* (odds of the average token), no reference
GRPO       per-token log-probs (policy, sampling, ref), rewards    per token within a sequence, then mean over
                                                                   sequences ("grpo"); or over all tokens ("bnpo")
=========  =====================================================  ==========================================

Each returns ``(loss, metrics)``; ``metrics`` holds detached tensors with the names TRL logs
(``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``, ...), so
a run of ours and a run of TRL's can be read side by side. ``tests/test_align.py`` checks losses,
gradients and metrics against TRL 1.16 on the same batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {"rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean()}


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
             label_smoothing: float = 0.0, loss_type: str = "sigmoid", chosen_tokens=None, rejected_tokens=None):
    """DPO (Rafailov et al. 2023) and its IPO variant (Azar et al. 2023), per pair, averaged over pairs.

    The implicit reward of an answer is ``beta * (log pi(y|x) - log pi_ref(y|x))`` with *summed*
    log-probs (per sequence). ``"sigmoid"``: ``-log sigmoid(reward_chosen - reward_rejected)``; with
    ``label_smoothing`` eps (conservative DPO: a fraction eps of the labels is assumed flipped) it is
    ``-(1 - eps) log sigmoid(d) - eps log sigmoid(-d)``. ``"ipo"``: the squared distance of the
    *per-token* log-ratio margin from ``1 / (2 beta)`` (needs ``chosen_tokens``/``rejected_tokens``),
    normalised per token as in TRL and the IPO authors' experiments.

    Example:
        >>> t = torch.tensor
        >>> loss, m = dpo_loss(t([-5.]), t([-9.]), t([-6.]), t([-8.]), beta=0.5)
        >>> round(loss.item(), 4), m["rewards/margins"].item()      # margin 0.5*(1) - 0.5*(-1) = 1
        (0.3133, 1.0)
    """
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    delta = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("dpo_loss(loss_type='ipo') needs chosen_tokens and rejected_tokens (IPO is per token).")
        per_token = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"dpo_loss: loss_type={loss_type!r}; use 'sigmoid' or 'ipo'.")
    metrics = _reward_metrics(beta * chosen_logratios, beta * rejected_logratios)
    metrics.update({"logps/chosen": policy_chosen.detach().mean(), "logps/rejected": policy_rejected.detach().mean()})
    return losses.mean(), metrics


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, without cancellation near 0 (two branches at -ln 2)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_mean_logps, rejected_mean_logps, nll, beta: float = 0.1):
    """ORPO (Hong et al. 2024): SFT's NLL on the chosen answer plus an odds-ratio penalty; no reference.

    ``chosen_mean_logps`` / ``rejected_mean_logps`` are log-probs *averaged per token*, so the odds
    ``p / (1 - p)`` are those of the answer's average token (a summed log-prob of a whole answer is
    so negative that its odds would be ~p). ``nll`` is the chosen answers' cross-entropy (a scalar,
    mean per token). Loss: ``nll - beta * mean(log sigmoid(log odds_chosen - log odds_rejected))``.
    The logged rewards are ``beta * mean log-prob`` (TRL's convention).
    """
    chosen, rejected = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    loss = nll - beta * ratio.mean()
    metrics = _reward_metrics(beta * chosen, beta * rejected)
    metrics.update({"logps/chosen": chosen.detach().mean(), "logps/rejected": rejected.detach().mean(),
                    "nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(),
                    "log_odds_chosen": log_odds.detach().mean()})
    return loss, metrics


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage: each completion's reward minus its group's mean, over the group's std.

    ``rewards`` is ``(n_prompts * group_size,)``, the G completions of a prompt next to each other.
    No value network: the other samples of the same prompt are the baseline. A group whose
    rewards are all equal (all right, or all zero as on an untrained model) has advantage 0 -
    it teaches nothing. ``std`` is the sample std (Bessel-corrected), as in TRL.

    Example:
        >>> group_advantages(torch.tensor([1., 0., 0., 1., 0., 0., 0., 0.]), group_size=4)
        tensor([ 0.8659, -0.8659, -0.8659,  0.8659,  0.0000,  0.0000,  0.0000,  0.0000])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"group_advantages: {rewards.numel()} rewards do not split into groups of {group_size}.")
    grouped = rewards.float().view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if scale and group_size > 1:
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.reshape(-1)


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, epsilon: float = 0.2, epsilon_high: float | None = None,
              beta: float = 0.04, loss_type: str = "grpo", kl_ratio_correction: bool = True):
    """The GRPO objective (Shao et al. 2024), per token, to *minimise*.

    Per completion token: ``-min(r * A, clip(r, 1 - eps, 1 + eps_high) * A) + beta * KL``, with
    ``r = exp(logp - old_logp)`` the probability ratio to the policy that sampled the completion
    (1 on the first update, but its gradient is the policy gradient), ``A`` the completion's group-relative
    advantage, and KL the k3 estimator ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, always >= 0).
    ``loss_type="grpo"``: mean over each completion's tokens, then over completions (every completion
    weighs the same); ``"bnpo"``: mean over all tokens of the batch (every token weighs the same).
    All per-token tensors are ``(N, T)``; ``mask`` is 1 on completion tokens.
    ``kl_ratio_correction`` multiplies the KL by ``r`` (1 in value, but not in gradient): the k3 estimate
    is then an unbiased reverse-KL *gradient* for samples drawn by the old policy (DeepSeek-V3.2; TRL's
    default since 1.x).
    """
    mask = mask.to(logps.dtype)
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0.0:
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1
        if kl_ratio_correction:
            kl = kl * ratio
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        raise ValueError(f"grpo_loss: loss_type={loss_type!r}; use 'grpo' or 'bnpo'.")
    n = mask.sum().clamp(min=1.0)
    hi = 1 + (epsilon if epsilon_high is None else epsilon_high)
    clipped_tokens = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > hi) & (advantages > 0))
    metrics = {"clip_ratio": (clipped_tokens.float() * mask).sum().detach() / n}
    if kl is not None:
        metrics["kl"] = (kl * mask).sum().detach() / n
    return loss, metrics
