"""Preference training (DPO, IPO, ORPO) on ``ftlab.training``'s parts: the same optimizer, schedule,
checkpoints and resume, progress bar, run logging and callbacks as ``ftlab.train`` - only the step differs.

:func:`run_steps` is the shared loop (GRPO uses it too, with its own step, see ``ftlab.align.grpo``):
set-up (LoRA via ``prepare_model``, ``build_optimizer``, ``build_scheduler``), resume from a checkpoint,
then ``max_steps`` optimizer steps of ``step_fn`` + clipping + update, logging every step and
checkpointing every ``save_every``. A step's data is a pure function of the step number and the seed
(a seeded permutation per epoch), so resuming needs nothing but the step.

**Where the reference comes from.** With LoRA, the reference is the model with adapters off
(``ftlab.align.logprobs``). So a preference run must *start* from the model you want as the
reference: to align an SFT'd LoRA model, merge its adapter first (``ftlab.training.merge_adapters``)
and align the merged model with a fresh adapter.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab.align.logprobs import precompute_reference, reference_logprobs, token_logprobs
from ftlab.align.losses import dpo_loss, orpo_loss
from ftlab.align.preferences import collate_preferences, load_preferences, split_pairs, tokenize_preferences
from ftlab.training import (TrainConfig, TrainResult, build_optimizer, build_scheduler, count_parameters,
                            is_peft_model, next_token_targets, prepare_model, progress_bar, format_postfix,
                            RunLogger, save_adapter)
from ftlab.training import checkpoint as ckpt
from ftlab.training.measure import peak_memory_mb

LOSSES = ("dpo", "ipo", "orpo", "grpo")


@dataclass
class AlignConfig(TrainConfig):
    """``TrainConfig`` (method, LoRA, lr, schedule, steps, checkpoints, logging) plus the alignment settings."""

    output_dir: str = "runs/align"
    loss: str = "dpo"  # dpo | ipo | orpo | grpo
    beta: float = 0.1  # DPO/IPO: strength of the pull to the reference; ORPO: weight of the odds-ratio term
    label_smoothing: float = 0.0  # DPO: assumed fraction of flipped preference labels (conservative DPO)
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
        if self.loss not in LOSSES:
            raise ValueError(f"AlignConfig: loss={self.loss!r} is not one of {', '.join(LOSSES)}.")
        if self.beta <= 0:
            raise ValueError(f"AlignConfig: beta must be > 0, got {self.beta}.")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"AlignConfig: label_smoothing must be in [0, 0.5), got {self.label_smoothing}.")
        if self.orpo_nll_on not in ("completion", "sequence"):
            raise ValueError(f"AlignConfig: orpo_nll_on={self.orpo_nll_on!r}; use 'completion' or 'sequence'.")
        if self.loss == "grpo" and self.num_generations < 2:
            raise ValueError("AlignConfig: GRPO needs num_generations >= 2 (the group is the baseline).")


# --------------------------------------------------------------------------- one preference step


def preference_loss(model, batch: dict, config: AlignConfig, ref_model=None):
    """The loss and metrics of one preference batch (chosen rows first), for ``config.loss``."""
    if config.loss == "orpo":
        return _orpo_batch_loss(model, batch, config)
    per_token = token_logprobs(model, batch, trained_logits_only=config.trained_logits_only)
    logps = per_token.sum(-1)
    n_tokens = (next_token_targets(batch["labels"]) != -100).sum(-1)
    if "ref_chosen" in batch:  # cached before training
        ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
    else:
        ref_chosen, ref_rejected = split_pairs(reference_logprobs(model, batch, ref_model)[0])
    chosen, rejected = split_pairs(logps)
    n_chosen, n_rejected = split_pairs(n_tokens)
    loss_type = "ipo" if config.loss == "ipo" else "sigmoid"
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=config.beta,
                    label_smoothing=config.label_smoothing, loss_type=loss_type,
                    chosen_tokens=n_chosen, rejected_tokens=n_rejected)


def _orpo_batch_loss(model, batch, config):
    completion = next_token_targets(batch["labels"]) != -100
    if config.orpo_nll_on == "sequence":  # score every real token; the completion is a subset of them
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        per_token = token_logprobs(model, {**batch, "labels": labels}, trained_logits_only=config.trained_logits_only)
        nll_mask = next_token_targets(labels) != -100
    else:
        per_token = token_logprobs(model, batch, trained_logits_only=config.trained_logits_only)
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


# --------------------------------------------------------------------------- the shared loop


def _set_up(model, tokenizer, config):
    from accelerate.utils import set_seed

    set_seed(config.seed)
    if not is_peft_model(model):
        model = prepare_model(model, method=config.method, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                              lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                              tokenizer=tokenizer)
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                betas=config.betas, momentum=config.momentum)
    scheduler = build_scheduler(optimizer, config.scheduler, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    return model, optimizer, scheduler


def run_steps(model, tokenizer, config: AlignConfig, step_fn, callbacks=(), set_up=None) -> TrainResult:
    """``config.max_steps`` optimizer steps of ``step_fn(model, step) -> record`` (it runs backward).

    ``set_up(model)`` runs after the adapters exist and before resuming (DPO caches its reference there).
    """
    t_start = time.time()
    out_dir = Path(config.output_dir)
    config.save(out_dir)
    model, optimizer, scheduler = _set_up(model, tokenizer, config)
    if set_up is not None:
        set_up(model)
    step, history = 0, []
    if config.resume_from:
        path = ckpt.resolve_checkpoint(config.resume_from, out_dir)
        state = ckpt.load_checkpoint(path, model, optimizer, scheduler)
        step, history = state["step"], state["history"]
        print(f"[ftlab] resumed from {path} at step {step}")
    trainable, total = count_parameters(model)
    if config.progress:
        print(f"[ftlab] {config.loss} with {config.method}: training {trainable:,} of {total:,} parameters, "
              f"{config.max_steps} steps")
    logger = RunLogger(out_dir, config.log_to, append=bool(config.resume_from))
    bar = progress_bar(config.max_steps, initial=step, enabled=config.progress, desc=config.loss)
    model.train()
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last_ckpt, t_loop = None, time.time()
    while step < config.max_steps:
        t0 = time.time()
        record = step_fn(model, step)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf")))
        if not (math.isfinite(record["loss"]) and math.isfinite(grad_norm)):
            raise FloatingPointError(f"step {step + 1}: loss {record['loss']}, gradient norm {grad_norm}: training "
                                     f"diverged. Fix: lower lr (now {config.lr:g}) or raise beta (now {config.beta:g}).")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.time() - t0
        record.update({"step": step, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": record.get("tokens", 0) / elapsed,
                       "peak_memory_mb": peak_memory_mb(device), "elapsed_s": time.time() - t_loop})
        history.append(record)
        logger.log(record)
        bar.update(1)
        bar.set_postfix(format_postfix(record))
        stop = any(bool(cb(record)) for cb in callbacks)
        if config.save_every and step % config.save_every == 0:
            last_ckpt = ckpt.save_checkpoint(out_dir, step, model, optimizer, scheduler, {"history": history},
                                             keep_last=config.keep_last)
        if stop:
            break
    bar.close()
    logger.close()
    final_path = None
    if config.save_final:
        final_path = save_adapter(model, out_dir / "final") if is_peft_model(model) else None
    model.eval()
    return TrainResult(history=history, model=model, tokenizer=tokenizer, config=config, output_dir=out_dir,
                       final_path=final_path, merged_path=None, best_checkpoint=None, best_val_loss=None,
                       last_checkpoint=last_ckpt, stopped_because="max_steps" if step >= config.max_steps else "callback",
                       wall_time_s=time.time() - t_start)


# --------------------------------------------------------------------------- preference training


def train_preferences(model, tokenizer, data, config: AlignConfig | None = None, callbacks=(), ref_model=None,
                      **overrides) -> TrainResult:
    """DPO, IPO or ORPO (``config.loss``) on preference pairs; returns ``ftlab.training.TrainResult``.

    ``data``: a preference JSONL path, raw preference records, records from ``load_preferences``, or
    examples from ``tokenize_preferences``. The reference log-probabilities are computed once, before
    the first step, and stored in the examples; pass the same examples to a second run *from the same
    starting model* and it reuses them (a cache from another starting model would be the wrong reference).
    ``callbacks``: functions called with each step's record; one returning True stops the run.

    Example:
        >>> result = train_preferences(model, tok, "data/preferences.jsonl", AlignConfig(loss="dpo", max_steps=20))  # doctest: +SKIP
        >>> result.history[-1]["rewards/accuracies"]                                                               # doctest: +SKIP
    """
    config = dataclasses.replace(config or AlignConfig(), **overrides)
    if config.loss == "grpo":
        raise ValueError("train_preferences: loss='grpo' samples its own completions. Fix: use ftlab.align.train_grpo.")
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
