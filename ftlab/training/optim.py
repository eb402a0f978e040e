"""Optimizers and learning-rate schedules: AdamW with proper parameter groups, SGD, 8-bit AdamW.

Two things here are easy to get subtly wrong, so this module spells them out:

1. **Which parameters get weight decay.** Weight decay pulls weights towards zero. That is a sensible
   prior for the big matrices, but not for biases (they shift, they don't scale) or for the gains of
   LayerNorm/RMSNorm (pulling a norm gain to zero shrinks the whole residual stream). We follow
   transformers' ``Trainer.get_decay_parameter_names`` exactly, so a run here and a Trainer run decay
   the same tensors: a parameter gets NO decay when it lives inside an ``nn.LayerNorm`` module, or
   when its lower-cased full name contains ``bias``, ``layernorm``, ``rmsnorm``, a path component
   that is exactly ``norm``, or a component ending in ``_norm`` (e.g. ``input_layernorm.weight``,
   ``post_attention_layernorm.weight``, ``model.norm.weight``). Embeddings *are* decayed, like in Trainer.

2. **The schedule.** ``build_scheduler`` returns a ``torch.optim.lr_scheduler.LambdaLR`` whose multiplier
   is computed with the same float operations, in the same order, as transformers'
   ``get_{constant,linear,cosine}_schedule_with_warmup`` and ``get_cosine_with_min_lr_schedule_with_warmup``,
   so the learning rates are bit-for-bit identical (tests/test_optim.py checks every step).
   ``lr_at`` is the same formula as a plain function, for plots and sliders.

Step convention (same as Hugging Face): the scheduler is stepped once after every optimizer step, so the
*k*-th update (k = 0, 1, ...) uses ``lr_at(k)``. With warmup, update 0 therefore uses lr = 0.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    >>> opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    >>> [len(g["params"]) for g in opt.param_groups], [g["weight_decay"] for g in opt.param_groups]
    ([1, 3], [0.1, 0.0])
    >>> sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=10)
    >>> [round(lr_at(s, 1e-3, "cosine", 2, 10), 6) for s in (0, 1, 2, 10)]
    [0.0, 0.0005, 0.001, 0.0]
"""

from __future__ import annotations

import math
import re
from functools import partial

import torch
from torch import nn

OPTIMIZERS = ("adamw", "sgd", "adamw_8bit")
SCHEDULES = ("constant", "linear", "cosine")

# Name patterns that mean "no weight decay" (lower-cased full parameter name); identical to transformers'
# Trainer.get_decay_parameter_names, so that ftlab and Trainer decay exactly the same tensors.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
# Module types whose parameters never get decay (Trainer uses transformers.pytorch_utils.ALL_LAYERNORM_LAYERS).
NO_DECAY_MODULES = (nn.LayerNorm,)


