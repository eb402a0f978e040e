"""A model card (README.md in the export folder), written only from facts that were measured.

A model card tells the next person what the model is, how it was made, how well it does on what,
what it forgets, and where not to use it. Every number in it comes from the arguments: this
module formats, it never fills in a value. A section whose facts were not passed says
"not measured" instead of guessing.

Example:
    >>> write_model_card("runs/export", base_model="SmolLM2-135M-Instruct", method="LoRA r=16",
    ...                  data="course instructions, 480 examples", evaluation=rows)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

NOT_MEASURED = "_not measured_"


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci is not None else ""


def _fmt(x, spec=".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def evaluation_section(rows, confidence: float = 0.95) -> str:
    """Rows ``{"model", "score", "ci", "n"}`` (e.g. from ``EvalResult``) as a markdown table."""
    if not rows:
        return NOT_MEASURED
    pct = int(round(confidence * 100))
    out = [f"| model | score | {pct}% CI | n |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {_fmt(r['score'])} | {_ci(r.get('ci'))} | {r.get('n', '')} |")
    return "\n".join(out)


def quantization_section(rows) -> str:
    """Rows of ``ftlab.deploy.quantization_table`` as a markdown table."""
    if not rows:
        return NOT_MEASURED
    out = ["| file type | size (MB) | bits/weight | top-1 agreement | score | 95% CI | change vs merged | 95% CI |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['type']} | {r['bytes'] / 1e6:.1f} | {r['bits_per_weight']:.1f} | {_fmt(r['top1_agreement'])} "
                   f"| {_fmt(r['score'])} | {_ci(r['ci'])} | {r['delta']:+.3f} | {_ci(r['delta_ci'])} |")
    return "\n".join(out)


def forgetting_section(forgetting) -> str:
    """``forgetting``: ``{"before", "after", "change", "change_ci"}`` probe accuracies (``forgetting_report``'s keys)."""
    if not forgetting:
        return NOT_MEASURED
    line = (f"General-knowledge probe accuracy: {_fmt(forgetting.get('before'))} before fine-tuning, "
            f"{_fmt(forgetting.get('after'))} after")
    if forgetting.get("change") is not None:
        line += f" (change {forgetting['change']:+.3f}, 95% CI {_ci(forgetting.get('change_ci'))})"
    return line + "."


def render_model_card(*, name: str, base_model: str, method: str, data: str, evaluation=None, quantization=None,
                      forgetting=None, files=None, intended_use: str, limits: list[str], how_measured: str = "",
                      license: str | None = None) -> str:
    """The card as markdown text. ``files``: ``{"filename": "what it is"}`` of the export folder."""
    front = ["---", f"base_model: {base_model}", "library_name: transformers", "tags: [gguf, fine-tuned, ftlab]"]
    if license:
        front.append(f"license: {license}")
    front.append("---")
    parts = ["\n".join(front), f"# {name}", f"Fine-tuned from **{base_model}** with **{method}**.",
             "## Training data", data, "## Evaluation", evaluation_section(evaluation)]
    if how_measured:
        parts.append(how_measured)
    parts += ["## Forgetting", forgetting_section(forgetting),
              "## Exported files and quantisation", quantization_section(quantization)]
    if files:
        parts.append("\n".join(f"- `{f}`: {what}" for f, what in files.items()))
    parts += ["## Intended use", intended_use, "## Limits", "\n".join(f"- {x}" for x in limits) or NOT_MEASURED,
              "_Every number above was measured by ftlab when this card was written; nothing is estimated._"]
    return "\n\n".join(parts) + "\n"


def write_model_card(folder, **facts) -> Path:
    """Write ``README.md`` into ``folder`` (see :func:`render_model_card` for the facts) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    path.write_text(render_model_card(**facts), encoding="utf-8")
    return path
