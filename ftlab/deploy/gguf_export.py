"""Export a merged Hugging Face model to one GGUF file: weights, config, tokenizer and chat template.

GGUF is the single-file format of llama.cpp, Ollama and LM Studio. We write it with the pinned
``gguf`` package (llama.cpp's own Python writer), for the Llama family the course uses:

* ``llama`` (Llama 2/3 without rope scaling, SmolLM2) and ``mistral`` -> GGUF architecture ``llama``;
* ``qwen2`` -> GGUF architecture ``qwen2``.

Three details decide whether another program reads the file back *exactly*:

1. **Tensor names** follow llama.cpp (``blk.0.attn_q.weight``...); ``gguf.get_tensor_name_map``
   knows them for every architecture.
2. **Q/K permutation.** llama.cpp's rotary embedding pairs neighbouring dimensions (0,1), (2,3)...
   while Hugging Face Llama pairs the two halves (0, d/2), (1, d/2+1)... so for the ``llama``
   architecture the rows of ``q_proj`` and ``k_proj`` are reordered on export
   (:func:`permute_qk`); transformers undoes it on load. Qwen2 in llama.cpp uses the Hugging Face
   (NEOX) order, so nothing is permuted there. Get this wrong and the file still loads: it just
   gives different answers. Only the round trip (:mod:`ftlab.deploy.roundtrip`) catches it.
3. **The tokenizer** travels as metadata: the byte-level BPE vocabulary and merges, each token's
   type (control tokens such as ``<|im_end|>`` must stay whole), the bos/eos/pad ids and the chat
   template. A file without the chat template would format every prompt differently from training.

Types: ``F32``, ``F16``, ``BF16`` (just casts) and the block quantisations ``gguf.quants`` can
*produce*: ``Q8_0``, ``Q5_1``, ``Q5_0``, ``Q4_1``, ``Q4_0`` (32 weights share one scale; Q8_0 stores
8 bits + a 16-bit scale per weight block = 8.5 bits/weight, Q4_0 4.5). The K-quants (Q4_K_M...) need
llama.cpp's C quantiser (``llama-quantize``). As llama.cpp does, 1-D tensors (norms, biases) stay
F32, and for the 4/5-bit types the token embedding (which is also the output layer when tied) is
kept at Q8_0: it is the tensor most sensitive to rounding.

Example:
    >>> path = export_gguf("runs/merged", "runs/export/model-q8_0.gguf", "Q8_0")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

# transformers model_type -> the GGUF architecture llama.cpp uses for it
SUPPORTED_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
FLOAT_TYPES = ("F32", "F16", "BF16")
QUANT_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
GGUF_TYPES = FLOAT_TYPES + QUANT_TYPES
# Bits per weight of each type (block formats: 32 weights + their scale/offset in one block)
BITS_PER_WEIGHT = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q5_1": 6.0, "Q5_0": 5.5,
                   "Q4_1": 5.0, "Q4_0": 4.5}
_FILE_TYPE = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
              "Q5_1": "MOSTLY_Q5_1", "Q5_0": "MOSTLY_Q5_0", "Q4_1": "MOSTLY_Q4_1", "Q4_0": "MOSTLY_Q4_0"}
# llama.cpp's token types
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


class GGUFExportError(ValueError):
    """The model or tokenizer cannot be written to GGUF by this exporter."""


# --------------------------------------------------------------------------- checks


def check_architecture(config) -> str:
    """The GGUF architecture for a transformers config, or a clear error listing what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(
            f"export_gguf: architecture {model_type!r} is not supported. ftlab's GGUF writer handles "
            f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))} (the Llama family). Fix: for other models use "
            "llama.cpp's convert_hf_to_gguf.py on the merged folder."
        )
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type != "default":
        raise GGUFExportError(
            f"export_gguf: rope scaling {rope_type!r} (e.g. Llama 3.1/3.2) is not written by ftlab's exporter, "
            "and transformers would not read it back from a GGUF. Fix: use llama.cpp's convert_hf_to_gguf.py."
        )
    return SUPPORTED_ARCHITECTURES[model_type]


def gguf_size_bytes(n_params: int, gguf_type: str) -> float:
    """Approximate file size of ``n_params`` weights stored as ``gguf_type`` (metadata not counted)."""
    return n_params * BITS_PER_WEIGHT[gguf_type.upper()] / 8


