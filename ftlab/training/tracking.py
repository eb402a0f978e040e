"""Seeing a run while it trains: progress bar, log files, TensorBoard, and a live plot for notebooks.

The training loop hands every finished step to a :class:`RunLogger` as one flat dict
(``{"step": 12, "loss": 1.93, "lr": 1e-4, ..., "val_loss": 2.01}``). The logger writes it to

* ``history.jsonl`` - one JSON object per line, every key (easy to read back with pandas),
* ``history.csv``   - a fixed set of columns, for spreadsheets,
* ``tensorboard/``  - event files: ``tensorboard --logdir <run_dir>/tensorboard``.

:class:`LivePlot` is a training callback for notebooks: it redraws the training and validation
loss curves in place as the run goes (and draws them once at the end outside notebooks).

Example:
    >>> import tempfile
    >>> log = RunLogger(tempfile.mkdtemp(), log_to=("jsonl", "csv"))
    >>> log.log({"step": 1, "loss": 2.5, "lr": 1e-3})
    >>> log.close()
    >>> read_history(log.run_dir)[0]["loss"]
    2.5
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

LOG_TARGETS = ("jsonl", "csv", "tensorboard")

# history.csv columns, in order (a CSV needs its header before the first row; JSONL keeps everything)
CSV_COLUMNS = ("step", "loss", "lr", "grad_norm", "step_s", "tokens_per_s", "step_tokens", "trained_tokens",
               "peak_memory_mb", "elapsed_s", "val_loss", "val_ppl", "val_token_acc")


class RunLogger:
    """Write each step's record to JSONL, CSV and/or TensorBoard inside ``run_dir``."""

    def __init__(self, run_dir, log_to=("jsonl", "csv", "tensorboard"), append: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        unknown = set(log_to) - set(LOG_TARGETS)
        if unknown:
            raise ValueError(f"log_to: unknown target(s) {sorted(unknown)}. Choose from {LOG_TARGETS}.")
        mode = "a" if append else "w"  # a resumed run continues the same files
        self._jsonl = open(self.run_dir / "history.jsonl", mode) if "jsonl" in log_to else None
        self._csv_file = self._csv = None
        if "csv" in log_to:
            path = self.run_dir / "history.csv"
            new = not (append and path.exists())
            self._csv_file = open(path, mode, newline="")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if new:
                self._csv.writeheader()
        self._tb = None
        if "tensorboard" in log_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        """Append one record (a dict with at least ``step``)."""
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._csv:
            self._csv.writerow(record)
            self._csv_file.flush()
        if self._tb:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    group = "val" if key.startswith("val_") else "train"
                    self._tb.add_scalar(f"{group}/{key.removeprefix('val_')}", value, record["step"])
            self._tb.flush()

    def close(self) -> None:
        for f in (self._jsonl, self._csv_file):
            if f:
                f.close()
        if self._tb:
            self._tb.close()


def read_history(run_dir) -> list[dict]:
    """Read a run's ``history.jsonl`` back as a list of dicts."""
    with open(Path(run_dir) / "history.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_tensorboard(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Scalars from a run's TensorBoard event files, read with TensorBoard's own reader.

    Returns ``{"train/loss": [(step, value), ...], ...}``. Handy to check the files are real.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets and in-place redraws work)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
    """A tqdm bar that is a widget in notebooks and text in terminals (``tqdm.auto``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True)


def format_postfix(record: dict) -> dict:
    """The few numbers worth showing next to the bar."""
    out = {"loss": f"{record['loss']:.4f}", "lr": f"{record['lr']:.2e}", "tok/s": f"{record['tokens_per_s']:.0f}"}
    if record.get("val_loss") is not None:
        out["val"] = f"{record['val_loss']:.4f}"
    return out


class LivePlot:
    """Training callback: training loss (and validation loss) redrawn in place while training runs.

    Pass it to ``ftlab.train(..., callbacks=[LivePlot()])``. In a notebook the figure updates every
    ``every`` steps; elsewhere it is drawn once at the end. After the run ``plot.figure`` holds the
    final figure (save it with ``plot.figure.savefig(...)``).

    Example:
        >>> plot = LivePlot(every=5)
        >>> plot.on_step({"step": 1, "loss": 3.0})
        >>> plot.steps, plot.losses
        ([1], [3.0])
    """

    def __init__(self, every: int = 1, title: str = "loss", show: bool | None = None):
        self.every = max(1, every)
        self.title = title
        self.show = in_notebook() if show is None else show
        self.steps, self.losses, self.val_steps, self.val_losses = [], [], [], []
        self.figure = None
        self._handle = None

    def on_step(self, record: dict, state=None) -> None:
        if "loss" in record:  # step 0 carries only the validation before training
            self.steps.append(record["step"])
            self.losses.append(record["loss"])
        if record.get("val_loss") is not None:
            self.val_steps.append(record["step"])
            self.val_losses.append(record["val_loss"])
        if self.show and (record["step"] % self.every == 0 or record.get("val_loss") is not None):
            self._draw()

    def on_end(self, result=None) -> None:
        self._draw(final=True)

    def draw(self):
        """Draw the curves now; returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        if self.figure is None:
            self.figure, self._ax = plt.subplots(figsize=(7, 3.5))
            plt.close(self.figure)  # we display it ourselves; stops a second copy at cell end
        ax = self._ax
        ax.clear()
        ax.plot(self.steps, self.losses, label="train loss", color="tab:blue", alpha=0.8)
        if self.val_losses:
            ax.plot(self.val_steps, self.val_losses, "o-", label="validation loss", color="tab:orange")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / trained token)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend()
        return self.figure

    def _draw(self, final: bool = False) -> None:
        fig = self.draw()
        if not self.show:
            return
        from IPython.display import display

        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
