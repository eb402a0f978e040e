"""The course datasets in ``data/`` and how answers to them are scored.

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
    >>> from ftlab.data.course import load_course_data, score_example
    >>> rows = load_course_data("instructions", "test", limit=2)
    >>> sorted(rows[0])
    ['input', 'instruction', 'output', 'task', 'template']
    >>> score_example("classify", " Billing.", "billing")
    1.0
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ftlab.evaluate.metrics import exact_match, json_field_accuracy, token_f1

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


def _strip_quotes(s: str) -> str:
    return s.strip().strip("\"'`").strip()


def score_example(task: str, prediction: str, reference: str) -> float:
    """Score one model answer against the reference answer; 1.0 is perfect, 0.0 is wrong.

    - ``extract_json``: field-level accuracy (``ftlab.metrics.json_field_accuracy``): the fraction of
      the reference's four keys the prediction reproduces exactly. The whole answer must be one JSON
      object -- prose or Markdown fences around it make it invalid and score 0.0, because the program
      that consumes it would fail too.
    - ``classify``: 1.0 if the answer, SQuAD-normalised (lower case, no punctuation, no articles), is
      exactly the label; "Billing." counts, "The category is billing" does not.
    - ``rewrite``: exact string match after stripping surrounding whitespace (the output has exactly
      one correct form, so anything else is wrong).
    - ``qa``: SQuAD token F1 (``ftlab.metrics.token_f1``). We use F1 rather than exact match so an
      answer that contains the value in a short sentence gets partial credit; a verbose answer
      scores low, the bare value scores 1.0. ``exact_match`` is in ``ftlab.metrics`` for the
      stricter view.

    Example:
        >>> score_example("extract_json", '{"customer":"Ana Silva","order_id":null,"product":"x","quantity":1}',
        ...               '{"customer":"Ana Silva","order_id":null,"product":"x","quantity":2}')
        0.75
        >>> score_example("qa", "ParcelGo", "ParcelGo"), score_example("rewrite", "2024-03-05 ", "2024-03-05")
        (1.0, 1.0)
    """
    if not isinstance(prediction, str):
        raise TypeError(f"score_example: prediction must be a str, got {type(prediction).__name__}")
    if task == "extract_json":
        return json_field_accuracy(prediction, reference)
    if task == "classify":
        return exact_match(prediction, reference)
    if task == "rewrite":
        return float(prediction.strip() == reference.strip())
    if task == "qa":
        return token_f1(prediction, reference)
    raise ValueError(f"score_example: unknown task {task!r}; the course tasks are {list(TASKS)}")


def score_probe(prediction: str, answers: list[str]) -> bool:
    """True if any accepted answer occurs in the prediction as a whole word or phrase (any case).

    Probe answers are free-form sentences ("The capital of France is Paris."), so we look for the
    key word rather than compare whole strings. "Whole word" matters for numbers: the answer "7"
    must not be found inside "129.9999967527" -- a digit, letter or decimal point next to the
    match disqualifies it.

    Example:
        >>> score_probe("The capital of France is Paris.", ["paris"])
        True
        >>> score_probe("There are 17 of them.", ["7", "seven"])
        False
    """
    for answer in answers:
        pattern = r"(?<![\w.])" + re.escape(answer.strip()) + r"(?![\w]|\.\d)"
        if re.search(pattern, prediction, flags=re.IGNORECASE):
            return True
    return False