# --------------------------------------------------------------------------- tensors


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a Q or K projection from Hugging Face's rotary layout to llama.cpp's.

    Within each head, HF rotates dimension i with i + d/2; llama.cpp rotates 2i with 2i+1. The rows
    ``[h, half, pair]`` become ``[h, pair, half]``: the inverse of transformers' ``_reverse_permute_weights``.
    """
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _tensor_type(name: str, array: np.ndarray, gguf_type: str) -> str:
    """The storage type of one tensor: 1-D and odd-shaped tensors stay F32; embeddings keep Q8_0 under 4/5 bits."""
    if array.ndim < 2 or gguf_type == "F32":
        return "F32"
    if gguf_type in QUANT_TYPES and array.shape[-1] % 32 != 0:  # a block holds 32 weights of one row
        return "F16"
    if gguf_type in QUANT_TYPES and gguf_type != "Q8_0" and name in ("token_embd.weight", "output.weight"):
        return "Q8_0"
    return gguf_type


def _encode(array: np.ndarray, ttype: str):
    """(data, raw_dtype) for ``GGUFWriter.add_tensor``: plain numpy for F32/F16, packed bytes otherwise."""
    import gguf

    if ttype == "F32":
        return array.astype(np.float32), None
    if ttype == "F16":
        return array.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType[ttype]
    return gguf.quants.quantize(array.astype(np.float32), qtype), qtype


def _named_tensors(model, arch: str):
    """Yield ``(gguf_name, float32 array)`` for every weight, Q/K permuted for the llama architecture."""
    import gguf

    cfg = model.config
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    state = model.state_dict()
    tied = getattr(cfg, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # a tied output layer is the embedding: llama.cpp reads it from token_embd
        if "rotary_emb" in hf_name:
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"export_gguf: no GGUF name for tensor {hf_name!r} of a {cfg.model_type} model")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and name.endswith("attn_q.weight"):
            array = permute_qk(array, n_head)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            array = permute_qk(array, n_kv)
        yield name, array


# --------------------------------------------------------------------------- metadata


def _add_config(writer, config, arch: str, name: str, gguf_type: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_type("model")
    # transformers tells a Mistral from a Llama by the name: llama.cpp writes both as 'llama'
    writer.add_name(name if config.model_type != "mistral" or "mistral" in name.lower() else f"mistral {name}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPE[gguf_type]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def tokenizer_metadata(tokenizer, arch: str, vocab_size: int) -> dict:
    """The tokenizer as GGUF stores it: tokens, merges, token types, special ids, chat template.

    Only byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen2) are written; a
    sentencepiece tokenizer raises a clear error.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise GGUFExportError(
            f"export_gguf: the tokenizer is {model.get('type')} without byte-level pre-tokenisation; ftlab writes "
            "byte-level BPE tokenizers only (SmolLM2, Llama 3, Qwen2). Fix: use llama.cpp's convert_hf_to_gguf.py."
        )
    id_to_token = {i: t for t, i in model["vocab"].items()}
    specials = {a["id"]: a for a in spec.get("added_tokens", [])}
    for i, a in specials.items():
        id_to_token[i] = a["content"]
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding may be larger than the vocabulary (padding rows)
        tok = id_to_token.get(i, f"[PAD{i}]")
        tokens.append(tok)
        added = specials.get(i)
        types.append(_NORMAL if added is None else (_CONTROL if added.get("special") else _USER_DEFINED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = {"qwen2": "qwen2"}.get(arch) or ("llama-bpe" if vocab_size >= 128000 else "smollm")
    meta = {"model": "gpt2", "pre": pre, "tokens": tokens, "types": types, "merges": merges,
            "chat_template": tokenizer.chat_template,
            "add_bos": bool(getattr(tokenizer, "add_bos_token", False))}
    for key in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{key}_token_id", None)
        if token_id is not None:
            meta[f"{key}_id"] = int(token_id)
    return meta


def _add_tokenizer(writer, meta: dict) -> None:
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    writer.add_add_bos_token(meta["add_bos"])
    for key, add in (("bos_id", writer.add_bos_token_id), ("eos_id", writer.add_eos_token_id),
                     ("pad_id", writer.add_pad_token_id), ("unk_id", writer.add_unk_token_id)):
        if key in meta:
            add(meta[key])
    if meta["chat_template"]:
        writer.add_chat_template(meta["chat_template"])


# --------------------------------------------------------------------------- export


def _load_merged(model_or_path, tokenizer):
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(model_or_path)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"export_gguf: {folder} has no config.json. Fix: pass the folder merge_and_save() wrote.")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(folder)
        return model, tokenizer
    if tokenizer is None:
        raise ValueError("export_gguf: pass the tokenizer with an in-memory model")
    return model_or_path, tokenizer


def export_gguf(model_or_path, path, gguf_type: str = "F32", tokenizer=None, name: str | None = None) -> Path:
    """Write a merged model (a transformers model or a folder from ``merge_and_save``) as one GGUF file.

    Args:
        model_or_path: a plain (merged) transformers model, or the folder of one.
        path: the ``.gguf`` file to write (written next to it and renamed when complete).
        gguf_type: one of ``GGUF_TYPES``.
        tokenizer: required with an in-memory model; read from the folder otherwise.
        name: ``general.name`` in the file (default: the model's name or path).

    Returns:
        The path of the file.
    """
    import gguf

    gguf_type = gguf_type.upper()
    if gguf_type not in GGUF_TYPES:
        raise GGUFExportError(f"export_gguf: type {gguf_type!r} is not offered. Choose one of {', '.join(GGUF_TYPES)}.")
    model, tokenizer = _load_merged(model_or_path, tokenizer)
    arch = check_architecture(model.config)
    if any(type(p).__name__ not in ("Parameter", "Tensor") for p in model.parameters()) or hasattr(model, "peft_config"):
        raise GGUFExportError("export_gguf: the model still has adapters or 4-bit weights. Fix: merge first "
                              "with ftlab.training.merge_adapters (in memory) or merge_and_save (to a folder).")
    name = name or str(getattr(model.config, "_name_or_path", "") or "model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _add_config(writer, model.config, arch, Path(name).name, gguf_type)
        _add_tokenizer(writer, tokenizer_metadata(tokenizer, arch, model.config.vocab_size))
        for tname, array in _named_tensors(model, arch):
            data, raw_dtype = _encode(array, _tensor_type(tname, array, gguf_type))
            writer.add_tensor(tname, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def read_gguf_summary(path) -> dict:
    """What a GGUF file holds: architecture, name, file type, tensor types, parameter count, size, tokenizer.

    Uses transformers' metadata reader, which skips over the vocabulary arrays instead of decoding
    100 000 strings one by one as ``gguf.GGUFReader`` does (seconds instead of tens of seconds).
    """
    import gguf
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(path))
    header = GgufHeader.from_file(str(path))
    types: dict[str, int] = {}
    for t in header.tensors:
        name = gguf.GGMLQuantizationType(t.ggml_type).name
        types[name] = types.get(name, 0) + 1
    n_tokens = metadata.get("tokenizer.ggml.tokens")
    return {"path": str(path), "bytes": Path(path).stat().st_size, "architecture": header.architecture,
            "name": metadata.get("general.name"), "file_type": metadata.get("general.file_type"),
            "tensor_types": types, "n_tensors": len(header.tensors),
            "n_params": int(sum(int(np.prod(t.shape)) for t in header.tensors)),
            "has_chat_template": bool(metadata.get("tokenizer.chat_template")),
            "n_tokens": n_tokens if isinstance(n_tokens, int) else len(n_tokens or ())}


def read_gguf_tensor(path, name: str) -> np.ndarray:
    """One tensor of a GGUF file, de-quantised to float32 by ``gguf.quants`` (rows in torch order)."""
    import gguf
    from transformers.integrations.gguf.reader import GgufHeader

    header = GgufHeader.from_file(str(path))
    info = next((t for t in header.tensors if t.name == name), None)
    if info is None:
        raise KeyError(f"{path}: no tensor {name!r}")
    start = header.data_start + info.offset
    raw = np.memmap(path, mode="r", dtype=np.uint8)[start:start + info.nbytes]
    qtype = gguf.GGMLQuantizationType(info.ggml_type)
    rows = info.shape[0] if len(info.shape) > 1 else 1
    values = gguf.quants.dequantize(np.array(raw).reshape(rows, -1), qtype)
    return values.reshape(info.shape).astype(np.float32)
