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

**QLoRA on a CPU.** transformers' ``BitsAndBytesConfig`` loading path refuses to run without a GPU,
but bitsandbytes' ``Linear4bit`` layer itself quantises and runs forward and backward on CPU. So
:func:`quantize_model_nf4` does the quantisation by hand: it swaps every ``nn.Linear`` inside the
decoder for a ``bnb.nn.Linear4bit`` holding the same weights in NF4 (4-bit NormalFloat) with double
quantisation (the per-block scales are themselves quantised to 8 bits). The embeddings, norms and
the output head stay in full precision, as in the QLoRA paper and in transformers' own integration.
The same function works on CUDA. On a GPU you can also use the standard route,
:func:`load_model_4bit`, which loads straight into 4 bits through ``BitsAndBytesConfig``.

Example:
    >>> from ftlab import load_model
    >>> model, tok = load_model("tiny")
    >>> model = prepare_model(model, "lora", lora_rank=4)
    >>> trainable, total = count_parameters(model)
    >>> trainable < total
    True
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

METHODS = ("full", "freeze", "lora", "dora", "qlora", "ia3", "prompt_tuning")
ADAPTER_METHODS = ("lora", "dora", "qlora", "ia3", "prompt_tuning")
_META_FILE = "ftlab_adapter.json"  # written next to a saved adapter: how to rebuild its base


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


# --------------------------------------------------------------------------- quantisation


def quantize_model_nf4(
    model: nn.Module,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    quant_type: str = "nf4",
    skip_modules: tuple[str, ...] = ("lm_head",),
) -> nn.Module:
    """Replace the model's ``nn.Linear`` layers by bitsandbytes ``Linear4bit`` layers, in place. Works on CPU.

    Each weight matrix is cut into blocks of 64 values; each block is stored as 4-bit codes of the
    NF4 grid (16 levels placed at quantiles of a normal distribution, which fits trained weights)
    plus one absmax scale. ``double_quant=True`` also quantises those scales to 8 bits, saving about
    0.4 bit per weight. In the forward pass the weight is de-quantised to ``compute_dtype`` and used
    in an ordinary matmul: storage is 4-bit, arithmetic is not.

    Args:
        model: a transformers causal LM (not yet peft-wrapped).
        double_quant: quantise the quantisation constants too (QLoRA's "double quantisation").
        compute_dtype: dtype of the de-quantised weights in the matmul; default = the model's dtype
            (fp32 on CPU, bf16 on a GPU).
        quant_type: ``"nf4"`` (QLoRA) or ``"fp4"``.
        skip_modules: names (last path component) of Linear layers left in full precision.

    Returns:
        the same model object, now with ``model.is_loaded_in_4bit = True`` (peft reads this flag to
        wrap the 4-bit layers with its bitsandbytes LoRA layer).

    Example:
        >>> from ftlab import load_model
        >>> model, _ = load_model("tiny")
        >>> model = quantize_model_nf4(model)
        >>> type(model.model.layers[0].mlp.up_proj).__name__
        'Linear4bit'
    """
    bnb = _bnb()
    if is_peft_model(model):
        raise ValueError("quantize_model_nf4: quantise the base model first, then add adapters (prepare_model(..., 'qlora') does both).")
    if compute_dtype is None:
        compute_dtype = next(model.parameters()).dtype
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and name.split(".")[-1] not in skip_modules
    ]
    if not targets:
        raise ValueError("quantize_model_nf4: the model has no nn.Linear layers to quantise (already quantised?).")
    for name, linear in targets:
        device = linear.weight.device
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            device="meta",  # no throw-away allocation; the real weight is set just below
        )
        q.weight = bnb.nn.Params4bit(
            linear.weight.data.to(compute_dtype).cpu() if device.type == "meta" else linear.weight.data.to(compute_dtype),
            requires_grad=False,
            compress_statistics=double_quant,
            quant_type=quant_type,
        )
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
        # On CPUs with AVX512-BF16, bitsandbytes re-packs a 4-bit weight in place the first time the layer
        # runs in eval mode without grad, into a bf16 inference-only layout. After that, a training step
        # goes through a kernel without a backward pass and the gradients reaching earlier LoRA layers
        # are wrong. We fine-tune, so we keep the one layout that trains correctly.
        q.support_avx512bf16_for_cpu = False
        # Params4bit quantises itself when moved to a device: this .to() is the quantisation step.
        q = q.to(device)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, q)
    model.is_loaded_in_4bit = True
    model.ftlab_quantization = {"quant_type": quant_type, "double_quant": double_quant, "compute_dtype": str(compute_dtype).replace("torch.", "")}
    return model


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every ``Linear4bit`` by a plain ``nn.Linear`` holding its de-quantised weights, in place.

    The result computes exactly what the 4-bit model computed (the forward pass de-quantises the same
    way), in the dtype given when quantising. Used before merging QLoRA adapters.
    """
    bnb = _bnb()
    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):  # see quantize_model_nf4
                from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, module.weight.quant_state)
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(module.compute_dtype)
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            linear.weight = nn.Parameter(weight, requires_grad=False)
            if module.bias is not None:
                linear.bias = nn.Parameter(module.bias.data.to(module.compute_dtype), requires_grad=False)
            parent_name, _, child_name = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child_name, linear)
    for attr in ("is_loaded_in_4bit", "ftlab_quantization"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model


def load_model_4bit(name: str, compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True):
    """The standard CUDA route: load a model straight into NF4 through transformers' ``BitsAndBytesConfig``.

    This never materialises the full-precision weights, so it fits models that ``load_model`` +
    :func:`quantize_model_nf4` could not. It needs a CUDA GPU (transformers refuses otherwise); on a
    CPU use ``prepare_model(model, "qlora")``. Pass the result to ``prepare_model(model, "qlora")``,
    which sees that it is already quantised and only adds the adapters.

    Example:
        >>> model, tok = load_model_4bit("smollm2-1.7b-instruct")      # doctest: +SKIP
        >>> model = prepare_model(model, "qlora", lora_rank=16)         # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ftlab.models import MODEL_ALIASES, SMOLLM2, _ensure_cache, _fix_special_tokens, load_tokenizer

    if not torch.cuda.is_available():
        raise RuntimeError(
            "load_model_4bit needs a CUDA GPU (transformers' BitsAndBytesConfig path does not run on CPU). "
            "Fix: on a CPU use ftlab.load_model(name) and then prepare_model(model, 'qlora'), which quantises by hand."
        )
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    source = str(_ensure_cache()) if name == SMOLLM2 else MODEL_ALIASES.get(name, name)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=config, dtype=compute_dtype, device_map={"": 0})
    tokenizer = load_tokenizer(name)
    _fix_special_tokens(model, tokenizer)
    model.ftlab_label = f"{name} (NF4)"
    return model, tokenizer


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
        n = len(decoder_layers(model))
        if freeze_layers is not None and trainable_layers is not None:
            raise ValueError("prepare_model(method='freeze'): give freeze_layers or trainable_layers, not both.")
        if freeze_layers is not None:
            trainable_layers = n - freeze_layers
        elif trainable_layers is None:
            trainable_layers = max(1, n // 4)
        model = _freeze_all_but_last(model, trainable_layers)
    else:
        model = _add_adapters(
            model, method, lora_rank, lora_alpha, lora_dropout, target_modules, use_dora,
            num_virtual_tokens, prompt_init_text, tokenizer, double_quant, compute_dtype, peft_kwargs,
        )
    model.ftlab_method = label
    return model


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
