"""Will it fit? Peak training memory, predicted term by term from a model's config alone.

Most calculators multiply the weights by a constant (accelerate's ``estimate-memory`` says
"training with Adam ~ 4x the weights") and have no batch or sequence term at all. This one walks
through one training step the way PyTorch runs it and adds up every tensor that is alive:

* **persistent** (:mod:`~ftlab.memory.state`): weights (the 4-bit part and the full-precision part separately), quantisation
  constants, LoRA adapters, optimizer states;
* **forward** (:mod:`~ftlab.memory.forward`): every tensor autograd *saves for backward*, layer by layer. These are exactly the
  tensors listed by transformers' Llama code and PyTorch's derivative formulas: RMSNorm keeps its
  fp32 input and ``rsqrt``, SDPA keeps q, k, v, its output and a log-sum-exp, SiLU keeps its input,
  the gate*up product keeps both factors, every trainable Linear keeps its input;
* **loss** (:func:`~ftlab.memory.forward.loss_buffers`): transformers upcasts the logits to fp32 before the cross-entropy, and at the start of
  backward three ``tokens x vocab`` fp32 buffers exist at once (log-probs, their gradient, the
  logits' gradient). For a small model with a 49k vocabulary this is the largest single item;
* **backward** (:mod:`~ftlab.memory.timeline`): activations are freed layer by layer while gradients appear;
* **optimizer step**: weights + gradients + states (+ the update's temporaries).

The peak is the largest of these moments, and :class:`MemoryEstimate` says which one it is.
``python -m ftlab.bench.memory`` checks the prediction against memory measured with
``torch.distributed._tools.mem_tracker.MemTracker`` (CPU) or ``torch.cuda.max_memory_allocated``.

Example:
    >>> from ftlab.memory.estimator import estimate_memory
    >>> est = estimate_memory("smollm2-135m", method="lora", batch_size=8, seq_len=256, device="cpu")
    >>> est.peak_phase
    'backward: start (loss gradient)'
    >>> round(est.total_bytes / 2**30, 1)   # GiB: 1.1 of them are the logits and the loss's buffers
    5.9
"""

from __future__ import annotations

from ftlab.memory.breakdown import MemoryEstimate, MemoryItem, cuda_overhead_items
from ftlab.memory.forward import layer_saved, loss_buffers, shared_saved
from ftlab.memory.state import persistent_state
from ftlab.memory.step import make_step
from ftlab.memory.timeline import (Timeline, activation_components, backward_moments, forward_moments,
                                   optimizer_step_moment, peak_items)


