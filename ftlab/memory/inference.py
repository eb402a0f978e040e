"""Serving memory: the weights plus the KV cache."""

from __future__ import annotations

from ftlab.memory.architectures import get_architecture
from ftlab.memory.breakdown import MemoryEstimate, MemoryItem, _fmt, cuda_overhead_items
from ftlab.memory.hardware import _target
from ftlab.memory.state import nf4_constant_bytes
from ftlab.memory.step import DTYPE_BYTES, QUANTIZATIONS, _check_choice




def estimate_inference_memory(
    model,
    batch_size: int = 1,
    context_len: int = 2048,
    param_dtype: str = "bf16",
    quantization: str | None = None,
    kv_dtype: str | None = None,
    lora_rank: int | None = None,
    device="cuda",
) -> MemoryEstimate:
    """Memory to serve ``model``: weights + KV cache for ``batch_size`` x ``context_len`` tokens.

    The KV cache holds, per layer and per token, one key and one value vector for each KV head:
    ``2 x layers x kv_heads x head_dim x dtype bytes`` per token. Grouped-query attention (fewer KV
    heads than query heads) is why Llama 3 8B needs 128 KiB per token, not 512 KiB.

    Example:
        >>> est = estimate_inference_memory("llama-3.1-8b", batch_size=1, context_len=8192)
        >>> round(est.by_category()["KV cache"] / 2**30, 2)
        1.0
    """
    arch = get_architecture(model)
    kind, hw = _target(device)
    _check_choice("quantization", quantization, QUANTIZATIONS)
    w_b = DTYPE_BYTES[param_dtype]
    kv_b = DTYPE_BYTES[kv_dtype or param_dtype]
    items = []
    total = arch.num_parameters()
    if quantization:
        n_q = arch.layers * sum(o * i for o, i in arch.linear_shapes().values())
        qb = n_q * (1.0 if quantization == "int8" else 0.5)
        cb = (arch.layers * sum(o for o, _ in arch.linear_shapes().values()) * 4 if quantization == "int8"
              else nf4_constant_bytes(n_q, quantization == "nf4-dq"))
        items.append(MemoryItem(f"weights: {quantization} Linear layers", int(qb), "weights", f"{n_q / 1e6:.0f}M params"))
        items.append(MemoryItem("quantisation constants", int(cb), "quantisation constants", ""))
        items.append(MemoryItem(f"weights: {param_dtype} rest", (total - n_q) * w_b, "weights", "embeddings, norms, head"))
    else:
        items.append(MemoryItem(f"weights ({param_dtype})", total * w_b, "weights", f"{total / 1e6:.0f}M params x {w_b} B"))
    if lora_rank:
        lp = arch.layers * sum(lora_rank * (o + i) for o, i in arch.linear_shapes().values())
        items.append(MemoryItem(f"LoRA adapters r={lora_rank} (unmerged)", lp * 4, "LoRA adapters", "merge them to drop this"))
    per_token = 2 * arch.layers * arch.kv_dim * kv_b
    items.append(MemoryItem("KV cache", batch_size * context_len * per_token, "KV cache",
                            f"{_fmt(per_token)} per token = 2 x {arch.layers} layers x {arch.kv_heads} kv heads x {arch.hd} x {kv_b} B"))
    m = 2 if w_b == 2 else 4
    prefill = batch_size * context_len * (3 * arch.intermediate * m + 4 * arch.hidden * 4)
    items.append(MemoryItem("prefill working tensors (one layer)", prefill, "transient", "MLP intermediates of the prompt"))
    items.append(MemoryItem("last-token logits", batch_size * arch.vocab * 4 * 2, "logits & loss", "fp32 logits + sampling copy"))
    if kind == "cuda":
        items += cuda_overhead_items(sum(i.bytes for i in items))
    settings = dict(method="inference", batch_size=batch_size, seq_len=context_len, param_dtype=param_dtype,
                    quantization=quantization, device=hw.name if hw else kind)
    return MemoryEstimate(model=arch.name, settings=settings, items=items, peak_phase="generation (prefill + KV cache full)",
                          phases={"generation": sum(i.bytes for i in items)}, device=hw, kind="inference")
