"""What a training run is asked to do (:class:`TrainConfig`) and what it gives back (:class:`TrainResult`).

The loop itself lives in ``ftlab/training/loop.py``; keeping the ~50 settings here lets that file read
as one story from set-up to saving. :class:`RunConfig` holds the settings every run reads (the
set-up, step, checkpoints and logs that ``ftlab.train`` and alignment share); :class:`TrainConfig`
adds supervised fine-tuning's data and evaluation settings, ``ftlab.align.AlignConfig`` the losses'. Every field is documented where it is declared, and a config
is saved next to each run as ``config.yaml`` and ``config.json``, so a run can always be repeated:
``TrainConfig.from_yaml("runs/x/config.yaml")``.

Example:
    >>> cfg = TrainConfig(method="lora", lr=1e-3, max_steps=30)
    >>> cfg.effective_batch_size
    8
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ftlab.data.batching import STRATEGIES
from ftlab.training.methods import METHODS
from ftlab.training.optim import OPTIMIZERS, SCHEDULES
from ftlab.training.tracking import LOG_TARGETS


@dataclass
class RunConfig:
    """The settings every run reads: the method, optimizer and schedule, steps and batch size,
    precision, checkpoints, logging. ``ftlab.train`` adds its data and evaluation settings
    (:class:`TrainConfig`), alignment its loss settings (``ftlab.align.AlignConfig``); the set-up,
    step, checkpoint and logging code they share (``training/run.py``, ``training/loop.py``) reads
    only these fields.
    """

    # --- where the run goes
    output_dir: str = "runs/ftlab"  # run folder: config, logs, checkpoints/, final/
    # --- what is trained (see ftlab.training.methods)
    method: str = "lora"  # full | lora | dora | qlora | freeze | ia3 | prompt_tuning
    lora_rank: int = 16  # LoRA r: rank of the update B·A
    lora_alpha: float = 32  # LoRA scale numerator: the update is multiplied by alpha / r
    lora_dropout: float = 0.0  # dropout on the adapter input: regularises tiny datasets, costs time (a mask per adapter)
    target_modules: str | list = "all-linear"  # Linear layers that get adapters, or "all-linear"
    use_dora: bool = False  # DoRA: LoRA plus a learned magnitude per output channel
    freeze_layers: int | None = None  # method "freeze": freeze the first N decoder layers ...
    trainable_layers: int | None = None  # ... or train only the last N (give one of the two)
    # --- optimizer and schedule (see ftlab.training.optim)
    optimizer: str = "adamw"  # adamw | sgd | adamw_8bit (CUDA only)
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.0  # decoupled weight decay; never applied to biases and norms
    betas: tuple = (0.9, 0.999)  # AdamW's moment decay rates
    momentum: float = 0.0  # SGD momentum (AdamW's momentum is betas[0])
    scheduler: str = "cosine"  # constant | linear | cosine, each after linear warmup
    warmup_steps: int = 0  # optimizer steps of warmup from 0 to lr
    min_lr_ratio: float = 0.0  # cosine only: the floor, as a fraction of lr
    max_grad_norm: float | None = 1.0  # clip the gradient norm to this (None: no clipping)
    # --- how much data per step
    max_steps: int = 100  # optimizer steps (the data is repeated in new orders as needed)
    batch_size: int = 8  # examples per micro-batch on each process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_length: int = 512  # longer examples are truncated (and counted); the row length for packing
    # --- speed and memory
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % slower
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | no | bf16
    allow_bf16_on_cpu: bool = False  # CPUs train in fp32 (the course's numbers); opt in explicitly: `ftlab doctor` prices bf16 here
    trained_logits_only: bool = True  # output layer only at trained positions: same loss, less time/memory
    # --- checkpoints and the result
    save_every: int = 0  # checkpoint every N steps (0: only best/interrupt checkpoints)
    keep_last: int = 2  # keep the newest K checkpoints (the best one is always kept)
    resume_from: str | None = None  # "latest", a run folder or a checkpoint folder
    save_final: bool = True  # save the adapter / model to <output_dir>/final
    merge_lora: bool = False  # also merge adapters into the base and save <output_dir>/merged
    # --- bookkeeping
    seed: int = 0  # seeds model set-up (LoRA init), dropout and data order
    log_to: tuple = ("jsonl", "csv", "tensorboard")  # where the per-step history goes
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        self.betas, self.log_to = tuple(self.betas), tuple(self.log_to)
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        self._check()

    def _bad(self, msg):
        raise ValueError(f"{type(self).__name__}: {msg}")

    def _check(self):
        bad = self._bad
        for name, options in [("method", METHODS), ("optimizer", OPTIMIZERS), ("scheduler", SCHEDULES),
                              ("mixed_precision", ("auto", "no", "bf16"))]:
            if getattr(self, name) not in options:
                bad(f"{name}={getattr(self, name)!r} is not one of {', '.join(options)}.")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "max_length", "keep_last"):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.lr <= 0:
            bad(f"lr must be > 0, got {self.lr}.")
        if self.use_dora and self.method not in ("lora", "qlora", "dora"):
            bad(f"use_dora=True only applies to LoRA (method 'lora' or 'qlora'), not method={self.method!r}. "
                "Fix: set method='lora' or use_dora=False.")
        if (self.freeze_layers is not None or self.trainable_layers is not None) and self.method != "freeze":
            bad(f"freeze_layers/trainable_layers only apply to method='freeze', not {self.method!r}.")
        if self.freeze_layers is not None and self.trainable_layers is not None:
            bad("give freeze_layers (freeze the first N) or trainable_layers (train the last N), not both.")
        if self.momentum and self.optimizer != "sgd":
            bad(f"momentum={self.momentum} only applies to optimizer='sgd' (AdamW's momentum is betas[0]).")
        if self.min_lr_ratio and self.scheduler != "cosine":
            bad(f"min_lr_ratio only applies to scheduler='cosine', not {self.scheduler!r}.")
        if self.warmup_steps >= self.max_steps:
            bad(f"warmup_steps={self.warmup_steps} >= max_steps={self.max_steps}: the lr would never reach its peak.")
        if set(self.log_to) - set(LOG_TARGETS):
            bad(f"log_to={list(self.log_to)}: unknown target(s); choose from {', '.join(LOG_TARGETS)}.")

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step on one process (times the number of processes when distributed)."""
        return self.batch_size * self.grad_accum_steps

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def save(self, folder) -> None:
        """Write ``config.yaml`` and ``config.json`` into ``folder``."""
        import yaml

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        (folder / "config.json").write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_yaml(cls, path, **overrides) -> "RunConfig":
        """Read a YAML (or JSON) file; unknown keys are an error that names the file and the closest field."""
        import difflib

        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of {cls.__name__} fields at the top level.")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{path}: unknown {cls.__name__} field {key!r}.{hint}")
        try:
            return cls(**{**values, **overrides})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None


