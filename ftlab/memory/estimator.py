"""Will it fit? Peak training memory, predicted term by term from a model's config alone.

Most calculators multiply the weights by a constant (accelerate's ``estimate-memory`` says
"training with Adam ~ 4x the weights") and have no batch or sequence term at all. This one walks
through one training step the way PyTorch runs it and adds up every tensor that is alive:

* **persistent**: weights (the 4-bit part and the full-precision part separately), quantisation
  constants, LoRA adapters, optimizer states;
* **forward**: every tensor autograd *saves for backward*, layer by layer. These are exactly the
  tensors listed by transformers' Llama code and PyTorch's derivative formulas: RMSNorm keeps its
  fp32 input and ``rsqrt``, SDPA keeps q, k, v, its output and a log-sum-exp, SiLU keeps its input,
  the gate*up product keeps both factors, every trainable Linear keeps its input;
* **loss**: transformers upcasts the logits to fp32 before the cross-entropy, and at the start of
  backward three ``tokens x vocab`` fp32 buffers exist at once (log-probs, their gradient, the
  logits' gradient). For a small model with a 49k vocabulary this is the largest single item;
* **backward**: activations are freed layer by layer while gradients appear;
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

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

GiB = 2**30
MiB = 2**20

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
METHODS = ("full", "lora", "qlora", "freeze")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit", "sgd", "sgd_momentum")
QUANTIZATIONS = (None, "nf4", "nf4-dq", "int8")
ATTENTIONS = ("eager", "sdpa", "flash")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# bitsandbytes' NF4 layout: 64 weights per block share one fp32 absmax. Double quantisation stores
# those absmax values in 8 bits, in groups of 256 that share one fp32 scale (QLoRA paper, sec. 3).
NF4_BLOCK = 64
DQ_BLOCK = 256
# bitsandbytes' 8-bit optimizers: 1 byte per state value plus one fp32 absmax per 256 values;
# tensors with fewer than 4096 elements keep 32-bit states (bnb's min_8bit_size).
OPT8_BLOCK = 256
OPT8_MIN_SIZE = 4096


# --------------------------------------------------------------------------- architectures


@dataclass(frozen=True)
class Architecture:
    """The handful of numbers that decide a decoder-only transformer's memory."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int | None = None
    qkv_bias: bool = False
    mlp_bias: bool = False
    family: str = "llama"  # llama | qwen2 | mistral | gemma | gemma2

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``{name: (out_features, in_features)}`` of the Linear layers in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (self.q_dim, h), "k_proj": (self.kv_dim, h), "v_proj": (self.kv_dim, h),
            "o_proj": (h, self.q_dim), "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i),
        }

    def linear_biases(self) -> dict[str, int]:
        out = {}
        for name, (o, _) in self.linear_shapes().items():
            bias = self.qkv_bias if name in ("q_proj", "k_proj", "v_proj") else (self.mlp_bias if name in ("gate_proj", "up_proj", "down_proj") else False)
            out[name] = o if bias else 0
        return out

    @property
    def norms_per_layer(self) -> int:
        return 4 if self.family == "gemma2" else 2

    def layer_parameters(self) -> int:
        lin = sum(o * i for o, i in self.linear_shapes().values()) + sum(self.linear_biases().values())
        return lin + self.norms_per_layer * self.hidden

    def num_parameters(self) -> int:
        """Parameter count as ``sum(p.numel() for p in model.parameters())`` reports it (tied weights once)."""
        emb = self.vocab * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return emb + head + self.layers * self.layer_parameters() + self.hidden


def _arch(name, h, i, l, nh, kv, v, tied, hd=None, **kw):
    return Architecture(name=name, hidden=h, intermediate=i, layers=l, heads=nh, kv_heads=kv, vocab=v, tied=tied, head_dim=hd, **kw)


# Values from each model's published config.json on the Hugging Face hub.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    _arch("smollm2-135m", 576, 1536, 30, 9, 3, 49152, True, 64),
    _arch("smollm2-360m", 960, 2560, 32, 15, 5, 49152, True, 64),
    _arch("smollm2-1.7b", 2048, 8192, 24, 32, 32, 49152, True, 64),
    _arch("llama-3.2-1b", 2048, 8192, 16, 32, 8, 128256, True, 64),
    _arch("llama-3.2-3b", 3072, 8192, 28, 24, 8, 128256, True, 128),
    _arch("llama-3.1-8b", 4096, 14336, 32, 32, 8, 128256, False, 128),
    _arch("llama-3.1-70b", 8192, 28672, 80, 64, 8, 128256, False, 128),
    _arch("llama-2-7b", 4096, 11008, 32, 32, 32, 32000, False, 128),
    _arch("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, True, 64, qkv_bias=True, family="qwen2"),
    _arch("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 151936, True, 128, qkv_bias=True, family="qwen2"),
    _arch("qwen2.5-3b", 2048, 11008, 36, 16, 2, 151936, True, 128, qkv_bias=True, family="qwen2"),
    _arch("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, False, 128, qkv_bias=True, family="qwen2"),
    _arch("qwen2.5-14b", 5120, 13824, 48, 40, 8, 152064, False, 128, qkv_bias=True, family="qwen2"),
    _arch("qwen2.5-32b", 5120, 27648, 64, 40, 8, 152064, False, 128, qkv_bias=True, family="qwen2"),
    _arch("qwen2.5-72b", 8192, 29568, 80, 64, 8, 152064, False, 128, qkv_bias=True, family="qwen2"),
    _arch("mistral-7b-v0.1", 4096, 14336, 32, 32, 8, 32000, False, 128, family="mistral"),
    _arch("mistral-7b-v0.3", 4096, 14336, 32, 32, 8, 32768, False, 128, family="mistral"),
    _arch("gemma-2b", 2048, 16384, 18, 8, 1, 256000, True, 256, family="gemma"),
    _arch("gemma-7b", 3072, 24576, 28, 16, 16, 256000, True, 256, family="gemma"),
    _arch("gemma-2-2b", 2304, 9216, 26, 8, 4, 256000, True, 256, family="gemma2"),
    _arch("gemma-2-9b", 3584, 14336, 42, 16, 8, 256000, True, 256, family="gemma2"),
    _arch("gemma-2-27b", 4608, 36864, 46, 32, 16, 256000, True, 128, family="gemma2"),
]}

# Friendly spellings -> table keys.
_ALIASES = {
    "smollm2-135m-instruct": "smollm2-135m", "smollm2-360m-instruct": "smollm2-360m",
    "smollm2-1.7b-instruct": "smollm2-1.7b", "llama-3.2-1b-instruct": "llama-3.2-1b",
    "llama-3.2-3b-instruct": "llama-3.2-3b", "llama-3.1-8b-instruct": "llama-3.1-8b",
    "llama-3.1-70b-instruct": "llama-3.1-70b", "mistral-7b": "mistral-7b-v0.3",
    "mistral-7b-instruct-v0.3": "mistral-7b-v0.3", "mistral-7b-instruct-v0.1": "mistral-7b-v0.1",
    "gemma-2b-it": "gemma-2b", "gemma-7b-it": "gemma-7b", "gemma-2-2b-it": "gemma-2-2b",
    "gemma-2-9b-it": "gemma-2-9b", "gemma-2-27b-it": "gemma-2-27b", "7b": "llama-2-7b",
}
for _q in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"):
    _ALIASES[f"qwen2.5-{_q}-instruct"] = f"qwen2.5-{_q}"


def _from_config(cfg, name: str | None = None) -> Architecture:
    """An :class:`Architecture` from a transformers config object (or anything with its attributes)."""
    get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    if get("text_config") is not None and get("hidden_size") is None:  # multimodal wrapper
        return _from_config(get("text_config"), name)
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if get(k) is None]
    if missing:
        raise ValueError(f"estimate_memory: the config of {name or 'this model'} lacks {', '.join(missing)}; "
                         "only decoder-only transformers (Llama, Qwen2, Mistral, Gemma, ...) are supported.")
    model_type = str(get("model_type", "llama"))
    family = {"qwen2": "qwen2", "mistral": "mistral", "gemma": "gemma", "gemma2": "gemma2"}.get(model_type, "llama")
    heads = int(get("num_attention_heads"))
    return Architecture(
        name=str(name or get("_name_or_path") or model_type),
        hidden=int(get("hidden_size")), intermediate=int(get("intermediate_size")), layers=int(get("num_hidden_layers")),
        heads=heads, kv_heads=int(get("num_key_value_heads") or heads), vocab=int(get("vocab_size")),
        tied=bool(get("tie_word_embeddings", True)), head_dim=get("head_dim"),
        qkv_bias=bool(get("attention_bias", model_type == "qwen2")), mlp_bias=bool(get("mlp_bias", False)), family=family,
    )


