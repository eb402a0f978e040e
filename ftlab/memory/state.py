"""Persistent state: what lives through the whole step (weights, quantisation constants, LoRA
adapters, gradients once produced, optimizer states), and the storage rules of NF4 and 8-bit optimizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ftlab.memory.breakdown import MemoryItem

# bitsandbytes' NF4 layout: 64 weights per block share one fp32 absmax. Double quantisation stores
# those absmax values in 8 bits, in groups of 256 that share one fp32 scale (QLoRA paper, sec. 3).
NF4_BLOCK = 64
DQ_BLOCK = 256
# bitsandbytes' 8-bit optimizers: 1 byte per state value plus one fp32 absmax per 256 values;
# tensors with fewer than 4096 elements keep 32-bit states (bnb's min_8bit_size).
OPT8_BLOCK = 256
OPT8_MIN_SIZE = 4096


def _NF4_PER_TENSOR(quantization: str) -> int:
    """Fixed bytes per quantised tensor: the 16-value NF4 code (fp32), plus for double quantisation the
    256-value code of the 8-bit absmax and its fp32 offset."""
    return 16 * 4 + (256 * 4 + 4 if quantization == "nf4-dq" else 0)


def nf4_constant_bytes(n_params: int, double_quant: bool = True) -> float:
    """Bytes of NF4 quantisation constants for ``n_params`` weights (per-tensor codes not included).

    Without double quantisation: one fp32 absmax per 64 weights = 0.5 bit/weight.
    With it: one 8-bit absmax per 64 weights plus one fp32 scale per 256 blocks = ~0.127 bit/weight.
    """
    blocks = math.ceil(n_params / NF4_BLOCK)
    if not double_quant:
        return blocks * 4
    return blocks * 1 + math.ceil(blocks / DQ_BLOCK) * 4


def nf4_bytes_per_parameter(double_quant: bool = True) -> float:
    """Storage of one NF4 weight including its share of the constants: 0.5625 B (0.5159 B with double quant)."""
    n = NF4_BLOCK * DQ_BLOCK * 1024
    return (n * 0.5 + nf4_constant_bytes(n, double_quant)) / n


def _opt8_bytes(arch, method, targets, rank, n_train, trainable) -> int:
    shapes = arch.linear_shapes()
    if method in ("lora", "qlora"):
        sizes = [rank * i for t in targets for i in (shapes[t][1],)] + [shapes[t][0] * rank for t in targets]
        sizes = sizes * arch.layers
    else:
        n_layers = arch.layers if method == "full" else n_train
        sizes = ([o * i for o, i in shapes.values()] + [arch.hidden] * arch.norms_per_layer) * n_layers + [arch.hidden]
        if method == "full":
            sizes += [arch.vocab * arch.hidden] * (1 if arch.tied else 2)
    out = 0.0
    for n in sizes:
        out += 2 * (n + math.ceil(n / OPT8_BLOCK) * 4) if n >= OPT8_MIN_SIZE else 2 * n * 4
    return int(out)

@dataclass
class Trainable:
    """Trainable parameter counts, in the order backward produces their gradients."""

    layer: int  # per trainable decoder layer (its weights, or its LoRA adapters)
    head: int  # lm_head (= embedding when tied) + final norm
    embedding: int  # an untied embedding
    total: int
    largest: int  # the largest single trainable tensor (for-loop AdamW's temporaries)


def trainable_parameters(step) -> Trainable:
    """What trains: every weight (full), the last ``n_train`` layers + final norm (freeze), or the adapters (LoRA)."""
    arch, shapes = step.arch, step.arch.linear_shapes()
    emb = arch.vocab * arch.hidden
    if step.method == "full":
        head = 0 if arch.tied else emb
        return Trainable(layer=arch.layer_parameters(), head=head + arch.hidden + (emb if arch.tied else 0),
                         embedding=0 if arch.tied else emb, total=arch.num_parameters(),
                         largest=max(emb, max(o * i for o, i in shapes.values())))
    if step.method == "freeze":
        return Trainable(layer=arch.layer_parameters(), head=arch.hidden, embedding=0,
                         total=step.n_train * arch.layer_parameters() + arch.hidden,
                         largest=max(o * i for o, i in shapes.values()))
    per_layer = sum(step.lora_rank * (shapes[t][0] + shapes[t][1]) for t in step.targets)
    return Trainable(layer=per_layer, head=0, embedding=0, total=arch.layers * per_layer,
                     largest=max([step.lora_rank * max(shapes[t]) for t in step.targets] or [0]))


def weight_items(step) -> list[MemoryItem]:
    """The stored model: weights (the quantised part and the full-precision part apart), constants, adapters."""
    arch, w_b, q = step.arch, step.w_b, step.quantization
    shapes = arch.linear_shapes()
    L = arch.layers
    lin_params = sum(o * i for o, i in shapes.values())
    total_params = arch.num_parameters()
    if not q:
        items = [MemoryItem(f"weights ({step.param_dtype})", total_params * w_b, "weights", f"{total_params / 1e6:.1f}M params x {w_b} B")]
    else:
        n_q = L * lin_params
        if q == "int8":
            quant_bytes = n_q * 1.0
            const_bytes = L * sum(o for o, _ in shapes.values()) * 4  # one fp32 scale per output row
        else:
            quant_bytes = n_q * 0.5
            const_bytes = nf4_constant_bytes(n_q, double_quant=(q == "nf4-dq")) + L * 7 * _NF4_PER_TENSOR(q)
        full_prec = total_params - n_q
        fp_b = 4 if step.kbit_fp32 else w_b  # prepare_model_for_kbit_training casts them to fp32
        fp_dtype = "fp32" if step.kbit_fp32 else step.param_dtype
        items = [
            MemoryItem(f"weights: {q} decoder Linear layers", int(quant_bytes), "weights",
                       f"{n_q / 1e6:.1f}M params x {'1 byte' if q == 'int8' else '0.5 byte'}"),
            MemoryItem("quantisation constants", int(const_bytes), "quantisation constants",
                       {"nf4": "fp32 absmax per 64 weights", "nf4-dq": "8-bit absmax per 64 + fp32 per 256 blocks",
                        "int8": "fp32 scale per output row"}[q]),
            MemoryItem(f"weights: {fp_dtype} embeddings, norms{'' if arch.tied else ', lm_head'}",
                       int(full_prec * fp_b), "weights", f"{full_prec / 1e6:.1f}M params x {fp_b} B"
                       + (" (prepare_model_for_kbit_training)" if step.kbit_fp32 else "")),
        ]
    if step.lora:
        n = trainable_parameters(step).total
        items.append(MemoryItem(f"LoRA adapters r={step.lora_rank} ({', '.join(t.replace('_proj', '') for t in step.targets)})",
                                n * step.lora_b, "LoRA adapters", f"{n / 1e6:.2f}M params x {step.lora_b} B (peft keeps them fp32)"))
    return items


def grad_bytes(step) -> int:
    """Bytes per gradient (and per optimizer-state value): fp32 for peft's adapters, else the weights' dtype."""
    return step.lora_b if step.lora else step.w_b


def optimizer_states(step) -> tuple[int, str]:
    """Bytes of the optimizer's state for every trainable parameter, and how they are made up."""
    s_b, opt = grad_bytes(step), step.optimizer
    trainable = trainable_parameters(step).total
    if opt in ("adamw", "paged_adamw"):
        note = f"exp_avg + exp_avg_sq: 2 x {s_b} B per trainable param" + (" (paged: can spill to CPU RAM)" if opt.startswith("paged") else "")
        return 2 * trainable * s_b, note
    if opt in ("adamw_8bit", "paged_adamw_8bit"):
        return (_opt8_bytes(step.arch, step.method, step.targets, step.lora_rank, step.n_train, trainable),
                "2 x (1 B + fp32 absmax per 256) per param; tensors < 4096 elements stay 32-bit")
    if opt == "sgd_momentum":
        return trainable * s_b, f"momentum buffer: {s_b} B per trainable param"
    return 0, "plain SGD keeps no state"


def persistent_state(step) -> list[MemoryItem]:
    """Phase 0, alive all step long: weights, constants, adapters, then the gradients and optimizer
    states (the gradients appear during backward; this item is their full size)."""
    items = weight_items(step)
    trainable, g_b = trainable_parameters(step).total, grad_bytes(step)
    items.append(MemoryItem("gradients", trainable * g_b, "gradients", f"{trainable / 1e6:.2f}M trainable params x {g_b} B"))
    opt_bytes, opt_note = optimizer_states(step)
    items.append(MemoryItem(f"optimizer states ({step.optimizer})", opt_bytes, "optimizer states", opt_note))
    return items
