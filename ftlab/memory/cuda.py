"""What the CUDA stack keeps alive that the CPU path does not: each term with the source that decides it.

The estimator's phases (:mod:`~ftlab.memory.state`, :mod:`~ftlab.memory.forward`,
:mod:`~ftlab.memory.timeline`) were checked against MemTracker on a CPU. On a GPU the libraries take
other code paths; this module names each difference, with the file and function (installed versions:
torch 2.13, transformers 5.23, peft 0.21, bitsandbytes 0.50) that decides it:

* **SDPA kernel** (torch ``nn/functional.py: scaled_dot_product_attention``; transformers
  ``integrations/sdpa_attention.py: use_gqa_in_sdpa``): without a padding mask CUDA runs flash or
  memory-efficient attention, which save q, k, v, the output and a logsumexp of ``B x heads x S`` fp32
  and never a ``S x S`` matrix. With a padding mask, flash is ruled out, transformers repeats k and v
  to every query head (``use_gqa_in_sdpa`` needs ``attention_mask is None``) and the efficient kernel
  keeps the additive mask it was given. :func:`sdpa_saved_bytes`.
* **bitsandbytes 4-bit** (``bitsandbytes/autograd/_functions.py: MatMul4Bit``, ``nn/modules.py:
  Linear4bit``): the forward multiplies with the packed weight (``gemm_4bit``) and saves only the
  packed weight it already owns (plus the input when the weight itself would train). Backward
  de-quantises the weight to the input's dtype for the input gradient: one ``out x in`` 16-bit
  temporary per matmul, alive only in that matmul. :func:`dequant_buffer_bytes`.
  bitsandbytes before 0.43.2 also kept every 4-bit matmul's *input* for backward (published QLoRA
  measurements from 2023 include it): :func:`bnb_saved_input_bytes`, 0 for the pinned version.
* **prepare_model_for_kbit_training** (peft ``utils/other.py``): freezes everything, casts every
  16-bit parameter that is not ``Params4bit`` (embeddings, norms, an untied lm_head) to fp32, makes the
  embedding output require grad (so every layer's input gradient flows), and turns gradient
  checkpointing on by default (ftlab passes ``use_gradient_checkpointing=False`` and decides itself).
  :func:`kbit_training_extra_bytes`; ``estimate_memory(method="qlora", param_dtype="bf16",
  device="cuda")`` applies it (``StepSettings.kbit_fp32``): fp32 embeddings/norms/head, an fp32 residual
  stream (it starts at the fp32 embedding) and fp32 logits (fp32 head on an fp32 input).
* **fp32 adapters** (peft ``tuners/tuners_utils.py`` ``autocast_adapter_dtype=True``; ``tuners/lora/
  layer.py: Linear.forward`` casts the input with ``_cast_input_dtype``): on a bf16 base the adapters,
  their gradients and both Adam states are fp32, and each adapter keeps its own fp32 copy of its
  input for backward. Modelled in :mod:`~ftlab.memory.state` and :mod:`~ftlab.memory.forward`.
* **the caching allocator** (torch ``cuda/memory.py``: ``memory_allocated`` vs ``memory_reserved``):
  freed blocks stay reserved for reuse, so ``nvidia-smi`` and ``max_memory_reserved`` exceed the peak
  of live tensors. ``MemoryEstimate.tensor_bytes`` is the ``max_memory_allocated`` figure;
  ``MemoryEstimate.fits()`` compares ``total_bytes`` (tensors + CUDA context + allocator slack) because
  an out-of-memory error happens when a *reservation* fails, not when live tensors reach the limit.
* **gradient checkpointing's recompute peak** (torch ``utils/checkpoint.py``): in backward the
  checkpointed layer re-runs its forward, so one layer's full saved set plus its backward temporaries
  sit on top of all the checkpoints. :func:`recompute_peak_bytes`.
* **the loop holds the logits** (transformers ``LlamaForCausalLM.forward`` returns
  ``CausalLMOutputWithPast(logits=...)``): a loop that writes ``outputs = model(**batch)`` keeps the
  16-bit logits alive through backward and the optimizer step, until the next forward replaces them.
  :func:`after_step_bytes`.
* **FSDP full shard** (torch ``distributed/fsdp/_fully_shard``): every rank keeps 1/N of the
  parameters, gradients and optimizer states, plus the all-gathered 16-bit parameters of the layer
  running (and the one prefetched). :func:`fsdp_full_shard_per_gpu`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.memory.architectures import get_architecture
from ftlab.memory.breakdown import MemoryEstimate


def sdpa_saved_bytes(arch, batch_size: int, seq_len: int, dtype_bytes: int, padded: bool) -> int:
    """Bytes one attention call saves for backward on CUDA (flash / memory-efficient kernel).

    q, k, v and the output in the model dtype, plus a fp32 logsumexp per query and head. Without a
    mask k and v keep their ``kv_heads`` width (the kernel handles grouped-query attention); with a
    padding mask transformers repeats them to every query head and the kernel keeps the additive mask."""
    arch = get_architecture(arch)
    T = batch_size * seq_len
    kv = arch.q_dim if padded and arch.kv_heads != arch.heads else arch.kv_dim
    qkvo = T * (2 * arch.q_dim + 2 * kv) * dtype_bytes
    lse = batch_size * arch.heads * seq_len * 4
    mask = batch_size * seq_len * seq_len * dtype_bytes if padded else 0
    return qkvo + lse + mask


def dequant_buffer_bytes(arch, dtype_bytes: int = 2) -> int:
    """The transient de-quantised weight of bitsandbytes' 4-bit backward: the largest Linear, in 16 bits."""
    arch = get_architecture(arch)
    return max(o * i for o, i in arch.linear_shapes().values()) * dtype_bytes


