"""Quantise a GGUF with llama.cpp's own quantiser, and read what it actually wrote.

ftlab's numpy writer (:func:`ftlab.deploy.export_gguf`) produces the simple block types (Q8_0, Q4_0...).
The files people download are mostly **K-quants** (Q6_K, Q5_K_M, Q4_K_M), which only llama.cpp's C
quantiser writes: super-blocks of 256 weights along a row, with 6-bit scales per 16 or 32 weights
inside. ``_M`` ("mixed") gives some tensors more bits than the rest (in llama.cpp 0.3.36:
half of the ``attn_v`` and ``ffn_down`` tensors get Q6_K in Q4_K_M).

Two things decide the *real* type of each tensor, so we print them instead of trusting the name:

* **The output layer** (here the tied token embedding) gets Q6_K in every 4/5/6-bit K-quant and in
  Q4_0: it decides every next token. (llama.cpp's ``llama-quant.cpp``, the ``OUTPUT`` branch.)
* **Rows that 256 does not divide.** A K-quant block covers 256 weights of one row. SmolLM2-135M's
  hidden size is 576 = 2.25 x 256, so every tensor with 576 columns (Q, K, V, O, gate, up, and the
  embedding) cannot be a K-quant. llama.cpp's ``tensor_type_fallback`` then picks a 32-block type:
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0. Only ``ffn_down`` (1536 columns = 6 x 256) is a true
  K-quant in this model. The "Q4_K_M" file of a 135M model is therefore mostly Q5_0 and Q8_0: larger and
  more precise than the name says. A 1.7B model (hidden size 2048 = 8 x 256) gets the real thing.

:func:`tensor_types` and :func:`bits_per_weight` read the header of the written file: the types and
bytes actually stored.
"""

from __future__ import annotations

import re
from pathlib import Path

# llama.cpp's file types (enum llama_ftype in llama.h) for the quantisations the course measures
LLAMA_FTYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}

# llama.cpp's published quality of these types for Llama 3 8B (no importance matrix): perplexity on
# Wikitext-2 and its increase over FP16, from the "LLaMA 3 8b Scoreboard" in tools/perplexity/README.md of
# the llama.cpp sources vendored in llama-cpp-python 0.3.36 (https://github.com/ggml-org/llama.cpp/blob/
# master/tools/perplexity/README.md). Size in GiB; ppl and delta_ppl as printed there.
PUBLISHED_LLAMA3_8B = {
    "F16": {"gib": 14.97, "ppl": 6.233160, "delta_ppl": 0.001524},
    "Q8_0": {"gib": 7.96, "ppl": 6.234284, "delta_ppl": 0.002650},
    "Q6_K": {"gib": 6.14, "ppl": 6.253382, "delta_ppl": 0.021748},
    "Q5_K_M": {"gib": 5.33, "ppl": 6.288607, "delta_ppl": 0.056974},
    "Q4_K_M": {"gib": 4.58, "ppl": 6.407115, "delta_ppl": 0.175482},
    "Q4_0": {"gib": 4.34, "ppl": 6.700147, "delta_ppl": 0.468514},
}
PUBLISHED_SOURCE = ("llama.cpp tools/perplexity/README.md, 'LLaMA 3 8b Scoreboard' (Wikitext-2, CUDA, "
                    "no imatrix), as vendored in llama-cpp-python 0.3.36")


def published_table():
    """The published 8B numbers as a DataFrame, with the perplexity increase in percent of FP16's."""
    import pandas as pd

    rows = []
    for qtype, r in PUBLISHED_LLAMA3_8B.items():
        base = r["ppl"] - r["delta_ppl"]  # the FP16 logits' own perplexity (the scoreboard's reference)
        rows.append({"type": qtype, "8B size (GiB)": r["gib"], "8B perplexity": r["ppl"],
                     "8B Δppl %": 100 * r["delta_ppl"] / base})
    return pd.DataFrame(rows)


