"""The training loop: full fine-tuning, LoRA, QLoRA and layer freezing, on a CPU, one GPU or many.

Read it top to bottom: :func:`train` is a recipe in five parts, and each part is a small function,
here (the per-step parts) or in ``training/run.py`` (set-up, resume and checkpoints, the end):

1. set-up: the run folder, the device (through Accelerate, so ``accelerate launch`` runs the very
   same code on several GPUs), the data (records -> tokenised examples -> batches), the method
   (``ftlab.training.methods.prepare_model``), the optimizer and the learning-rate schedule
   (``ftlab.training.optim``);
2. resume: model/adapter weights, optimizer, scheduler, random generators and data position;
3. the loop: one optimizer step = ``grad_accum_steps`` micro-batches on every process (:func:`train_step`);
4. evaluation, early stopping and checkpoints every N steps;
5. saving the result: the adapter or the model, and optionally LoRA merged into the base.

Parts 3-5 are :func:`run_loop`, and the second half of every step (clip, update, schedule) is
:func:`update_step`: alignment (``ftlab.align``: DPO, IPO, ORPO, GRPO) runs on the same set-up,
``run_loop`` and ``update_step``, with its own loss in place of :func:`train_step`'s.

Its settings (:class:`TrainConfig`) and its return value (:class:`TrainResult`) are declared in
``ftlab/training/config.py`` and importable from here. The pieces it calls live in the modules of
their topics: the loss in ``training/loss.py``, batches in ``data/batching.py``, checkpoints and
Ctrl-C in ``training/checkpoint.py``, methods in ``training/methods.py``, optimizers and schedules in
``training/optim.py``.

**The loss, done right.** The loss of one optimizer step is the mean cross-entropy over *all tokens
that are trained in that step*: every micro-batch, every process. So each micro-batch contributes
``sum of its token losses / trained tokens of the whole step``. The tempting shortcut - average each
micro-batch on its own, then average those means - weights a token in a short micro-batch more
than one in a long micro-batch, and makes the result depend on how the step was split (the
gradient-accumulation bug found in many trainers in 2024). Here (batch 8, accumulation 1),
(4, 2) and (2, 4) give the same loss and the same gradients (``tests/test_training.py``). The output
layer runs only where a token is trained (``TrainConfig.trained_logits_only``): same numbers, and on
instruction data, where most tokens are prompt, a faster and smaller step.

Example:
    >>> from ftlab import load_model, TrainConfig, train
    >>> model, tok = load_model("tiny")
    >>> data = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}] * 8
    >>> cfg = TrainConfig(output_dir="runs/doctest", method="lora", max_steps=2, batch_size=4, progress=False)
    >>> result = train(model, tok, data, config=cfg)            # doctest: +SKIP
    >>> [round(h["loss"], 2) for h in result.history]           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch

from ftlab.data.batching import BatchStream
from ftlab.training import checkpoint as ckpt
from ftlab.training.config import TrainConfig, TrainResult
from ftlab.training.loss import count_trained_examples, count_trained_tokens, evaluate_loss, forward_loss
from ftlab.training.measure import peak_memory_mb
from ftlab.training.run import Run, RunState, announce, finish, prepare_data, resume, save_state, setup_model, setup_run
from ftlab.training.tracking import RunLogger, format_postfix, progress_bar


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient became NaN or infinite; the message says what to change."""


# --------------------------------------------------------------------------- the recipe


