"""Comparing models on the same examples, and measuring forgetting with the probe set.

A table with confidence intervals, the paired difference to the first model (with its own CI), the
probe-set accuracy that shows forgetting, and a per-example view of what changed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ftlab.evaluate.generate import generate_answers
from ftlab.evaluate.harness import evaluate_model
from ftlab.evaluate.stats import bootstrap_ci, paired_difference


# ----------------------------------------------------------------------------------------
# Forgetting: the general probe set
# ----------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Probe-set accuracy (with its CI) and one row per probe."""

    name: str
    accuracy: float
    ci: tuple[float, float]
    rows: list[dict]
    seconds: float

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def probe_accuracy(model, tokenizer, probes=None, *, name: str = "model", max_new_tokens: int = 48,
                   batch_size: int = 8, seed: int = 0, progress: bool = True) -> ProbeResult:
    """Ask every probe question (greedy, chat template) and check the answer with
    ``ftlab.data.score_probe`` (an accepted answer appears in the reply).

    ``probes``: records ``{"question", "answers"}``; default the course probe set
    (``load_course_data("probes")``), which only holds questions the base
    SmolLM2-135M-Instruct answers correctly -- so its base accuracy is 1.0 and any drop after
    fine-tuning is forgetting.
    """
    from ftlab.data.course import load_course_data
    from ftlab.evaluate.scoring import score_probe

    start = time.perf_counter()
    probes = list(load_course_data("probes") if probes is None else probes)
    for i, p in enumerate(probes):
        if not isinstance(p, dict) or not isinstance(p.get("question"), str) or not p.get("answers"):
            raise ValueError(f"probe {i}: needs a 'question' string and a non-empty 'answers' list, got {p!r}")
    answers = generate_answers(model, tokenizer, [p["question"] for p in probes],
                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress)
    rows = [{"question": p["question"], "answers": p["answers"], "prediction": a,
             "correct": bool(score_probe(a, p["answers"]))} for p, a in zip(probes, answers)]
    correct = [float(r["correct"]) for r in rows]
    return ProbeResult(name=name, accuracy=float(np.mean(correct)), ci=bootstrap_ci(correct, seed=seed),
                       rows=rows, seconds=time.perf_counter() - start)


def forgetting_report(before: ProbeResult, after: ProbeResult) -> dict:
    """Compare probe results before and after fine-tuning: the accuracy drop (with a paired
    CI) and the questions lost and gained."""
    if [r["question"] for r in before.rows] != [r["question"] for r in after.rows]:
        raise ValueError("forgetting_report: the two results are not on the same probes")
    pair = paired_difference([r["correct"] for r in before.rows], [r["correct"] for r in after.rows])
    return {
        "before": before.accuracy, "after": after.accuracy, "change": pair["diff"], "change_ci": pair["ci"],
        "lost": [(a["question"], a["prediction"]) for b, a in zip(before.rows, after.rows)
                 if b["correct"] and not a["correct"]],
        "gained": [(a["question"], a["prediction"]) for b, a in zip(before.rows, after.rows)
                   if a["correct"] and not b["correct"]],
    }


