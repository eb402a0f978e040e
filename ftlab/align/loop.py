"""Preference training (DPO, IPO, ORPO), and the driver GRPO shares, on ``ftlab.train``'s own code:
the same set-up (``training/run.py``: device, method, optimizer, schedule), the same loop
(``training.loop.run_loop``: logging, progress bar, callbacks, checkpoints, resume, Ctrl-C, the end)
and the same second half of every step (``training.loop.update_step``: clipping, update, schedule).
Only the loss differs: :func:`run_steps` takes a step function that runs the loss's forward and
backward and returns its numbers. A step's data is a pure function of the step number and the seed
(a seeded permutation per epoch, :func:`step_indices`), so resuming needs nothing but the step.

**Where the reference comes from.** With LoRA, the reference is the model with adapters off
(``ftlab.align.logprobs``). So a preference run must *start* from the model you want as the
reference: to align an SFT'd LoRA model, merge its adapter first (``ftlab.training.merge_adapters``)
and align the merged model with a fresh adapter.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ftlab.align.logprobs import precompute_reference, reference_logprobs, token_logprobs
from ftlab.align.losses import dpo_loss, orpo_loss
from ftlab.align.preferences import collate_preferences, load_preferences, split_pairs, tokenize_preferences
from ftlab.training.config import RunConfig, TrainResult
from ftlab.training.loop import run_loop, update_step
from ftlab.training.loss import next_token_targets
from ftlab.training.run import announce, resume, setup_model, setup_run

LOSSES = ("dpo", "ipo", "orpo", "grpo", "reward")  # reward: a Bradley-Terry reward model (reward_model.py)

# The settings only some losses read: setting one for another loss is an error that names it.
READ_BY = {
    "beta": ("dpo", "ipo", "orpo"),  # GRPO's pull to the reference is kl_beta
    "label_smoothing": ("dpo",),
    "sft_weight": ("dpo", "ipo"),
    "orpo_nll_on": ("orpo",),
    "max_length": ("dpo", "ipo", "orpo", "reward"),  # GRPO's sequences: the prompt + at most max_new_tokens
    **{name: ("grpo",) for name in ("num_generations", "temperature", "max_new_tokens", "epsilon", "kl_beta",
                                    "kl_ratio_correction", "grpo_loss_type")},
}


@dataclass
class AlignConfig(RunConfig):
    """:class:`~ftlab.training.config.RunConfig` (method, LoRA, optimizer, schedule, steps, precision,
    checkpoints, logging: what the shared set-up and loop read) plus the alignment losses' settings.
    ``ftlab.train``'s data and evaluation settings are not here: alignment does not read them."""

    output_dir: str = "runs/align"
    loss: str = "dpo"  # dpo | ipo | orpo | grpo | reward
    beta: float = 0.1  # DPO/IPO: strength of the pull to the reference; ORPO: weight of the odds-ratio term
    label_smoothing: float = 0.0  # DPO: assumed fraction of flipped preference labels (conservative DPO)
    # DPO/IPO: weight of an SFT term, the chosen answers' cross-entropy (mean per token), added to the loss: it holds
    # the chosen answers' likelihood up while the margin widens (RPO, Pang et al. 2024; TRL: loss_type=["sigmoid",
    # "sft"], loss_weights=[1, sft_weight])
    sft_weight: float = 0.0
    orpo_nll_on: str = "completion"  # ORPO's NLL: completion tokens (as SFT) | sequence (prompt too, as TRL)
    num_generations: int = 4  # GRPO: completions per prompt (the group)
    temperature: float = 1.0  # GRPO: sampling temperature
    max_new_tokens: int = 48  # GRPO: completion length cap
    epsilon: float = 0.2  # GRPO: ratio clipping
    kl_beta: float = 0.04  # GRPO: weight of the k3 KL to the reference
    kl_ratio_correction: bool = True  # GRPO: KL x probability ratio (unbiased KL gradient, as TRL)
    grpo_loss_type: str = "grpo"  # grpo (per sequence) | bnpo (per token)

    def _check(self):
        super()._check()
        bad = self._bad
        if self.loss not in LOSSES:
            bad(f"loss={self.loss!r} is not one of {', '.join(LOSSES)}.")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, losses in READ_BY.items():
            if self.loss not in losses and getattr(self, name) != defaults[name]:
                bad(f"{name}={getattr(self, name)!r} is not read by loss={self.loss!r} (only by "
                    f"{', '.join(losses)}). Fix: leave {name} at its default ({defaults[name]!r}).")
        if self.beta <= 0:
            bad(f"beta must be > 0, got {self.beta}.")
        if self.sft_weight < 0:
            bad(f"sft_weight must be >= 0, got {self.sft_weight}.")
        if not 0 <= self.label_smoothing < 0.5:
            bad(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}.")
        if self.orpo_nll_on not in ("completion", "sequence"):
            bad(f"orpo_nll_on={self.orpo_nll_on!r}; use 'completion' or 'sequence'.")
        if self.grpo_loss_type not in ("grpo", "bnpo"):
            bad(f"grpo_loss_type={self.grpo_loss_type!r}; use 'grpo' or 'bnpo'.")
        if self.loss == "grpo" and self.num_generations < 2:
            bad("GRPO needs num_generations >= 2 (the group is the baseline).")


