"""Checking canonical records, and the errors that say where and how to fix what is wrong.

Bad data is the commonest reason a fine-tune fails, so problems are collected, not skipped: each
``Problem`` names the file, the line or record, the field, what is wrong and how to fix it, and
``DataValidationError`` lists them all at once.

Example:
    >>> bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}
    >>> print(validate_records([bad], raise_on_error=False)[0])
    records[0], field 'messages[1].content': empty assistant reply (nothing to learn). Fix: write the reply, or remove this record
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
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



# --------------------------------------------------------------------------- validation


_PAIR_FIELDS = {"instruction": ("instruction", "output"), "dolly": ("instruction", "response"), "flan": ("inputs", "targets")}


def _field_namer(record):
    """Map (turn index, 'role'|'content') to the field name the user knows for this record's format."""
    fmt = record.get("_format", "chat")
    has_system = bool(record.get("messages")) and record["messages"][0].get("role") == "system"

    def name(i, key):
        if fmt == "chat":
            return f"messages[{i}].{key}"
        if fmt == "sharegpt":
            return f"conversations[{i}].{'from' if key == 'role' else 'value'}"
        if fmt == "oasst":
            return f"best thread, message {i}.{'role' if key == 'role' else 'text'}"
        if fmt == "chatml":
            return f"text, turn {i}"
        j = i - has_system
        ask, answer = _PAIR_FIELDS.get(fmt, ("prompt", "completion"))
        return "system" if j < 0 else (ask if j == 0 else answer)

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
