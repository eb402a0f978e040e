"""Pictures of the memory estimate: a stacked bar chart and a live panel of sliders.

The chart shows what is alive at the peak, stacked by category (weights, optimizer states,
gradients, activations, logits & loss, ...), so "why does LoRA still need 5 GiB?" has a visible
answer: the activations and the logits did not shrink. The panel (ipywidgets) re-estimates on
every slider move and prints the verdict for the chosen device.

The panel's logic lives in :meth:`MemoryExplorer.update`, a plain method, so a notebook cell (or a
test) can drive it and assert on the result without a browser.

Example:
    >>> from ftlab.ui.memory_viz import MemoryExplorer
    >>> ex = MemoryExplorer(model="smollm2-135m", device="cpu-16gb")
    >>> state = ex.update(method="lora", batch_size=8, seq_len=256)
    >>> state.fits
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.memory.architectures import ARCHITECTURES
from ftlab.memory.breakdown import GiB, MemoryEstimate, _fmt
from ftlab.memory.estimator import estimate_memory
from ftlab.memory.hardware import HARDWARE

# One colour per category, in stacking order (persistent at the bottom, transient on top).
CATEGORY_COLORS = {
    "weights": "#4c72b0",
    "quantisation constants": "#64b5cd",
    "LoRA adapters": "#8172b2",
    "optimizer states": "#dd8452",
    "gradients": "#c44e52",
    "activations": "#55a868",
    "logits & loss": "#ccb974",
    "transient": "#937860",
    "inputs": "#8c8c8c",
    "KV cache": "#da8bc3",
    "CUDA overhead": "#bbbbbb",
}


def plot_breakdown(estimates, ax=None, device=None, title: str | None = None):
    """Stacked bar(s) of the peak breakdown by category.

    Args:
        estimates: one :class:`MemoryEstimate`, a list of them, or a dict ``{label: estimate}``
            (several bars side by side, e.g. full vs LoRA vs QLoRA).
        ax: a matplotlib Axes to draw on (default: a new figure).
        device: a :data:`ftlab.memory.HARDWARE` name; draws its usable memory as a dashed line
            (default: the estimates' own device, if they have one).

    Returns:
        the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if isinstance(estimates, MemoryEstimate):
        estimates = {estimates.settings.get("method", "estimate"): estimates}
    elif not isinstance(estimates, dict):
        estimates = {f"{e.settings.get('method')} #{i + 1}": e for i, e in enumerate(estimates)}
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.5 * len(estimates), 4.2))
    labels = list(estimates)
    seen = set()
    for x, label in enumerate(labels):
        cats = estimates[label].by_category()
        bottom = 0.0
        for cat, color in CATEGORY_COLORS.items():
            gib = cats.get(cat, 0) / GiB
            if gib <= 0:
                continue
            ax.bar(x, gib, bottom=bottom, color=color, edgecolor="white", width=0.6, label=None if cat in seen else cat)
            seen.add(cat)
            bottom += gib
        ax.text(x, bottom, f"{bottom:.2f} GiB", ha="center", va="bottom", fontsize=9)
    hw = HARDWARE.get(device) if isinstance(device, str) else None
    hw = hw or next((e.device for e in estimates.values() if e.device is not None), None)
    if hw is not None:
        ax.axhline(hw.usable_gib, color="black", linestyle="--", linewidth=1)
        ax.text(len(labels) - 0.5, hw.usable_gib, f" {hw.name}: {hw.usable_gib:.0f} GiB usable", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("GiB at the peak")
    first = next(iter(estimates.values()))
    ax.set_title(title or f"{first.model}: batch {first.settings['batch_size']} x seq {first.settings['seq_len']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax


@dataclass
class ExplorerState:
    """What the panel shows after an update."""

    estimate: MemoryEstimate
    fits: bool
    verdict: str
    settings: dict


class MemoryExplorer:
    """Sliders for model, method, dtype, batch, sequence length, LoRA rank, checkpointing and device.

    ``update(**changes)`` re-estimates and returns an :class:`ExplorerState`; ``widget()`` builds the
    ipywidgets panel, whose controls call the same ``update``.
    """

    def __init__(self, model: str = "smollm2-135m", device: str = "dgx-spark", **settings):
        self.settings = dict(model=model, device=device, method="lora", param_dtype="bf16", batch_size=8, seq_len=512,
                             lora_rank=16, gradient_checkpointing=False)
        self.settings.update(settings)
        self.state: ExplorerState | None = None
        self._out = None
        self._verdict = None

    def _estimate_kwargs(self) -> dict:
        s = dict(self.settings)
        model = s.pop("model")
        hw = HARDWARE[s["device"]]
        if hw.kind == "cpu" and s.get("param_dtype") != "fp32":
            s["param_dtype"] = "fp32"  # ftlab trains in fp32 on a CPU unless allow_bf16_on_cpu
        return model, s

    def update(self, **changes) -> ExplorerState:
        """Apply ``changes`` (any estimate_memory argument, plus ``model`` and ``device``) and re-estimate."""
        self.settings.update(changes)
        model, kw = self._estimate_kwargs()
        est = estimate_memory(model, **kw)
        hw = est.device
        ok = est.fits()
        head = f"{_fmt(est.total_bytes)} at the peak ({est.peak_phase})"
        verdict = (f"FITS on {hw.name}: {head}, {_fmt(hw.usable_gib * GiB - est.total_bytes)} to spare" if ok
                   else f"DOES NOT FIT on {hw.name}: {head}, {_fmt(est.total_bytes - hw.usable_gib * GiB)} too much")
        self.state = ExplorerState(estimate=est, fits=ok, verdict=verdict, settings=dict(self.settings))
        self._redraw()
        return self.state

    def _redraw(self):
        if self._out is None:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        self._verdict.value = f"<b style='color:{'green' if self.state.fits else 'crimson'}'>{self.state.verdict}</b>"
        with self._out:
            self._out.clear_output(wait=True)
            ax = plot_breakdown(self.state.estimate)
            display(ax.figure)
            plt.close(ax.figure)

    def widget(self):
        """The ipywidgets panel (sliders + chart + verdict)."""
        import ipywidgets as W

        s = self.settings
        controls = {
            "model": W.Dropdown(options=sorted(ARCHITECTURES), value=s["model"], description="model"),
            "method": W.ToggleButtons(options=["full", "lora", "qlora", "freeze"], value=s["method"], description="method"),
            "param_dtype": W.ToggleButtons(options=["fp32", "bf16"], value=s["param_dtype"], description="dtype"),
            "batch_size": W.IntSlider(value=s["batch_size"], min=1, max=64, description="batch"),
            "seq_len": W.IntSlider(value=s["seq_len"], min=64, max=8192, step=64, description="seq length"),
            "lora_rank": W.IntSlider(value=s["lora_rank"], min=1, max=256, description="LoRA rank"),
            "gradient_checkpointing": W.Checkbox(value=s["gradient_checkpointing"], description="gradient checkpointing"),
            "device": W.Dropdown(options=list(HARDWARE), value=s["device"], description="device"),
        }
        self._verdict = W.HTML()
        self._out = W.Output()

        def on_change(change, key):
            try:
                self.update(**{key: change["new"]})
            except ValueError as e:  # e.g. an 8-bit optimizer on a CPU device
                self._verdict.value = f"<b style='color:crimson'>{e}</b>"

        for key, w in controls.items():
            w.observe(lambda ch, k=key: on_change(ch, k), names="value")
        self.update()
        return W.VBox([W.HBox([W.VBox(list(controls.values())[:4]), W.VBox(list(controls.values())[4:])]), self._verdict, self._out])


def memory_panel(model: str = "smollm2-135m", device: str = "dgx-spark", **settings):
    """Build and return the live panel (display it as the last expression of a notebook cell)."""
    return MemoryExplorer(model, device, **settings).widget()
