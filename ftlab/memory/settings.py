"""A training configuration as the estimator's settings: the one translation.

``train``'s budget check (``ftlab.budget``), the workshop plan (``ftlab.workshop``) and the measured
configurations of the memory benchmark and the GPU check (``ftlab.training.measure``) all describe a
training step in their own words; :func:`estimator_settings` turns any of them into the keyword
arguments of :func:`ftlab.memory.estimate_memory`, so the rules below live in one place.

Example:
    >>> s = estimator_settings("dora", 4, 128, device="cuda", trained_tokens=90)
    >>> s["method"], s["mixed_precision"], s["loss"]
    ('lora', 'bf16', 'trained')
"""

from __future__ import annotations

from ftlab.memory.hardware import _target

# Training methods the estimator models as another: DoRA's magnitude vector, IA3's scaling vectors and
# prompt tuning's virtual tokens are small trainable additions on a frozen base, like LoRA's adapters.
ESTIMATED_AS = {"dora": "lora", "ia3": "lora", "prompt_tuning": "lora"}


def estimator_settings(method: str, batch_size: int, seq_len: int, *, param_dtype: str = "fp32", device="cpu",
                       mixed_precision: str | None = "auto", optimizer: str = "adamw",
                       gradient_checkpointing: bool = False, lora_rank: int = 16, lora_dropout: float = 0.0,
                       trainable_layers: int | None = None, trained_tokens: int | None = None,
                       **exact) -> dict:
    """``estimate_memory`` keyword arguments for one training step.

    Args:
        method: any of ``ftlab.training``'s methods (see ``ESTIMATED_AS``) or the estimator's own.
        param_dtype: the weights' storage dtype (``fp32``, ``bf16``, ``fp16``).
        device: ``cpu``, ``cuda`` or a ``HARDWARE`` name, passed on as the estimator's target.
        mixed_precision: ``TrainConfig.mixed_precision`` (``auto``/``bf16``: bf16 autocast, which the loop
            uses only on CUDA over fp32 weights; ``no``/``None``: every tensor in ``param_dtype``).
        trainable_layers: used only by ``method="freeze"``.
        trained_tokens: ``None``: logits at every position (transformers' loss, ``loss="full"``);
            otherwise the trained positions of one micro-batch, where the loop computes the output layer
            (``TrainConfig.trained_logits_only``, ``loss="trained"``).
        exact: estimator settings passed through unchanged (``lora_targets``, ``attention``, ``padded``).
    """
    method = ESTIMATED_AS.get(method, method)
    on_cuda = _target(device)[0] == "cuda"
    autocast = on_cuda and param_dtype == "fp32" and mixed_precision in ("auto", "bf16")
    return dict(method=method, batch_size=batch_size, seq_len=seq_len, param_dtype=param_dtype,
                mixed_precision="bf16" if autocast else None, optimizer=optimizer,
                gradient_checkpointing=gradient_checkpointing, lora_rank=lora_rank, lora_dropout=lora_dropout,
                trainable_layers=trainable_layers if method == "freeze" else None,
                loss="full" if trained_tokens is None else "trained", trained_tokens=trained_tokens,
                device=device, **exact)