# --------------------------------------------------------------------------- one preference step


def preference_loss(model, batch: dict, config: AlignConfig, ref_model=None):
    """The loss and metrics of one preference batch (chosen rows first), for ``config.loss``."""
    if config.loss == "orpo":
        return _orpo_batch_loss(model, batch, config)
    per_token = token_logprobs(model, batch, trained_logits_only=config.trained_logits_only, pairs=True)
    logps = per_token.sum(-1)
    n_tokens = (next_token_targets(batch["labels"]) != -100).sum(-1)
    if "ref_chosen" in batch:  # cached before training
        ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
    else:
        ref_chosen, ref_rejected = split_pairs(reference_logprobs(model, batch, ref_model, pairs=True)[0])
    chosen, rejected = split_pairs(logps)
    n_chosen, n_rejected = split_pairs(n_tokens)
    loss_type = "ipo" if config.loss == "ipo" else "sigmoid"
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=config.beta,
                             label_smoothing=config.label_smoothing, loss_type=loss_type,
                             chosen_tokens=n_chosen, rejected_tokens=n_rejected)
    if config.sft_weight:  # the chosen answers' cross-entropy, mean over all their tokens in the batch (as TRL's "sft")
        nll = -chosen.sum() / n_chosen.sum().clamp(min=1)
        loss = loss + config.sft_weight * nll
        metrics["nll_loss"] = nll.detach()
    return loss, metrics


def _orpo_batch_loss(model, batch, config):
    completion = next_token_targets(batch["labels"]) != -100
    if config.orpo_nll_on == "sequence":  # score every real token; the completion is a subset of them
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        per_token = token_logprobs(model, {**batch, "labels": labels}, trained_logits_only=config.trained_logits_only,
                                   pairs=True)
        nll_mask = next_token_targets(labels) != -100
    else:
        per_token = token_logprobs(model, batch, trained_logits_only=config.trained_logits_only, pairs=True)
        nll_mask = completion
    mean_logps = (per_token * completion).sum(-1) / completion.sum(-1).clamp(min=1)
    chosen, rejected = split_pairs(mean_logps)
    nll_chosen, _ = split_pairs(nll_mask)
    nll = -(split_pairs(per_token)[0] * nll_chosen).sum() / nll_chosen.sum().clamp(min=1)
    return orpo_loss(chosen, rejected, nll, beta=config.beta)


