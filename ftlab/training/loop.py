"""The training loop: full fine-tuning, LoRA, QLoRA and layer freezing, on a CPU, one GPU or many.

Read it top to bottom; it is one function, :func:`train`, in five parts:

1. set-up: the run folder, the device (through Accelerate, so ``accelerate launch`` runs the very
   same code on several GPUs), the data (records -> tokenised examples -> batches), the method
   (``ftlab.methods.prepare_model``), the optimizer and the learning-rate schedule (``ftlab.optim``);
2. resume: model/adapter weights, optimizer, scheduler, random generators and data position;
3. the loop: one optimizer step = ``grad_accum_steps`` micro-batches on every process;
4. evaluation, early stopping and checkpoints every N steps;
5. saving the result: the adapter or the model, and optionally LoRA merged into the base.

Its settings (:class:`TrainConfig`) and its return value (:class:`TrainResult`) are declared in
``ftlab/train_config.py`` and importable from here. The pieces it calls live in the modules of their
topics: the loss in ``ftlab/loss.py``, batches in ``ftlab/batching.py``, checkpoints and Ctrl-C in
``ftlab/checkpoint.py``, methods in ``ftlab/methods.py``, optimizers and schedules in ``ftlab/optim.py``.

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

from ftlab.training import checkpoint as ckpt
from ftlab.data.batching import BatchStream, make_batches, prepare_examples
from ftlab.training.loss import (accepts_logits_mask, causal_lm_loss, count_trained_tokens,  # noqa: F401 (causal_lm_loss:
                        evaluate_loss, forward_loss)                                   # re-exported, older imports)
from ftlab.training.methods import is_peft_model, is_quantized
from ftlab.training.tracking import RunLogger, format_postfix, progress_bar
from ftlab.training.config import TrainConfig, TrainResult  # noqa: F401  (both are part of this module's API)



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


# --------------------------------------------------------------------------- the loop


def train(model, tokenizer, train_data, eval_data=None, config: TrainConfig | None = None, callbacks=None,
          **overrides) -> TrainResult:
    """Fine-tune ``model`` on ``train_data``; return a :class:`TrainResult`.

    Args:
        model, tokenizer: from ``ftlab.load_model`` (or any causal LM + its tokenizer).
        train_data, eval_data: a file path, tokenised examples, or records in any format ftlab reads.
        config: a :class:`TrainConfig`; keyword ``overrides`` replace single fields
            (``train(m, t, data, config=cfg, lr=1e-4)``).
        callbacks: objects with ``on_step(record)``, ``on_gradients(model)`` (after clipping, before the
            update) and ``on_end(result)`` methods (e.g. ``ftlab.tracking.LivePlot``), or plain functions
            called with each step's record. ``on_step`` returning True stops the run.

    Example:
        >>> result = train(model, tok, "data/train.jsonl", config=TrainConfig(max_steps=20))   # doctest: +SKIP
        >>> result.history[-1]["loss"], result.final_path                                      # doctest: +SKIP
    """
    from accelerate.utils import set_seed

    from ftlab.training.methods import count_parameters, merge_and_save, prepare_model, save_adapter
    from ftlab.training.optim import build_optimizer, build_scheduler

    config = config or TrainConfig()
    if overrides:
        config = dataclasses.replace(config, **overrides)
    callbacks = list(callbacks or [])
    t_start = time.time()

    # ---- 1. set-up: device and processes, run folder, data, method, optimizer, schedule
    device = next(model.parameters()).device
    accelerator = _make_accelerator(config, device)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    out_dir = Path(config.output_dir)
    if main:
        config.save(out_dir)
    set_seed(config.seed)  # python, numpy and torch: LoRA's initialisation and dropout are reproducible
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_examples = prepare_examples(train_data, tokenizer, config.max_length, config.train_on, "train_data")
    eval_batches = []
    if eval_data is not None:
        limit = config.eval_batches * config.batch_size if config.eval_batches else None  # tokenise only what is used
        eval_examples = prepare_examples(eval_data, tokenizer, config.max_length, config.train_on, "eval_data", limit=limit)
        eval_batches = make_batches(eval_examples, config.batch_size, "pad", max_length=config.max_length,
                                    shuffle=False, pad_token_id=pad_id)[:config.eval_batches]
    elif config.early_stopping_patience or config.load_best_at_end:
        raise ValueError("train(): early stopping / load_best_at_end need eval_data (a validation set).")

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
    scheduler = build_scheduler(optimizer, config.scheduler, config.warmup_steps, config.max_steps, config.min_lr_ratio)
    raw_model = model  # the plain (maybe peft-wrapped) module: what we save and return
    logits_only = config.trained_logits_only and accepts_logits_mask(raw_model)
    # prepare() moves the model to this process's device and wraps it for DDP/FSDP under
    # `accelerate launch`. The scheduler is left out on purpose: Accelerate would step it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    if config.compile:
        model = torch.compile(model)
    fsdp = accelerator.distributed_type.name == "FSDP"

    # ---- 2. resume
    stream = BatchStream(train_examples, config.batch_size, config.batching, config.max_length, config.seed,
                         config.shuffle, pad_id)
    history, best_val, best_path, bad_evals, trained_tokens, step, last_ckpt = [], None, None, 0, 0, 0, None
    if config.resume_from and fsdp:
        raise NotImplementedError("resume_from under FSDP: ftlab's checkpoints hold full (gathered) weights but not "
                                  "the sharded optimizer state. Fix: resume without FSDP (DDP), or start a new run.")
    if config.resume_from:
        path = ckpt.resolve_checkpoint(config.resume_from, out_dir)
        state = ckpt.load_checkpoint(path, raw_model, optimizer, scheduler, rank=rank)
        step, history, bad_evals = state["step"], state["history"], state["bad_evals"]
        best_val, trained_tokens = state["best_val_loss"], state["trained_tokens"]
        best_path = Path(state["best_checkpoint"]) if state["best_checkpoint"] else None
        stream.seek(state["data_position"])
        last_ckpt = path
        if main:
            print(f"[ftlab] resumed from {path} at step {step}")
    position_done = stream.position  # data position after the last *completed* step

    def save(at_step):
        """A checkpoint of the state after ``at_step`` completed steps (every process takes part)."""
        state = {"data_position": position_done, "history": history, "best_val_loss": best_val,
                 "best_checkpoint": str(best_path) if best_path else None, "bad_evals": bad_evals,
                 "trained_tokens": trained_tokens, "world_size": world}
        rngs = [ckpt.rng_state()]
        if world > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)  # every process keeps its own dropout stream
        # Under FSDP the weights are gathered from all shards; the optimizer state stays sharded (not saved).
        model_state = accelerator.get_state_dict(model) if fsdp else None
        if main:
            ckpt.save_checkpoint(out_dir, at_step, raw_model, None if fsdp else optimizer, scheduler, state,
                                        keep_last=config.keep_last, protect=[best_path], model_state=model_state,
                                        rng_states=rngs)
        accelerator.wait_for_everyone()
        return ckpt.checkpoint_dir(out_dir) / f"{ckpt.PREFIX}{at_step:06d}"

    trainable, total = count_parameters(raw_model)
    if main:
        print(f"[ftlab] {config.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %), "
              f"{len(train_examples)} examples, {config.max_steps} steps x {config.effective_batch_size * world} "
              f"examples, on {accelerator.device} x {world}, mixed precision: {accelerator.mixed_precision}")
    logger = RunLogger(out_dir, config.log_to, append=bool(config.resume_from)) if main else None
    bar = progress_bar(config.max_steps, initial=step, enabled=config.progress and main)

    # ---- 3. the loop
    model.train()
    if eval_batches and step == 0:  # the starting point of the validation curve
        record = {"step": 0, **evaluate_loss(model, eval_batches, accelerator, logits_only)}
        history.append(record)
        if logger:
            logger.log(record)
        _callback(callbacks, "on_step", record)
    stopped = "max_steps"
    t_loop = time.time()
    with ckpt.StopOnInterrupt() as interrupt:
        try:
            while step < config.max_steps:
                # This step's micro-batches: grad_accum_steps per process, dealt out round-robin.
                micro = stream.take(config.grad_accum_steps * world)[rank::world]
                t0 = time.time()  # (after take(): a new epoch's batches are built there, once per epoch)
                micro = [{k: v.to(accelerator.device) for k, v in b.items()} for b in micro]
                # The loss's denominator: trained tokens of the whole step, summed over every process.
                counts = torch.tensor([sum(count_trained_tokens(b["labels"]) for b in micro),
                                       sum(int(b["attention_mask"].sum()) for b in micro)], device=accelerator.device)
                if world > 1:
                    counts = accelerator.reduce(counts, reduction="sum")
                n_trained, n_tokens = max(int(counts[0]), 1), int(counts[1])
                loss_sum = torch.zeros((), device=accelerator.device)
                for i, batch in enumerate(micro):
                    # Gradients are averaged across processes only once, after the last micro-batch.
                    sync = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(model)
                    with sync:
                        part, _, _ = forward_loss(model, batch, logits_only)
                        # DDP *averages* gradients over processes; multiplying by world turns that into
                        # the sum, so every trained token of the step has the same weight 1 / n_trained.
                        accelerator.backward(part * world / n_trained)
                    loss_sum += part.detach()
                if world > 1:
                    loss_sum = accelerator.reduce(loss_sum, reduction="sum")
                loss = loss_sum.item() / n_trained
                # Clip; the returned norm is the one *before* clipping (what we log).
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf")))
                if not math.isfinite(loss):
                    raise _diverged(step + 1, "loss", loss, config)
                if not math.isfinite(grad_norm):
                    raise _diverged(step + 1, "gradient norm", grad_norm, config)
                _callback(callbacks, "on_gradients", raw_model)  # e.g. to look at the gradients
                lr = scheduler.get_last_lr()[0]  # the lr this update uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                position_done = stream.position
                trained_tokens += n_trained
                elapsed = time.time() - t0
                record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens_per_s": n_tokens / elapsed, "step_tokens": n_trained, "trained_tokens": trained_tokens,
                          "peak_memory_mb": _peak_memory_mb(accelerator.device), "elapsed_s": time.time() - t_loop}

                # ---- 4. evaluation, early stopping, checkpoints
                new_best = False
                if eval_batches and ((config.eval_every and step % config.eval_every == 0) or step == config.max_steps):
                    record.update(evaluate_loss(model, eval_batches, accelerator, logits_only))
                    if best_val is None or record["val_loss"] < best_val:
                        best_val, bad_evals, new_best = record["val_loss"], 0, config.eval_every > 0
                    else:
                        bad_evals += 1
                        if config.early_stopping_patience and bad_evals >= config.early_stopping_patience:
                            stopped = "early_stopping"
                history.append(record)
                if logger:
                    logger.log(record)
                bar.update(1)
                bar.set_postfix(format_postfix(record))
                if _callback(callbacks, "on_step", record):
                    stopped = "callback"
                if interrupt.requested:
                    stopped = "interrupted"
                if new_best:
                    best_path = ckpt.checkpoint_dir(out_dir) / f"{ckpt.PREFIX}{step:06d}"
                if new_best or (config.save_every and step % config.save_every == 0) or stopped == "interrupted":
                    last_ckpt = save(step)
                if stopped != "max_steps":
                    break
        except KeyboardInterrupt:
            # A second Ctrl-C, or one we could not catch gently: keep what the completed steps achieved.
            stopped = "interrupted"
            if main:
                print(f"\n[ftlab] interrupted during step {step + 1}; saving the state after step {step}.")
            optimizer.zero_grad(set_to_none=True)
            last_ckpt = save(step)
    bar.close()
    if logger:
        logger.close()
    if stopped == "early_stopping" and main:
        print(f"[ftlab] early stopping at step {step}: validation loss has not improved for "
              f"{config.early_stopping_patience} evaluations (best {best_val:.4f}).")
    if stopped == "interrupted" and main:
        print(f"[ftlab] stopped at step {step}; checkpoint: {last_ckpt}. "
              f"Continue with resume_from='latest' (same output_dir).")

    # ---- 5. the result: best weights back (optional), adapter or model, merged model
    if config.load_best_at_end and best_path is not None and step > 0 and not fsdp:
        ckpt.load_checkpoint(best_path, raw_model, restore_rng=False)
    final_path = merged_path = None
    if config.save_final and stopped != "interrupted":
        final_path = out_dir / "final"
        if is_peft_model(raw_model):
            if main:
                save_adapter(raw_model, final_path)
        else:
            state_dict = accelerator.get_state_dict(model) if fsdp else None
            if main:
                raw_model.save_pretrained(final_path, state_dict=state_dict)
        if main:
            tokenizer.save_pretrained(final_path)
        if config.merge_lora and is_peft_model(raw_model) and main:
            merged_path = merge_and_save(raw_model, tokenizer, out_dir / "merged")
    accelerator.wait_for_everyone()
    raw_model.eval()
    result = TrainResult(history=history, model=raw_model, tokenizer=tokenizer, config=config, output_dir=out_dir,
                         final_path=final_path, merged_path=merged_path, best_checkpoint=best_path,
                         best_val_loss=best_val, last_checkpoint=last_ckpt, stopped_because=stopped,
                         wall_time_s=time.time() - t_start)
    if main:
        summary = {f.name: str(v) if isinstance(v := getattr(result, f.name), Path) else v
                   for f in dataclasses.fields(result) if f.name not in ("history", "model", "tokenizer", "config")}
        (out_dir / "result.json").write_text(json.dumps(summary, indent=2))
    _callback(callbacks, "on_end", result)
    return result