def get_architecture(model) -> Architecture:
    """Resolve ``model`` to an :class:`Architecture`.

    ``model`` may be an :class:`Architecture`, a transformers config, a loaded model (its config is
    used), a key of :data:`ARCHITECTURES` (``"llama-3.1-8b"``), an ftlab model name (``"tiny"``,
    ``"smollm2-135m-instruct"``), a local folder with a ``config.json``, or a hub id whose config is
    already in the local cache. No weights are ever read.
    """
    if isinstance(model, Architecture):
        return model
    if hasattr(model, "config") and hasattr(model, "parameters"):  # a loaded model
        model = model.config
    if not isinstance(model, (str, os.PathLike)):
        return _from_config(model)
    name = str(model)
    key = name.lower().split("/")[-1]
    key = _ALIASES.get(key, key)
    if name == "tiny":
        from ftlab.models import TINY_CONFIG

        return _from_config({**TINY_CONFIG, "vocab_size": 49152, "model_type": "llama"}, "tiny")
    if key in ARCHITECTURES and not Path(name).is_dir():
        return ARCHITECTURES[key]
    path = Path(name)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise ValueError(f"estimate_memory: {path} has no config.json. Fix: point at a Hugging Face model folder.")
        return _from_config(json.loads(cfg_file.read_text()), path.name)
    try:
        from transformers import AutoConfig

        # local_files_only: a typo must fail at once with a clear message, not wait on the network
        return _from_config(AutoConfig.from_pretrained(name, local_files_only=True), name)
    except Exception as e:  # offline, typo, gated model...
        raise ValueError(
            f"estimate_memory: unknown model {name!r} and its config could not be loaded ({type(e).__name__}). "
            f"Fix: use one of {', '.join(sorted(ARCHITECTURES))}, a local folder with config.json, "
            "or pass a transformers config object (hub configs must already be in the local cache)."
        ) from e


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    """A training target: how much memory it has, and how much a training process can really use."""

    name: str
    total_gib: float
    usable_gib: float
    kind: str  # "cuda" | "cpu"
    note: str = ""


HARDWARE: dict[str, Hardware] = {h.name: h for h in [
    Hardware("cpu-8gb", 7.45, 5.0, "cpu", "laptop with 8 GB RAM; the OS, browser and Jupyter keep ~2.5 GiB"),
    Hardware("cpu-16gb", 14.9, 11.5, "cpu", "laptop with 16 GB RAM; the OS, browser and Jupyter keep ~3.5 GiB"),
    Hardware("cpu-32gb", 29.8, 25.5, "cpu", "workstation with 32 GB RAM"),
    Hardware("t4-16gb", 15.0, 14.5, "cuda", "NVIDIA T4 (Colab free tier); no bf16"),
    Hardware("rtx-3060-12gb", 12.0, 11.3, "cuda", "consumer GPU; the desktop may hold a few hundred MiB"),
    Hardware("rtx-4090-24gb", 23.6, 22.8, "cuda", "consumer GPU; the desktop may hold a few hundred MiB"),
    Hardware("l4-24gb", 22.0, 21.5, "cuda", "NVIDIA L4"),
    Hardware("a10g-24gb", 22.0, 21.5, "cuda", "NVIDIA A10G (AWS g5)"),
    Hardware("a100-40gb", 39.4, 38.8, "cuda", "NVIDIA A100 40 GB"),
    Hardware("a100-80gb", 79.1, 78.5, "cuda", "NVIDIA A100 80 GB"),
    Hardware("h100-80gb", 79.1, 78.5, "cuda", "NVIDIA H100 80 GB"),
    Hardware("h200-141gb", 139.8, 139.0, "cuda", "NVIDIA H200"),
    # 128 GB (119.2 GiB) of LPDDR5x shared by CPU and GPU. CUDA reports roughly the whole pool, but
    # the OS, desktop, page cache, the Python process itself and the data loader live in the same
    # memory; ~14 GiB for those is a realistic reserve, more with a desktop session and a browser.
    Hardware("dgx-spark", 119.2, 105.0, "cuda",
             "NVIDIA DGX Spark: 128 GB unified memory shared with the OS; ~105 GiB realistically usable for training"),
]}