def step_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The items of ``step`` (0-based): consecutive slices of a seeded permutation per epoch."""
    per_epoch = max(n_items // batch_size, 1)
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return order[slot * batch_size:(slot + 1) * batch_size]


# --------------------------------------------------------------------------- the driver (ftlab.train's code)


def run_steps(model, tokenizer, config: AlignConfig, step_fn, callbacks=(), set_up=None) -> TrainResult:
    """``config.max_steps`` optimizer steps of ``step_fn(model, step) -> record`` on ``ftlab.train``'s set-up,
    loop, update, checkpoints and end. ``step_fn`` runs the loss's forward and backward; its record holds
    ``loss`` (a float), ``tokens`` (processed, for tokens/s) and the loss's metrics.

    ``set_up(model)`` runs after the adapters exist and before resuming (DPO caches its reference there).
    ``callbacks``: as for ``ftlab.train`` (plain functions get each step's record; True stops the run).
    """
    t_start = time.time()
    run = setup_run(model, tokenizer, config)
    if run.world > 1:
        raise NotImplementedError(f"{config.loss} under `accelerate launch` with {run.world} processes: ftlab's "
                                  "alignment steps run in one process. Fix: run it without accelerate launch.")
    run = setup_model(run, tokenizer)
    if set_up is not None:
        set_up(run.model)
    state = resume(run)
    announce(run, f"loss {config.loss}")

    def step(state):
        t0 = time.time()
        record = step_fn(run.model, state.step)
        loss = record.pop("loss")
        return update_step(run, state, loss, record.get("tokens", 0), t0, callbacks, record)

    return run_loop(run, state, tokenizer, step, callbacks, t_start)


# --------------------------------------------------------------------------- preference training


def train_preferences(model, tokenizer, data, config: AlignConfig | None = None, callbacks=(), ref_model=None,
                      **overrides) -> TrainResult:
    """DPO, IPO or ORPO (``config.loss``) on preference pairs; returns ``ftlab.training.TrainResult``.

    ``data``: a preference JSONL path, raw preference records, records from ``load_preferences``, or
    examples from ``tokenize_preferences``. The reference log-probabilities are computed once, before
    the first step, and stored in the examples; pass the same examples to a second run *from the same
    starting model* and it reuses them (a cache from another starting model would be the wrong reference).
    ``callbacks``: as for ``ftlab.train``: functions called with each step's record (one returning
    True stops the run), or objects with ``on_step`` / ``on_gradients`` / ``on_end`` methods.

    Example:
        >>> result = train_preferences(model, tok, "data/preferences.jsonl", AlignConfig(loss="dpo", max_steps=20))  # doctest: +SKIP
        >>> result.history[-1]["rewards/accuracies"]                                                               # doctest: +SKIP
    """
    config = dataclasses.replace(config or AlignConfig(), **overrides)
    if config.loss in ("grpo", "reward"):
        raise ValueError(f"train_preferences: loss={config.loss!r} has its own trainer. Fix: use ftlab.align.train_grpo "
                         "(grpo) or ftlab.align.train_reward_model (reward).")
    if isinstance(data, list) and data and isinstance(data[0].get("chosen"), dict):
        examples = data  # already tokenised; a reference cached in them is reused, not computed again
    else:
        records = data if isinstance(data, list) and data and "messages" in data[0] else load_preferences(data)
        examples = tokenize_preferences(records, tokenizer, config.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    needs_reference = config.loss in ("dpo", "ipo")

    def cache_reference(policy):
        if needs_reference:
            precompute_reference(policy, examples, config.batch_size, pad_id, ref_model=ref_model,
                                 progress=config.progress)

    def step_fn(policy, step):
        record = {"loss": 0.0, "tokens": 0}
        sums = {}
        for micro in range(config.grad_accum_steps):
            idx = step_indices(len(examples), config.batch_size, step * config.grad_accum_steps + micro, config.seed)
            batch = collate_preferences([examples[i] for i in idx], pad_id)
            if needs_reference:
                batch["ref_chosen"] = torch.tensor([examples[i]["ref_chosen"] for i in idx])
                batch["ref_rejected"] = torch.tensor([examples[i]["ref_rejected"] for i in idx])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, metrics = preference_loss(policy, batch, config, ref_model)
            (loss / config.grad_accum_steps).backward()
            record["loss"] += loss.item() / config.grad_accum_steps
            record["tokens"] += int(batch["attention_mask"].sum())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v.item() / config.grad_accum_steps
        record.update(sums)
        return record

    return run_steps(model, tokenizer, config, step_fn, callbacks, set_up=cache_reference)
