"""Recognising a raw record's format and converting it to a canonical record.

The formats: instruction triples (Alpaca), prompt/completion pairs, chat ``messages`` and ShareGPT
``conversations`` become ``{"messages": [...]}``; plain ``text`` stays text. Every other field is
carried along unchanged. Problems name the field as the user wrote it (``answer (mapped to output)``).

Example:
    >>> detect_format({"conversations": [{"from": "human", "value": "hi"}]})
    'sharegpt'
"""

from __future__ import annotations

import json

from ftlab.data import oasst
from ftlab.data.validate import ROLES, Problem, _Loc

FORMATS = ("instruction", "dolly", "prompt_completion", "flan", "chat", "sharegpt", "oasst", "chatml", "text")
# ShareGPT dumps use many speaker names; these are the ones we accept.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "model": "assistant", "bing": "assistant",
}


def detect_format(record) -> str | None:
    """The format of one raw record from its keys (None if none fits).

    The public instruction datasets are recognised in the layout they are distributed in:
    Alpaca (``instruction``/``input``/``output``) -> ``instruction``; Dolly (``instruction``/
    ``context``/``response``/``category``) -> ``dolly``; FLAN (``inputs``/``targets``) -> ``flan``;
    ShareGPT (``conversations`` of ``from``/``value``) -> ``sharegpt``; OpenAssistant message rows
    and trees -> ``oasst``, and its ``oasst_top1`` ChatML text -> ``chatml`` (see ``ftlab.data.oasst``).

    Example:
        >>> detect_format({"instruction": "Say hi", "output": "hi"})
        'instruction'
        >>> detect_format({"instruction": "Say hi", "context": "", "response": "hi", "category": "open_qa"})
        'dolly'
    """
    if not isinstance(record, dict):
        return None
    keys = set(record)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if oasst.is_tree(record) or oasst.is_message_row(record):
        return "oasst"
    if "instruction" in keys and "response" in keys and "output" not in keys:
        return "dolly"
    if "instruction" in keys or ("output" in keys and "input" in keys):
        return "instruction"
    if "inputs" in keys and "targets" in keys:
        return "flan"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "chatml" if oasst.is_chatml(record["text"]) else "text"
    return None


_FIELDS = {  # the fields each format consumes (everything else is carried along)
    "instruction": ("instruction", "input", "output", "system"),
    "dolly": ("instruction", "context", "response", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "flan": ("inputs", "targets", "system"),
    "chat": ("messages",),
    "sharegpt": ("conversations", "system"),
    "oasst": ("prompt",),
    "chatml": ("text",),
    "text": ("text",),
}
# Instruction-like layouts: (the task, an optional input appended to it, the answer).
_TRIPLES = {"instruction": ("instruction", "input", "output"), "dolly": ("instruction", "context", "response"),
            "flan": ("inputs", None, "targets")}


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
    rest = {k: v for k, v in obj.items() if k not in _FIELDS[fmt]}
    if fmt == "text":
        text = conv.string(obj, "text", what="document text")
        return ({"text": text, **rest, "_format": fmt} if text is not None else None), conv.problems
    messages = _conversation(conv, obj, fmt)
    if conv.problems or messages is None:
        return None, conv.problems
    return {"messages": messages, **rest, "_format": fmt}, conv.problems


def _conversation(conv: _Converter, obj: dict, fmt: str) -> list[dict] | None:
    """The messages of a conversation-shaped record (problems go to ``conv``)."""
    if fmt == "oasst":
        return oasst.convert_tree(conv, obj)
    if fmt == "chatml":
        text = conv.string(obj, "text", what="conversation")
        return oasst.convert_chatml(conv, text) if text is not None else None
    # Instruction, prompt/completion and ShareGPT records may carry their system prompt in a field.
    system = conv.string(obj, "system", required=False, what="system prompt") if fmt != "chat" else None
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    if fmt in _TRIPLES:
        task_key, input_key, answer_key = _TRIPLES[fmt]
        task = conv.string(obj, task_key, what="task description")
        extra = conv.string(obj, input_key, required=False, what="input") if input_key else None
        answer = conv.string(obj, answer_key, what="answer")
        if task is not None and answer is not None:
            user = task + ("\n\n" + extra if extra and extra.strip() else "")
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    elif fmt == "prompt_completion":
        for key, role in (("prompt", "user"), ("completion", "assistant")):
            value = obj.get(key)
            if isinstance(value, list):  # conversational prompt/completion: lists of messages
                messages += _messages_from_list(conv, value, key, "role", "content", None) or []
            else:
                text = conv.string(obj, key, what="question" if role == "user" else "answer")
                if text is not None:
                    messages.append({"role": role, "content": text})
    else:  # chat, sharegpt
        key, role_key, text_key, role_map = (
            ("messages", "role", "content", None) if fmt == "chat" else ("conversations", "from", "value", SHAREGPT_ROLES))
        if key not in obj:
            conv.add(key, f"missing field (the record has {_visible_keys(obj)})",
                     f"add a '{key}' list, or choose the right format=... / field_map")
        else:
            messages += _messages_from_list(conv, obj[key], key, role_key, text_key, role_map) or []
    return messages


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