def train(model, tokenizer, train_data, eval_data=None, config: TrainConfig | None = None, callbacks=None,
          **overrides) -> TrainResult:
    """Fine-tune ``model`` on ``train_data``; return a :class:`TrainResult`.

    Args:
        model, tokenizer: from ``ftlab.load_model`` (or any causal LM + its tokenizer).
        train_data, eval_data: a file path, tokenised examples, or records in any format ftlab reads.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace single fields
            (``train(m, t, data, config=cfg, lr=1e-4)``).
        callbacks: objects with ``on_step(record)``, ``on_gradients(model)`` (after clipping, before the
            update) and ``on_end(result)`` methods (e.g. ``ftlab.training.LivePlot``), or plain functions
            called with each step's record. ``on_step`` returning True stops the run.

    Example:
        >>> result = train(model, tok, "data/train.jsonl", config=TrainConfig(max_steps=20))   # doctest: +SKIP
        >>> result.history[-1]["loss"], result.final_path                                      # doctest: +SKIP
    """
    config = config or TrainConfig()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    callbacks = list(callbacks or [])
    t_start = time.time()

    # ---- 1. set-up: device and processes, run folder, data, method, optimizer, schedule
    run = setup_run(model, tokenizer, config)
    train_examples, eval_batches = prepare_data(run, tokenizer, train_data, eval_data)
    from ftlab.budget import check_training  # a workshop's per-participant budget: refuse before any step
    check_training(model, config, train_examples)
    run = setup_model(run, tokenizer)
    if config.compile:
        run.model = torch.compile(run.model)
    # ---- 2. resume
    stream = BatchStream(train_examples, config.batch_size, config.batching, config.max_length, config.seed,
                         config.shuffle, run.pad_id)
    state = resume(run, stream)
    announce(run, f"{len(train_examples)} examples")

    def step(state: RunState) -> dict:
        # This step's micro-batches: grad_accum_steps per process, dealt out round-robin.
        micro = stream.take(config.grad_accum_steps * run.world)[run.rank::run.world]
        record = train_step(run, state, micro, callbacks)
        state.data_position = stream.position
        return record

    # ---- 3. the loop, with 4. evaluation, early stopping and checkpoints; 5. the result
    return run_loop(run, state, tokenizer, step, callbacks, t_start, eval_batches)


def run_loop(run: Run, state: RunState, tokenizer, step, callbacks=(), t_start: float | None = None,
             eval_batches=()) -> TrainResult:
    """Steps until ``max_steps`` (or a stop), each logged and checkpointed; then :func:`finish`.

    ``step(state) -> record`` runs one optimizer step and advances ``state.step``: :func:`train_step`
    for ``ftlab.train``, a preference or GRPO step for alignment (``ftlab.align``) - the only part
    that differs between them. The first Ctrl-C stops after the current step and saves a checkpoint.
    """
    config, t_start = run.config, time.time() if t_start is None else t_start
    logger = RunLogger(run.out_dir, config.log_to, append=bool(config.resume_from)) if run.main else None
    bar = progress_bar(config.max_steps, initial=state.step, enabled=config.progress and run.main)
    run.model.train()
    if eval_batches and state.step == 0:  # the starting point of the validation curve
        _log(state, {"step": 0, **evaluate_loss(run.model, eval_batches, run.accelerator, run.logits_only)},
             logger, callbacks)  # (a callback cannot stop the run before its first step)
    t_loop = time.time()
    with ckpt.StopOnInterrupt() as interrupt:
        try:
            while state.step < config.max_steps:
                record = step(state)
                record["elapsed_s"] = time.time() - t_loop
                new_best = evaluate_and_track(run, state, record, eval_batches)
                if _log(state, record, logger, callbacks, bar):
                    state.stopped = "callback"
                if interrupt.requested:
                    state.stopped = "interrupted"
                if new_best:
                    state.best_path = ckpt.checkpoint_dir(run.out_dir) / f"{ckpt.PREFIX}{state.step:06d}"
                if new_best or (config.save_every and state.step % config.save_every == 0) or \
                        state.stopped == "interrupted":
                    state.last_ckpt = save_state(run, state)
                if state.stopped != "max_steps":
                    break
        except KeyboardInterrupt:
            # A second Ctrl-C, or one we could not catch gently: keep what the completed steps achieved.
            state.stopped = "interrupted"
            if run.main:
                print(f"\n[ftlab] interrupted during step {state.step + 1}; saving the state after step {state.step}.")
            run.optimizer.zero_grad(set_to_none=True)
            state.last_ckpt = save_state(run, state)
    bar.close()
    if logger:
        logger.close()
    # ---- 5. the result: best weights back (optional), adapter or model, merged model
    result = finish(run, state, tokenizer, t_start)
    _callback(callbacks, "on_end", result)
    return result


# --------------------------------------------------------------------------- 3. one optimizer step


