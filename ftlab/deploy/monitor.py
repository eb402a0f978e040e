"""Monitoring a served model: log every request, and watch the answers for drift.

A deployed model fails quietly: nothing crashes when a new prompt format, a changed template or a
different quantisation makes answers longer, or stops them being valid JSON. So we log one JSON
line per request (time, latency, tokens, finish reason, whether a JSON answer parses) and compare a
rolling window of recent requests with a baseline window. ``drift_report`` flags a metric whose
recent mean moved further than ``threshold`` standard errors from the baseline (a z-score: it
accounts for how noisy each metric is at this window size).

Example:
    >>> log = RequestLog("runs/requests.jsonl")                          # doctest: +SKIP
    >>> log.record(prompt, result, task="extract_json")                  # doctest: +SKIP
    >>> drift_report(log.read(), baseline=50, window=50)                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from ftlab.evaluate import is_valid_json

WATCHED = ("completion_tokens", "json_valid", "stopped", "latency_s")


class RequestLog:
    """Append-only JSONL log of served requests (one line per request)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, prompt, result: dict, task: str | None = None, **extra) -> dict:
        """Log one answered request (``result`` from ``chat_completion``) and return the logged row."""
        text = result.get("text", "")
        row = {"time": time.time(), "task": task,
               "prompt_chars": len(prompt) if isinstance(prompt, str) else sum(len(m.get("content") or "") for m in prompt),
               "completion_tokens": result.get("completion_tokens"), "finish_reason": result.get("finish_reason"),
               "stopped": result.get("finish_reason") == "stop", "latency_s": result.get("latency_s"),
               "ttft_s": result.get("ttft_s"), "error": result.get("error"),
               "json_valid": bool(is_valid_json(text)) if task == "extract_json" else None, **extra}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{self.path}:{line_no}: not a JSON line ({e}). Fix: delete that line.") from e
        return rows


def _values(rows, metric):
    return np.array([float(r[metric]) for r in rows if r.get(metric) is not None], dtype=float)


def rolling(rows, metric: str, window: int = 20) -> list[float]:
    """Mean of ``metric`` over the last ``window`` requests, at every request (for a chart)."""
    values = _values(rows, metric)
    return [float(values[max(0, i + 1 - window):i + 1].mean()) for i in range(len(values))]


def drift_report(rows, *, baseline: int, window: int, threshold: float = 3.0, metrics=WATCHED) -> dict:
    """Compare the last ``window`` requests with the first ``baseline`` ones, metric by metric.

    For each metric: baseline mean, recent mean, ``z`` = (recent - baseline) / standard error of the
    difference, and ``drift`` = |z| > ``threshold``. Metrics with no values are left out.
    """
    if baseline < 2 or window < 2:
        raise ValueError("drift_report: baseline and window need at least 2 requests each")
    report = {}
    for metric in metrics:
        base = _values(rows[:baseline], metric)
        recent = _values(rows[-window:], metric)
        if len(base) < 2 or len(recent) < 2:
            continue
        se = math.sqrt(base.var(ddof=1) / len(base) + recent.var(ddof=1) / len(recent))
        diff = float(recent.mean() - base.mean())
        z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        report[metric] = {"baseline": float(base.mean()), "recent": float(recent.mean()), "z": z,
                          "drift": abs(z) > threshold}
    return report