@dataclass
class TrainConfig(RunConfig):
    """Every setting of an ``ftlab.train`` run: :class:`RunConfig`'s plus the data and evaluation
    settings of supervised fine-tuning. Saved next to the run as ``config.yaml`` and ``config.json``.

    Example:
        >>> cfg = TrainConfig(method="full", lr=5e-5, max_steps=60)
        >>> cfg.effective_batch_size
        8
        >>> TrainConfig(method="full", use_dora=True)
        Traceback (most recent call last):
        ...
        ValueError: TrainConfig: use_dora=True only applies to LoRA (method 'lora' or 'qlora'), not method='full'. Fix: set method='lora' or use_dora=False.
    """

    # --- how the examples become batches
    batching: str = "pad"  # pad | group (length-grouped) | pack (see ftlab.data.batching)
    train_on: str = "assistant"  # assistant | last | all: which tokens are trained
    # token: every trained token of a step weighs the same (transformers' Trainer, TRL); example: every
    # example weighs the same (its mean token loss), so a one-word label counts as much as a 40-token answer
    loss_weighting: str = "token"
    shuffle: bool = True  # a new seeded order every epoch (False: the order given)
    compile: bool = False  # torch.compile the model (slow first step, faster after; GPU)
    # --- evaluation and early stopping
    eval_every: int = 0  # validate every N steps (0: only at the start and the end)
    eval_batches: int | None = None  # validate on at most N batches (None: all of eval_data)
    early_stopping_patience: int | None = None  # stop after N evaluations without a better val loss
    load_best_at_end: bool = False  # put the best checkpoint's weights back before the final save
    # --- only for `ftlab train --config run.yaml` (train() takes model and data as arguments)
    model: str | None = None  # a name for ftlab.load_model, e.g. smollm2-135m-instruct
    train_file: str | None = None  # training data file (any format ftlab.data.load_records reads)
    eval_file: str | None = None  # validation data file

    def _check(self):
        super()._check()
        for name, options in [("batching", STRATEGIES), ("train_on", ("assistant", "last", "all")),
                              ("loss_weighting", ("token", "example"))]:
            if getattr(self, name) not in options:
                self._bad(f"{name}={getattr(self, name)!r} is not one of {', '.join(options)}.")
        if self.loss_weighting == "example" and self.batching == "pack":
            self._bad("loss_weighting='example' needs one example per row, and batching='pack' puts several in a "
                      "row. Fix: batching='group' (length-grouped rows, nearly as little padding).")
        if self.early_stopping_patience is not None and self.eval_every < 1:
            self._bad("early_stopping_patience needs eval_every >= 1 (validation during training).")
        if self.load_best_at_end and self.eval_every < 1:
            self._bad("load_best_at_end needs eval_every >= 1 (otherwise there is no best checkpoint).")


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history`` has one dict per optimizer step (plus step 0, the
    validation before training): ``step, loss, lr, grad_norm, tokens_per_s, step_tokens,
    trained_tokens, peak_memory_mb, elapsed_s`` and, on evaluation steps, ``val_loss, val_ppl, val_token_acc``."""

    history: list
    model: torch.nn.Module
    tokenizer: object
    config: RunConfig  # a TrainConfig, or an AlignConfig for alignment runs
    output_dir: Path
    final_path: Path | None = None  # the adapter (LoRA/QLoRA) or the whole model (full/freeze)
    merged_path: Path | None = None  # LoRA merged into the base: a plain Hugging Face folder
    best_checkpoint: Path | None = None
    best_val_loss: float | None = None
    last_checkpoint: Path | None = None
    stopped_because: str = "max_steps"  # max_steps | early_stopping | interrupted | callback
    wall_time_s: float = 0.0

    @property
    def train_history(self) -> list:
        return [h for h in self.history if "loss" in h]

    @property
    def eval_history(self) -> list:
        return [h for h in self.history if "val_loss" in h]

    def chat(self, prompt, **kwargs) -> str:
        """Ask the trained model something (greedy, through the chat template): ``ftlab.chat``."""
        from ftlab.models import chat

        return chat(self.model, self.tokenizer, prompt, **kwargs)
