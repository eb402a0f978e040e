"""The estimator against published GPU measurements: PEFT's MetaMathQA method comparison.

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
