"""The handful of numbers that decide a decoder-only transformer's memory, for the models of the course.

:func:`get_architecture` turns a table key, a transformers config, a loaded model or a model folder
into an :class:`Architecture`; no weights are ever read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# The Linear layers of one decoder layer (what LoRA's "all-linear" targets).
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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

