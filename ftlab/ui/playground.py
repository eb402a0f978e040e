"""The training playground: real short runs of ``ftlab.train`` with settings you choose, compared in one table.

A notebook slider that picks among precomputed runs can only show what its author thought of. The
playground trains for real: choose the method (full, LoRA, QLoRA), the learning rate, the LoRA rank,
the steps, the batch size, the warmup and packing, press **Run**, and watch the loss curve drawn over
the session's earlier runs. Each run adds a row to a comparison table: the settings, the final
training and validation loss, the task score on a small fixed sample of course test records, the
time and the peak memory. Each run keeps its folder under ``runs/playground/`` (config, history,
the adapter), so :meth:`Playground.load_runs` brings earlier sessions back into the table.

This module is the part that computes; it needs no browser. :class:`Playground` holds the data,
the runs and the table; :meth:`Playground.run` trains once and returns the table row, so a notebook
cell (and nbval) can call and assert it. ``ftlab.ui.playground_panel`` puts widgets on top
(``ftlab.playground()`` opens both).

Sizes come from the profile (``ftlab.get_profile()``): a run takes seconds in ``ci`` and well under
a minute on the laptop profile with the default settings.

Example:
    >>> pg = Playground(profile=get_profile("ci"))                     # doctest: +SKIP
    >>> row = pg.run(method="lora", lr=3e-3, steps=3)                   # doctest: +SKIP
    >>> row["final train loss"], row["task score"]                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ftlab.profiles import Profile, get_profile

PLAYGROUND_METHODS = ("full", "lora", "qlora")
RUNS_DIR = Path("runs/playground")
ROW_FILE = "playground.json"  # each run folder's table row, read back by load_runs()


@dataclass(frozen=True)
class Settings:
    """What the learner chooses for one run (the panel's controls, one field each)."""

    method: str = "lora"
    lr: float = 1e-3
    lora_rank: int = 16
    steps: int = 15
    batch_size: int = 4
    warmup: int = 0
    packing: bool = False

    @classmethod
    def for_profile(cls, profile: Profile) -> "Settings":
        """Defaults sized so that one run takes seconds (ci) or well under a minute (laptop)."""
        return cls(method="lora", lr=profile.lora_learning_rate, lora_rank=profile.lora_rank,
                   steps=max(3, min(profile.short_steps, 8)), batch_size=max(2, profile.batch_size // 2),
                   warmup=0, packing=False)

    def label(self) -> str:
        rank = f" r{self.lora_rank}" if self.method != "full" else ""
        return (f"{self.method}{rank} lr {self.lr:.0e}, {self.steps} steps x {self.batch_size}"
                + (f", warmup {self.warmup}" if self.warmup else "") + (", packed" if self.packing else ""))


# --------------------------------------------------------------------------- impossible settings


_QLORA_PROBLEM: dict[str, str | None] = {}


def qlora_problem(device_type: str) -> str | None:
    """None if bitsandbytes can run a 4-bit layer forward and backward on this device, else why not.

    Checked once per device type with a 64x64 ``Linear4bit``: an import that works is not enough
    (a build without kernels for this device imports fine and fails on first use).
    """
    if device_type not in _QLORA_PROBLEM:
        try:
            import torch

            from ftlab.training import quantize_model_nf4

            layer = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(device_type)
            quantize_model_nf4(layer)
            x = torch.randn(2, 64, device=device_type, requires_grad=True)
            layer(x).sum().backward()
            _QLORA_PROBLEM[device_type] = None
        except Exception as e:  # noqa: BLE001 (any failure means: QLoRA cannot run here)
            _QLORA_PROBLEM[device_type] = (f"QLoRA needs bitsandbytes' 4-bit layers, which do not run on this "
                                           f"{device_type} ({type(e).__name__}: {str(e)[:120]}). "
                                           "Choose LoRA: the same adapters on the unquantised model.")
    return _QLORA_PROBLEM[device_type]


def check_settings(settings: Settings, device_type: str = "cpu", n_train: int | None = None) -> list[str]:
    """Every reason these settings cannot run, as sentences that say what to change ([] = fine)."""
    s, problems = settings, []
    if s.method not in PLAYGROUND_METHODS:
        problems.append(f"method {s.method!r} is not one of {', '.join(PLAYGROUND_METHODS)}.")
    if int(s.steps) < 1:
        problems.append(f"steps = {s.steps}: a run needs at least 1 optimizer step.")
    if int(s.batch_size) < 1:
        problems.append(f"batch size = {s.batch_size}: each step needs at least 1 example.")
    elif n_train is not None and s.batch_size > n_train:
        problems.append(f"batch size {s.batch_size} is larger than the {n_train} training examples.")
    if not (isinstance(s.lr, (int, float)) and math.isfinite(s.lr) and 0 < s.lr <= 1):
        problems.append(f"learning rate {s.lr}: choose a value above 0 and at most 1 (typically 1e-5 to 1e-2).")
    if s.method in ("lora", "qlora") and int(s.lora_rank) < 1:
        problems.append(f"LoRA rank {s.lora_rank}: the adapters need rank 1 or more.")
    if int(s.warmup) < 0:
        problems.append(f"warmup = {s.warmup}: warmup steps cannot be negative.")
    elif int(s.steps) >= 1 and int(s.warmup) >= int(s.steps):
        problems.append(f"warmup {s.warmup} >= steps {s.steps}: the learning rate would never reach its peak. "
                        "Use fewer warmup steps than steps.")
    if s.method == "qlora" and not problems:
        reason = qlora_problem(device_type)
        if reason:
            problems.append(reason)
    return problems


class SettingsError(ValueError):
    """Settings that cannot run; the message lists every problem and the fix."""


# --------------------------------------------------------------------------- measuring one run


class _RunWatcher:
    """Training callback: collects the curve, samples memory, hands each step on, and stops on request."""

    def __init__(self, stop_event: threading.Event, on_step=None):
        self.stop_event, self.on_step_fn = stop_event, on_step
        self.records, self.peak_rss = [], 0

    def on_step(self, record):
        import psutil

        self.records.append(record)
        # ru_maxrss (what the loop logs on a CPU) is the peak of the whole process, never reset between
        # runs; the current resident memory sampled at every step belongs to this run.
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)
        if self.on_step_fn is not None:
            self.on_step_fn(record)
        return self.stop_event.is_set()  # True: the loop stops after this step ("callback")


def _final(history, key):
    values = [h[key] for h in history if h.get(key) is not None]
    return values[-1] if values else math.nan


def make_row(name: str, settings: Settings, history: list, *, task_score: float, seconds: float,
             peak_mib: float, stopped_because: str, path) -> dict:
    """One row of the comparison table: settings, results, and where the run is kept."""
    train_steps = [h for h in history if "loss" in h]
    return {"run": name, "method": settings.method, "lr": settings.lr,
            "rank": settings.lora_rank if settings.method != "full" else None,
            "steps": settings.steps, "batch": settings.batch_size, "warmup": settings.warmup,
            "packing": settings.packing, "steps done": len(train_steps),
            "final train loss": _final(history, "loss"), "final val loss": _final(history, "val_loss"),
            "task score": task_score, "seconds": round(seconds, 1), "peak MiB": round(peak_mib, 1),
            "stopped": stopped_because, "folder": str(path)}


# --------------------------------------------------------------------------- the playground


class Playground:
    """Data, runs and comparison table of one playground. ``run()`` trains once; nothing needs a browser.

    Args:
        profile: sizes (default ``ftlab.get_profile()``).
        runs_dir: where each run keeps its folder (git-ignored ``runs/``).
        sample_size: course test records the task score is measured on (the same ones every run).
        keep_full_weights: full fine-tuning saves the whole model (540 MB for SmolLM2-135M in fp32);
            off by default, so a full run keeps its config, history and row but not its weights.
    """

    def __init__(self, profile: Profile | None = None, runs_dir=RUNS_DIR, sample_size: int | None = None,
                 keep_full_weights: bool = False, train_records=None, val_records=None, sample_records=None):
        from ftlab.data import load_course_data

        self.profile = profile or get_profile()
        self.runs_dir = Path(runs_dir)
        self.keep_full_weights = keep_full_weights
        self.defaults = Settings.for_profile(self.profile)
        self.train_records = train_records or load_course_data("instructions", "train", limit=self.profile.train_size)
        self.val_records = val_records or load_course_data("instructions", "validation",
                                                           limit=2 * self.defaults.batch_size)
        n = sample_size or (4 if self.profile.is_ci else 8)
        self.sample_records = sample_records or load_course_data("instructions", "test", limit=n)
        self.rows: list[dict] = []  # the comparison table, one row per run (this session's and reloaded ones)
        self.curves: dict[str, list[dict]] = {}  # run name -> its history
        self.stop_event = threading.Event()

    # ---- settings

    def settings(self, **changes) -> Settings:
        """The profile's default settings with ``changes`` applied (unknown names are an error)."""
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"Playground: unknown setting(s) {sorted(unknown)}; the settings are {sorted(known)}.")
        return dataclasses.replace(self.defaults, **changes)

    def problems(self, settings: Settings) -> list[str]:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # where ftlab.load_model puts the model
        return check_settings(settings, device, n_train=len(self.train_records))

    # ---- one run

    def _next_name(self, settings: Settings) -> str:
        # Numbered across methods and sessions (001-lora, 002-full, ...): a new run never reuses a folder.
        taken = {r["run"] for r in self.rows} | ({p.name for p in self.runs_dir.iterdir()} if self.runs_dir.is_dir() else set())
        numbers = [int(n.split("-")[0]) for n in taken if n.split("-")[0].isdigit()]
        return f"{max(numbers, default=0) + 1:03d}-{settings.method}"

    def run(self, settings: Settings | None = None, on_step=None, **changes) -> dict:
        """Train once with ``settings`` (or the defaults with ``changes``); add and return its table row.

        ``on_step(record)`` is called after every step (the panel redraws its plot there). Raises
        :class:`SettingsError` for impossible settings, before anything is loaded.
        """
        import ftlab
        from ftlab.evaluate import evaluate_model
        from ftlab.training import TrainConfig, train

        settings = settings or self.settings(**changes)
        problems = self.problems(settings)
        if problems:
            raise SettingsError(" ".join(problems))
        self.stop_event.clear()
        name = self._next_name(settings)
        out_dir = self.runs_dir / name
        config = TrainConfig(
            output_dir=str(out_dir), method=settings.method, lr=settings.lr, lora_rank=settings.lora_rank,
            lora_alpha=2 * settings.lora_rank, max_steps=settings.steps, batch_size=settings.batch_size,
            warmup_steps=settings.warmup, scheduler="cosine", max_length=self.profile.max_length,
            batching="pack" if settings.packing else "group", eval_every=max(1, settings.steps // 3),
            eval_batches=1, save_final=settings.method != "full" or self.keep_full_weights,
            log_to=("jsonl",), progress=False, seed=0)
        t0 = time.time()
        model, tok = ftlab.load_model(self.profile.model_name)  # a fresh copy of the base model every run
        watcher = _RunWatcher(self.stop_event, on_step)
        self.curves[name] = watcher.records  # filled while training: a live plot reads it
        result = train(model, tok, self.train_records, eval_data=self.val_records, config=config, callbacks=[watcher])
        score = evaluate_model(result.model, tok, self.sample_records, name=name, progress=False,
                               max_new_tokens=self.profile.max_new_tokens, batch_size=len(self.sample_records)).score
        peak = self._peak_mib(result, watcher)
        row = make_row(name, settings, result.history, task_score=score, seconds=time.time() - t0, peak_mib=peak,
                       stopped_because="stop button" if result.stopped_because == "callback" else result.stopped_because,
                       path=result.final_path or out_dir)
        self.curves[name] = list(result.history)
        (out_dir / ROW_FILE).write_text(json.dumps({"row": row, "settings": dataclasses.asdict(settings)}, indent=1))
        self.rows.append(row)
        del model, result
        return row

    @staticmethod
    def _peak_mib(result, watcher) -> float:
        """Peak memory of this run: allocated CUDA memory on a GPU (reset by the loop at its start);
        on a CPU the largest resident memory of the process sampled at the end of each step."""
        from ftlab.training.measure import peak_memory_mb

        device = next(result.model.parameters()).device
        return peak_memory_mb(device) if device.type == "cuda" else watcher.peak_rss / 2**20

    def stop(self) -> None:
        """Ask the running run to stop after its current step (it still gets a row and keeps its folder)."""
        self.stop_event.set()

    # ---- past runs and the table

    def load_runs(self) -> int:
        """Add every run kept under ``runs_dir`` that is not in the table yet; returns how many were added."""
        from ftlab.training import read_history

        if not self.runs_dir.is_dir():
            return 0
        have, added = {r["run"] for r in self.rows}, 0
        for folder in sorted(p for p in self.runs_dir.iterdir() if (p / ROW_FILE).exists()):
            if folder.name in have:
                continue
            saved = json.loads((folder / ROW_FILE).read_text())
            self.rows.append(saved["row"])
            self.curves[folder.name] = read_history(folder) if (folder / "history.jsonl").exists() else []
            added += 1
        return added

    def table(self):
        """The comparison table as a pandas DataFrame, one row per run."""
        import pandas as pd

        columns = ["run", "method", "lr", "rank", "steps", "batch", "warmup", "packing", "steps done",
                   "final train loss", "final val loss", "task score", "seconds", "peak MiB", "stopped"]
        return pd.DataFrame(self.rows, columns=columns + ["folder"])[columns].set_index("run")

    def figure(self, highlight: str | None = None):
        """Every run's training loss (validation loss dotted); ``highlight`` (default: the newest) in colour."""
        from matplotlib.figure import Figure  # not pyplot: safe to draw from the training thread

        fig = Figure(figsize=(7, 3.2))
        ax = fig.add_subplot()
        names = list(self.curves)
        highlight = highlight or (names[-1] if names else None)
        for name in names:
            hist, mine = self.curves[name], name == highlight
            train_pts = [(h["step"], h["loss"]) for h in hist if "loss" in h]
            val_pts = [(h["step"], h["val_loss"]) for h in hist if h.get("val_loss") is not None]
            color = "tab:red" if mine else "lightgrey"
            if train_pts:
                ax.plot(*zip(*train_pts), color=color, lw=2.2 if mine else 1, zorder=3 if mine else 1,
                        label=f"{name} train" if mine else None)
            if val_pts and mine:
                ax.plot(*zip(*val_pts), "o:", color="tab:orange", label=f"{name} validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title(f"{len(names)} run(s); newest in colour" if names else "no runs yet: press Run")
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def figure_png(self, highlight: str | None = None) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure(highlight).savefig(buf, format="png", dpi=80)
        return buf.getvalue()
