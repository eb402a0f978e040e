"""Checkpoints that survive crashes, and resuming from them.

A checkpoint is a folder ``<run>/checkpoints/step-000040/`` holding everything needed to continue a
run exactly where it stopped:

==========================  ====================================================================
``trainable.safetensors``   the trainable parameters only: every weight for full fine-tuning, the
                            adapter for LoRA/QLoRA, the unfrozen layers for freezing. Frozen weights
                            never change, so they are not copied again and again.
``optimizer.pt``            the optimizer state (AdamW's two moments per trainable parameter)
``scheduler.pt``            the learning-rate scheduler's position
``rng.pt``                  the random generators (Python, NumPy, torch, CUDA): dropout masks after
                            a resume are the ones the uninterrupted run would have drawn
``state.json``              step, data position, history, best validation loss, and a file list
==========================  ====================================================================

**Atomic writes.** A kill in the middle of a save (out of memory, a closed laptop, a Ctrl-C at the
wrong moment) must never destroy the last good checkpoint. So every file is first written into a
hidden temporary folder, flushed to disk with ``fsync``, and only then is the folder *renamed* to
its final name. A rename within one file system is atomic: a reader sees either no ``step-000040``
or a complete one. Half-written ``.tmp-*`` folders are ignored and cleaned up by the next save.

Example:
    >>> import torch, tempfile
    >>> model = torch.nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> run = tempfile.mkdtemp()
    >>> path = save_checkpoint(run, 3, model, opt, state={"note": "hi"})
    >>> path.name, latest_checkpoint(run) == path
    ('step-000003', True)
    >>> load_checkpoint(path, model, opt)["step"]
    3
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not match the model it is loaded into."""


# --------------------------------------------------------------------------- finding checkpoints


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The folder that holds a run's checkpoints: ``<run_dir>/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_DIR


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary, half-written folders are skipped)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(resume_from: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Turn ``"latest"``, a run folder or a checkpoint folder into a checkpoint folder (or raise)."""
    if str(resume_from) == "latest":
        path = latest_checkpoint(run_dir)
        if path is None:
            raise CheckpointError(
                f"resume_from='latest' but {checkpoint_dir(run_dir)} holds no complete checkpoint. "
                "Fix: set save_every > 0 in the first run, or set resume_from=None to start fresh."
            )
        return path
    path = Path(resume_from)
    if (path / CHECKPOINT_DIR).is_dir():  # a run folder: take its newest checkpoint
        return resolve_checkpoint("latest", path)
    if not (path / "state.json").exists():
        raise CheckpointError(f"{path}: not a checkpoint folder (no state.json). Fix: point resume_from at a "
                              f"'{PREFIX}NNNNNN' folder, a run folder, or use 'latest'.")
    return path


# --------------------------------------------------------------------------- random generators


def rng_state() -> dict:
    """Every random generator's state, so a resumed run draws the same random numbers."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- saving


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with ``requires_grad``, by name, as contiguous CPU tensors ready for safetensors.

    ``named_parameters`` lists a tied weight (embedding == output layer) once, which is what we want.
    """
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every OS allows opening a directory (Windows doesn't).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_files(tmp: Path, model, optimizer, scheduler, state: dict, model_state: dict | None, rng_states) -> None:
    """Write the checkpoint's files into ``tmp``. Split out so tests can simulate a crash half-way."""
    weights = model_state if model_state is not None else trainable_state_dict(model)
    save_file(weights, str(tmp / "trainable.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    # one RNG state per process: under DDP every process draws its own dropout masks
    torch.save(rng_states or [rng_state()], tmp / "rng.pt")
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    # state.json is written last: a folder without it is never treated as a checkpoint.
    (tmp / "state.json").write_text(json.dumps({**state, "files": files}, indent=1, default=float))


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
    state: dict | None = None,
    keep_last: int | None = None,
    protect: tuple | list = (),
    model_state: dict | None = None,
    rng_states: list | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoints/step-<step>/`` atomically and return its path.

    Args:
        run_dir: the run's output folder.
        step: optimizer steps done so far (the folder name).
        model, optimizer, scheduler: what to save; only trainable parameters of ``model`` are stored.
        state: anything JSON-serialisable the loop needs to resume (data position, history, ...).
        keep_last: afterwards delete all but the newest ``keep_last`` checkpoints (``None``: keep all).
        protect: checkpoint paths never deleted by ``keep_last`` (e.g. the best one).
        model_state: use this state dict instead of reading ``model`` (e.g. gathered from FSDP shards).
        rng_states: one :func:`rng_state` per process (default: this process's).
    """
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):  # left behind by an earlier crash
        shutil.rmtree(stale, ignore_errors=True)
    final = folder / f"{PREFIX}{step:06d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    _write_files(tmp, model, optimizer, scheduler, {"step": step, **(state or {})}, model_state, rng_states)
    for p in tmp.iterdir():
        _fsync_file(p)
    _fsync_dir(tmp)
    if final.exists():
        # Replacing a checkpoint of the same step: move the old one aside first (renaming onto a
        # non-empty folder is not allowed), so there is no moment without a complete one.
        old = folder / f".tmp-old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(folder)
    if keep_last is not None:
        prune_checkpoints(run_dir, keep_last, protect=protect)
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, protect: tuple | list = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints, never one listed in ``protect``. Returns the deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    keep = {Path(p).resolve() for p in protect if p}
    deleted = []
    for path in list_checkpoints(run_dir)[:-keep_last]:
        if path.resolve() not in keep:
            shutil.rmtree(path)
            deleted.append(path)
    return deleted


# --------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer=None, scheduler=None,
                    restore_rng: bool = True, rank: int = 0) -> dict:
    """Load a checkpoint into ``model`` (and optimizer / scheduler / RNGs); return its saved ``state``.

    The model must be set up the same way as when it was saved (same method, same LoRA targets):
    every stored tensor must find a parameter of the same name and shape, else ``CheckpointError``.
    """
    path = Path(path)
    state_file = path / "state.json"
    if not state_file.exists():
        raise CheckpointError(f"{path}: no state.json - not a complete checkpoint (an interrupted save?).")
    state = json.loads(state_file.read_text())
    for name, size in state.get("files", {}).items():
        if not (path / name).exists() or (path / name).stat().st_size != size:
            raise CheckpointError(f"{path / name}: missing or truncated (expected {size} bytes). "
                                  "Fix: resume from an earlier checkpoint.")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    for name, tensor in weights.items():
        if name not in params:
            raise CheckpointError(
                f"{path}: the checkpoint has parameter {name!r} that the model does not. Fix: set the model up "
                "with the same method/LoRA settings as the run that saved it (its config.yaml)."
            )
        if params[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                                  f"{tuple(params[name].shape)} in the model.")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    if scheduler is not None and (path / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if restore_rng:
        states = torch.load(path / "rng.pt", weights_only=False)
        set_rng_state(states[min(rank, len(states) - 1)])
    return state


class StopOnInterrupt:
    """The first Ctrl-C (or a notebook's stop button) asks the loop to stop after the current step and
    save a checkpoint; a second one interrupts immediately. Only the main thread can catch signals.

    Example:
        >>> with StopOnInterrupt() as interrupt:
        ...     interrupt.requested          # becomes True after the first Ctrl-C
        False
    """

    def __enter__(self):
        self.requested, self._old = False, None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\n[ftlab] interrupt: finishing this step, saving a checkpoint, then stopping "
              "(interrupt again to stop at once, without saving).")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
