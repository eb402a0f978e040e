"""Reading fine-tuning data: files and formats, field mapping, validation, reports, de-duplication, splits.

Everything that reaches the tokenizer goes through ``load_records``. It reads a file (``.jsonl``,
``.json``, ``.csv``, ``.parquet``), a list of dicts or a ``datasets.Dataset``, recognises the
format, and returns *canonical records*:

* conversations - ``{"messages": [{"role": "user", "content": "..."}, ...], ...}`` - from
  instruction triples, prompt/completion pairs, chat messages and ShareGPT conversations;
* plain text - ``{"text": "...", ...}`` - for continued pre-training.

Every other field (``task``, ``id`` ...) is kept unchanged; ``_source`` says where the record came
from (``"train.jsonl:7"`` = line 7 of a JSONL/CSV file, ``"train.json#3"`` = the 3rd record of a
JSON/Parquet file, ``"records[0]"`` = index 0 of a list) and ``_format`` which format it was read as.

Bad data is the commonest reason a fine-tune fails, so problems are collected, not skipped: each
names the file, the line or record, the field, what is wrong and how to fix it, and
``DataValidationError`` lists them all at once. Nothing is dropped or truncated unless you ask
(``on_invalid="drop"``, ``drop_duplicates``, ``tokenize_example(max_length=...)``), and then the
number is reported.

Example:
    >>> recs = load_records([{"question": "2+2?", "answer": "4"}],
    ...                     field_map={"question": "prompt", "answer": "completion"})
    >>> recs[0]["messages"]
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
"""

from __future__ import annotations

import csv
import json
import random
import re
import statistics
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("instruction", "prompt_completion", "chat", "sharegpt", "text")
ROLES = ("system", "user", "assistant")
# ShareGPT dumps use many speaker names; these are the ones we accept.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "model": "assistant", "bing": "assistant",
}
FILE_TYPES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
MAX_SHOWN = 10  # problems shown in an error message (all are in .problems)


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One thing wrong with the data: where (file + line/record), which field, what, and the fix."""

    file: str
    unit: str  # "line" (JSONL/CSV), "record" (JSON/Parquet, 1-based) or "index" (in-memory, 0-based)
    number: int
    field: str
    message: str
    fix: str

    @property
    def where(self) -> str:
        if self.unit == "index":
            return f"{self.file}[{self.number}]"
        return f"{self.file} {self.unit} {self.number}"

    def __str__(self) -> str:
        return f"{self.where}, field '{self.field}': {self.message}. Fix: {self.fix}"


class DataValidationError(ValueError):
    """Raised with every problem found; ``.problems`` is the full list of ``Problem``."""

    def __init__(self, problems, max_shown=MAX_SHOWN):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:max_shown])
        more = len(self.problems) - max_shown
        tail = f"\n  ... and {more} more (all of them are in err.problems)" if more > 0 else ""
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} found in the data:\n{shown}{tail}")


@dataclass
class _Loc:
    file: str
    unit: str
    number: int

    def source(self) -> str:
        if self.unit == "index":
            return f"{self.file}[{self.number}]"
        if self.unit == "line":
            return f"{self.file}:{self.number}"
        return f"{self.file}#{self.number}"

    def problem(self, field_name, message, fix) -> Problem:
        return Problem(self.file, self.unit, self.number, field_name, message, fix)


# --------------------------------------------------------------------------- reading


def _read_jsonl(path: Path, name: str):
    items, problems = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue  # blank lines are not records
            loc = _Loc(name, "line", lineno)
            try:
                items.append((loc, json.loads(line)))
            except json.JSONDecodeError as e:
                problems.append(loc.problem(
                    "(whole line)", f"malformed JSON ({e.msg} at column {e.colno})",
                    "every line must be one complete JSON object like {\"instruction\": \"...\", \"output\": \"...\"}; "
                    "look for a missing quote, comma or bracket, or a line break inside a string (write it as \\n)",
                ))
    return items, problems


def _read_json(path: Path, name: str):
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg.startswith("Extra data"):  # one object per line: JSONL saved as .json
            return _read_jsonl(path, name)
        return [], [_Loc(name, "line", e.lineno).problem(
            "(file)", f"malformed JSON ({e.msg} at column {e.colno})",
            "the file must be a JSON list of objects [{...}, {...}]; check quotes, commas and brackets near that line",
        )]
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            return [], [_Loc(name, "record", 1).problem(
                "(file)", f"expected a list of records, got an object with keys {sorted(data)[:8]}",
                "store the records as a JSON list, or as the only list inside the object (e.g. {\"data\": [...]})",
            )]
        data = data[lists[0]]
    if not isinstance(data, list):
        return [], [_Loc(name, "record", 1).problem(
            "(file)", f"expected a list of records, got {type(data).__name__}", "store the records as a JSON list [{...}, ...]")]
    return [(_Loc(name, "record", i + 1), item) for i, item in enumerate(data)], []


def _read_csv(path: Path, name: str):
    items, problems = [], []
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            loc = _Loc(name, "line", reader.line_num)
            if None in row:
                problems.append(loc.problem(
                    "(row)", f"the row has more cells than the header ({len(reader.fieldnames)} columns)",
                    "quote cells that contain the delimiter, e.g. \"a, b\"",
                ))
                continue
            items.append((loc, row))
    return items, problems


def _read_parquet(path: Path, name: str):
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    return [(_Loc(name, "record", i + 1), row) for i, row in enumerate(rows)], []


def _read_source(source):
    """Return ``[(loc, raw_record), ...]`` and a list of reading problems."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file. Fix: check the path (relative paths start at {Path.cwd()}).")
        suffix = path.suffix.lower()
        reader = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
                  ".tsv": _read_csv, ".parquet": _read_parquet}.get(suffix)
        if reader is None:
            raise ValueError(f"{path}: unsupported file type {suffix!r}. Fix: use one of {', '.join(FILE_TYPES)}.")
        return reader(path, str(source))
    type_name = type(source).__name__
    if type_name == "DatasetDict":
        raise TypeError(f"got a DatasetDict with splits {list(source)}. Fix: pass one split, e.g. ds['train'].")
    if type_name == "DataFrame":
        source = source.to_dict("records")
    label = "dataset" if type_name in ("Dataset", "IterableDataset") else "records"
    if isinstance(source, dict):
        raise TypeError("got a single dict. Fix: pass a list of records, e.g. [record].")
    return [(_Loc(label, "index", i), item) for i, item in enumerate(source)], []


