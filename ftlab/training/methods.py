"""Which weights a fine-tuning run changes: full, LoRA, DoRA, QLoRA, layer freezing, IA3, prompt tuning.

Every method is one call that takes a loaded model and returns the model to train:

==================  ==========================================================================
method              what is trained
==================  ==========================================================================
``full``            every weight (the baseline: best quality per step, most memory)
``freeze``          only the last N decoder layers and the final norm; the rest is frozen
``lora``            small low-rank matrices A, B beside chosen Linear layers: W + (alpha/r)·B·A
``dora``            LoRA plus a learned per-output-channel magnitude (``use_dora=True``)
``qlora``           LoRA on top of a base whose Linear weights are stored in 4-bit NF4
``ia3``             one learned scaling vector per targeted activation (fewest parameters)
``prompt_tuning``   N "virtual token" embeddings put in front of every input; model frozen
==================  ==========================================================================

LoRA, DoRA, IA3 and prompt tuning come from peft; QLoRA's quantisation comes from bitsandbytes.

**QLoRA on a CPU.** ``training/quantize.py`` quantises a model to NF4 by hand, so QLoRA runs on a
CPU too; saving, loading and merging adapters live in ``training/adapters.py``.

Example:
    >>> from ftlab import load_model
    >>> model, tok = load_model("tiny")
    >>> model = prepare_model(model, "lora", lora_rank=4)
    >>> trainable, total = count_parameters(model)
    >>> trainable < total
    True
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ftlab.training.parameters import _final_norm, decoder_layers, is_peft_model, is_quantized
from ftlab.training.quantize import quantize_model_nf4

METHODS = ("full", "freeze", "lora", "dora", "qlora", "ia3", "prompt_tuning")
ADAPTER_METHODS = ("lora", "dora", "qlora", "ia3", "prompt_tuning")


# --------------------------------------------------------------------------- preparing a model


def _freeze_all_but_last(model: nn.Module, trainable_layers: int) -> nn.Module:
    layers = decoder_layers(model)
    n = len(layers)
    if not 1 <= trainable_layers <= n:
        raise ValueError(f"prepare_model(method='freeze'): trainable_layers={trainable_layers}, but the model has {n} decoder layers. Fix: pick 1..{n}.")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in layers[n - trainable_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    norm = _final_norm(model)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    return model


def prepare_model(
    model: nn.Module,
    method: str = "full",
    lora_rank: int = 16,
    lora_alpha: float = 32,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    use_dora: bool = False,
    freeze_layers: int | None = None,
    trainable_layers: int | None = None,
    num_virtual_tokens: int = 16,
    prompt_init_text: str | None = None,
    tokenizer=None,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    **peft_kwargs,
) -> nn.Module:
    """Set up ``model`` for one fine-tuning method and return the model to train.

    Args:
        method: one of ``METHODS`` (see the module docstring).
        lora_rank, lora_alpha, lora_dropout: LoRA's r, scaling numerator (update scaled by alpha/r)
            and dropout on the adapter input. Also used by ``dora`` and ``qlora``.
        target_modules: which Linear layers get adapters: ``"all-linear"`` (every Linear in the
            decoder, not the output head; the QLoRA paper's advice) or names like ``["q_proj", "v_proj"]``.
            For ``ia3`` the default is peft's per-architecture choice (keys, values, MLP down projection).
        use_dora: DoRA switch for ``lora``/``qlora`` (``method="dora"`` is the same as ``lora`` + this).
        freeze_layers / trainable_layers (``method="freeze"``): freeze the first ``freeze_layers``
            decoder layers, or train only the last ``trainable_layers``; give one (default: train the
            last quarter, at least one). The final norm is trained too; embeddings and the output
            head (tied to the embeddings in SmolLM2) stay frozen.
        num_virtual_tokens, prompt_init_text, tokenizer: prompt tuning: how many virtual tokens, and
            optionally a text whose token embeddings initialise them (needs ``tokenizer``). Prompt
            tuning cannot be combined with packed batches: peft drops ``position_ids`` for it, and
            without them packed examples would attend to each other.
        double_quant, compute_dtype: QLoRA's quantisation (see :func:`quantize_model_nf4`).
        **peft_kwargs: passed to peft's config (e.g. ``modules_to_save=["lm_head"]``, ``init_lora_weights``).

    Returns:
        the model to train: the same object for ``full``/``freeze``, a ``peft.PeftModel`` otherwise.
        ``model.ftlab_method`` records the method.

    Example:
        >>> from ftlab import load_model
        >>> model, tok = load_model("tiny")
        >>> model = prepare_model(model, "freeze", trainable_layers=1)
        >>> model.model.layers[0].self_attn.q_proj.weight.requires_grad, model.model.layers[1].self_attn.q_proj.weight.requires_grad
        (False, True)
    """
    method = method.lower().replace("-", "_")
    if method not in METHODS:
        raise ValueError(f"prepare_model: unknown method {method!r}. Choose one of: {', '.join(METHODS)}.")
    if is_peft_model(model):
        raise ValueError(
            "prepare_model: this model already has adapters (it is a peft model). "
            "Fix: load a fresh base model, or call model.merge_and_unload() first."
        )
    if method == "dora":
        method, use_dora = "lora", True
        label = "dora"
    else:
        label = "qlora+dora" if (method == "qlora" and use_dora) else ("dora" if (method == "lora" and use_dora) else method)

    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "freeze":
        model = _freeze_all_but_last(model, _trainable_layer_count(model, freeze_layers, trainable_layers))
    else:
        model = _add_adapters(
            model, method, lora_rank, lora_alpha, lora_dropout, target_modules, use_dora,
            num_virtual_tokens, prompt_init_text, tokenizer, double_quant, compute_dtype, peft_kwargs,
        )
    model.ftlab_method = label
    return model


def _trainable_layer_count(model, freeze_layers, trainable_layers) -> int:
    """How many of the last decoder layers ``method="freeze"`` trains (default: a quarter, at least one)."""
    n = len(decoder_layers(model))
    if freeze_layers is not None and trainable_layers is not None:
        raise ValueError("prepare_model(method='freeze'): give freeze_layers or trainable_layers, not both.")
    if freeze_layers is not None:
        return n - freeze_layers
    return trainable_layers if trainable_layers is not None else max(1, n // 4)


def _add_adapters(model, method, rank, alpha, dropout, target_modules, use_dora, n_virtual, init_text, tokenizer,
                  double_quant, compute_dtype, peft_kwargs):
    from peft import IA3Config, LoraConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    if method == "qlora" and not is_quantized(model):
        model = quantize_model_nf4(model, double_quant=double_quant, compute_dtype=compute_dtype)
    elif method == "qlora" and getattr(model, "hf_quantizer", None) is not None:
        # Loaded in 4 bits by transformers (load_model_4bit, CUDA): the QLoRA recipe keeps the few
        # remaining 16-bit weights (norms, embeddings) in fp32 for stable training. (GPU path; the CPU
        # path above already runs in fp32.)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if method in ("lora", "qlora"):
        if rank < 1:
            raise ValueError(f"prepare_model: lora_rank must be >= 1, got {rank}.")
        config = LoraConfig(
            task_type="CAUSAL_LM", r=rank, lora_alpha=alpha, lora_dropout=dropout,
            target_modules=target_modules, use_dora=use_dora, **peft_kwargs,
        )
    elif method == "ia3":
        targets = None if target_modules == "all-linear" else target_modules
        config = IA3Config(task_type="CAUSAL_LM", target_modules=targets, **peft_kwargs)
        if targets is not None and "feedforward_modules" not in peft_kwargs:
            # IA3 scales the *input* of feed-forward layers and the *output* of the others
            config.feedforward_modules = [t for t in targets if any(k in t for k in ("down_proj", "fc2", "w2"))]
    else:  # prompt_tuning
        if init_text is not None:
            if tokenizer is None:
                raise ValueError("prepare_model(method='prompt_tuning'): prompt_init_text needs tokenizer=... as well.")
            config = PromptTuningConfig(
                task_type="CAUSAL_LM", num_virtual_tokens=n_virtual, prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=init_text, tokenizer_name_or_path=tokenizer.name_or_path, **peft_kwargs,
            )
        else:
            config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n_virtual, **peft_kwargs)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 method that is deprecated: not our concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
