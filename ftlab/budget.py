"""Memory budgets: one participant's run must not take a shared machine down.

In a workshop the hub gives every participant a budget, ``FTLAB_MEMORY_BUDGET_GIB``. Before
``ftlab.train``, ``evaluate_model`` and ``generate_answers`` start, they call :func:`check_training`
or :func:`check_generation`: the estimator predicts the peak of the run (``ftlab.memory``), and if

    what this process already holds + what the run adds  >  the budget

the run is refused with a :class:`BudgetExceeded` that names the budget, the estimate and what to
change. No budget set (self-paced learners) means no check at all.

"Already holds" is measured, not estimated: the process's resident memory on a CPU (libraries,
other models a notebook keeps), ``torch.cuda.memory_allocated`` on a GPU. The model's own weights
are part of both that figure and the estimate, so they are counted once.

Enforcement, beyond the check:

* **CUDA**: :func:`apply_budget` calls ``torch.cuda.set_per_process_memory_fraction`` so the CUDA
  caching allocator raises ``OutOfMemoryError`` in this kernel alone when it would pass the budget
  (the DGX Spark cannot partition its GPU, so this is the only fence there is).
* **CPU**: the check is advisory. The hard fence is the process memory limit the hub's spawner sets
  (``RLIMIT_AS``, see ``workshop/jupyterhub_config.py``); :func:`process_limit_gib` reads it so the
  refusal message can name it.

Example:
    >>> import os; os.environ.pop(ENV_VAR, None) and None
    >>> budget_gib() is None
    True
"""

from __future__ import annotations

import os
import resource

ENV_VAR = "FTLAB_MEMORY_BUDGET_GIB"
GiB = 2**30


class BudgetExceeded(MemoryError):
    """A run's estimated peak is larger than this participant's memory budget."""


def budget_gib() -> float | None:
    """The budget from ``$FTLAB_MEMORY_BUDGET_GIB`` in GiB, or None when no budget is set."""
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${ENV_VAR}={raw!r} is not a number. Fix: set it to GiB, e.g. {ENV_VAR}=8, "
                         "or unset it for no budget.") from None
    if not value > 0:
        raise ValueError(f"${ENV_VAR}={raw!r} must be > 0 GiB. Fix: a positive number, or unset it for no budget.")
    return value


def process_limit_gib() -> float | None:
    """This process's address-space limit (``RLIMIT_AS``) in GiB, or None when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft / GiB


def resident_bytes() -> int:
    """Resident memory of this process now (``/proc/self/statm``; 0 where /proc does not exist)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


_applied: dict = {}


def apply_budget(device) -> None:
    """On CUDA, make the allocator enforce the budget (once per device); nothing elsewhere."""
    import torch

    budget = budget_gib()
    if budget is None or getattr(device, "type", str(device)) != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, budget * GiB / total)
    if _applied.get(index) != fraction:
        torch.cuda.set_per_process_memory_fraction(fraction, index)
        _applied[index] = fraction


def _held_bytes(model) -> tuple[int, int]:
    """(bytes this process holds now, bytes of the model's weights among them) on the model's device."""
    import torch

    params = list(model.parameters())
    device = params[0].device
    weights = sum(p.numel() * p.element_size() for p in params if p.device == device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), weights
    return resident_bytes(), weights


def _verdict(what: str, estimate, model, fixes: list[str]):
    """Compare held + estimate - weights with the budget; raise BudgetExceeded with the fixes."""
    budget = budget_gib()
    if budget is None:
        return None
    device = next(model.parameters()).device
    apply_budget(device)
    held, weights = _held_bytes(model)
    need = held - weights + estimate.total_bytes
    if need <= budget * GiB:
        return need
    limit = process_limit_gib()
    hard = (f" The process limit the hub set is {limit:.1f} GiB: past it this kernel fails alone."
            if limit and device.type == "cpu" else "")
    raise BudgetExceeded(
        f"{what} needs about {need / GiB:.2f} GiB but your memory budget is {budget:g} GiB "
        f"(${ENV_VAR}, set by the workshop hub): {estimate.total_bytes / GiB:.2f} GiB estimated for the run "
        f"(peak during {estimate.peak_phase}) + {(held - weights) / GiB:.2f} GiB this kernel already holds.{hard}\n"
        "Fix, any of: " + "; ".join(fixes) + ".\n"
        "Freeing models you no longer need (del model; gc.collect()) or restarting the kernel also helps; "
        "`ftlab estimate --advise` shows what each change saves.")


def check_training(model, config, examples) -> int | None:
    """Refuse a training run that does not fit the budget; returns the bytes needed (None: no budget).

    ``examples``: the tokenised training examples, so the sequence length and trained tokens are
    those of the longest batch the run can draw, not a guess.
    """
    if budget_gib() is None:
        return None
    from ftlab.memory import estimate_memory

    estimate = estimate_memory(model, **training_settings(model, config, examples))
    fixes = [f"a smaller batch_size (now {config.batch_size}) with grad_accum_steps to keep the effective batch",
             f"a shorter max_length (now {config.max_length})"]
    if not config.gradient_checkpointing:
        fixes.append("gradient_checkpointing=True")
    if config.method == "full":
        fixes.append("method='lora' (or 'qlora' on CUDA)")
    return _verdict(f"Training ({config.method}, batch {config.batch_size} x {config.max_length} tokens)",
                    estimate, model, fixes)


def training_settings(model, config, examples) -> dict:
    """``estimate_memory`` keyword arguments for ``train(model, ..., config)`` on these examples."""
    import torch

    from ftlab.memory.settings import estimator_settings

    param = next(model.parameters())
    seq_len, trained_tokens = longest_batch(examples, config.batch_size, config.max_length)
    if config.batching == "pack":
        seq_len = config.max_length
    return estimator_settings(
        config.method, config.batch_size, seq_len,
        param_dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(param.dtype, "fp32"),
        device=param.device.type, mixed_precision=config.mixed_precision, optimizer=config.optimizer,
        gradient_checkpointing=config.gradient_checkpointing, lora_rank=config.lora_rank,
        lora_dropout=config.lora_dropout, trainable_layers=config.trainable_layers,
        trained_tokens=trained_tokens if config.trained_logits_only else None)


def longest_batch(examples, batch_size: int, max_length: int) -> tuple[int, int]:
    """(padded length, trained tokens) of the largest micro-batch these examples can make: the upper bound
    of what one step holds, whatever the order (longest example; the ``batch_size`` most trained tokens)."""
    seq_len = min(max_length, max(len(e["input_ids"]) for e in examples))
    trained = sorted((sum(1 for t in e["labels"][:max_length] if t != -100) for e in examples), reverse=True)
    return seq_len, max(1, min(sum(trained[:batch_size]), batch_size * seq_len))


def check_generation(model, batch_size: int, prompt_tokens: int, max_new_tokens: int) -> int | None:
    """Refuse generation that does not fit the budget; returns the bytes needed (None: no budget)."""
    if budget_gib() is None:
        return None
    import torch

    from ftlab.memory import estimate_inference_memory

    param = next(model.parameters())
    estimate = estimate_inference_memory(
        model, batch_size=batch_size, context_len=prompt_tokens + max_new_tokens,
        param_dtype={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(param.dtype, "fp32"),
        device=param.device.type)
    fixes = [f"a smaller batch_size (now {batch_size})", f"fewer max_new_tokens (now {max_new_tokens})",
             "shorter prompts"]
    return _verdict(f"Generation (batch {batch_size}, up to {prompt_tokens + max_new_tokens} tokens)",
                    estimate, model, fixes)