# bitsandbytes' MatMul4Bit kept its input ``A`` in ``ctx.tensors`` for backward until PR #1270 (commit
# 9e75374, "fix QLoRA mem bug: delete useless buffered activation"), released in 0.43.2. The input
# gradient needs only the weight, so newer versions (ftlab pins 0.50) save nothing but the packed weight.
BNB_STOPPED_SAVING_INPUTS = (0, 43, 2)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


def bnb_saved_input_bytes(arch, batch_size: int, seq_len: int, dtype_bytes: int = 2,
                          bitsandbytes: str = "0.50.2") -> int:
    """What an old bitsandbytes (< 0.43.2) keeps for backward on top of the estimate: every 4-bit matmul's
    input, ``B x S`` rows in the compute dtype, alive from forward to backward.

    Matmuls that read the same tensor share one saved copy: q, k and v (or a fused qkv) read the attention
    norm's output, gate and up the MLP norm's. So per layer: that norm output (``hidden``), the attention
    output entering o_proj (``hidden``, a fresh reshaped copy), the MLP norm output (``hidden``) and the
    gated product entering down_proj (``intermediate``). 0 for bitsandbytes >= 0.43.2."""
    if _version(bitsandbytes) >= BNB_STOPPED_SAVING_INPUTS:
        return 0
    arch = get_architecture(arch)
    per_token = 3 * arch.hidden + arch.intermediate  # the same on a fused qkv: one input, saved once
    return batch_size * seq_len * arch.layers * per_token * dtype_bytes


def kbit_training_extra_bytes(arch) -> int:
    """Extra bytes after ``prepare_model_for_kbit_training`` on a bf16/fp16 base: every parameter that is
    not 4-bit (embeddings, norms, an untied lm_head) goes from 2 to 4 bytes."""
    arch = get_architecture(arch)
    not_quantised = arch.num_parameters() - arch.layers * sum(o * i for o, i in arch.linear_shapes().values())
    return not_quantised * 2


def recompute_peak_bytes(est: MemoryEstimate) -> int:
    """With checkpointing: what backward holds above the checkpoints while a layer is recomputed
    (that layer's saved tensors + its backward temporaries); 0 without checkpointing."""
    if not est.settings.get("gradient_checkpointing"):
        return 0
    layer = next((p for p in est.phases if p.startswith("backward: decoder layer")), None)
    return 0 if layer is None else est.phases[layer] - min(est.phases.values())


def after_step_bytes(est: MemoryEstimate, held_logits_tokens: int = 0) -> int:
    """``torch.cuda.memory_allocated()`` right after ``optimizer.step()`` when gradients are kept until the
    next ``zero_grad``: weights, adapters, gradients, optimizer states, the batch, and the 16-bit logits
    of ``held_logits_tokens`` positions if the loop still holds ``outputs`` (transformers returns them)."""
    s = est.settings
    arch = get_architecture(est.model)
    logit_b = 2 if (s.get("param_dtype") in ("bf16", "fp16") or s.get("mixed_precision")) else 4
    kept = ("weights", "quantisation constants", "LoRA adapters", "gradients", "optimizer states")
    state = sum(c.bytes for c in est.components if c.category in kept)  # the step's temporaries are gone
    batch = 4 * s["batch_size"] * s["seq_len"] * 8  # input_ids, mask, labels, shifted labels (int64)
    return state + batch + held_logits_tokens * arch.vocab * logit_b


def reserved_bytes(est: MemoryEstimate) -> int:
    """``torch.cuda.max_memory_reserved()``: the peak of live tensors plus the caching allocator's slack
    (without the CUDA context, which ``memory_reserved`` does not count)."""
    slack = sum(i.bytes for i in est.items if i.category == "CUDA overhead" and i.name.startswith("caching-allocator"))
    if not slack:  # a CPU estimate has no allocator items; use the same rule
        from ftlab.memory.breakdown import cuda_overhead_items

        slack = cuda_overhead_items(est.tensor_bytes)[1].bytes
    return est.tensor_bytes + slack


@dataclass
class ShardedMemory:
    """Per-GPU memory of FSDP full sharding, by term."""

    sharded_state: int  # params + grads + optimizer states / world size
    gathered_layers: int  # 16-bit unsharded params of the running and the prefetched layer
    activations: int  # this rank's micro-batch (not sharded)
    total: int


def fsdp_full_shard_per_gpu(model, world_size: int, batch_size: int, seq_len: int, mixed_precision: str = "bf16",
                            gradient_checkpointing: bool = True, **settings) -> ShardedMemory:
    """FSDP2 ``fully_shard`` per decoder layer with ``reshard_after_forward=True`` (configs/
    accelerate_fsdp_2sparks.yaml): fp32 parameters, gradients and AdamW states split ``world_size`` ways,
    two layers' parameters gathered in 16 bits at a time (the running one and the prefetch), and the
    activations of this rank's micro-batch, which sharding does not split."""
    from ftlab.memory.estimator import estimate_memory

    arch = get_architecture(model)
    est = estimate_memory(arch, method="full", batch_size=batch_size, seq_len=seq_len, param_dtype="fp32",
                          mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, **settings)
    P = arch.num_parameters()
    state = (4 + 4 + 8) * P
    sharded = state // world_size
    gathered = 2 * arch.layer_parameters() * 2
    # what the single-GPU peak holds above params/grads/states is per-rank work: activations, logits, copies
    activations = max(est.tensor_bytes - state, 0)
    return ShardedMemory(sharded_state=sharded, gathered_layers=gathered, activations=activations,
                         total=sharded + gathered + activations)