def quantize_gguf(source, dest, qtype: str, nthread: int = 0) -> dict:
    """Quantise ``source`` (an F32/F16 GGUF) to ``qtype`` with llama.cpp's ``llama_model_quantize``.

    Returns ``{"path", "log", "fallbacks"}``: llama.cpp's log, and one ``(tensor, wanted, got)`` per tensor
    whose row length the wanted type's block does not divide.
    """
    from ftlab.deploy.llamacpp import captured_stderr, require_llama_cpp

    llama_cpp = require_llama_cpp()
    if qtype not in LLAMA_FTYPES:
        raise ValueError(f"quantize_gguf: type {qtype!r} is not offered; choose one of {', '.join(LLAMA_FTYPES)}")
    source, dest = Path(source), Path(dest)
    if not source.exists():
        raise FileNotFoundError(f"quantize_gguf: {source} does not exist. Fix: export_gguf(..., 'F32') first.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[qtype]
    params.nthread = nthread
    import contextlib
    import io
    import logging

    from llama_cpp._logger import logger  # llama.cpp's log goes through this logger to Python's sys.stderr

    level, py_log = logger.level, io.StringIO()
    logger.setLevel(logging.WARNING)  # opening a model quietly sets ERROR, which would hide the fallback warnings
    try:
        with captured_stderr() as log, contextlib.redirect_stderr(py_log):
            code = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
    finally:
        logger.setLevel(level)
    text = py_log.getvalue() + log[0]
    if code != 0:
        raise RuntimeError(f"quantize_gguf: llama.cpp failed ({code}) quantising {source} to {qtype}:\n{text[-2000:]}")
    fallbacks = [(m.group(1), m.group(2).strip(), m.group(3).strip()) for m in re.finditer(
        r"warning: (\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s*(\S+)\).*?falling back to\s*(\S+)",
        text)]
    return {"path": dest, "log": text, "fallbacks": fallbacks}


def _tensors(path) -> tuple[list[dict], int]:
    """``([{name, shape, type, offset, nbytes}], data_start)`` from a GGUF header, any ggml type.

    transformers' reader skips the vocabulary quickly but refuses types it cannot de-quantise (Q5_0,
    Q5_1), so we use its low-level table reader and compute the sizes with gguf's block sizes.
    """
    import gguf
    from transformers.integrations.gguf.reader import _mapped, _read_metadata, _read_tensor_table

    blob = _mapped(str(path))
    metadata, count, pos = _read_metadata(blob, str(path))
    entries, end = _read_tensor_table(blob, count, pos)
    align = int(metadata.get("general.alignment", 32))
    out = []
    for name, shape, ggml_type, offset in entries:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n = 1
        for d in shape:
            n *= int(d)
        out.append({"name": name, "shape": shape, "type": qtype.name, "offset": offset, "n": n,
                    "nbytes": n // block * type_size})
    return out, (end + align - 1) // align * align


def tensor_types(path) -> dict[str, str]:
    """``{tensor name: stored type}`` read from a GGUF file's header."""
    return {t["name"]: t["type"] for t in _tensors(path)[0]}


def type_summary(path) -> dict[str, str]:
    """Which kinds of tensor got which type, layers folded: ``{"ffn_down.weight": "Q4_K x15, Q6_K x15", ...}``."""
    groups: dict[str, dict[str, int]] = {}
    for name, ttype in tensor_types(path).items():
        kind = re.sub(r"^blk\.\d+\.", "", name)
        groups.setdefault(kind, {})
        groups[kind][ttype] = groups[kind].get(ttype, 0) + 1
    return {kind: ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(c.items())) for kind, c in sorted(groups.items())}


def bits_per_weight(path) -> float:
    """Real bits per weight of a file: bytes of all tensors x 8 over their number of values (metadata not counted)."""
    tensors, _ = _tensors(path)
    return 8 * sum(t["nbytes"] for t in tensors) / sum(t["n"] for t in tensors)


def raw_tensor_bytes(path, name: str) -> bytes:
    """The stored bytes of one tensor, exactly as written (for comparing two writers)."""
    import numpy as np

    tensors, data_start = _tensors(path)
    info = next((t for t in tensors if t["name"] == name), None)
    if info is None:
        raise KeyError(f"{path}: no tensor {name!r}")
    start = data_start + info["offset"]
    return bytes(np.memmap(path, mode="r", dtype=np.uint8)[start:start + info["nbytes"]])
