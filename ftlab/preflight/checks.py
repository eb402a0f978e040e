"""What the two preflight checks share: one result row, and one reader of the OS's memory figures.

``ftlab doctor`` (``system``) and ``ftlab doctor --gpu`` / ``make gpu-check`` (``gpu_check``) both
report a list of :class:`Check` rows; ``doctor`` marks some as warnings and gives a fix, the GPU check
times each row and keeps its numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Check:
    """One line of a preflight report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # worth knowing, but the course still runs
    seconds: float = 0.0
    numbers: dict = field(default_factory=dict)


def meminfo(text: str | None = None) -> dict[str, int]:
    """``MemTotal`` and ``MemAvailable`` in bytes from Linux's ``/proc/meminfo`` (or ``text``); {} elsewhere."""
    if text is None:
        try:
            text = Path("/proc/meminfo").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and value.split():
            out[key] = int(value.split()[0]) * 1024
    return out