def train_step(run: Run, state: RunState, micro: list[dict], callbacks=()) -> dict:
    """One optimizer step over this process's micro-batches; returns the step's record.

    The loss's denominator is the number of trained tokens of the *whole* step, summed over every
    micro-batch and every process, so how the step is split changes nothing (see the module docstring).
    """
    accelerator, world = run.accelerator, run.world
    per_example = run.config.loss_weighting == "example"
    t0 = time.time()  # (after take(): a new epoch's batches are built there, once per epoch)
    micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
    counts = torch.tensor([sum(count_trained_tokens(b["labels"]) for b in micro),
                           sum(int(b["attention_mask"].sum()) for b in micro),
                           sum(count_trained_examples(b["labels"]) for b in micro)], device=accelerator.device)
    if world > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    n_trained, n_tokens = max(int(counts[0]), 1), int(counts[1])
    # the loss's denominator: the step's trained tokens, or its examples (loss_weighting="example")
    n_weights = max(int(counts[2]), 1) if per_example else n_trained
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(micro):
        # Gradients are averaged across processes only once, after the last micro-batch.
        sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(run.model)
        with sync:
            part, _, _ = forward_loss(run.model, batch, run.logits_only, per_example)
            # DDP *averages* gradients over processes; multiplying by world turns that into
            # the sum, so every trained token (or example) of the step has the same weight 1 / n_weights.
            accelerator.backward(part * world / n_weights)
        loss_sum += part.detach()
    if world > 1:
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    state.trained_tokens += n_trained
    return update_step(run, state, loss_sum.item() / n_weights, n_tokens, t0, callbacks,
                       {"step_tokens": n_trained, "trained_tokens": state.trained_tokens})


def update_step(run: Run, state: RunState, loss: float, n_tokens: int, t0: float, callbacks=(),
                extra: dict | None = None) -> dict:
    """The half of an optimizer step every loss shares, after its backward: clip, stop on NaN/inf,
    update, advance the schedule. Returns the step's record (``extra`` holds the loss's own numbers).
    ``t0``: when the step began; ``n_tokens``: the tokens it processed (for tokens/s)."""
    config = run.config
    # Clip; the returned norm is the one *before* clipping (what we log).
    grad_norm = float(run.accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm or float("inf")))
    if not math.isfinite(loss):
        raise _diverged(state.step + 1, "loss", loss, config)
    if not math.isfinite(grad_norm):
        raise _diverged(state.step + 1, "gradient norm", grad_norm, config)
    _callback(callbacks, "on_gradients", run.raw_model)  # e.g. to look at the gradients
    lr = run.scheduler.get_last_lr()[0]  # the lr this update uses
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    step_s = time.time() - t0  # the whole step: forward, backward, update (and GRPO's sampling)
    return {"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "step_s": step_s,
            "tokens_per_s": n_tokens / step_s, **(extra or {}),
            "peak_memory_mb": peak_memory_mb(run.accelerator.device)}


# --------------------------------------------------------------------------- 4. evaluation and early stopping


def evaluate_and_track(run: Run, state: RunState, record: dict, eval_batches) -> bool:
    """Validation loss every ``eval_every`` steps and at the end; True when it is a new best."""
    config, step = run.config, state.step
    if not eval_batches or not ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
        return False
    record.update(evaluate_loss(run.model, eval_batches, run.accelerator, run.logits_only))
    if state.best_val is None or record["val_loss"] < state.best_val:
        state.best_val, state.bad_evals = record["val_loss"], 0
        return config.eval_every > 0
    state.bad_evals += 1
    if config.early_stopping_patience and state.bad_evals >= config.early_stopping_patience:
        state.stopped = "early_stopping"
    return False


def _log(state: RunState, record: dict, logger, callbacks, bar=None) -> bool:
    """Keep the record, write it to the logs and the progress bar; True when a callback asks to stop."""
    state.history.append(record)
    if logger:
        logger.log(record)
    if bar is not None:
        bar.update(1)
        bar.set_postfix(format_postfix(record))
    return _callback(callbacks, "on_step", record)


# --------------------------------------------------------------------------- helpers


def _diverged(step, what, value, config):
    return TrainingDiverged(
        f"step {step}: the {what} is {value} - training has diverged, so it was stopped. What to change: "
        f"lower the learning rate (now {config.lr:g}; try {config.lr / 10:g}) or add warmup_steps; keep "
        f"max_grad_norm on (now {config.max_grad_norm}); check the data for empty or broken examples; "
        "train in fp32 (mixed_precision='no') if it happens under bf16.")


def _callback(callbacks, method, *args):
    """Call ``method`` on each callback (plain functions get the step record). True from one = stop."""
    stop = False
    for cb in callbacks:
        fn = getattr(cb, method, None) or (cb if method == "on_step" and callable(cb) else None)
        if fn is not None:
            stop = bool(fn(*args)) or stop
    return stop
