"""The training loop: full fine-tuning, LoRA, QLoRA and layer freezing, on a CPU, one GPU or many.

Read it top to bottom: :func:`train` is a recipe in five parts, and each part is a small function
below it, in the order they run:

1. set-up: the run folder, the device (through Accelerate, so ``accelerate launch`` runs the very
   same code on several GPUs), the data (records -> tokenised examples -> batches), the method
   (``ftlab.training.methods.prepare_model``), the optimizer and the learning-rate schedule
   (``ftlab.training.optim``);
2. resume: model/adapter weights, optimizer, scheduler, random generators and data position;
3. the loop: one optimizer step = ``grad_accum_steps`` micro-batches on every process (:func:`train_step`);
4. evaluation, early stopping and checkpoints every N steps;
5. saving the result: the adapter or the model, and optionally LoRA merged into the base.

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
import json
import math
import time
from pathlib import Path

import torch

from ftlab.data.batching import BatchStream, make_batches, prepare_examples
from ftlab.training import checkpoint as ckpt
from ftlab.training.config import TrainConfig, TrainResult
from ftlab.training.loss import accepts_logits_mask, count_trained_tokens, evaluate_loss, forward_loss
from ftlab.training.methods import (count_parameters, is_peft_model, is_quantized, merge_and_save, prepare_model,
                                    save_adapter)
from ftlab.training.optim import build_optimizer, build_scheduler
from ftlab.training.tracking import RunLogger, format_postfix, progress_bar


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient became NaN or infinite; the message says what to change."""


# --------------------------------------------------------------------------- helpers


def _make_accelerator(config: TrainConfig, device: torch.device):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    cuda = device.type == "cuda"
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "bf16" and device.type == "cpu" and not config.allow_bf16_on_cpu:
        raise ValueError("TrainConfig: mixed_precision='bf16' on a CPU is usually ~30x slower than fp32. "
                         "Fix: use mixed_precision='auto' (fp32 on CPU), or set allow_bf16_on_cpu=True to insist.")
    if config.optimizer == "adamw_8bit" and not cuda:
        raise ValueError("TrainConfig: optimizer='adamw_8bit' needs a CUDA GPU (bitsandbytes has no CPU "
                         "kernels for it). Fix: optimizer='adamw' on this machine.")
    if not PartialState(cpu=device.type == "cpu").use_distributed:  # (first call sets up the processes)
        # In a notebook, train() may run many times with different settings; Accelerate keeps
        # one global state per process, so start each single-process run from a clean one.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu")


def _peak_memory_mb(device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:  # Windows
        return float("nan")


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
    run = setup_model(run, tokenizer)
    # ---- 2. resume
    stream = BatchStream(train_examples, config.batch_size, config.batching, config.max_length, config.seed,
                         config.shuffle, run.pad_id)
    state = resume(run, stream)
    announce(run, len(train_examples))
    # ---- 3. the loop, with 4. evaluation, early stopping and checkpoints after each step
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
                # This step's micro-batches: grad_accum_steps per process, dealt out round-robin.
                micro = stream.take(config.grad_accum_steps * run.world)[run.rank::run.world]
                record = train_step(run, state, micro, callbacks)
                state.data_position = stream.position
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


# --------------------------------------------------------------------------- 1. set-up


@dataclasses.dataclass
class Run:
    """What the set-up builds once and every later part uses (a plain bundle, not a framework)."""

    config: TrainConfig
    accelerator: object
    out_dir: Path
    pad_id: int
    model: object = None  # what we call: wrapped by Accelerate (DDP/FSDP) and maybe compiled
    raw_model: object = None  # the plain (maybe peft-wrapped) module: what we save and return
    optimizer: object = None
    scheduler: object = None
    logits_only: bool = False
    fsdp: bool = False

    @property
    def rank(self):
        return self.accelerator.process_index

    @property
    def world(self):
        return self.accelerator.num_processes

    @property
    def main(self):
        return self.accelerator.is_main_process


def setup_run(model, tokenizer, config: TrainConfig) -> Run:
    """Device and processes (Accelerate), the run folder with its config, the seed."""
    from accelerate.utils import set_seed

    device = next(model.parameters()).device
    accelerator = _make_accelerator(config, device)
    run = Run(config, accelerator, Path(config.output_dir),
              tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, model=model)
    if run.main:
        config.save(run.out_dir)
    set_seed(config.seed)  # python, numpy and torch: LoRA's initialisation and dropout are reproducible
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return run


def prepare_data(run: Run, tokenizer, train_data, eval_data):
    """Tokenised training examples, and the fixed validation batches (tokenising only what is used)."""
    config = run.config
    train_examples = prepare_examples(train_data, tokenizer, config.max_length, config.train_on, "train_data")
    eval_batches = []
    if eval_data is not None:
        limit = config.eval_batches * config.batch_size if config.eval_batches else None
        eval_examples = prepare_examples(eval_data, tokenizer, config.max_length, config.train_on, "eval_data", limit=limit)
        eval_batches = make_batches(eval_examples, config.batch_size, "pad", max_length=config.max_length,
                                    shuffle=False, pad_token_id=run.pad_id)[:config.eval_batches]
    elif config.early_stopping_patience or config.load_best_at_end:
        raise ValueError("train(): early stopping / load_best_at_end need eval_data (a validation set).")
    return train_examples, eval_batches


def setup_model(run: Run, tokenizer) -> Run:
    """The method (full, LoRA, QLoRA, freezing), the optimizer and schedule, then Accelerate's wrapping."""
    config, model = run.config, run.model
    if config.method == "full" and is_quantized(model):
        raise ValueError("train(): method='full' on a 4-bit model - quantised weights cannot be trained "
                         "directly. Fix: method='qlora' (adapters on the 4-bit base), or load the model unquantised.")
    if config.gradient_checkpointing:
        # use_reentrant=False: the modern implementation; works with frozen embeddings (LoRA) as is.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if is_peft_model(model):
        print("[ftlab] the model already has adapters: training them as they are (method settings ignored).")
    else:
        model = prepare_model(model, method=config.method, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                              lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                              use_dora=config.use_dora, freeze_layers=config.freeze_layers,
                              trainable_layers=config.trainable_layers, tokenizer=tokenizer)
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                betas=config.betas, momentum=config.momentum)
    run.scheduler = build_scheduler(optimizer, config.scheduler, config.warmup_steps, config.max_steps,
                                    config.min_lr_ratio)
    run.raw_model = model
    run.logits_only = config.trained_logits_only and accepts_logits_mask(model)
    # prepare() moves the model to this process's device and wraps it for DDP/FSDP under
    # `accelerate launch`. The scheduler is left out on purpose: Accelerate would step it once per process.
    run.model, run.optimizer = run.accelerator.prepare(model, optimizer)
    if config.compile:
        run.model = torch.compile(run.model)
    run.fsdp = run.accelerator.distributed_type.name == "FSDP"
    return run