def _target(device) -> tuple[str, Hardware | None]:
    if device is None or device == "cuda":
        return "cuda", None
    if device == "cpu":
        return "cpu", None
    if isinstance(device, Hardware):
        return device.kind, device
    key = str(device).lower()
    if key in HARDWARE:
        return HARDWARE[key].kind, HARDWARE[key]
    if key.startswith("cuda"):
        return "cuda", None
    raise ValueError(f"estimate_memory: unknown device {device!r}. Fix: 'cpu', 'cuda' or one of {', '.join(HARDWARE)}.")


# --------------------------------------------------------------------------- the estimate


@dataclass
class MemoryItem:
    """One line of the breakdown."""

    name: str
    bytes: int
    category: str
    note: str = ""


@dataclass
class MemoryEstimate:
    """The predicted peak and what it is made of.

    ``items`` are the tensors alive at the peak moment (they add up to ``total_bytes``);
    ``phases`` holds the total at every moment of the step; ``components`` lists every term
    (also those not alive at the peak, e.g. activations when the optimizer step is the peak).
    """

    model: str
    settings: dict
    items: list[MemoryItem]
    peak_phase: str
    phases: dict[str, int]
    components: list[MemoryItem] = field(default_factory=list)
    device: Hardware | None = None
    kind: str = "training"

    @property
    def total_bytes(self) -> int:
        return int(sum(i.bytes for i in self.items))

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GiB

    @property
    def tensor_bytes(self) -> int:
        """The peak without CUDA context/allocator overhead: what ``max_memory_allocated`` reports."""
        return int(sum(i.bytes for i in self.items if i.category != "CUDA overhead"))

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            out[it.category] = out.get(it.category, 0) + it.bytes
        return out

    def fits(self, device=None) -> bool:
        hw = _target(device)[1] if device is not None else self.device
        if hw is None:
            raise ValueError("MemoryEstimate.fits: give a hardware preset, e.g. fits('dgx-spark').")
        return self.total_bytes <= hw.usable_gib * GiB

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(it.category, it.name, _fmt(it.bytes), it.note) for it in self.items]

    def __str__(self) -> str:
        s = self.settings
        head = (f"{self.kind} memory for {self.model}: method={s.get('method')}, batch={s.get('batch_size')}, "
                f"seq={s.get('seq_len')}, dtype={s.get('param_dtype')}" + (f", mixed={s['mixed_precision']}" if s.get("mixed_precision") else "")
                + (f", quant={s['quantization']}" if s.get("quantization") else "")
                + (f", optimizer={s.get('optimizer')}" if self.kind == "training" else "")
                + (", checkpointing" if s.get("gradient_checkpointing") else ""))
        w = max([len(r[1]) for r in self.rows()] + [20])
        lines = [head, f"peak: {_fmt(self.total_bytes)} during {self.peak_phase}", ""]
        lines.append(f"{'category':<22} {'item':<{w}} {'size':>11}  note")
        lines.append("-" * (w + 50))
        for cat, name, size, note in self.rows():
            lines.append(f"{cat:<22} {name:<{w}} {size:>11}  {note}")
        lines.append("-" * (w + 50))
        lines.append(f"{'total':<22} {'':<{w}} {_fmt(self.total_bytes):>11}")
        if self.device is not None:
            verdict = "fits" if self.fits() else "does NOT fit"
            lines.append(f"{self.device.name}: {verdict} ({self.device.usable_gib:.1f} GiB usable of {self.device.total_gib:.1f} GiB)")
        if len(self.phases) > 1:
            lines.append("")
            lines.append("tensors alive at each moment of the step" + (" (CUDA overhead not included):" if self.tensor_bytes != self.total_bytes else ":"))
            for ph, b in self.phases.items():
                lines.append(f"  {ph:<44} {_fmt(b):>11}" + ("   <- peak" if ph == self.peak_phase else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{html.escape(n)}</td><td style='text-align:right'>{s}</td><td>{html.escape(t)}</td></tr>"
            for c, n, s, t in self.rows())
        verdict = ""
        if self.device is not None:
            ok = self.fits()
            verdict = (f"<p><b style='color:{'green' if ok else 'crimson'}'>{'fits' if ok else 'does not fit'}</b> on "
                       f"{html.escape(self.device.name)} ({self.device.usable_gib:.1f} GiB usable)</p>")
        phases = "".join(f"<tr><td>{html.escape(p)}</td><td style='text-align:right'>{_fmt(b)}</td></tr>" for p, b in self.phases.items())
        return (f"<p><b>{html.escape(self.model)}</b>: peak <b>{_fmt(self.total_bytes)}</b> during <i>{html.escape(self.peak_phase)}</i></p>"
                f"<table><tr><th>category</th><th>item</th><th>size</th><th>note</th></tr>{rows}"
                f"<tr><td><b>total</b></td><td></td><td style='text-align:right'><b>{_fmt(self.total_bytes)}</b></td><td></td></tr></table>"
                f"{verdict}<details><summary>total at each moment of the step</summary><table>{phases}</table></details>")


def _fmt(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def _lora_targets(targets) -> tuple[str, ...]:
    if targets in (None, "all-linear", "all_linear", "all"):
        return LINEARS
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in LINEARS]
    if bad:
        raise ValueError(f"estimate_memory: unknown LoRA target(s) {bad}. Fix: choose from {', '.join(LINEARS)} or 'all-linear'.")
    return tuple(targets)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"estimate_memory: {name}={value!r} is not supported. Fix: one of {', '.join(map(str, choices))}.")


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
            quarter of the layers, as ``ftlab.methods.prepare_model`` does).
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
    arch = get_architecture(model)
    method = method.lower().replace("-", "_")
    if method == "frozen":
        method = "freeze"
    _check_choice("method", method, METHODS)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
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

    L, H, I, V = arch.layers, arch.hidden, arch.intermediate, arch.vocab
    B, S = batch_size, seq_len
    T = B * S
    nh = arch.heads
    w_b = DTYPE_BYTES[param_dtype]  # storage of unquantised weights
    mixed = mixed_precision is not None
    m = 2 if (mixed or w_b == 2) else 4  # matmul outputs / activations
    r = 4 if w_b == 4 else 2  # residual stream (fp32 under autocast)
    lora = method in ("lora", "qlora")
    targets = _lora_targets(lora_targets) if lora else ()
    lora_b = 4  # peft keeps adapters in fp32 (autocast_adapter_dtype=True) even on a bf16 base
    shapes = arch.linear_shapes()
    biases = arch.linear_biases()
    if method == "freeze":
        n_train = trainable_layers if trainable_layers is not None else max(1, L // 4)
        if not 1 <= n_train <= L:
            raise ValueError(f"estimate_memory: trainable_layers={n_train}, but the model has {L} layers. Fix: 1..{L}.")
    else:
        n_train = L if method == "full" else 0

    # ---------------------------------------------------------------- parameters
    lin_params = sum(o * i for o, i in shapes.values())
    layer_other = arch.layer_parameters() - lin_params  # norms + biases
    emb = V * H
    head = 0 if arch.tied else V * H
    total_params = arch.num_parameters()
    comps: list[MemoryItem] = []  # every term, alive at the peak or not

    quant_bytes = 0.0
    const_bytes = 0.0
    if quantization:
        n_q = L * lin_params
        if quantization == "int8":
            quant_bytes = n_q * 1.0
            const_bytes = L * sum(o for o, _ in shapes.values()) * 4  # one fp32 scale per output row
        else:
            quant_bytes = n_q * 0.5
            const_bytes = nf4_constant_bytes(n_q, double_quant=(quantization == "nf4-dq")) + L * 7 * _NF4_PER_TENSOR(quantization)
        full_prec = total_params - n_q
        comps.append(MemoryItem(f"weights: {quantization} decoder Linear layers", int(quant_bytes), "weights",
                                f"{n_q / 1e6:.1f}M params x {'1 byte' if quantization == 'int8' else '0.5 byte'}"))
        comps.append(MemoryItem("quantisation constants", int(const_bytes), "quantisation constants",
                                {"nf4": "fp32 absmax per 64 weights", "nf4-dq": "8-bit absmax per 64 + fp32 per 256 blocks",
                                 "int8": "fp32 scale per output row"}[quantization]))
        comps.append(MemoryItem(f"weights: {param_dtype} embeddings, norms{'' if arch.tied else ', lm_head'}",
                                int(full_prec * w_b), "weights", f"{full_prec / 1e6:.1f}M params x {w_b} B"))
    else:
        comps.append(MemoryItem(f"weights ({param_dtype})", total_params * w_b, "weights", f"{total_params / 1e6:.1f}M params x {w_b} B"))

    lora_params = L * sum(lora_rank * (shapes[t][0] + shapes[t][1]) for t in targets) if lora else 0
    if lora:
        comps.append(MemoryItem(f"LoRA adapters r={lora_rank} ({', '.join(t.replace('_proj', '') for t in targets)})",
                                lora_params * lora_b, "LoRA adapters", f"{lora_params / 1e6:.2f}M params x {lora_b} B (peft keeps them fp32)"))

    # trainable parameters and their gradients, in the order backward produces them
    g_b = lora_b if lora else w_b
    if method == "full":
        train_layer = arch.layer_parameters()
        train_head = head + H + (emb if arch.tied else 0)  # lm_head (= embedding when tied) + final norm
        train_emb = 0 if arch.tied else emb
        trainable = total_params
        largest = max(emb, max(o * i for o, i in shapes.values()))
    elif method == "freeze":
        train_layer = arch.layer_parameters()
        train_head, train_emb = H, 0
        trainable = n_train * train_layer + H
        largest = max(o * i for o, i in shapes.values())
    else:
        train_layer = sum(lora_rank * (shapes[t][0] + shapes[t][1]) for t in targets)
        train_head, train_emb = 0, 0
        trainable = lora_params
        largest = max([lora_rank * max(shapes[t]) for t in targets] or [0])
    layer_trainable = [train_layer if (method != "freeze" or i >= L - n_train) else 0 for i in range(L)]
    grads_total = trainable * g_b
    comps.append(MemoryItem("gradients", grads_total, "gradients", f"{trainable / 1e6:.2f}M trainable params x {g_b} B"))

    # optimizer states
    s_b = g_b
    if optimizer in ("adamw", "paged_adamw"):
        opt_bytes = 2 * trainable * s_b
        opt_note = f"exp_avg + exp_avg_sq: 2 x {s_b} B per trainable param" + (" (paged: can spill to CPU RAM)" if optimizer.startswith("paged") else "")
    elif optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        opt_bytes = _opt8_bytes(arch, method, targets, lora_rank, n_train, trainable)
        opt_note = "2 x (1 B + fp32 absmax per 256) per param; tensors < 4096 elements stay 32-bit"
    elif optimizer == "sgd_momentum":
        opt_bytes = trainable * s_b
        opt_note = f"momentum buffer: {s_b} B per trainable param"
    else:
        opt_bytes = 0
        opt_note = "plain SGD keeps no state"
    comps.append(MemoryItem(f"optimizer states ({optimizer})", opt_bytes, "optimizer states", opt_note))

    # ---------------------------------------------------------------- activations
    def linear_needs_input(name: str, layer: int) -> bool:
        """Does this Linear's backward keep its (shared) input tensor?

        A trainable weight needs its input for the weight gradient. A LoRA adapter's A matrix keeps
        its input too, which is the shared tensor itself unless dropout or a dtype cast made a copy."""
        if layer_trainable[layer] == 0:
            return False
        if method in ("full", "freeze"):
            return True
        return name in targets and lora_dropout == 0 and m == lora_b

    def lora_input_copies(names, in_features, layer) -> float:
        """Extra saved bytes for the adapters' inputs (dropout copies / fp32 casts), beyond the shared input."""
        ts = [n for n in names if n in targets and layer_trainable[layer] > 0]
        if not ts:
            return 0
        if lora_dropout > 0:  # every adapter drops out its own copy; CPU keeps a float noise tensor, CUDA a bool mask
            per = T * in_features * lora_b + T * in_features * (lora_b if kind == "cpu" else 1)
            return len(ts) * per
        if m != lora_b:  # the input is cast to the adapter's fp32 once per adapter
            return len(ts) * T * in_features * lora_b
        return 0

    def lora_mid(names, layer) -> float:
        return sum(T * lora_rank * lora_b for n in names if n in targets and layer_trainable[layer] > 0)

    def linear_trains(name: str, layer: int) -> bool:
        return layer_trainable[layer] > 0 and (method in ("full", "freeze") or name in targets)

    repeat_kv = attention == "eager" or (attention == "sdpa" and padded and arch.kv_heads != arch.heads)
    kv_saved = arch.q_dim if repeat_kv else arch.kv_dim

    def layer_saved(i: int) -> dict[str, float]:
        """Bytes autograd keeps for layer i's backward, by part."""
        active = layer_trainable[i] > 0 or (lora and bool(targets))
        if method == "freeze" and i < L - n_train:
            active = False
        if not active:
            return {"norms": 0, "attention": 0, "mlp": 0}
        input_grad = not (i == 0 and method != "full") and not (method == "freeze" and i == L - n_train)
        norm_w = method in ("full", "freeze")
        norms = 0.0
        # input_layernorm: fp32 input + rsqrt for d/dx, normalised x for d/dweight
        if input_grad:
            norms += T * H * 4 + T * 4
        if norm_w:
            norms += T * H * r
        norms += T * H * 4 + T * 4 + (T * H * r if norm_w else 0)  # post_attention_layernorm (grad always flows here)
        if arch.family == "gemma2":
            norms *= 2  # pre- and post- norms around both blocks
        attn = 0.0
        qkv = ("q_proj", "k_proj", "v_proj")
        if any(linear_needs_input(n, i) for n in qkv):
            attn += T * H * m
        attn += lora_input_copies(qkv, H, i) + lora_mid(qkv, i) + lora_mid(("o_proj",), i) + lora_input_copies(("o_proj",), arch.q_dim, i)
        attn_grad = input_grad or any(linear_trains(n, i) for n in qkv)
        if attn_grad:
            if attention == "eager":
                attn += T * arch.q_dim * m * 3  # q, repeated k, repeated v (the matmuls keep them)
                attn += B * nh * S * S * 4 + (B * nh * S * S * m if m != 4 else 0)  # softmax probs (fp32) (+ their cast)
                if linear_needs_input("o_proj", i):
                    attn += T * arch.q_dim * m  # transposed output made contiguous for o_proj
            else:
                attn += T * arch.q_dim * m + 2 * T * kv_saved * m  # q, k, v
                attn += T * arch.q_dim * m  # output (SDPA's backward needs it)
                attn += B * nh * S * 4  # log-sum-exp
                if attention == "sdpa" and padded:
                    attn += B * S * S * m  # each layer's SDPA converts the bool mask to a float one and keeps it
        elif linear_needs_input("o_proj", i):
            attn += T * arch.q_dim * m
        mlp = 0.0
        if linear_needs_input("gate_proj", i) or linear_needs_input("up_proj", i):
            mlp += T * H * m
        mlp += lora_input_copies(("gate_proj", "up_proj"), H, i) + lora_mid(("gate_proj", "up_proj", "down_proj"), i)
        mlp += lora_input_copies(("down_proj",), I, i)
        mlp += 3 * T * I * m  # gate (act. input), act(gate), up: the product's two factors
        if linear_needs_input("down_proj", i):
            mlp += T * I * m  # act(gate) * up, the input of down_proj
        return {"norms": norms, "attention": attn, "mlp": mlp}

    saved = [layer_saved(i) for i in range(L)]
    saved_tot = [sum(s.values()) for s in saved]
    active_layers = [i for i in range(L) if saved_tot[i] > 0]
    ckpt = [T * H * r if (gradient_checkpointing and saved_tot[i] > 0) else 0 for i in range(L)]
    stored = ckpt if gradient_checkpointing else saved_tot

    # final norm + lm_head input
    any_grad = bool(active_layers) or method == "full"
    head_saved = (T * H * 4 + T * 4 if any_grad else 0) + (T * H * r if method in ("full", "freeze") else 0)
    if method == "full":  # lm_head's input, for the lm_head (embedding) gradient: only the gathered rows with loss="trained"
        head_saved += (trained_tokens if loss == "trained" else T) * H * m
    inputs = 4 * T * 8  # input_ids, attention mask, labels, shifted labels (int64)
    emb_saved = T * 8 if method == "full" else 0  # embedding backward keeps the indices
    rope = 2 * S * arch.hd * m  # cos, sin
    shared_mask = (B * S * S if (padded and attention == "sdpa") else 0) + (B * S * S * m if attention == "eager" else 0)

    # logits and loss buffers
    Tl = {"chunked": min(T, loss_chunk_tokens), "trained": trained_tokens}.get(loss, T)
    logits_fwd = Tl * V * m + Tl * V * 4 + (Tl * V * 4 if m != 4 else 0)
    logits_bwd = 3 * Tl * V * 4
    logits_note = {"full": "fp32 log-probs + their grad + grad of logits (tokens x vocab each)",
                   "trained": f"the same 3 fp32 buffers, for the {trained_tokens} trained tokens only",
                   "chunked": f"chunks of {loss_chunk_tokens} tokens: 3 fp32 tokens x vocab buffers per chunk"}[loss]

    # transients inside one layer (above what the layer keeps)
    dq_w = (max(o * i for o, i in shapes.values()) * m) if quantization else 0  # de-quantised weight for one matmul
    if attention == "eager":
        attn_bwd = 2 * B * nh * S * S * 4
        attn_fwd = B * nh * S * S * (m + 4)
    else:
        attn_bwd = T * (2 * arch.q_dim + 2 * kv_saved) * m
        attn_fwd = T * arch.q_dim * m * 2
    mlp_bwd = 3 * T * I * m
    layer_bwd_tmp = max(attn_bwd, mlp_bwd) + 2 * T * H * r + dq_w
    layer_fwd_tmp = max(attn_fwd, 3 * T * I * m) + 2 * T * H * r + dq_w
    # Autocast casts every fp32 Linear weight to 16 bits. The cast copies stay in autocast's cache until
    # the forward's autocast region ends, and each one is also saved by its matmul for backward, so
    # without checkpointing they live until that layer's backward; with checkpointing only the
    # recomputed layer's copies (and lm_head's) exist during backward. 4-bit weights are not cast.
    mp_layer = (0 if quantization else lin_params) * 2 if mixed else 0
    mp_head = V * H * 2 if mixed else 0

    # ---------------------------------------------------------------- CUDA overhead (labelled)
    persistent_weights = sum(c.bytes for c in comps if c.category in ("weights", "quantisation constants", "LoRA adapters"))

    # ---------------------------------------------------------------- the timeline
    base = persistent_weights + opt_bytes + inputs
    grad_head = train_head * g_b
    grad_layers = [t * g_b for t in layer_trainable]
    grad_emb = train_emb * g_b
    phases: dict[str, int] = {}
    detail: dict[str, dict] = {}

    def moment(name, act_layers: dict, extra: dict):
        total = base + sum(act_layers.values()) + sum(extra.values())
        phases[name] = int(total)
        detail[name] = {"act": act_layers, "extra": extra}

    acts_all = {i: stored[i] for i in range(L)}
    fwd_common = {"rope cos/sin + masks": rope + shared_mask, "saved: embedding indices": emb_saved}
    mp_key = "autocast 16-bit weight copies"

    def mp(n_layers: int, with_head: bool) -> dict:
        return {mp_key: n_layers * mp_layer + (mp_head if with_head else 0)} if mixed else {}

    mp_bwd = mp(1 if gradient_checkpointing else L, True)
    if gradient_checkpointing and active_layers:
        last = active_layers[-1]
        moment("forward: inside a layer (checkpointed)", {j: stored[j] for j in range(last)},
               {**fwd_common, **mp(last + 1, False), "one layer's working tensors": saved_tot[last] + layer_fwd_tmp})
    moment("forward: end (loss)", acts_all, {**fwd_common, **mp(L, True), "saved: final norm + lm_head input": head_saved,
                                             "logits + cross-entropy buffers": logits_fwd})
    moment("backward: start (loss gradient)", acts_all, {**fwd_common, **mp_bwd, "saved: final norm + lm_head input": head_saved,
                                                         "logits + cross-entropy buffers": logits_bwd})
    moment("backward: lm_head", acts_all, {**fwd_common, **mp_bwd, "saved: final norm + lm_head input": head_saved,
                                           "logits gradient": Tl * V * m + (Tl * V * 4 if m != 4 else 0),
                                           "gradients so far": grad_head})
    worst_layer, worst_total = None, -1
    for i in reversed(range(L)):
        if saved_tot[i] == 0 and grad_layers[i] == 0:
            continue
        act = {j: stored[j] for j in range(i)}
        if gradient_checkpointing:
            act[i] = ckpt[i]
        extra = {**fwd_common, **mp(1 if gradient_checkpointing else i + 1, False), "this layer's activations" + (" (recomputed)" if gradient_checkpointing else ""): saved_tot[i],
                 "backward temporaries": layer_bwd_tmp, "gradients so far": grad_head + sum(grad_layers[i:])}
        tot = base + sum(act.values()) + sum(extra.values())
        if tot > worst_total:
            worst_layer, worst_total = (i, act, extra), tot
    if worst_layer is not None:
        i, act, extra = worst_layer
        moment(f"backward: decoder layer {i}", act, extra)
    # Tied weights get two gradients (from lm_head early, from the embedding last). Autograd's input
    # buffer holds the first until the second arrives and then adds them out of place: for a moment
    # three vocab x hidden tensors exist (first, second, sum).
    emb_tmp = 2 * emb * g_b if (method == "full" and arch.tied) else 0
    moment("backward: end (embedding gradient)", {}, {"gradients so far": grad_head + sum(grad_layers) + grad_emb,
                                                       "embedding gradient before accumulation": emb_tmp})
    if optimizer_impl == "fused" or optimizer not in ("adamw",):
        opt_tmp = 0
        if optimizer == "sgd" or optimizer == "sgd_momentum":
            opt_tmp = 0  # in-place updates (weight decay 0)
    elif optimizer_impl == "foreach":
        opt_tmp = trainable * s_b
    else:
        opt_tmp = 2 * largest * s_b
    moment("optimizer step", {}, {"gradients so far": grads_total, "optimizer temporaries": opt_tmp})

    peak_phase = max(phases, key=lambda p: phases[p])
    d = detail[peak_phase]

    # ---------------------------------------------------------------- items alive at the peak
    items = [c for c in comps if c.category in ("weights", "quantisation constants", "LoRA adapters")]
    items.append(MemoryItem(f"optimizer states ({optimizer})", opt_bytes, "optimizer states", opt_note))
    g_now = d["extra"].get("gradients so far", 0)
    if g_now:
        items.append(MemoryItem("gradients" + ("" if g_now == grads_total else " (produced so far)"), int(g_now), "gradients",
                                f"{trainable / 1e6:.2f}M trainable params x {g_b} B" if g_now == grads_total else "layers already back-propagated"))
    act_layers = d["act"]
    if act_layers:
        n = len([v for v in act_layers.values() if v])
        if gradient_checkpointing:
            items.append(MemoryItem(f"activations: layer-input checkpoints ({n} layers)", int(sum(act_layers.values())), "activations",
                                    f"{_fmt(T * H * r)} per layer (B x S x hidden x {r} B)"))
        else:
            for part, label in (("attention", "attention"), ("mlp", "MLP"), ("norms", "norms")):
                b = sum(saved[j][part] for j in act_layers)
                per = saved[max(act_layers)][part]
                items.append(MemoryItem(f"activations: {label} ({n} layers)", int(b), "activations", f"{_fmt(per)} per layer"))
    notes = {
        "logits + cross-entropy buffers": logits_note if "start" in peak_phase else "logits (model dtype) + fp32 upcast + log-probs",
        "saved: final norm + lm_head input": "final RMSNorm input/rsqrt (+ lm_head input when it trains)",
        "this layer's activations": "everything one layer keeps for backward",
        "this layer's activations (recomputed)": "checkpointing re-runs this layer's forward in backward",
        "backward temporaries": "gradients of the MLP/attention intermediates inside one layer",
        "rope cos/sin + masks": "shared by all layers",
        "autocast 16-bit weight copies": "autocast casts fp32 Linear weights to 16 bits; backward keeps the copies",
        "embedding gradient before accumulation": "tied weights: embedding's dense gradient + its out-of-place sum with lm_head's",
        "optimizer temporaries": {"foreach": "torch's foreach AdamW: sqrt(v) for all params at once",
                                  "for-loop": "sqrt(v)/bias-correction of the largest parameter"}.get(optimizer_impl, ""),
        "one layer's working tensors": "intermediates of the layer being run",
    }
    cats = {"logits + cross-entropy buffers": "logits & loss", "logits gradient": "logits & loss",
            "saved: final norm + lm_head input": "activations", "saved: embedding indices": "activations",
            "this layer's activations": "activations", "this layer's activations (recomputed)": "activations",
            "rope cos/sin + masks": "activations", "autocast 16-bit weight copies": "transient",
            "one layer's working tensors": "transient"}
    for k, v in d["extra"].items():
        if k == "gradients so far" or not v:
            continue
        items.append(MemoryItem(k, int(v), cats.get(k, "transient"), notes.get(k, "")))
    items.append(MemoryItem("inputs: ids, mask, labels", inputs, "inputs", "int64 tensors of the batch"))
    allocated = sum(i.bytes for i in items)
    if kind == "cuda":
        items += cuda_overhead_items(allocated)

    # all components, for teaching views (sizes of the big terms whether or not alive at the peak)
    per_layer = saved[active_layers[-1]] if active_layers else {"norms": 0, "attention": 0, "mlp": 0}
    n_act = len(active_layers)
    comps.append(MemoryItem("activations: attention (all layers)", int(per_layer["attention"] * n_act), "activations", f"{_fmt(per_layer['attention'])} per layer"))
    comps.append(MemoryItem("activations: MLP (all layers)", int(per_layer["mlp"] * n_act), "activations", f"{_fmt(per_layer['mlp'])} per layer"))
    comps.append(MemoryItem("activations: norms (all layers)", int(per_layer["norms"] * n_act), "activations", f"{_fmt(per_layer['norms'])} per layer"))
    if gradient_checkpointing:
        comps.append(MemoryItem("activations: checkpoints (all layers)", int(sum(ckpt)), "activations", "what checkpointing keeps instead"))
    comps.append(MemoryItem("logits + cross-entropy buffers", int(logits_bwd), "logits & loss", logits_note))

    settings = dict(method=method, batch_size=B, seq_len=S, param_dtype=param_dtype, mixed_precision=mixed_precision,
                    quantization=quantization, optimizer=optimizer, optimizer_impl=optimizer_impl,
                    gradient_checkpointing=gradient_checkpointing, lora_rank=lora_rank if lora else None,
                    lora_targets=list(targets) if lora else None, lora_dropout=lora_dropout if lora else None,
                    trainable_layers=n_train if method == "freeze" else None, attention=attention, loss=loss,
                    trained_tokens=trained_tokens if loss == "trained" else None, padded=padded, device=hw.name if hw else kind, trainable_params=trainable, total_params=total_params)
    return MemoryEstimate(model=arch.name, settings=settings, items=items, peak_phase=peak_phase, phases=phases,
                          components=comps, device=hw)


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


def cuda_overhead_items(allocated: int) -> list[MemoryItem]:
    """What ``nvidia-smi`` shows on top of the tensors: labelled, and not part of ``tensor_bytes``."""
    return [
        MemoryItem("CUDA context + kernels + cuBLAS workspace", int(0.6 * GiB), "CUDA overhead",
                   "per process, ~0.4-1 GiB depending on GPU and libraries (not tensors)"),
        MemoryItem("caching-allocator slack (reserved > allocated)", int(0.05 * allocated), "CUDA overhead",
                   "~5 % fragmentation typical for training"),
    ]


# --------------------------------------------------------------------------- inference


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


# --------------------------------------------------------------------------- fit and advice


@dataclass
class Advice:
    """Does a configuration fit a device, how far can it be pushed, and what each change saves."""

    estimate: MemoryEstimate
    device: Hardware
    fits: bool
    usable_bytes: int
    largest_batch_size: int
    largest_seq_len: int
    changes: list[tuple[str, int, int]]  # (change, new total bytes, saving in bytes)

    def __str__(self) -> str:
        e = self.estimate
        lines = [f"{e.model} on {self.device.name}: {_fmt(e.total_bytes)} needed, {_fmt(self.usable_bytes)} usable -> "
                 + ("FITS" if self.fits else "DOES NOT FIT") + f" (peak during {e.peak_phase})",
                 f"  largest batch size at seq {e.settings['seq_len']}: {self.largest_batch_size or 'none (even batch 1 does not fit)'}",
                 f"  largest sequence length at batch {e.settings['batch_size']}: {self.largest_seq_len or 'none'}"]
        if self.changes:
            lines.append("  what each change does (alone):")
            for name, total, saving in self.changes:
                ok = "fits" if total <= self.usable_bytes else "still too big"
                effect = f"saves {_fmt(saving):>11}" if saving >= 0 else f"COSTS {_fmt(-saving):>11}"
                lines.append(f"    {name:<42} {_fmt(total):>11}  {effect}  ({ok})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(str(self)) + "</pre>"


def _largest(fn, lo: int, hi: int, usable: int) -> int:
    """Largest x in [lo, hi] with fn(x) <= usable (fn increasing); 0 if none."""
    if fn(lo) > usable:
        return 0
    x = lo
    while x * 2 <= hi and fn(x * 2) <= usable:
        x *= 2
    a, b = x, min(x * 2, hi)  # fn(a) fits, fn(b) may not
    while b - a > 1:
        mid = (a + b) // 2
        if fn(mid) <= usable:
            a = mid
        else:
            b = mid
    return b if fn(b) <= usable else a


def advise(model, device="dgx-spark", max_seq_len: int = 131072, **settings) -> Advice:
    """Fit check on ``device`` plus the largest batch / sequence length and the saving of each change.

    Example:
        >>> a = advise("llama-3.1-8b", "rtx-4090-24gb", method="qlora", param_dtype="bf16", batch_size=4, seq_len=2048)
        >>> a.fits, a.changes[0][0]
        (False, 'gradient checkpointing')
    """
    kind, hw = _target(device)
    if hw is None:
        raise ValueError(f"advise: give a hardware preset, one of {', '.join(HARDWARE)}.")
    settings["device"] = hw.name
    est = estimate_memory(model, **settings)
    usable = int(hw.usable_gib * GiB)
    seq = est.settings["seq_len"]
    bs = est.settings["batch_size"]
    largest_b = _largest(lambda b: estimate_memory(model, **{**settings, "batch_size": b}).total_bytes, 1, 4096, usable)
    largest_s = _largest(lambda s: estimate_memory(model, **{**settings, "seq_len": s}).total_bytes, 1, max_seq_len, usable)
    trials = []
    s = est.settings
    if not s["gradient_checkpointing"]:
        trials.append(("gradient checkpointing", {"gradient_checkpointing": True}))
    if s["method"] == "full":
        trials.append(("LoRA (r=16, all linear layers)", {"method": "lora"}))
    if s["method"] in ("full", "lora"):
        trials.append(("QLoRA (NF4 base + LoRA)", {"method": "qlora", "quantization": "nf4-dq"}))
    if s["optimizer"] == "adamw" and kind == "cuda" and s["method"] in ("full", "freeze"):
        trials.append(("8-bit AdamW", {"optimizer": "adamw_8bit"}))
    if s["loss"] == "full":
        trials.append(("chunked loss (1024 tokens)", {"loss": "chunked"}))
    if s["param_dtype"] == "fp32" and not s["mixed_precision"] and kind == "cuda":
        trials.append(("bf16 weights", {"param_dtype": "bf16"}))
    if bs > 1:
        trials.append((f"batch {bs} -> {bs // 2} (2x gradient accumulation)", {"batch_size": bs // 2}))
    changes = []
    for name, ch in trials:
        try:
            new = estimate_memory(model, **{**settings, **ch}).total_bytes
        except ValueError:
            continue
        changes.append((name, new, est.total_bytes - new))
    changes.sort(key=lambda c: -c[2])
    return Advice(estimate=est, device=hw, fits=est.total_bytes <= usable, usable_bytes=usable,
                  largest_batch_size=largest_b, largest_seq_len=largest_s, changes=changes)


# --------------------------------------------------------------------------- the classic exercise


def worked_example_7b(model: str = "llama-2-7b", batch_size: int = 4, seq_len: int = 2048) -> list[tuple[str, float, str]]:
    """"How much memory to fine-tune a 7B model in FP16 with gradient checkpointing, seq 2048, batch 4?"

    The usual recipe: fp16 mixed precision (fp32 master weights, autocast to fp16), AdamW, gradient
    checkpointing, SDPA attention, no padding. Returns rows ``(term, GiB, how it is computed)``:
    every term first, then the sum of all terms (which never are all alive at once) and the real
    peak from :func:`estimate_memory`, with the moment it happens.

    Example:
        >>> rows = worked_example_7b()
        >>> rows[-1][0].startswith("peak")
        True
    """
    arch = get_architecture(model)
    est = estimate_memory(arch, method="full", batch_size=batch_size, seq_len=seq_len, param_dtype="fp32",
                          mixed_precision="fp16", optimizer="adamw", gradient_checkpointing=True, padded=False, device="cuda")
    P = arch.num_parameters()
    T = batch_size * seq_len
    H, V, L = arch.hidden, arch.vocab, arch.layers
    lin = L * sum(o * i for o, i in arch.linear_shapes().values())
    layer = next(c for c in est.components if c.name.startswith("activations: MLP")).bytes / max(L, 1)
    layer += (next(c for c in est.components if c.name.startswith("activations: attention")).bytes
              + next(c for c in est.components if c.name.startswith("activations: norms")).bytes) / max(L, 1)
    terms = [
        ("fp32 master weights", 4 * P, f"{P / 1e9:.2f}B params x 4 B"),
        ("fp32 gradients", 4 * P, f"{P / 1e9:.2f}B x 4 B"),
        ("AdamW states (m, v)", 8 * P, f"{P / 1e9:.2f}B x 2 x 4 B"),
        ("fp16 weight copies made by autocast", 2 * (lin + V * H), "Linear weights + lm_head x 2 B, held during the forward"),
        ("checkpoints: one hidden state per layer", L * T * H * 4, f"{L} layers x {T} tokens x {H} x 4 B (fp32 residual stream)"),
        ("one layer recomputed in backward", layer, "everything a layer keeps for backward (q, k, v, MLP, norms)"),
        ("logits + fp32 cross-entropy buffers", 3 * T * V * 4, f"3 x {T} tokens x {V} vocab x 4 B at the start of backward"),
    ]
    rows = [("parameters (billions)", P / 1e9, f"{L} layers x {arch.layer_parameters() / 1e6:.1f}M + embeddings")]
    rows += [(name, b / GiB, how) for name, b, how in terms]
    rows.append(("sum of all terms (never all alive at once)", sum(b for _, b, _ in terms) / GiB, "the naive answer"))
    alive = ", ".join(f"{i.name} {i.bytes / GiB:.1f}" for i in est.items if i.bytes > 0.05 * GiB and i.category != "CUDA overhead")
    rows.append((f"peak: {est.peak_phase}", est.tensor_bytes / GiB, f"alive then (GiB): {alive}"))
    return rows


def format_worked_example(rows) -> str:
    return "\n".join(f"{name:<52} {gib:>9.2f}  {how}" for name, gib, how in rows)


# --------------------------------------------------------------------------- command line


def cli_main(argv: list[str] | None = None) -> int:
    """``ftlab estimate --model llama-3.1-8b --method qlora --batch-size 4 --seq-len 2048 --device dgx-spark``."""
    p = argparse.ArgumentParser(prog="ftlab estimate", description="Predict peak training (or inference) memory, term by term.")
    p.add_argument("--model", required=True, help=f"table key ({', '.join(sorted(ARCHITECTURES))}), 'tiny', a folder or a config id")
    p.add_argument("--method", default="full", choices=METHODS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weight storage dtype")
    p.add_argument("--mixed-precision", default=None, choices=["bf16", "fp16"])
    p.add_argument("--quantization", default=None, choices=["nf4", "nf4-dq", "int8"])
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--optimizer-impl", default="fused", choices=["fused", "foreach", "for-loop"])
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-targets", default="all-linear")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--trainable-layers", type=int, default=None)
    p.add_argument("--attention", default="sdpa", choices=ATTENTIONS)
    p.add_argument("--loss", default="full", choices=["full", "trained", "chunked"],
                   help="full: logits at every position (transformers); trained: only at --trained-tokens positions (ftlab.train)")
    p.add_argument("--trained-tokens", type=int, default=None, help="with --loss trained: positions with a label per micro-batch")
    p.add_argument("--no-padding", action="store_true", help="batches without padding (packed / equal length)")
    p.add_argument("--device", default="cuda", help=f"cpu, cuda or one of {', '.join(HARDWARE)}")
    p.add_argument("--advise", action="store_true", help="also: largest batch/sequence that fits and what each change saves")
    p.add_argument("--inference", action="store_true", help="serving memory (weights + KV cache) instead of training")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    a = p.parse_args(argv)
    try:
        if a.inference:
            est = estimate_inference_memory(a.model, batch_size=a.batch_size, context_len=a.seq_len,
                                            param_dtype=a.dtype, quantization=a.quantization, device=a.device)
        else:
            kw = dict(method=a.method, batch_size=a.batch_size, seq_len=a.seq_len, param_dtype=a.dtype,
                      mixed_precision=a.mixed_precision, quantization=a.quantization, optimizer=a.optimizer,
                      optimizer_impl=a.optimizer_impl, gradient_checkpointing=a.checkpointing, lora_rank=a.lora_rank,
                      lora_targets=a.lora_targets, lora_dropout=a.lora_dropout, trainable_layers=a.trainable_layers,
                      attention=a.attention, loss=a.loss, padded=not a.no_padding)
            est = estimate_memory(a.model, device=a.device, trained_tokens=a.trained_tokens, **kw)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    if a.json:
        print(json.dumps({"model": est.model, "settings": est.settings, "total_bytes": est.total_bytes,
                          "peak_phase": est.peak_phase, "items": [asdict(i) for i in est.items], "phases": est.phases}, indent=2))
        return 0
    print(est)
    if a.advise and not a.inference:
        if est.device is None:
            print("\n(--advise needs a hardware preset as --device, e.g. --device dgx-spark)")
        else:
            print()
            if a.loss == "trained":  # the advice varies the batch, so a fixed count of trained tokens cannot follow it
                print("(the advice below assumes --loss full: an upper bound for ftlab.train)")
                kw["loss"] = "full"
            print(advise(a.model, a.device, **kw))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