# --------------------------------------------------------------------------- formats


def detect_format(record) -> str | None:
    """The format of one raw record from its keys (None if none fits).

    Example:
        >>> detect_format({"instruction": "Say hi", "output": "hi"})
        'instruction'
    """
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys or ("output" in keys and "input" in keys):
        return "instruction"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


_FIELDS = {  # the fields each format consumes (everything else is carried along)
    "instruction": ("instruction", "input", "output", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "chat": ("messages",),
    "sharegpt": ("conversations", "system"),
    "text": ("text",),
}


def _visible_keys(obj):
    return sorted(str(k) for k in obj if not str(k).startswith("_"))


def _maybe_json(value):
    """CSV cells are strings: a conversation stored in one cell is JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class _Converter:
    """Turns one raw record into a canonical one, collecting problems with user-facing field names."""

    def __init__(self, loc: _Loc, field_map: dict):
        self.loc = loc
        self.problems: list[Problem] = []
        self.reverse = {v: k for k, v in field_map.items()}

    def name(self, canonical: str) -> str:
        """The field name as the user wrote it (``answer (mapped to output)``)."""
        head = canonical.split("[")[0].split(".")[0]
        if head in self.reverse:
            return f"{self.reverse[head]} (mapped to {head}){canonical[len(head):]}"
        return canonical

    def add(self, field_name, message, fix):
        self.problems.append(self.loc.problem(self.name(field_name), message, fix))

    def string(self, obj, key, required=True, what="text"):
        """obj[key] as a string; a problem if missing, empty (when required) or not a string."""
        mapped_hint = f", or map your own field name to it with field_map={{'your_name': '{key}'}}"
        if key not in obj or obj[key] is None:
            if required:
                self.add(key, f"missing field (the record has {_visible_keys(obj)})", f"add the field '{key}' with the {what}{mapped_hint}")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.add(key, f"must be a string, got {type(value).__name__} {str(value)[:40]!r}",
                     f"store the {what} as text, e.g. \"{value}\"" if isinstance(value, (int, float)) else f"store the {what} as one string")
            return None
        if required and not value.strip():
            message = "empty assistant reply (nothing to learn)" if what == "answer" else "empty"
            self.add(key, message, f"write the {what}, or remove this record")
            return None
        return value


def _convert(raw, loc: _Loc, fmt: str, field_map: dict):
    """Return (canonical record or None, problems)."""
    conv = _Converter(loc, field_map)
    if not isinstance(raw, dict):
        conv.add("(record)", f"expected an object with fields, got {type(raw).__name__}",
                 "each record must be a JSON object like {\"instruction\": ..., \"output\": ...}")
        return None, conv.problems
    obj = dict(raw)
    for src, dst in field_map.items():
        if src in obj:
            obj[dst] = obj.pop(src)
    if "_source" not in obj:
        obj["_source"] = loc.source()
    for key in ("messages", "conversations", "prompt", "completion"):
        if key in obj:
            obj[key] = _maybe_json(obj[key])

    if fmt == "text":
        text = conv.string(obj, "text", what="document text")
        rest = {k: v for k, v in obj.items() if k not in _FIELDS[fmt]}
        return ({"text": text, **rest, "_format": fmt} if text is not None else None), conv.problems

    # Instruction, prompt/completion and ShareGPT records may carry their system prompt in a field.
    system = conv.string(obj, "system", required=False, what="system prompt") if fmt != "chat" else None
    messages = [{"role": "system", "content": system}] if system and system.strip() else []

    if fmt == "instruction":
        instruction = conv.string(obj, "instruction", what="task description")
        extra = conv.string(obj, "input", required=False, what="input")
        output = conv.string(obj, "output", what="answer")
        if instruction is not None and output is not None:
            user = instruction + ("\n\n" + extra if extra and extra.strip() else "")
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    elif fmt == "prompt_completion":
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            value = obj.get(key)
            if isinstance(value, list):  # conversational prompt/completion: lists of messages
                messages += _messages_from_list(conv, value, key, "role", "content", None) or []
            else:
                text = conv.string(obj, key, what="question" if role == "user" else "answer")
                if text is not None:
                    messages.append({"role": role, "content": text})
    elif fmt in ("chat", "sharegpt"):
        key, role_key, text_key, role_map = (
            ("messages", "role", "content", None) if fmt == "chat" else ("conversations", "from", "value", SHAREGPT_ROLES))
        if key not in obj:
            conv.add(key, f"missing field (the record has {_visible_keys(obj)})",
                     f"add a '{key}' list, or choose the right format=... / field_map")
        else:
            got = _messages_from_list(conv, obj[key], key, role_key, text_key, role_map)
            if got is not None:
                messages += got
    if conv.problems:
        return None, conv.problems
    rest = {k: v for k, v in obj.items() if k not in _FIELDS[fmt]}
    return {"messages": messages, **rest, "_format": fmt}, conv.problems


def _messages_from_list(conv: _Converter, items, key, role_key, text_key, role_map):
    """Read a list of turns into role/content messages, reporting type and role problems."""
    if not isinstance(items, list):
        conv.add(key, f"must be a list of turns, got {type(items).__name__}",
                 f"store the conversation as a list like [{{\"{role_key}\": ..., \"{text_key}\": ...}}, ...]")
        return None
    messages, ok = [], True
    allowed = sorted(role_map) if role_map else list(ROLES)
    for i, turn in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            conv.add(where, f"must be an object, got {type(turn).__name__}",
                     f"write each turn as {{\"{role_key}\": ..., \"{text_key}\": ...}}")
            ok = False
            continue
        role, content = turn.get(role_key), turn.get(text_key)
        if role is None or content is None:
            missing = role_key if role is None else text_key
            conv.add(f"{where}.{missing}", f"missing (the turn has {sorted(turn)})", f"give every turn a '{role_key}' and a '{text_key}'")
            ok = False
            continue
        mapped = role_map.get(str(role).lower()) if role_map else role
        if mapped not in ROLES:
            conv.add(f"{where}.{role_key}", f"unknown role {role!r}", f"use one of {allowed}")
            ok = False
        if not isinstance(content, str):
            conv.add(f"{where}.{text_key}", f"must be a string, got {type(content).__name__}", "store each turn's text as one string")
            ok = False
        messages.append({"role": mapped, "content": content})
    return messages if ok else None


# --------------------------------------------------------------------------- validation


def _field_namer(record):
    """Map (turn index, 'role'|'content') to the field name the user knows for this record's format."""
    fmt = record.get("_format", "chat")
    has_system = bool(record.get("messages")) and record["messages"][0].get("role") == "system"

    def name(i, key):
        if fmt == "chat":
            return f"messages[{i}].{key}"
        if fmt == "sharegpt":
            return f"conversations[{i}].{'from' if key == 'role' else 'value'}"
        j = i - has_system
        if fmt == "instruction":
            return "system" if j < 0 else ("instruction" if j == 0 else "output")
        return "system" if j < 0 else ("prompt" if j == 0 else "completion")

    return name


def _check_record(record, loc: _Loc) -> list[Problem]:
    """The semantic checks on one canonical record."""
    if "text" in record and "messages" not in record:
        text = record["text"]
        if not isinstance(text, str):
            return [loc.problem("text", f"must be a string, got {type(text).__name__}", "store the document as one string")]
        if not text.strip():
            return [loc.problem("text", "empty document", "remove the record or fill in the text")]
        return []
    messages = record.get("messages")
    if not isinstance(messages, list):
        return [loc.problem("messages", f"must be a list of messages, got {type(messages).__name__}",
                            "use {\"messages\": [{\"role\": \"user\", \"content\": ...}, ...]}")]
    if not messages:
        return [loc.problem("messages", "empty conversation", "add at least one user and one assistant turn")]
    name, problems = _field_namer(record), []
    expected = "user"  # after an optional system message, turns go user, assistant, user, ...
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            problems.append(loc.problem(f"messages[{i}]", f"must be an object, got {type(m).__name__}",
                                        "write each message as {\"role\": ..., \"content\": ...}"))
            return problems
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(loc.problem(name(i, "role"), f"unknown role {role!r}", f"use one of {list(ROLES)}"))
            return problems
        if not isinstance(content, str):
            problems.append(loc.problem(name(i, "content"), f"must be a string, got {type(content).__name__}",
                                        "store the message text as one string"))
            continue
        if role == "system":
            if i != 0:
                problems.append(loc.problem(name(i, "role"), "a system message after the start of the conversation",
                                            "put one system message first (merge several into one)"))
            continue
        if role != expected:
            previous = messages[i - 1].get("role") if i else None
            if previous == role:
                problems.append(loc.problem(name(i, "role"), f"turns must alternate user/assistant, but found two '{role}' turns in a row",
                                            "merge consecutive turns of the same role, or add the missing turn in between"))
            else:
                problems.append(loc.problem(name(i, "role"), f"the conversation starts with '{role}' instead of 'user'",
                                            "begin with the user's turn (an optional system message may come before it)"))
        expected = "assistant" if role == "user" else "user"
        if not content.strip():
            if role == "assistant":
                problems.append(loc.problem(name(i, "content"), "empty assistant reply (nothing to learn)",
                                            "write the reply, or remove this record"))
            else:
                problems.append(loc.problem(name(i, "content"), f"empty {role} message", "write the message, or remove this record"))
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") != "assistant":
        i = len(messages) - 1
        problems.append(loc.problem(name(i, "role"), f"the conversation ends with a '{last.get('role')}' turn, not an assistant reply",
                                    "end every conversation with the assistant reply to train on (or drop the unanswered turn)"))
    return problems


def _loc_from_source(record, i) -> _Loc:
    src = record.get("_source") if isinstance(record, dict) else None
    if isinstance(src, str):
        m = re.fullmatch(r"(.*):(\d+)", src)
        if m:
            return _Loc(m.group(1), "line", int(m.group(2)))
        m = re.fullmatch(r"(.*)#(\d+)", src)
        if m:
            return _Loc(m.group(1), "record", int(m.group(2)))
        m = re.fullmatch(r"(.*)\[(\d+)\]", src)
        if m:
            return _Loc(m.group(1), "index", int(m.group(2)))
    return _Loc("records", "index", i)


def validate_records(records, raise_on_error=True, max_shown=MAX_SHOWN) -> list[Problem]:
    """Check canonical records; raise ``DataValidationError`` (or return the problems) if any.

    Checks: every conversation alternates user/assistant after an optional first system message,
    ends with an assistant reply, has known roles, string contents and no empty message; every
    text record has non-empty text. Positions come from each record's ``_source``.

    Example:
        >>> bad = {"messages": [{"role": "user", "content": "hi"}]}
        >>> print(validate_records([bad], raise_on_error=False)[0])  # doctest: +ELLIPSIS
        records[0], field 'messages[0].role': the conversation ends with a 'user' turn...
    """
    problems = []
    for i, record in enumerate(records):
        loc = _loc_from_source(record, i)
        if not isinstance(record, dict):
            problems.append(loc.problem("(record)", f"expected a dict, got {type(record).__name__}", "pass canonical records"))
            continue
        problems += _check_record(record, loc)
    if problems and raise_on_error:
        raise DataValidationError(problems, max_shown)
    return problems


def load_records(source, format=None, field_map=None, validate=True, on_invalid="raise", verbose=True) -> list[dict]:
    """Read training data from a file or memory into canonical records.

    Args:
        source: a path (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``), a list of dicts,
            a ``datasets.Dataset`` or a pandas DataFrame.
        format: one of ``FORMATS``; default: detected from the records' fields.
        field_map: your field names -> ours, e.g. ``{"question": "prompt", "answer": "completion"}``
            or ``{"context": "input", "response": "output"}``.
        validate: run the conversation checks of ``validate_records`` (on by default).
        on_invalid: ``"raise"`` (default) raises ``DataValidationError`` listing every problem;
            ``"drop"`` leaves the bad records out and prints how many and why.

    Returns:
        A list of canonical records (see the module docstring).

    Example:
        >>> load_records([{"instruction": "Add", "input": "2 and 2", "output": "4"}])[0]["messages"][0]
        {'role': 'user', 'content': 'Add\\n\\n2 and 2'}
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format={format!r}; use one of {FORMATS} (or None to detect it)")
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid={on_invalid!r}; use 'raise' or 'drop'")
    field_map = dict(field_map or {})
    items, problems = _read_source(source)
    if not items and not problems:
        raise DataValidationError([_Loc(str(source) if isinstance(source, (str, Path)) else "records", "record", 0).problem(
            "(file)", "no records found", "check that the file is not empty")])

    records, bad = [], len(problems)
    for loc, raw in items:
        if isinstance(raw, dict) and isinstance(raw.get("_source"), str):
            loc = _loc_from_source(raw, loc.number)  # records read earlier keep their origin
        # The format is decided per record, so a list that mixes formats still loads.
        mapped = {field_map.get(k, k): v for k, v in raw.items()} if isinstance(raw, dict) else raw
        fmt = format or detect_format(mapped)
        if format is None and isinstance(raw, dict) and {"chosen", "rejected"} <= set(mapped) and "completion" not in mapped:
            problems.append(loc.problem(
                "(record)", "this is a preference pair (prompt/chosen/rejected), made for preference tuning such as DPO",
                "to fine-tune on the preferred answers, load it with field_map={'chosen': 'completion'} "
                "('rejected' is then kept as an extra field)"))
            bad += 1
            continue
        if fmt is None and isinstance(raw, dict):
            keys = sorted(str(k) for k in raw if not str(k).startswith("_"))
            problems.append(loc.problem(
                "(record)", f"cannot tell the data format from the fields {keys}",
                "rename your fields with field_map (e.g. {'question': 'prompt', 'answer': 'completion'}) "
                f"or pass format= one of {FORMATS}"))
            bad += 1
            continue
        record, found = _convert(raw, loc, fmt or "chat", field_map)
        if record is not None and validate:
            found += _check_record(record, loc)
        if found:
            problems += found
            bad += 1
        else:
            records.append(record)
    if problems:
        problems.sort(key=lambda p: p.number)  # reading and checking problems, in file order
        if on_invalid == "raise":
            raise DataValidationError(problems)
        if verbose:
            print(f"[ftlab] dropped {bad} invalid record(s) of {bad + len(records)} (on_invalid='drop'); first problems:")
            for p in problems[:3]:
                print(f"  - {p}")
    return records


# --------------------------------------------------------------------------- duplicates


def record_text(record) -> str:
    """The text that identifies a record for de-duplication: user and assistant turns (or the text).

    System prompts are left out: many datasets share one, and it would make every pair look alike.
    """
    if "messages" in record:
        return "\n".join(m["content"] for m in record["messages"] if m.get("role") != "system")
    return str(record.get("text", ""))


def normalize_text(text: str) -> str:
    """Lower case, punctuation -> spaces, runs of whitespace -> one space.

    Example:
        >>> normalize_text("  Hello,   WORLD!! ")
        'hello world'
    """
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def shingles(text: str, n: int = 3) -> frozenset:
    """The set of word ``n``-grams of the normalised text (a short text is one shingle).

    Example:
        >>> sorted(shingles("a b c d"))
        ['a b c', 'b c d']
    """
    words = normalize_text(text).split()
    if len(words) <= n:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| - 1.0 for identical sets, 0.0 for disjoint ones."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_pairs(texts, threshold=0.8, other=None) -> list[tuple[int, int, float]]:
    """All pairs of texts whose word-3-gram Jaccard similarity is at least ``threshold``.

    With ``other``, pairs ``(i, j, sim)`` link ``texts[i]`` to ``other[j]`` (e.g. test vs train);
    without it, pairs ``i < j`` within ``texts``.

    This is exact, not sampled (unlike MinHash): it uses *prefix filtering*. Order every set's
    shingles from rarest to commonest; two sets with Jaccard >= t must share one of the first
    ``len - ceil(t * len) + 1`` shingles of each set. Rare shingles have short posting lists, so
    only a few candidate pairs need the full Jaccard computation.

    Example:
        >>> near_duplicate_pairs(["the cat sat on the mat", "The cat sat on the mat!", "dogs bark"])
        [(0, 1, 1.0)]
    """
    import math

    sets_a = [shingles(t) for t in texts]
    sets_b = [shingles(t) for t in other] if other is not None else sets_a
    freq = Counter(s for group in ((sets_a, sets_b) if other is not None else (sets_a,)) for x in group for s in x)
    rank = lambda s: (freq[s], zlib.crc32(s.encode()), s)  # noqa: E731  rarest first, deterministic

    def prefix(x):
        ordered = sorted(x, key=rank)
        return ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]

    index: dict[str, list[int]] = {}
    for j, y in enumerate(sets_b):
        for s in prefix(y):
            index.setdefault(s, []).append(j)
    pairs = []
    for i, x in enumerate(sets_a):
        candidates = {j for s in prefix(x) for j in index.get(s, ())}
        for j in sorted(candidates):
            if other is None and j <= i:
                continue
            y = sets_b[j]
            if min(len(x), len(y)) < threshold * max(len(x), len(y)):
                continue  # sizes too different to reach the threshold
            sim = jaccard(x, y)
            if sim >= threshold:
                pairs.append((i, j, round(sim, 4)))
    return pairs


def _exact_key(record) -> str:
    if "messages" in record:
        return json.dumps([[m["role"], m["content"]] for m in record["messages"]], ensure_ascii=False)
    return "text:" + str(record.get("text"))


def _canonical_view(records) -> list[dict]:
    """Canonical versions of ``records`` (raw ones, e.g. Alpaca triples, are converted) for comparing them."""
    records = list(records)
    if all(isinstance(r, dict) and ("messages" in r or "text" in r) for r in records):
        return records
    return load_records(records, validate=False, verbose=False)


def duplicate_groups(records, near=True, threshold=0.8) -> list[list[int]]:
    """Group record indices so that exact and near copies share a group (singletons included).

    Example:
        >>> recs = [{"text": "a b c d e"}, {"text": "x y z"}, {"text": "A b c d e."}]
        >>> duplicate_groups(recs)
        [[0, 2], [1]]
    """
    records = _canonical_view(records)
    parent = list(range(len(records)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, r in enumerate(records):
        key = _exact_key(r)
        if key in first:
            union(first[key], i)
        else:
            first[key] = i
    if near:
        for i, j, _ in near_duplicate_pairs([record_text(r) for r in records], threshold):
            union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def drop_duplicates(records, near=True, threshold=0.8, verbose=True) -> tuple[list[dict], int]:
    """Keep the first record of every group of exact (and, with ``near``, near) copies.

    Returns ``(kept, n_dropped)``; nothing is dropped unless you call this.

    Example:
        >>> kept, n = drop_duplicates([{"text": "same"}, {"text": "same"}, {"text": "other"}], verbose=False)
        >>> len(kept), n
        (2, 1)
    """
    groups = duplicate_groups(records, near=near, threshold=threshold)
    keep = sorted(g[0] for g in groups)
    kept = [records[i] for i in keep]
    n_dropped = len(records) - len(kept)
    if verbose:
        print(f"[ftlab] drop_duplicates: kept {len(kept)}, dropped {n_dropped} {'exact/near' if near else 'exact'} copies")
    return kept, n_dropped


# --------------------------------------------------------------------------- the report


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
        from ftlab.data.templates import tokenize_dataset

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


# --------------------------------------------------------------------------- splits


class Splits(tuple):
    """``(train, val, test)``; unpacks like a tuple and also has ``.train``, ``.val``, ``.test``, ``.report``."""

    def __new__(cls, train, val, test, report=""):
        self = super().__new__(cls, (train, val, test))
        self.report = report
        return self

    train = property(lambda self: self[0])
    val = property(lambda self: self[1])
    test = property(lambda self: self[2])

    def __repr__(self):
        return f"Splits(train={len(self[0])}, val={len(self[1])}, test={len(self[2])}) - {self.report}"


def split_records(records, val_fraction=0.1, test_fraction=0.1, seed=0, dedupe=True, near_threshold=0.8) -> Splits:
    """Deterministic train / validation / test split that keeps copies of an example together.

    With ``dedupe=True`` (default), exact and near copies (``duplicate_groups``) form one group,
    and a whole group goes to a single split: a test question can then never have a copy in
    training. Nothing is dropped; groups are shuffled with ``seed`` and fill test, then validation,
    then training (a group too big for the space left goes to training). Within each split the
    records keep their input order.

    Example:
        >>> recs = [{"text": f"record number {i} about topic {i % 7}"} for i in range(50)]
        >>> train, val, test = split_records(recs, 0.1, 0.2, seed=1)
        >>> len(train), len(val), len(test)
        (35, 5, 10)
    """
    records = list(records)
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1")
    groups = duplicate_groups(records, threshold=near_threshold) if dedupe else [[i] for i in range(len(records))]
    random.Random(seed).shuffle(groups)
    n_test, n_val = round(len(records) * test_fraction), round(len(records) * val_fraction)
    test, val, train = [], [], []
    for g in groups:
        if len(test) + len(g) <= n_test:
            test += g
        elif len(val) + len(g) <= n_val:
            val += g
        else:
            train += g
    n_grouped = sum(len(g) for g in groups if len(g) > 1)
    report = (f"{len(records)} records -> train {len(train)}, val {len(val)}, test {len(test)} (seed {seed}); "
              + (f"{n_grouped} records in {sum(len(g) > 1 for g in groups)} duplicate groups kept within one split"
                 if dedupe else "no de-duplication (copies may leak across splits)"))
    pick = lambda idx: [records[i] for i in sorted(idx)]  # noqa: E731
    return Splits(pick(train), pick(val), pick(test), report)


def find_leaks(train, test, threshold=0.8) -> list[tuple[int, int, float]]:
    """Test records with an exact or near copy in training: ``(test_index, train_index, similarity)``.

    Example:
        >>> find_leaks([{"text": "the cat sat on the mat"}], [{"text": "The cat sat on the mat."}])
        [(0, 0, 1.0)]
    """
    test, train = _canonical_view(test), _canonical_view(train)
    return near_duplicate_pairs([record_text(r) for r in test], threshold, other=[record_text(r) for r in train])


def leakage_demo(records, test_fraction=0.2, seed=0, threshold=0.8) -> dict:
    """Compare a naive random split with ``split_records`` by counting test records that leak.

    Returns ``{"naive": leaking test records, "deduped": leaking test records, "examples": [...]}``;
    ``examples`` shows up to three leaking (test, train) pairs of the naive split.

    Example:
        >>> recs = [{"text": f"fact {i} is true"} for i in range(20)] * 2
        >>> out = leakage_demo(recs, seed=0)
        >>> out["naive"] > 0, out["deduped"]
        (True, 0)
    """
    records = list(records)
    naive = split_records(records, 0.0, test_fraction, seed=seed, dedupe=False)
    clean = split_records(records, 0.0, test_fraction, seed=seed, dedupe=True, near_threshold=threshold)
    naive_leaks = find_leaks(naive.train, naive.test, threshold)
    clean_leaks = find_leaks(clean.train, clean.test, threshold)
    examples = [(record_text(naive.test[i])[:80], record_text(naive.train[j])[:80], s) for i, j, s in naive_leaks[:3]]
    return {"naive": len({i for i, _, _ in naive_leaks}), "deduped": len({i for i, _, _ in clean_leaks}), "examples": examples}
