"""The estimator against published GPU measurements: PEFT's MetaMathQA method comparison, and LitGPT's
LoRA / QLoRA table (:func:`compare_litgpt_qlora`, the QLoRA rows).

PEFT trains Llama-3.2-3B in bf16 on an L40S with full fine-tuning and LoRA variants and publishes the
memory its loop logged (``ftlab/memory/peft_metamathqa_memory.json`` has the numbers and their
source). Nothing is fitted: every prediction comes from the run's published settings.

* ``max reserved`` (their ``accelerator_memory_max`` = ``torch.cuda.max_memory_reserved()`` over the
  run): the worst step, i.e. the longest batch. Texts are truncated to ``max_seq_length=768`` tokens,
  so the prediction is the estimate's peak at seq 768 plus the allocator's slack
  (:func:`ftlab.memory.cuda.reserved_bytes`). Asserted within +-10 %.
* ``mem allocated avg``: ``memory_allocated()`` after each optimizer step, averaged. Predicted by
  :func:`ftlab.memory.cuda.after_step_bytes` at the published mean sample length (``train total
  tokens / train samples``): weights, adapters, gradients, AdamW states, the batch and the bf16 logits
  the loop still holds. Asserted within +-10 %.
* ``reserved 99th`` is shown for information only, against the same seq-768 peak (an upper bound): a
  percentile over steps of a reserved figure that ``empty_cache()`` resets every 10 steps depends on
  the length distribution of the data, which is not published.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).with_name("peft_metamathqa_memory.json")  # package data (pyproject.toml)


def compare_peft_metamathqa(path: str | Path = FIXTURE) -> list[dict]:
    """One row per published configuration: the statistic, the published and predicted bytes, the error."""
    from ftlab.memory.cuda import after_step_bytes, reserved_bytes
    from ftlab.memory.estimator import estimate_memory

    data = json.loads(Path(path).read_text())
    mean_len = round(data["source"]["train_total_tokens"] / data["source"]["train_samples"])
    rows = []
    for r in data["rows"]:
        common = dict(batch_size=4, param_dtype="bf16", optimizer="adamw", optimizer_impl="foreach", device="cuda", **r["settings"])
        steady = after_step_bytes(estimate_memory("llama-3.2-3b", seq_len=mean_len, **common), held_logits_tokens=4 * mean_len)
        peak = reserved_bytes(estimate_memory("llama-3.2-3b", seq_len=768, **common))
        for stat, measured, predicted, asserted in (("max reserved (seq 768)", r["reserved_max"], peak, True),
                                                    ("mem allocated avg (mean length)", r["mem_allocated_avg"], steady, True),
                                                    ("reserved 99th (info: bound)", r["reserved_99th"], peak, False)):
            rows.append(dict(config=r["name"], statistic=stat, published=measured, predicted=predicted,
                             error_pct=100.0 * (predicted - measured) / measured, asserted=asserted))
    return rows


def format_comparison(rows: list[dict]) -> str:
    lines = [f"{'PEFT MetaMathQA, Llama-3.2-3B, L40S':<22} {'statistic':<40} {'published':>10} {'predicted':>10} {'error':>8}"]
    for r in rows:
        lines.append(f"{r['config']:<22} {r['statistic']:<40} {r['published'] / 1e9:>8.2f}GB {r['predicted'] / 1e9:>8.2f}GB "
                     f"{r['error_pct']:>+7.1f}%" + ("" if r["asserted"] else "  (not asserted)"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- LitGPT's QLoRA table

LITGPT_FIXTURE = FIXTURE.with_name("litgpt_qlora_memory.json")


def compare_litgpt_qlora(path: str | Path = LITGPT_FIXTURE) -> list[dict]:
    """LitGPT's A100 table (Llama 2 7B/13B, LoRA and QLoRA nf4 / nf4-dq): one row per published run.

    Their ``Max GPU RAM`` is ``torch.cuda.max_memory_allocated()``, so it is compared with the estimate's
    tensor peak. The run's settings map onto the estimator as they are: bf16 weights *and* adapters with no
    fp32 up-casts (LitGPT has no ``prepare_model_for_kbit_training``: ``method="lora"`` on a quantised
    base), the longest example unpadded, LoRA r=8 with dropout 0.05 on q and v, 128-token loss chunks.
    On top comes what their bitsandbytes 0.41.1 kept and the pinned one does not: every 4-bit matmul's
    input (:func:`ftlab.memory.cuda.bnb_saved_input_bytes`); ``without_inputs_pct`` shows the error
    without that term, the under-prediction it explains."""
    from ftlab.memory.architectures import Architecture
    from ftlab.memory.cuda import bnb_saved_input_bytes
    from ftlab.memory.estimator import estimate_memory

    data = json.loads(Path(path).read_text())
    src = data["source"]
    extra = {name: Architecture(name=name, **{k: v for k, v in a.items() if k != "source"})
             for name, a in data["architectures"].items()}
    rows = []
    for r in data["rows"]:
        arch = extra.get(r["model"], r["model"])
        q = r["quantization"]
        est = estimate_memory(arch, method="lora", quantization=q, batch_size=1, seq_len=src["seq_len"],
                              param_dtype="bf16", lora_rank=8, lora_dropout=0.05, lora_targets=["q_proj", "v_proj"],
                              optimizer="paged_adamw" if q else "adamw", optimizer_impl="foreach",
                              gradient_checkpointing=False, loss="chunked", loss_chunk_tokens=128, padded=False,
                              attention="flash", device="cuda")
        inputs = bnb_saved_input_bytes(arch, 1, src["seq_len"], 2, src["bitsandbytes"]) if q else 0
        measured, predicted = r["max_memory_allocated"], est.tensor_bytes + inputs
        rows.append(dict(config=r["name"], quantization=q, published=measured, predicted=predicted,
                         saved_inputs=inputs, error_pct=100.0 * (predicted - measured) / measured,
                         without_inputs_pct=100.0 * (est.tensor_bytes - measured) / measured))
    return rows


def format_litgpt_comparison(rows: list[dict]) -> str:
    lines = [f"{'LitGPT, A100, max_memory_allocated':<28} {'published':>10} {'predicted':>10} {'error':>8} "
             f"{'old bnb inputs':>15} {'error without':>14}"]
    for r in rows:
        lines.append(f"{r['config']:<28} {r['published'] / 1e9:>8.2f}GB {r['predicted'] / 1e9:>8.2f}GB {r['error_pct']:>+7.1f}% "
                     f"{r['saved_inputs'] / 1e9:>13.2f}GB {r['without_inputs_pct']:>+13.1f}%")
    return "\n".join(lines)
