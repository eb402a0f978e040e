"""What an estimate returns: one :class:`MemoryItem` per tensor group, and the :class:`MemoryEstimate` they add up to."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftlab.memory.hardware import Hardware, _target

GiB = 2**30
MiB = 2**20


@dataclass
class MemoryItem:
    """One line of the breakdown."""

    name: str
    bytes: int
    category: str
    note: str = ""


@dataclass
class MemoryEstimate:
    """The predicted peak and what it is made of.

    ``items`` are the tensors alive at the peak moment (they add up to ``total_bytes``);
    ``phases`` holds the total at every moment of the step; ``components`` lists every term
    (also those not alive at the peak, e.g. activations when the optimizer step is the peak).
    """

    model: str
    settings: dict
    items: list[MemoryItem]
    peak_phase: str
    phases: dict[str, int]
    components: list[MemoryItem] = field(default_factory=list)
    device: Hardware | None = None
    kind: str = "training"

    @property
    def total_bytes(self) -> int:
        return int(sum(i.bytes for i in self.items))

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GiB

    @property
    def tensor_bytes(self) -> int:
        """The peak without CUDA context/allocator overhead: what ``max_memory_allocated`` reports."""
        return int(sum(i.bytes for i in self.items if i.category != "CUDA overhead"))

    def by_category(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self.items:
            out[it.category] = out.get(it.category, 0) + it.bytes
        return out

    def fits(self, device=None) -> bool:
        hw = _target(device)[1] if device is not None else self.device
        if hw is None:
            raise ValueError("MemoryEstimate.fits: give a hardware preset, e.g. fits('dgx-spark').")
        return self.total_bytes <= hw.usable_gib * GiB

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(it.category, it.name, _fmt(it.bytes), it.note) for it in self.items]

    def __str__(self) -> str:
        s = self.settings
        head = (f"{self.kind} memory for {self.model}: method={s.get('method')}, batch={s.get('batch_size')}, "
                f"seq={s.get('seq_len')}, dtype={s.get('param_dtype')}" + (f", mixed={s['mixed_precision']}" if s.get("mixed_precision") else "")
                + (f", quant={s['quantization']}" if s.get("quantization") else "")
                + (f", optimizer={s.get('optimizer')}" if self.kind == "training" else "")
                + (", checkpointing" if s.get("gradient_checkpointing") else ""))
        w = max([len(r[1]) for r in self.rows()] + [20])
        lines = [head, f"peak: {_fmt(self.total_bytes)} during {self.peak_phase}", ""]
        lines.append(f"{'category':<22} {'item':<{w}} {'size':>11}  note")
        lines.append("-" * (w + 50))
        for cat, name, size, note in self.rows():
            lines.append(f"{cat:<22} {name:<{w}} {size:>11}  {note}")
        lines.append("-" * (w + 50))
        lines.append(f"{'total':<22} {'':<{w}} {_fmt(self.total_bytes):>11}")
        if self.device is not None:
            verdict = "fits" if self.fits() else "does NOT fit"
            lines.append(f"{self.device.name}: {verdict} ({self.device.usable_gib:.1f} GiB usable of {self.device.total_gib:.1f} GiB)")
        if len(self.phases) > 1:
            lines.append("")
            lines.append("tensors alive at each moment of the step" + (" (CUDA overhead not included):" if self.tensor_bytes != self.total_bytes else ":"))
            for ph, b in self.phases.items():
                lines.append(f"  {ph:<44} {_fmt(b):>11}" + ("   <- peak" if ph == self.peak_phase else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{html.escape(n)}</td><td style='text-align:right'>{s}</td><td>{html.escape(t)}</td></tr>"
            for c, n, s, t in self.rows())
        verdict = ""
        if self.device is not None:
            ok = self.fits()
            verdict = (f"<p><b style='color:{'green' if ok else 'crimson'}'>{'fits' if ok else 'does not fit'}</b> on "
                       f"{html.escape(self.device.name)} ({self.device.usable_gib:.1f} GiB usable)</p>")
        phases = "".join(f"<tr><td>{html.escape(p)}</td><td style='text-align:right'>{_fmt(b)}</td></tr>" for p, b in self.phases.items())
        return (f"<p><b>{html.escape(self.model)}</b>: peak <b>{_fmt(self.total_bytes)}</b> during <i>{html.escape(self.peak_phase)}</i></p>"
                f"<table><tr><th>category</th><th>item</th><th>size</th><th>note</th></tr>{rows}"
                f"<tr><td><b>total</b></td><td></td><td style='text-align:right'><b>{_fmt(self.total_bytes)}</b></td><td></td></tr></table>"
                f"{verdict}<details><summary>total at each moment of the step</summary><table>{phases}</table></details>")


def _fmt(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def cuda_overhead_items(allocated: int) -> list[MemoryItem]:
    """What ``nvidia-smi`` shows on top of the tensors: labelled, and not part of ``tensor_bytes``."""
    return [
        MemoryItem("CUDA context + kernels + cuBLAS workspace", int(0.6 * GiB), "CUDA overhead",
                   "per process, ~0.4-1 GiB depending on GPU and libraries (not tensors)"),
        MemoryItem("caching-allocator slack (reserved > allocated)", int(0.05 * allocated), "CUDA overhead",
                   "~5 % fragmentation typical for training"),
    ]