def announce(run: Run, n_examples: int):
    """One line that says what is trained, on what, and how."""
    config = run.config
    trainable, total = count_parameters(run.raw_model)
    if run.main:
        print(f"[ftlab] {config.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %), "
              f"{n_examples} examples, {config.max_steps} steps x {config.effective_batch_size * run.world} "
              f"examples, on {run.accelerator.device} x {run.world}, mixed precision: {run.accelerator.mixed_precision}")


# --------------------------------------------------------------------------- 2. resume and checkpoints


@dataclasses.dataclass
class RunState:
    """Where the run stands: what a checkpoint holds besides weights, optimizer, schedule and RNGs."""

    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    best_val: float | None = None
    best_path: Path | None = None
    bad_evals: int = 0
    trained_tokens: int = 0
    data_position: object = None  # the batch stream's position after the last *completed* step
    last_ckpt: Path | None = None
    stopped: str = "max_steps"  # why the loop ended: max_steps, early_stopping, callback, interrupted


def resume(run: Run, stream: BatchStream) -> RunState:
    """A fresh :class:`RunState`, or the one saved in ``config.resume_from`` with everything restored."""
    config, state = run.config, RunState()
    if config.resume_from and run.fsdp:
        raise NotImplementedError("resume_from under FSDP: ftlab's checkpoints hold full (gathered) weights but not "
                                  "the sharded optimizer state. Fix: resume without FSDP (DDP), or start a new run.")
    if config.resume_from:
        path = ckpt.resolve_checkpoint(config.resume_from, run.out_dir)
        saved = ckpt.load_checkpoint(path, run.raw_model, run.optimizer, run.scheduler, rank=run.rank)
        state = RunState(step=saved["step"], history=saved["history"], bad_evals=saved["bad_evals"],
                         best_val=saved["best_val_loss"], trained_tokens=saved["trained_tokens"],
                         best_path=Path(saved["best_checkpoint"]) if saved["best_checkpoint"] else None,
                         last_ckpt=path)
        stream.seek(saved["data_position"])
        if run.main:
            print(f"[ftlab] resumed from {path} at step {state.step}")
    state.data_position = stream.position
    return state