# long on purpose: twenty settings, each documented where it is used; the body is the step's phases (~30 lines).
def estimate_memory(
    model,
    method: str = "full",
    batch_size: int = 8,
    seq_len: int = 256,
    param_dtype: str = "fp32",
    mixed_precision: str | None = None,
    quantization: str | None = None,
    optimizer: str = "adamw",
    optimizer_impl: str = "fused",
    gradient_checkpointing: bool = False,
    lora_rank: int = 16,
    lora_targets="all-linear",
    lora_dropout: float = 0.0,
    trainable_layers: int | None = None,
    attention: str = "sdpa",
    loss: str = "full",
    loss_chunk_tokens: int = 1024,
    trained_tokens: int | None = None,
    padded: bool = True,
    device="cuda",
) -> MemoryEstimate:
    """Predict the peak memory of one training step (forward, backward, optimizer step).

    Args:
        model: a config, model name, table key or folder (see :func:`get_architecture`).
        method: ``"full"``, ``"lora"``, ``"qlora"`` (LoRA on an NF4 base) or ``"freeze"``
            (train only the last ``trainable_layers`` decoder layers and the final norm; default a
            quarter of the layers, as ``ftlab.training.prepare_model`` does).
        batch_size, seq_len: sequences per step and tokens per (padded) sequence.
        param_dtype: storage dtype of the weights, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        mixed_precision: ``"bf16"``/``"fp16"`` = autocast over fp32 weights (``param_dtype`` must
            be fp32); ``None`` = every tensor in ``param_dtype`` ("pure" bf16 when that is bf16).
        quantization: base-weight quantisation of the decoder's Linear layers: ``"nf4"``,
            ``"nf4-dq"`` (double quantisation) or ``"int8"``; ``method="qlora"`` implies
            ``"nf4-dq"``, as ftlab's ``prepare_model`` uses.
        optimizer: ``"adamw"``, ``"adamw_8bit"``, ``"paged_adamw"``, ``"paged_adamw_8bit"``,
            ``"sgd"`` or ``"sgd_momentum"``.
        optimizer_impl: how torch runs AdamW: ``"fused"`` (ftlab's default, no temporaries),
            ``"foreach"`` (torch's default on CUDA: one temporary the size of all trainable
            parameters) or ``"for-loop"`` (two temporaries the size of the largest parameter).
        gradient_checkpointing: keep only each layer's input and recompute the layer in backward.
        lora_rank, lora_targets, lora_dropout: LoRA's r, target Linear names (or ``"all-linear"``)
            and adapter dropout (p > 0 makes every adapter keep its own dropped-out input copy).
        attention: ``"sdpa"`` (transformers' default), ``"eager"`` (materialises seq x seq
            scores) or ``"flash"`` (FlashAttention-2 on CUDA).
        loss: ``"full"`` (logits for every token at once, upcast to fp32: transformers'
            ``model(**batch, labels=...)``), ``"trained"`` (logits only at the ``trained_tokens``
            positions that have a label: what ``ftlab.train`` does by default,
            ``TrainConfig.trained_logits_only``) or ``"chunked"`` (``loss_chunk_tokens`` tokens at
            a time, as Liger/cut-cross-entropy kernels do).
        trained_tokens: for ``loss="trained"``: the positions with a label in one micro-batch
            (on instruction data often a fifth or less of ``batch_size x seq_len``).
        padded: the batch contains padding (dynamic padding), so SDPA gets an explicit mask; False
            for equal-length or packed batches (SDPA then uses its causal fast path).
        device: ``"cuda"``, ``"cpu"`` or a :data:`HARDWARE` preset (adds the verdict; CUDA targets
            also get the CUDA context and allocator overhead, labelled as such).

    Returns:
        a :class:`MemoryEstimate`.

    Example:
        >>> est = estimate_memory("llama-3.1-8b", method="qlora", batch_size=4, seq_len=2048,
        ...                       param_dtype="bf16", gradient_checkpointing=True, device="dgx-spark")
        >>> est.fits()
        True
    """
    step = make_step(model, method, batch_size, seq_len, param_dtype, mixed_precision, quantization, optimizer,
                     optimizer_impl, gradient_checkpointing, lora_rank, lora_targets, lora_dropout, trainable_layers,
                     attention, loss, loss_chunk_tokens, trained_tokens, padded, device)
    L, T, H, r = step.arch.layers, step.T, step.arch.hidden, step.r

    # 0. persistent state: weights, constants, adapters, gradients, optimizer states
    persistent = persistent_state(step)
    # 1. forward: what each layer saves for backward (or, with checkpointing, only its input)
    saved = [layer_saved(step, i) for i in range(L)]
    saved_tot = [sum(s.values()) for s in saved]
    ckpt = [T * H * r if (gradient_checkpointing and saved_tot[i] > 0) else 0 for i in range(L)]
    stored = ckpt if gradient_checkpointing else saved_tot
    shared = shared_saved(step, any(saved_tot[i] > 0 for i in range(L)))
    # 2. the loss's logits and fp32 buffers
    loss_buf = loss_buffers(step)

    # the timeline: 1. forward, 3. backward, 4. optimizer step; the peak is the fullest moment
    weights = sum(c.bytes for c in persistent if c.category in ("weights", "quantisation constants", "LoRA adapters"))
    opt_bytes = next(c.bytes for c in persistent if c.category == "optimizer states")
    tl = Timeline(base=weights + opt_bytes + shared.inputs)
    common = {"rope cos/sin + masks": shared.rope_and_masks, "saved: embedding indices": shared.embedding}
    forward_moments(tl, step, saved_tot, stored, shared, loss_buf, common)
    backward_moments(tl, step, saved_tot, stored, ckpt, shared, loss_buf, common)
    optimizer_step_moment(tl, step)

    items = peak_items(tl, step, persistent, saved, loss_buf)
    items.append(MemoryItem("inputs: ids, mask, labels", shared.inputs, "inputs", "int64 tensors of the batch"))
    if step.kind == "cuda":
        items += cuda_overhead_items(sum(i.bytes for i in items))
    comps = persistent + activation_components(step, saved, ckpt, loss_buf)
    return MemoryEstimate(model=step.arch.name, settings=_settings(step), items=items, peak_phase=tl.peak, phases=tl.phases,
                          components=comps, device=step.hw)


def _settings(step) -> dict:
    """The resolved settings, as the estimate reports them (defaults filled in, irrelevant ones None)."""
    from ftlab.memory.state import trainable_parameters

    lora = step.lora
    return dict(method=step.method, batch_size=step.batch_size, seq_len=step.seq_len, param_dtype=step.param_dtype,
                mixed_precision=step.mixed_precision, quantization=step.quantization, optimizer=step.optimizer,
                optimizer_impl=step.optimizer_impl, gradient_checkpointing=step.gradient_checkpointing,
                lora_rank=step.lora_rank if lora else None, lora_targets=list(step.targets) if lora else None,
                lora_dropout=step.lora_dropout if lora else None,
                trainable_layers=step.n_train if step.method == "freeze" else None, attention=step.attention, loss=step.loss,
                trained_tokens=step.trained_tokens if step.loss == "trained" else None, padded=step.padded,
                device=step.hw.name if step.hw else step.kind, trainable_params=trainable_parameters(step).total,
                total_params=step.arch.num_parameters())