# --------------------------------------------------------------------------- parameter groups


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that receive weight decay (same rule and result as transformers' Trainer).

    Walks the module tree like ``transformers.trainer_pt_utils.get_parameter_names``: a parameter is
    excluded if any module on its path is a LayerNorm, or if its name matches ``NO_DECAY_PATTERNS``.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> decay_parameter_names(m)
        ['0.weight']
    """
    patterns = [re.compile(p) for p in NO_DECAY_PATTERNS]

    def walk(module: nn.Module) -> list[str]:
        names = []
        for child_name, child in module.named_children():
            if isinstance(child, NO_DECAY_MODULES):
                continue
            names += [f"{child_name}.{n}" for n in walk(child)]
        names += list(module._parameters)
        return names

    return [n for n in walk(model) if not any(p.search(n.lower()) for p in patterns)]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups over the *trainable* parameters: ``[with decay, without decay]``.

    Frozen parameters (``requires_grad=False``: the base model under LoRA, frozen layers) are left
    out, so the optimizer keeps no state for them. Parameter order follows ``model.named_parameters()``.
    """
    decay = set(decay_parameter_names(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            "build_optimizer: the model has no trainable parameters (every requires_grad is False). "
            "Fix: call ftlab.prepare_model(model, method=...) or unfreeze some parameters first."
        )
    return [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------- optimizers


def _fused_ok(params) -> bool:
    """torch's fused AdamW kernel exists for floating tensors on CPU and CUDA; use it there (as Trainer does)."""
    return all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The optimizer for the trainable parameters of ``model``.

    Args:
        model: the (possibly peft-wrapped) model; only parameters with ``requires_grad`` are optimised.
        name: ``"adamw"`` (torch AdamW, the default for fine-tuning), ``"sgd"`` (plain or with
            ``momentum``; for teaching what Adam adds), ``"adamw_8bit"`` (bitsandbytes' 8-bit AdamW:
            optimizer state in 8 bits, ~75 % less optimizer memory; CUDA only).
        lr: peak learning rate (the scheduler multiplies it).
        weight_decay: decoupled weight decay for matrices and embeddings; biases and norms get 0.
        betas, eps: AdamW's moment decay rates and denominator guard (torch / HF defaults).
        momentum: SGD momentum (0 = plain SGD).
        fused: use torch's fused AdamW kernel; default ``None`` = when every parameter supports it,
            which is what transformers' default ``adamw_torch_fused`` does. The result is the same
            algorithm; fused just does the per-tensor updates in one kernel.

    Example:
        >>> m = torch.nn.Linear(3, 3)
        >>> type(build_optimizer(m, "sgd", lr=0.1, momentum=0.9)).__name__
        'SGD'
    """
    name = name.lower().replace("-", "_")
    groups = param_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    if name == "adamw":
        if fused is None:
            fused = _fused_ok(params)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw_8bit":
        if not all(p.device.type == "cuda" for p in params):
            devices = sorted({p.device.type for p in params})
            raise RuntimeError(
                f"build_optimizer: 'adamw_8bit' needs the model on a CUDA GPU, but its trainable parameters are on "
                f"{devices}. bitsandbytes' 8-bit optimizers have no CPU kernels. Fix: use name='adamw' on CPU "
                "(the memory it saves matters on a GPU, not here)."
            )
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"build_optimizer: unknown optimizer {name!r}. Choose one of: {', '.join(OPTIMIZERS)}.")


# --------------------------------------------------------------------------- schedules


def lr_multiplier(
    step: int,
    name: str = "cosine",
    warmup_steps: int = 0,
    total_steps: int = 1,
    min_lr_ratio: float = 0.0,
) -> float:
    """The factor the peak learning rate is multiplied by at optimizer step ``step`` (0-based).

    The arithmetic mirrors transformers' lambdas operation by operation (that is why it looks fussy:
    ``float(max(1, ...))`` and the final ``max``), so that results are identical, not just close.

    * warmup (all schedules): ``step / warmup_steps`` for ``step < warmup_steps`` (0 at step 0).
    * constant: 1 after warmup.
    * linear: falls linearly from 1 at the end of warmup to 0 at ``total_steps``.
    * cosine: half a cosine from 1 to ``min_lr_ratio`` (0 by default) at ``total_steps``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}. Choose one of: {', '.join(SCHEDULES)}.")
    if name == "constant":
        if step < warmup_steps:
            return float(step) / float(max(1.0, warmup_steps))
        return 1.0
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if name == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    # cosine; num_cycles = 0.5 (half a wave), written out as HF writes it
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(0.5) * 2.0 * progress))
    if min_lr_ratio:
        # HF's min-lr form: rescale [0, 1] to [min_lr_ratio, 1]
        factor = factor * (1 - min_lr_ratio) + min_lr_ratio
    return max(0.0, factor)


def lr_at(
    step: int,
    lr: float,
    name: str = "cosine",
    warmup_steps: int = 0,
    total_steps: int = 1,
    min_lr_ratio: float = 0.0,
) -> float:
    """The learning rate at optimizer step ``step`` for peak ``lr`` (what the scheduler sets, exactly).

    Example:
        >>> [lr_at(s, 1.0, "linear", warmup_steps=2, total_steps=6) for s in range(7)]
        [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    # LambdaLR computes base_lr * lambda(step); same order here, so the floats agree.
    return lr * lr_multiplier(step, name, warmup_steps, total_steps, min_lr_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "cosine",
    warmup_steps: int = 0,
    total_steps: int = 1,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with warmup then constant / linear / cosine decay (optional floor for cosine).

    Call ``scheduler.step()`` once after each ``optimizer.step()``. The scheduler is a standard torch
    object, so ``state_dict()`` / ``load_state_dict()`` work for checkpoints.

    Args:
        name: ``"constant"``, ``"linear"`` or ``"cosine"``.
        warmup_steps: optimizer steps of linear warmup from 0 to the peak lr.
        total_steps: optimizer steps of the whole run (the decay reaches its end here).
        min_lr_ratio: cosine only: the lr floor as a fraction of the peak (HF's ``min_lr_rate``).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> sched = build_scheduler(opt, "constant", warmup_steps=0, total_steps=5)
        >>> opt.param_groups[0]["lr"]
        0.1
    """
    if name not in SCHEDULES:
        raise ValueError(f"build_scheduler: unknown schedule {name!r}. Choose one of: {', '.join(SCHEDULES)}.")
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"build_scheduler: need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}.")
    if min_lr_ratio and name != "cosine":
        raise ValueError(f"build_scheduler: min_lr_ratio only applies to the cosine schedule, not {name!r}.")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"build_scheduler: min_lr_ratio must be in [0, 1], got {min_lr_ratio}.")
    fn = partial(lr_multiplier, name=name, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