def save_state(run: Run, state: RunState) -> Path:
    """A checkpoint of the state after ``state.step`` completed steps (every process takes part)."""
    saved = {"data_position": state.data_position, "history": state.history, "best_val_loss": state.best_val,
             "best_checkpoint": str(state.best_path) if state.best_path else None, "bad_evals": state.bad_evals,
             "trained_tokens": state.trained_tokens, "world_size": run.world}
    rngs = [ckpt.rng_state()]
    if run.world > 1:
        from accelerate.utils import gather_object

        rngs = gather_object(rngs)  # every process keeps its own dropout stream
    # Under FSDP the weights are gathered from all shards; the optimizer state stays sharded (not saved).
    model_state = run.accelerator.get_state_dict(run.model) if run.fsdp else None
    if run.main:
        ckpt.save_checkpoint(run.out_dir, state.step, run.raw_model, None if run.fsdp else run.optimizer,
                             run.scheduler, saved, keep_last=run.config.keep_last, protect=[state.best_path],
                             model_state=model_state, rng_states=rngs)
    run.accelerator.wait_for_everyone()
    return ckpt.checkpoint_dir(run.out_dir) / f"{ckpt.PREFIX}{state.step:06d}"


# --------------------------------------------------------------------------- 3. one optimizer step


def train_step(run: Run, state: RunState, micro: list[dict], callbacks=()) -> dict:
    """One optimizer step over this process's micro-batches; returns the step's record.

    The loss's denominator is the number of trained tokens of the *whole* step, summed over every
    micro-batch and every process, so how the step is split changes nothing (see the module docstring).
    """
    config, accelerator, world = run.config, run.accelerator, run.world
    t0 = time.time()  # (after take(): a new epoch's batches are built there, once per epoch)
    micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
    counts = torch.tensor([sum(count_trained_tokens(b["labels"]) for b in micro),
                           sum(int(b["attention_mask"].sum()) for b in micro)], device=accelerator.device)
    if world > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    n_trained, n_tokens = max(int(counts[0]), 1), int(counts[1])
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(micro):
        # Gradients are averaged across processes only once, after the last micro-batch.
        sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(run.model)
        with sync:
            part, _, _ = forward_loss(run.model, batch, run.logits_only)
            # DDP *averages* gradients over processes; multiplying by world turns that into
            # the sum, so every trained token of the step has the same weight 1 / n_trained.
            accelerator.backward(part * world / n_trained)
        loss_sum += part.detach()
    if world > 1:
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    loss = loss_sum.item() / n_trained
    # Clip; the returned norm is the one *before* clipping (what we log).
    grad_norm = float(accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm or float("inf")))
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
    state.trained_tokens += n_trained
    return {"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": n_tokens / (time.time() - t0), "step_tokens": n_trained,
            "trained_tokens": state.trained_tokens, "peak_memory_mb": _peak_memory_mb(accelerator.device)}


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


# --------------------------------------------------------------------------- 5. the result


def finish(run: Run, state: RunState, tokenizer, t_start: float) -> TrainResult:
    """Say why the run ended, restore the best weights if asked, save adapter/model (and merged), write result.json."""
    config, main, step = run.config, run.main, state.step
    if state.stopped == "early_stopping" and main:
        print(f"[ftlab] early stopping at step {step}: validation loss has not improved for "
              f"{config.early_stopping_patience} evaluations (best {state.best_val:.4f}).")
    if state.stopped == "interrupted" and main:
        print(f"[ftlab] stopped at step {step}; checkpoint: {state.last_ckpt}. "
              f"Continue with resume_from='latest' (same output_dir).")
    if config.load_best_at_end and state.best_path is not None and step > 0 and not run.fsdp:
        ckpt.load_checkpoint(state.best_path, run.raw_model, restore_rng=False)
    final_path = merged_path = None
    if config.save_final and state.stopped != "interrupted":
        final_path = run.out_dir / "final"
        if is_peft_model(run.raw_model):
            if main:
                save_adapter(run.raw_model, final_path)
        else:
            state_dict = run.accelerator.get_state_dict(run.model) if run.fsdp else None
            if main:
                run.raw_model.save_pretrained(final_path, state_dict=state_dict)
        if main:
            tokenizer.save_pretrained(final_path)
        if config.merge_lora and is_peft_model(run.raw_model) and main:
            merged_path = merge_and_save(run.raw_model, tokenizer, run.out_dir / "merged")
    run.accelerator.wait_for_everyone()
    run.raw_model.eval()
    result = TrainResult(history=state.history, model=run.raw_model, tokenizer=tokenizer, config=config,
                         output_dir=run.out_dir, final_path=final_path, merged_path=merged_path,
                         best_checkpoint=state.best_path, best_val_loss=state.best_val, last_checkpoint=state.last_ckpt,
                         stopped_because=state.stopped, wall_time_s=time.time() - t_start)
    if main:
        summary = {f.name: str(v) if isinstance(v := getattr(result, f.name), Path) else v
                   for f in dataclasses.fields(result) if f.name not in ("history", "model", "tokenizer", "config")}
        (run.out_dir / "result.json").write_text(json.dumps(summary, indent=2))
    return result
