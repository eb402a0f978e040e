"""What a model is made of: its decoder layers, whether it carries adapters or 4-bit weights, and how
many of its parameters train."""

from __future__ import annotations

import logging
import sys

import torch
from torch import nn


# --------------------------------------------------------------------------- helpers


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (``model.model.layers`` for Llama-like models), through a peft wrapper too."""
    base = _base_model(model)
    inner = getattr(base, "model", None)
    for candidate in (getattr(inner, "layers", None), getattr(getattr(base, "transformer", None), "h", None)):
        if isinstance(candidate, nn.ModuleList):
            return candidate
    raise ValueError(
        f"Could not find the decoder layers of {type(base).__name__} (looked for .model.layers and .transformer.h). "
        "Fix: use method='lora' or 'full', which work for any architecture."
    )


def _final_norm(model: nn.Module) -> nn.Module | None:
    base = _base_model(model)
    norm = getattr(getattr(base, "model", None), "norm", None)  # Llama, Qwen, SmolLM, Mistral, ...
    return norm if norm is not None else getattr(getattr(base, "transformer", None), "ln_f", None)  # GPT-2 style


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under any peft wrapper."""
    return model.get_base_model() if is_peft_model(model) else model


# bitsandbytes warns on import (on CPUs with AVX512-BF16) that an optional kernel for its bf16 inference
# layout could not be downloaded. quantize_model_nf4 switches that layout off, so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _bnb():
    import bitsandbytes

    return bitsandbytes


def is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_quantized(model: nn.Module) -> bool:
    """True if any layer of the model holds 4-bit bitsandbytes weights."""
    if "bitsandbytes" not in sys.modules:  # nothing can be 4-bit before bitsandbytes was imported
        return False
    bnb = _bnb()
    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def num_virtual_tokens(model: nn.Module) -> int:
    """How many virtual tokens a prompt-tuned model puts before each input (0 for every other method).

    A prompt-tuned model returns logits of length ``num_virtual_tokens + seq_len``; a loop that
    computes its own loss from the logits must drop the first ``num_virtual_tokens`` positions.
    """
    if not is_peft_model(model):
        return 0
    config = model.peft_config[model.active_adapter]
    return int(getattr(config, "num_virtual_tokens", 0) or 0) if config.is_prompt_learning else 0


# --------------------------------------------------------------------------- counting


def _numel(p: torch.Tensor) -> int:
    """Logical number of weights; a packed 4-bit tensor stores two weights per byte."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    return p.numel()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of weights. Tied weights count once; 4-bit weights count as weights, not bytes.

    Example:
        >>> count_parameters(torch.nn.Linear(3, 2))
        (8, 8)
    """
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():  # .parameters() already yields a tied tensor only once
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = _numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def parameter_table(model: nn.Module, max_rows: int = 12) -> str:
    """A small text table: trainable share, then the trainable tensors grouped by kind.

    Example:
        >>> print(parameter_table(torch.nn.Linear(3, 2)))  # doctest: +NORMALIZE_WHITESPACE
        trainable 8 of 8 weights (100.000 %)
          weight   6  (1 tensors)
          bias     2  (1 tensors)
    """
    trainable, total = count_parameters(model)
    lines = [f"trainable {trainable:,} of {total:,} weights ({100 * trainable / max(total, 1):.3f} %)"]
    groups: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            # group "model.layers.3.self_attn.q_proj.lora_A.default.weight" under "q_proj.lora_A.weight"
            parts = [s for s in name.split(".") if not s.isdigit() and s not in ("default", "base_model", "model", "layers")]
            key = ".".join(parts[-3:]) if len(parts) >= 3 else ".".join(parts)
            g = groups.setdefault(key, [0, 0])
            g[0] += _numel(p)
            g[1] += 1
    width = max((len(k) for k in groups), default=0)
    for key, (n, count) in list(groups.items())[:max_rows]:
        lines.append(f"  {key:<{width}}  {n:,}  ({count} tensors)")
    if len(groups) > max_rows:
        lines.append(f"  ... {len(groups) - max_rows} more groups")
    return "\n".join(lines)
