"""One training step's settings, checked once and turned into the quantities every phase needs.

:func:`make_step` validates what :func:`ftlab.memory.estimate_memory` was given (bad input gets a
clear error naming the fix) and returns a :class:`StepSettings`: the architecture, the batch, the bytes per
element of each kind of tensor, and which layers train.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ftlab.memory.architectures import LINEARS, Architecture, get_architecture
from ftlab.memory.hardware import Hardware, _target

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
# What the estimator models: the memory shapes of a step, not the training methods and optimizers
# ftlab.training implements (training.methods.METHODS, training.optim.OPTIMIZERS). DoRA, IA3 and
# prompt tuning are estimated as LoRA (ftlab.memory.settings.estimator_settings maps them).
ESTIMATOR_METHODS = ("full", "lora", "qlora", "freeze")
ESTIMATOR_OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "sgd", "sgd_momentum")
QUANTIZATIONS = (None, "nf4", "nf4-dq", "int8")
ATTENTIONS = ("eager", "sdpa", "flash")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"estimate_memory: {name}={value!r} is not supported. Fix: one of {', '.join(map(str, choices))}.")


def _lora_targets(targets) -> tuple[str, ...]:
    if targets in (None, "all-linear", "all_linear", "all"):
        return LINEARS
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in LINEARS]
    if bad:
        raise ValueError(f"estimate_memory: unknown LoRA target(s) {bad}. Fix: choose from {', '.join(LINEARS)} or 'all-linear'.")
    return tuple(targets)


@dataclass
class StepSettings:
    """A validated training configuration (see :func:`ftlab.memory.estimate_memory` for each setting)."""

    arch: Architecture
    method: str
    batch_size: int
    seq_len: int
    param_dtype: str
    mixed_precision: str | None
    quantization: str | None
    optimizer: str
    optimizer_impl: str
    gradient_checkpointing: bool
    lora_rank: int
    targets: tuple[str, ...]  # LoRA target Linear names; () unless LoRA
    lora_dropout: float
    n_train: int  # decoder layers whose own weights train (all for full, the last ones for freeze, 0 for LoRA)
    attention: str
    loss: str
    loss_chunk_tokens: int
    trained_tokens: int | None
    padded: bool
    kind: str  # "cuda" | "cpu"
    hw: Hardware | None

    @property
    def T(self) -> int:
        """Tokens per micro-batch."""
        return self.batch_size * self.seq_len

    @property
    def w_b(self) -> int:
        """Bytes of an unquantised weight as stored."""
        return DTYPE_BYTES[self.param_dtype]

    @property
    def mixed(self) -> bool:
        return self.mixed_precision is not None

    @property
    def m(self) -> int:
        """Bytes of a matmul output / activation (16 bits under autocast or a 16-bit model)."""
        return 2 if (self.mixed or self.w_b == 2) else 4

    @property
    def kbit_fp32(self) -> bool:
        """QLoRA on CUDA through ``prepare_model_for_kbit_training`` (peft ``utils/other.py``; ftlab's
        ``prepare_model(..., "qlora")`` calls it for a ``BitsAndBytesConfig`` model): every 16-bit
        parameter that is not 4-bit (embeddings, norms, lm_head) is cast to fp32."""
        return self.method == "qlora" and self.kind == "cuda" and self.w_b == 2 and not self.mixed

    @property
    def r(self) -> int:
        """Bytes of the residual stream (fp32 under autocast, and after kbit preparation: fp32 embeddings)."""
        return 4 if (self.w_b == 4 or self.kbit_fp32) else 2

    @property
    def logit_b(self) -> int:
        """Bytes of a logit as lm_head returns it (fp32 when lm_head and its input are fp32)."""
        return 4 if self.kbit_fp32 else self.m

    @property
    def lora(self) -> bool:
        return self.method in ("lora", "qlora")

    # peft keeps adapters in fp32 (autocast_adapter_dtype=True) even on a bf16 base
    lora_b = 4

    @cached_property
    def layer_trainable(self) -> list[int]:
        """Trainable parameters owned by each decoder layer (its weights, or its adapters)."""
        from ftlab.memory.state import trainable_parameters

        per_layer = trainable_parameters(self).layer
        L = self.arch.layers
        return [per_layer if (self.method != "freeze" or i >= L - self.n_train) else 0 for i in range(L)]


def make_step(model, method, batch_size, seq_len, param_dtype, mixed_precision, quantization, optimizer,
              optimizer_impl, gradient_checkpointing, lora_rank, lora_targets, lora_dropout, trainable_layers,
              attention, loss, loss_chunk_tokens, trained_tokens, padded, device) -> StepSettings:
    """Check every setting (a clear error with the fix for each mistake) and build the :class:`StepSettings`."""
    arch = get_architecture(model)
    method = method.lower().replace("-", "_")
    if method == "frozen":
        method = "freeze"
    _check_choice("method", method, ESTIMATOR_METHODS)
    _check_choice("optimizer", optimizer, ESTIMATOR_OPTIMIZERS)
    _check_choice("attention", attention, ATTENTIONS)
    _check_choice("loss", loss, ("full", "trained", "chunked"))
    if loss == "trained" and not (trained_tokens and 0 < trained_tokens <= batch_size * seq_len):
        raise ValueError(f"estimate_memory: loss='trained' needs trained_tokens between 1 and batch_size x seq_len "
                         f"(got {trained_tokens}). Fix: count the labels != -100 of a batch, or use loss='full'.")
    _check_choice("optimizer_impl", optimizer_impl, ("fused", "foreach", "for-loop"))
    if param_dtype not in DTYPE_BYTES:
        raise ValueError(f"estimate_memory: param_dtype={param_dtype!r}. Fix: 'fp32', 'bf16' or 'fp16'.")
    if mixed_precision not in (None, "bf16", "fp16"):
        raise ValueError(f"estimate_memory: mixed_precision={mixed_precision!r}. Fix: None, 'bf16' or 'fp16'.")
    if mixed_precision and DTYPE_BYTES[param_dtype] != 4:
        raise ValueError("estimate_memory: mixed precision (autocast) keeps fp32 master weights. Fix: param_dtype='fp32', "
                         "or mixed_precision=None for pure bf16/fp16 training.")
    if method == "qlora" and quantization is None:
        quantization = "nf4-dq"
    _check_choice("quantization", quantization, QUANTIZATIONS)
    if quantization and method not in ("lora", "qlora"):
        raise ValueError(f"estimate_memory: quantised base weights cannot be trained ({method=}). Fix: method='qlora' (or 'lora').")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"estimate_memory: batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len}).")
    kind, hw = _target(device)
    if attention == "flash" and kind != "cuda":
        raise ValueError("estimate_memory: attention='flash' (FlashAttention-2) needs a CUDA GPU. Fix: attention='sdpa'.")
    if optimizer in ("adamw_8bit", "paged_adamw", "paged_adamw_8bit") and kind != "cuda":
        raise ValueError(f"estimate_memory: optimizer={optimizer!r} is a bitsandbytes CUDA optimizer. Fix: device='cuda' or a GPU preset.")
    targets = _lora_targets(lora_targets) if method in ("lora", "qlora") else ()
    L = arch.layers
    if method == "freeze":
        n_train = trainable_layers if trainable_layers is not None else max(1, L // 4)
        if not 1 <= n_train <= L:
            raise ValueError(f"estimate_memory: trainable_layers={n_train}, but the model has {L} layers. Fix: 1..{L}.")
    else:
        n_train = L if method == "full" else 0
    return StepSettings(arch=arch, method=method, batch_size=batch_size, seq_len=seq_len, param_dtype=param_dtype,
                mixed_precision=mixed_precision, quantization=quantization, optimizer=optimizer,
                optimizer_impl=optimizer_impl, gradient_checkpointing=gradient_checkpointing, lora_rank=lora_rank,
                targets=targets, lora_dropout=lora_dropout, n_train=n_train, attention=attention, loss=loss,
                loss_chunk_tokens=loss_chunk_tokens, trained_tokens=trained_tokens, padded=padded, kind=kind, hw=hw)