# ----------------------------------------------------------------------------------------
# Comparing models
# ----------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Several models on the same examples. ``table``: a pandas DataFrame, one row per
    model; ``text``: the same as aligned text; ``results`` / ``probes``: the underlying
    ``EvalResult`` / ``ProbeResult`` per model; ``changes(a, b)``: what changed per example."""

    results: dict
    probes: dict
    table: object
    text: str

    def __str__(self):
        return self.text

    def _repr_html_(self):
        return self.table.to_html(float_format=lambda v: f"{v:.3f}")

    def changes(self, a: str | None = None, b: str | None = None, only_changed: bool = True):
        """Per-example view of ``a`` (default: the first model) vs ``b`` (default: the second):
        question, reference, both predictions and scores, and ``delta = score_b - score_a``,
        sorted from the biggest gain to the biggest loss."""
        import pandas as pd

        names = list(self.results)
        a = a or names[0]
        b = b or names[1]
        ra, rb = self.results[a].examples, self.results[b].examples
        rows = []
        for ea, eb in zip(ra, rb):
            delta = eb["score"] - ea["score"]
            if only_changed and delta == 0 and ea["prediction"] == eb["prediction"]:
                continue
            rows.append({"index": ea["index"], "task": ea["task"], "question": ea["question"],
                         "reference": ea["reference"], f"prediction_{a}": ea["prediction"],
                         f"prediction_{b}": eb["prediction"], f"score_{a}": ea["score"],
                         f"score_{b}": eb["score"], "delta": delta})
        frame = pd.DataFrame(rows)
        return frame.sort_values("delta", ascending=False, kind="stable") if rows else frame

    def change_counts(self, a: str | None = None, b: str | None = None) -> dict:
        """How many examples got better, worse, or stayed the same from ``a`` to ``b``."""
        names = list(self.results)
        ra, rb = self.results[a or names[0]].examples, self.results[b or names[1]].examples
        deltas = [eb["score"] - ea["score"] for ea, eb in zip(ra, rb)]
        return {"better": sum(d > 0 for d in deltas), "worse": sum(d < 0 for d in deltas),
                "same": sum(d == 0 for d in deltas)}


def compare_models(models: dict, records, *, probes=None, probe_max_new_tokens: int = 48,
                   confidence: float = 0.95, seed: int = 0, progress: bool = True,
                   **eval_kwargs) -> Comparison:
    """Evaluate every model on the same ``records`` and put the results side by side.

    ``models``: ``{"base": (model, tokenizer), "lora": (model, tokenizer), ...}``; the first
    entry is the baseline. ``probes``: ``True`` for the course probe set, a list of probe
    records, or None (default) to skip the forgetting check. Other keyword arguments go to
    ``evaluate_model`` (``max_new_tokens``, ``batch_size``, ``metric``, ``judge``, ...).

    The table has, per model: the mean score with its CI; ``vs_first`` -- the paired
    difference to the baseline on the same examples, with its own CI (a difference whose CI
    excludes 0 is unlikely to be luck of the sample); the mean score per task; the probe
    accuracy and its change (forgetting); and the wall time.

    Example:
        >>> cmp = compare_models({"base": (base, tok), "lora": (tuned, tok)}, test_records, probes=True)  # doctest: +SKIP
        >>> print(cmp.text); cmp.changes("base", "lora").head()                              # doctest: +SKIP
    """
    if not models:
        raise ValueError("compare_models: no models given")
    for key, value in models.items():
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"compare_models: models[{key!r}] must be a (model, tokenizer) pair")
    records = list(records)
    if probes is True:
        from ftlab.data.course import load_course_data

        probes = load_course_data("probes")
    results, probe_results = {}, {}
    for name, (model, tok) in models.items():
        results[name] = evaluate_model(model, tok, records, name=name, confidence=confidence,
                                       seed=seed, progress=progress, **eval_kwargs)
        if probes is not None:
            probe_results[name] = probe_accuracy(model, tok, probes, name=name, seed=seed, progress=progress,
                                                 max_new_tokens=probe_max_new_tokens,
                                                 batch_size=eval_kwargs.get("batch_size", 8))
    return comparison_from_results(results, probe_results, confidence=confidence, seed=seed)


def comparison_from_results(results: dict, probe_results: dict | None = None, *,
                            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Build the comparison table from ``EvalResult``s (and ``ProbeResult``s) you already have,
    e.g. the base model evaluated *before* LoRA training changed it in place. All results must
    be on the same examples, in the same order; the first one is the baseline."""
    import pandas as pd

    probe_results = dict(probe_results or {})
    first = next(iter(results))
    for name, res in results.items():
        if [e["reference"] for e in res.examples] != [e["reference"] for e in results[first].examples]:
            raise ValueError(f"comparison: {name!r} was not evaluated on the same examples as {first!r}")
    rows = []
    for name, res in results.items():
        row = {"model": name, "score": res.score, "ci_low": res.ci[0], "ci_high": res.ci[1]}
        if name != first:
            pair = paired_difference(results[first].scores, res.scores, confidence=confidence, seed=seed)
            row.update(vs_first=pair["diff"], vs_first_low=pair["ci"][0], vs_first_high=pair["ci"][1])
        else:
            row.update(vs_first=0.0, vs_first_low=math.nan, vs_first_high=math.nan)
        for task, t in res.by_task.items():
            row[task] = t["score"]
        if name in probe_results:
            row["probes"] = probe_results[name].accuracy
            base_probes = probe_results.get(first)
            row["probes_change"] = (probe_results[name].accuracy - base_probes.accuracy
                                    if base_probes else math.nan)
        row["stop_rate"] = res.extra["stop_rate"]
        row["seconds"] = res.seconds + (probe_results[name].seconds if name in probe_results else 0.0)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    return Comparison(results=results, probes=probe_results, table=table,
                      text=_format_table(table, results, first, confidence))


def _format_table(table, results, first, confidence) -> str:
    pct = int(round(confidence * 100))
    tasks = sorted({t for r in results.values() for t in r.by_task})
    head = ["model", f"score [{pct}% CI]", f"vs {first} [{pct}% CI]"] + tasks
    has_probes = "probes" in table.columns
    if has_probes:
        head += ["probes", "Δprobes"]
    head += ["stop", "time"]
    lines = []
    for name, row in table.iterrows():
        cells = [name, f"{row['score']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"]
        cells.append("-" if name == first else
                     f"{row['vs_first']:+.3f} [{row['vs_first_low']:+.3f}, {row['vs_first_high']:+.3f}]")
        cells += [f"{row[t]:.3f}" if t in row and not _isnan(row[t]) else "-" for t in tasks]
        if has_probes:
            cells += ["-" if _isnan(row.get("probes", math.nan)) else f"{row['probes']:.3f}",
                      "-" if _isnan(row.get("probes_change", math.nan)) else f"{row['probes_change']:+.3f}"]
        cells += [f"{row['stop_rate']:.2f}", f"{row['seconds']:.0f}s"]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    n = len(next(iter(results.values())).examples)
    out = [fmt.format(*head)] + [fmt.format(*cells) for cells in lines]
    out.append(f"(n={n} examples; {pct}% percentile-bootstrap CIs; 'vs {first}' is the paired "
               "difference on the same examples)")
    return "\n".join(out)


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)
