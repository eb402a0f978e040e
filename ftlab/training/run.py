"""A training run's set-up, its state, its checkpoints and its end: the parts of the recipe in
``training/loop.py`` that run once (or once per checkpoint) rather than once per step.

:class:`Run` is what the set-up builds (the accelerator, the wrapped and the plain model, optimizer,
schedule); :class:`RunState` is where the run stands (step, history, best validation loss, data
position), which is exactly what a checkpoint stores besides weights, optimizer, schedule and RNGs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ftlab.data.batching import BatchStream, make_batches, prepare_examples
from ftlab.training import checkpoint as ckpt
from ftlab.training.adapters import merge_and_save, save_adapter
from ftlab.training.config import RunConfig, TrainResult
from ftlab.training.loss import accepts_logits_mask
from ftlab.training.methods import prepare_model
from ftlab.training.optim import build_optimizer, build_scheduler
from ftlab.training.parameters import count_parameters, is_peft_model, is_quantized


# --------------------------------------------------------------------------- 1. set-up


@dataclasses.dataclass
class Run:
    """What the set-up builds once and every later part uses (a plain bundle, not a framework)."""

    config: RunConfig  # a TrainConfig (ftlab.train) or an AlignConfig (alignment)
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


def setup_run(model, tokenizer, config: RunConfig) -> Run:
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
    run.fsdp = run.accelerator.distributed_type.name == "FSDP"
    return run


def announce(run: Run, data: str):
    """One line that says what is trained, on what (``data``, e.g. "64 examples"), and how."""
    config = run.config
    trainable, total = count_parameters(run.raw_model)
    if run.main:
        print(f"[ftlab] {config.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f} %), "
              f"{data}, {config.max_steps} steps x {config.effective_batch_size * run.world} "
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


def resume(run: Run, stream: BatchStream | None = None) -> RunState:
    """A fresh :class:`RunState`, or the one saved in ``config.resume_from`` with everything restored.

    ``stream``: the batch stream to put back at its saved position (``None`` when a step's data is a
    function of the step number alone, as in alignment)."""
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
        if stream is not None:
            stream.seek(saved["data_position"])
        if run.main:
            print(f"[ftlab] resumed from {path} at step {state.step}")
    state.data_position = stream.position if stream is not None else None
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


def _make_accelerator(config: RunConfig, device: torch.device):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    cuda = device.type == "cuda"
    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if precision == "bf16" and device.type == "cpu" and not config.allow_bf16_on_cpu:
        raise ValueError(f"{type(config).__name__}: mixed_precision='bf16' on a CPU: ftlab trains in fp32 on CPUs (the "
                         "course's numbers are fp32's, and a CPU without bf16 matrix units runs bf16 many times slower; "
                         "`ftlab doctor` measures this one). Fix: use mixed_precision='auto' (fp32 on CPU), or set "
                         "allow_bf16_on_cpu=True to insist.")
    if config.optimizer == "adamw_8bit" and not cuda:
        raise ValueError(f"{type(config).__name__}: optimizer='adamw_8bit' needs a CUDA GPU (bitsandbytes has no CPU "
                         "kernels for it). Fix: optimizer='adamw' on this machine.")
    if not PartialState(cpu=device.type == "cpu").use_distributed:  # (first call sets up the processes)
        # In a notebook, train() may run many times with different settings; Accelerate keeps
        # one global state per process, so start each single-process run from a clean one.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu")


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
    # (only ftlab.train validates, so only its runs have a best checkpoint and load_best_at_end)
    if state.best_path is not None and config.load_best_at_end and step > 0 and not run.fsdp:
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
