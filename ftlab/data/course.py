"""The course datasets in ``data/`` (how answers to them are scored: ``ftlab.evaluate.scoring``).

All of it is synthetic and made for this course by ``data/build_datasets.py``: the support desk of
*Brightwave Home*, a fictional appliance shop (see ``data/README.md`` for how each file is built).

=================  ==============================================  ===========================
name               what                                            splits
=================  ==============================================  ===========================
``instructions``   instruction / input / output / task / template  train, validation, test
``chat``           multi-turn conversations with a system prompt   train, validation, test
``domain_corpus``  plain text ``{"text"}`` about the same company  (none)
``probes``         general questions the base model gets right     (none)
``preferences``    prompt / chosen / rejected pairs                (none)
``general_replay`` general prompts + the base model's own answers  (none)
=================  ==============================================  ===========================

Four task types, every instruction/chat record says which in ``task``:

- ``extract_json``: a ticket -> ``{"customer":..,"order_id":..,"product":..,"quantity":..}``,
- ``classify``: a ticket -> one of ``billing, shipping, technical, account, other``,
- ``rewrite``: a date / phone number / agent note -> one exact normalised form,
- ``qa``: order records + a question -> a short value copied from the records.

The test split uses instruction phrasings (and input formats) that never occur in training,
so a good test score means the skill generalised, not that the wording was memorised.

Example:
    >>> from ftlab.data.course import load_course_data
    >>> rows = load_course_data("instructions", "test", limit=2)
    >>> sorted(rows[0])
    ['input', 'instruction', 'output', 'task', 'template']
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASKS = ("extract_json", "classify", "rewrite", "qa")
LABELS = ("billing", "shipping", "technical", "account", "other")
SYSTEM_PROMPT = ("You are the support assistant of Brightwave Home. "
                 "Do exactly what the user asks and reply in the requested format, with nothing else.")

DATASETS = {
    # name -> (file pattern, allowed splits; None = a single file without splits)
    "instructions": ("instructions/{split}.jsonl", ("train", "validation", "test")),
    "chat": ("chat/{split}.jsonl", ("train", "validation", "test")),
    "domain_corpus": ("domain_corpus.jsonl", None),
    "probes": ("probes.jsonl", None),
    "preferences": ("preferences.jsonl", None),
    "general_replay": ("general_replay.jsonl", None),
}


def data_dir() -> Path:
    """The repository's ``data/`` folder (next to the ``ftlab`` package)."""
    return Path(__file__).resolve().parents[2] / "data"


def course_data_path(name: str, split: str | None = None) -> Path:
    """Path of one course data file; raises ``ValueError`` for an unknown name or split."""
    if name not in DATASETS:
        raise ValueError(f"unknown course dataset {name!r}; choose one of {sorted(DATASETS)}")
    pattern, splits = DATASETS[name]
    if splits is None:
        if split is not None:
            raise ValueError(f"course dataset {name!r} has no splits; call load_course_data({name!r}) without split")
        return data_dir() / pattern
    split = split or "train"
    if split not in splits:
        raise ValueError(f"course dataset {name!r} has splits {list(splits)}, not {split!r}")
    return data_dir() / pattern.format(split=split)


def load_course_data(name: str = "instructions", split: str | None = None, limit: int | None = None) -> list[dict]:
    """Load one course dataset as a list of dicts, exactly as stored in the JSONL file.

    Args:
        name: ``"instructions"``, ``"chat"``, ``"domain_corpus"``, ``"probes"``, ``"preferences"`` or
            ``"general_replay"``.
        split: ``"train"`` (default), ``"validation"`` or ``"test"`` for ``instructions``/``chat``;
            leave it ``None`` for the others.
        limit: keep only the first ``limit`` records (the files are already shuffled).

    The records are returned raw (Alpaca layout, ``messages``, ``text``, ...). To get ftlab's canonical
    ``messages`` form with ``_source`` for error messages, pass the path to ``ftlab.data.load_records``.

    Example:
        >>> len(load_course_data("instructions", "train", limit=5))
        5
    """
    path = course_data_path(name, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: rebuild the course data with `python data/build_datasets.py`"
                                + {"probes": " --verify-probes` (needs the real model)",
                                   "general_replay": " --build-replay` (needs the real model)"}.get(name, ""))
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg}). "
                                 "Fix: rebuild with `python data/build_datasets.py`") from None
    return rows


def mix_replay(task_records: list[dict], replay_records: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """Task records plus replay records (repeated as needed) making up ``fraction`` of the result, shuffled.

    Replay is the standard guard against catastrophic forgetting: keep showing the model a little
    general data while it learns the task. With the course's ``general_replay`` set the targets are
    the base model's own answers, so the replay part teaches nothing new -- it only holds the
    model's general behaviour in place. The replay set is small, so it is repeated (each record
    equally often, give or take one) until it makes up ``fraction`` of the mix; no task record is
    dropped.

    Example:
        >>> mixed = mix_replay([{"t": 1}] * 80, [{"r": 1}] * 5, fraction=0.2)
        >>> len(mixed), sum("r" in m for m in mixed)
        (100, 20)
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"mix_replay: fraction must be in [0, 1), got {fraction}")
    if fraction and not replay_records:
        raise ValueError("mix_replay: fraction > 0 but no replay records were given. Fix: load them with "
                         "load_course_data('general_replay') or pass fraction=0")
    n_replay = round(len(task_records) * fraction / (1 - fraction))
    rng = random.Random(seed)
    replay = []
    while len(replay) < n_replay:
        replay += rng.sample(replay_records, min(len(replay_records), n_replay - len(replay)))
    mixed = list(task_records) + replay
    rng.shuffle(mixed)
    return mixed
