"""Saving, loading and merging adapters: what leaves the training run.

An adapter is saved with peft's files plus ``ftlab_adapter.json`` (how to rebuild its base), written
atomically. Merging folds LoRA's ``(alpha/r)·B·A`` into the base weights, giving a standard
transformers model that needs no peft at inference time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ftlab.training.parameters import is_peft_model, is_quantized
from ftlab.training.quantize import dequantize_model, quantize_model_nf4

_META_FILE = "ftlab_adapter.json"  # written next to a saved adapter: how to rebuild its base

# --------------------------------------------------------------------------- saving


def _atomic_dir(path: Path):
    """A temporary folder next to ``path``; call the returned function to move it into place."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def commit():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)

    return tmp, commit


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save only the adapter weights and config (a few MB) into ``path``; the base model is not copied.

    For QLoRA a small ``ftlab_adapter.json`` records the quantisation, so :func:`load_adapter` can
    rebuild the same 4-bit base before loading the adapter.

    Example:
        >>> save_adapter(model, "runs/lora-adapter")      # doctest: +SKIP
    """
    if not is_peft_model(model):
        raise ValueError(
            "save_adapter: this model has no adapters (method 'full' or 'freeze'). "
            "Fix: save the whole model with model.save_pretrained(path), or use merge_and_save()."
        )
    path = Path(path)
    tmp, commit = _atomic_dir(path)
    model.save_pretrained(tmp)
    base = model.get_base_model()
    meta = {"method": getattr(model, "ftlab_method", None), "quantization": getattr(base, "ftlab_quantization", None),
            "base_model": getattr(base.config, "_name_or_path", None)}
    (tmp / _META_FILE).write_text(json.dumps(meta, indent=2))
    commit()
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike, is_trainable: bool = False) -> nn.Module:
    """Put a saved adapter on a freshly loaded base model (quantising it first if the adapter is a QLoRA one).

    Example:
        >>> base, tok = load_model("smollm2-135m-instruct")      # doctest: +SKIP
        >>> model = load_adapter(base, "runs/lora-adapter")       # doctest: +SKIP
    """
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"load_adapter: {path} has no adapter_config.json. Fix: pass the folder written by save_adapter().")
    meta = json.loads((path / _META_FILE).read_text()) if (path / _META_FILE).exists() else {}
    quant = meta.get("quantization")
    if quant and not is_quantized(model):
        quantize_model_nf4(model, double_quant=quant["double_quant"], compute_dtype=getattr(torch, quant["compute_dtype"]),
                           quant_type=quant["quant_type"])
    peft_model = PeftModel.from_pretrained(model, path, is_trainable=is_trainable)
    if meta.get("method"):
        peft_model.ftlab_method = meta["method"]
    return peft_model


def merge_adapters(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """A plain transformers model with the adapters folded into its weights (W <- W + scale·B·A).

    The merged model computes the same function without the adapter layers, so it runs as fast as
    the base model and any tool that loads Hugging Face models can use it. A QLoRA model is first
    de-quantised (to its compute dtype) and the adapter is merged into those weights: merging into
    4-bit weights would round the small LoRA update away.

    Args:
        copy_model: work on a deep copy, so ``model`` (and its adapters) stays usable. Pass ``False``
            to save memory with big models; ``model`` must not be used afterwards.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    if not is_peft_model(model):
        return copy.deepcopy(model) if copy_model else model
    config = model.peft_config[model.active_adapter]
    if config.is_prompt_learning:
        raise ValueError(
            "merge_adapters: prompt tuning adds virtual tokens, not weight updates, so there is nothing to merge. "
            "Fix: keep it as an adapter with save_adapter(model, path)."
        )
    if copy_model:
        model = copy.deepcopy(model)
    if is_quantized(model):
        # Take the adapter weights out, restore the 4-bit base, de-quantise it, put the adapters back, merge.
        state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        base = model.unload()
        dequantize_model(base)
        config = copy.deepcopy(config)
        config.inference_mode = False
        model = get_peft_model(base, config)
        set_peft_model_state_dict(model, state)
    merged = model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged


def merge_and_save(model: nn.Module, tokenizer, path: str | os.PathLike, copy_model: bool = True) -> Path:
    """Merge adapters (if any) into the base and save a standard Hugging Face folder at ``path``.

    ``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` then
    load it like any other model; no peft or ftlab needed. The folder is written next to ``path``
    and renamed into place when complete, so an interrupted save never leaves half a model.
    Works for ``full`` and ``freeze`` too (then it is just a save).

    Example:
        >>> merge_and_save(model, tok, "runs/merged")                        # doctest: +SKIP
        >>> AutoModelForCausalLM.from_pretrained("runs/merged")               # doctest: +SKIP
    """
    merged = merge_adapters(model, copy_model=copy_model)
    if is_quantized(merged):  # a 'full' model that was quantised by hand: save it de-quantised
        dequantize_model(merged)
    for attr in ("is_loaded_in_4bit", "ftlab_quantization", "hf_quantizer"):
        if attr in merged.__dict__:
            delattr(merged, attr)
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    path = Path(path)
    tmp, commit = _atomic_dir(path)
    merged.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    commit()
    return path
