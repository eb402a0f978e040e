"""``summarize_dataset``: what is in the data - formats, roles, tasks, token lengths, duplicates.

The report only describes; ``drop_duplicates`` and ``tokenize_example(..., max_length=...)`` act on it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.data.dedupe import duplicate_groups
from ftlab.data.records import load_records
from ftlab.data.templates import tokenize_dataset


@dataclass
class DataReport:
    """What ``summarize_dataset`` found. It reports; it never changes the data."""

    n_records: int
    formats: Counter
    roles: Counter
    tasks: Counter
    assistant_turns: Counter
    token_lengths: list[int] = field(default_factory=list)
    trained_tokens: int = 0
    max_length: int | None = None
    n_too_long: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    duplicate_examples: list[tuple[str, str]] = field(default_factory=list)
    near_threshold: float = 0.8

    def length_stats(self) -> dict:
        """min / mean / median / p90 / p95 / max of the token lengths (empty without a tokenizer)."""
        if not self.token_lengths:
            return {}
        xs = sorted(self.token_lengths)
        q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
        return {"min": xs[0], "mean": round(statistics.fmean(xs), 1), "median": q(0.5), "p90": q(0.9),
                "p95": q(0.95), "max": xs[-1]}

    def _lines(self) -> list[tuple[str, str]]:
        rows = [("records", str(self.n_records)),
                ("formats", _fmt_counter(self.formats))]
        if self.roles:
            rows.append(("messages per role", _fmt_counter(self.roles)))
            rows.append(("assistant turns per record", _fmt_counter(self.assistant_turns, sort_keys=True)))
        if self.tasks:
            rows.append(("tasks", _fmt_counter(self.tasks)))
        stats = self.length_stats()
        if stats:
            rows.append(("tokens per record", ", ".join(f"{k} {v}" for k, v in stats.items())))
            rows.append(("trained tokens (total)", f"{self.trained_tokens} of {sum(self.token_lengths)}"))
        if self.max_length is not None:
            pct = 100 * self.n_too_long / max(1, self.n_records)
            rows.append((f"longer than max_length={self.max_length}",
                         f"{self.n_too_long} ({pct:.1f}%) - would be truncated if tokenised with this max_length"))
        rows.append(("exact duplicates", f"{self.exact_duplicates} records repeat an earlier one"))
        rows.append((f"near duplicates (Jaccard >= {self.near_threshold})",
                     f"{self.near_duplicates} more records are near copies of an earlier one"))
        for a, b in self.duplicate_examples:
            rows.append(("  e.g.", f"{a} ~ {b}"))
        return rows

    def __str__(self) -> str:
        rows = self._lines()
        width = max(len(k) for k, _ in rows)
        body = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
        return f"DataReport (nothing was changed; drop or truncate explicitly if you want to)\n{body}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        import html as _html

        cells = "".join(f"<tr><th style='text-align:left'>{_html.escape(k)}</th><td style='text-align:left'>{_html.escape(v)}</td></tr>"
                        for k, v in self._lines())
        hist = ""
        if self.token_lengths:
            counts, edges = _histogram(self.token_lengths, 12)
            top = max(counts) or 1
            bars = "".join(
                f"<div style='font-family:monospace'>{edges[i]:>6}-{edges[i + 1]:<6} "
                f"<span style='display:inline-block;background:#4c8bf5;height:10px;width:{int(300 * c / top)}px'></span> {c}</div>"
                for i, c in enumerate(counts))
            hist = f"<div style='margin-top:6px'><b>token lengths</b>{bars}</div>"
        return (f"<div><b>DataReport</b> <i>(nothing was changed)</i><table>{cells}</table>{hist}</div>")


def _fmt_counter(counter: Counter, sort_keys=False) -> str:
    items = sorted(counter.items()) if sort_keys else counter.most_common()
    return ", ".join(f"{k}: {v}" for k, v in items) or "-"


def _histogram(values, bins):
    lo, hi = min(values), max(values)
    step = max(1, -(-(hi - lo + 1) // bins))
    edges = [lo + i * step for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - lo) // step)] += 1
    while counts and counts[-1] == 0:
        counts.pop()
    return counts, edges


def summarize_dataset(records, tokenizer=None, max_length=None, near_threshold=0.8, template=None, train_on="assistant") -> DataReport:
    """Count what is in the data - formats, roles, tasks, token lengths, too-long examples, duplicates.

    ``records`` are canonical records (or a path, which is loaded first). With a tokenizer, each
    record is rendered through the same template as for training, so the lengths are the real
    training lengths. The report only describes; use ``drop_duplicates`` or
    ``tokenize_example(..., max_length=...)`` to act on it.

    Example:
        >>> rep = summarize_dataset([{"text": "hello there"}, {"text": "hello there"}])
        >>> rep.n_records, rep.exact_duplicates
        (2, 1)
    """
    if isinstance(records, (str, Path)):
        records = load_records(records)
    records = list(records)
    formats, roles, tasks, turns = Counter(), Counter(), Counter(), Counter()
    for r in records:
        formats[r.get("_format", "chat" if "messages" in r else "text")] += 1
        if "messages" in r:
            roles.update(m["role"] for m in r["messages"])
            turns[sum(m["role"] == "assistant" for m in r["messages"])] += 1
        if "task" in r:
            tasks[str(r["task"])] += 1
    report = DataReport(len(records), formats, roles, tasks, turns, max_length=max_length, near_threshold=near_threshold)
    if tokenizer is not None:
        examples = tokenize_dataset(records, tokenizer, template=template, train_on=train_on, verbose=False)
        report.token_lengths = [len(e["input_ids"]) for e in examples]
        report.trained_tokens = sum(sum(l != -100 for l in e["labels"]) for e in examples)
        if max_length is not None:
            report.n_too_long = sum(n > max_length for n in report.token_lengths)
    exact_groups = duplicate_groups(records, near=False)
    all_groups = duplicate_groups(records, near=True, threshold=near_threshold)
    report.exact_duplicates = sum(len(g) - 1 for g in exact_groups)
    report.near_duplicates = sum(len(g) - 1 for g in all_groups) - report.exact_duplicates
    for g in [g for g in all_groups if len(g) > 1][:3]:
        report.duplicate_examples.append((records[g[0]].get("_source", f"[{g[0]}]"), records[g[1]].get("_source", f"[{g[1]}]")))
    return report
