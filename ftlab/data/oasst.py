"""OpenAssistant conversations in the layouts they are distributed in.

OpenAssistant (oasst1, oasst2) publishes *message trees*: a prompter's initial prompt is the root,
each message can have several replies, and sibling replies carry a ``rank`` (0 = preferred by the
reviewers). Three layouts are read here without a ``field_map``:

* flat message rows (the Hugging Face parquet files and ``*.messages.jsonl.gz``): one row per
  message with ``message_id``, ``parent_id`` (None for the root), ``role`` (``prompter`` or
  ``assistant``), ``text``, ``rank``, ``message_tree_id``, ``lang``, ...;
* nested trees (``*.trees.jsonl.gz``): one line per tree, ``{"message_tree_id": ..., "prompt":
  {"text": ..., "role": "prompter", "replies": [...]}}``;
* the ``oasst_top1`` text (``{"text": "<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n..."}``).

A tree becomes ONE conversation, its best thread: from the root, always the best-ranked reply
(rank 0 first, unranked after ranked, then file order), skipping replies marked deleted or failing
review, as oasst_top1 does. A last prompter turn nobody answered is left off. Every sibling would
give overlapping near-duplicate conversations, which a split could leak (see ``ftlab.data.dedupe``).

Example:
    >>> rows = [{"message_id": "a", "parent_id": None, "role": "prompter", "text": "Hi?"},
    ...         {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "Hello!", "rank": 0}]
    >>> from ftlab.data import load_records
    >>> load_records(rows)[0]["messages"]
    [{'role': 'user', 'content': 'Hi?'}, {'role': 'assistant', 'content': 'Hello!'}]
"""

from __future__ import annotations

import re

from ftlab.data.validate import Problem

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
MESSAGE_ROW_KEYS = {"message_id", "parent_id", "role", "text"}
CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.S)


def is_message_row(record) -> bool:
    """One row of a flat OpenAssistant message table."""
    return isinstance(record, dict) and MESSAGE_ROW_KEYS <= set(record)


def is_tree(record) -> bool:
    """One nested OpenAssistant message tree (``prompt`` is the root message, with ``replies``)."""
    return isinstance(record, dict) and isinstance(record.get("prompt"), dict) and "replies" in record["prompt"]


# --------------------------------------------------------------------------- flat rows -> trees


def rows_to_trees(items) -> tuple[list, list[Problem]]:
    """Replace the flat message rows among ``[(loc, raw), ...]`` by one nested tree per root.

    Other items pass through unchanged, in place. A tree takes the position (and the ``loc``) of its
    root row. A bad row (unknown role, text not a string, parent not in the data) is reported at its
    own line, and the tree it belongs to is left out.
    """
    rows = [(loc, raw) for loc, raw in items if is_message_row(raw)]
    if not rows:
        return items, []
    nodes = {raw["message_id"]: {**raw, "replies": []} for _, raw in rows}
    problems, bad_trees = [], set()
    for loc, raw in rows:
        found = _row_problem(loc, raw, nodes)
        if found:
            problems.append(found)
            bad_trees.add(_root_of(raw["message_id"], nodes))
        elif raw["parent_id"] is not None:
            nodes[raw["parent_id"]]["replies"].append(nodes[raw["message_id"]])
    out = []
    for loc, raw in items:
        if not is_message_row(raw):
            out.append((loc, raw))
        elif raw["parent_id"] is None and raw["message_id"] not in bad_trees:
            tree = {k: raw[k] for k in ("message_tree_id", "lang") if k in raw}
            out.append((loc, {**tree, "prompt": nodes[raw["message_id"]]}))
    return out, problems


def _row_problem(loc, raw, nodes) -> Problem | None:
    if str(raw["role"]) not in OASST_ROLES:
        return loc.problem("role", f"unknown role {raw['role']!r}", f"use one of {sorted(OASST_ROLES)}")
    if not isinstance(raw["text"], str):
        return loc.problem("text", f"must be a string, got {type(raw['text']).__name__}", "store each message's text as one string")
    if raw["parent_id"] is not None and raw["parent_id"] not in nodes:
        return loc.problem("parent_id", f"the parent message {raw['parent_id']!r} is not in the data",
                           "include every message of the tree (all rows with its message_tree_id), or remove this row")
    return None


def _root_of(message_id, nodes):
    """The root message id above ``message_id`` (None if the chain leaves the data or loops)."""
    seen = set()
    while message_id in nodes and message_id not in seen:
        seen.add(message_id)
        parent = nodes[message_id]["parent_id"]
        if parent is None:
            return message_id
        message_id = parent
    return None


# --------------------------------------------------------------------------- a tree -> its best thread


def _usable(message) -> bool:
    return isinstance(message, dict) and not message.get("deleted") and message.get("review_result") is not False


def _best_thread(root) -> list[tuple[str, dict]]:
    """``[(field path, message), ...]`` from the root along the best-ranked replies."""
    thread, node, path = [("prompt", root)], root, "prompt"
    while True:
        replies = [(i, r) for i, r in enumerate(node.get("replies") or []) if _usable(r)]
        if not replies:
            return thread
        i, node = min(replies, key=lambda ir: (ir[1].get("rank") is None, ir[1].get("rank") or 0, ir[0]))
        path = f"{path}.replies[{i}]"
        thread.append((path, node))


def convert_tree(conv, obj) -> list[dict] | None:
    """The messages of a tree's best thread; problems go to ``conv`` (a ``formats._Converter``)."""
    messages = []
    for path, message in _best_thread(obj["prompt"]):
        role, text = OASST_ROLES.get(str(message.get("role"))), message.get("text")
        if role is None:
            conv.add(f"{path}.role", f"unknown role {message.get('role')!r}", f"use one of {sorted(OASST_ROLES)}")
            return None
        if not isinstance(text, str):
            conv.add(f"{path}.text", f"must be a string, got {type(text).__name__}", "store each message's text as one string")
            return None
        messages.append({"role": role, "content": text})
    if messages and messages[-1]["role"] == "user":
        messages.pop()  # the last prompter turn has no reply to learn from
    if not messages:
        conv.add("prompt.replies", "the initial prompt has no assistant reply",
                 "remove this tree, or load with on_invalid='drop'")
        return None
    return messages


# --------------------------------------------------------------------------- oasst_top1: ChatML text


def is_chatml(text) -> bool:
    return isinstance(text, str) and text.lstrip().startswith("<|im_start|>")


def convert_chatml(conv, text: str) -> list[dict] | None:
    """The turns of a ChatML transcript; text outside ``<|im_start|>role ... <|im_end|>`` is a problem."""
    messages, end = [], 0
    for m in CHATML_TURN.finditer(text):
        between = text[end:m.start()]
        if between.strip():
            conv.add("text", f"text outside a turn at character {end}: {between.strip()[:40]!r}",
                     "wrap every turn as <|im_start|>role\\n...<|im_end|>")
            return None
        role = m.group(1)
        if role not in ("system", "user", "assistant"):
            conv.add("text", f"unknown role {role!r} after <|im_start|>", "use system, user or assistant")
            return None
        messages.append({"role": role, "content": m.group(2).strip("\n")})
        end = m.end()
    if text[end:].strip():
        conv.add("text", f"an unclosed turn at character {end}: {text[end:].strip()[:40]!r}",
                 "end every turn with <|im_end|>")
        return None
    return messages
