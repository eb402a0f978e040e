"""QLoRA's storage format by hand: NF4 quantisation of a model's Linear layers, on a CPU or a GPU.

transformers' ``BitsAndBytesConfig`` loading path refuses to run without a GPU, but bitsandbytes'
``Linear4bit`` layer itself quantises and runs forward and backward on CPU. So
:func:`quantize_model_nf4` does the quantisation by hand: it swaps every ``nn.Linear`` inside the
decoder for a ``bnb.nn.Linear4bit`` holding the same weights in NF4 (4-bit NormalFloat) with double
quantisation (the per-block scales are themselves quantised to 8 bits). The embeddings, norms and
the output head stay in full precision, as in the QLoRA paper and in transformers' own integration.
The same function works on CUDA. On a GPU you can also use the standard route,
:func:`load_model_4bit`, which loads straight into 4 bits through ``BitsAndBytesConfig``.
"""

from __future__ import annotations

import torch
from torch import nn

from ftlab.training.parameters import _bnb, is_peft_model

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
