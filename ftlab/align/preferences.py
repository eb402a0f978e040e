"""Preference data: read and check chosen/rejected pairs, tokenise them as SFT does, batch them.

A preference record is one prompt and two answers to it, the one people preferred (``chosen``) and
the other (``rejected``)::

    {"prompt": "Standardise the date ...", "chosen": "2022-07-21", "rejected": "2022-21-07", "task": "rewrite"}

The conversational form (TRL's) is read too: ``prompt`` a list of messages that ends with a user turn,
``chosen`` / ``rejected`` a list holding one assistant message.

**Masking exactly as SFT.** Each side is tokenised by ``ftlab.data.tokenize_example`` on the
conversation ``prompt + [assistant: answer]`` with ``train_on="last"``: the prompt's tokens get label
-100, the answer's tokens *and its end-of-turn token* are scored. So the log-probability DPO
compares is the very quantity SFT maximises, and an SFT'd model and its preference-trained successor
are measured on the same tokens.

**Batches** put the chosen rows first and the rejected rows after them, ``[c_1..c_B, r_1..r_B]``,
right-padded to one length: one forward pass scores both sides (the layout TRL uses too).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftlab.data import DataValidationError, Problem, collate, tokenize_example

FIELDS = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------- reading and checking


def _read(source) -> list[tuple[str, str, int, object]]:
    """``[(file, unit, number, raw), ...]`` from a JSONL path or an in-memory list."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file. Fix: check the path (relative paths start at {Path.cwd()}).")
        rows, problems = [], []
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((str(source), "line", line_no, json.loads(line)))
                except json.JSONDecodeError as e:
                    problems.append(Problem(str(source), "line", line_no, "(whole line)", f"malformed JSON ({e.msg})",
                                            "every line must be one JSON object {\"prompt\", \"chosen\", \"rejected\"}"))
        if problems:
            raise DataValidationError(problems)
        return rows
    if isinstance(source, dict):
        raise TypeError("got a single dict. Fix: pass a list of preference records, e.g. [record].")
    return [("records", "index", i, raw) for i, raw in enumerate(source)]


def _answer_text(value, where: Problem):
    """The answer string of ``chosen``/``rejected`` (plain or conversational), or a problem."""
    if isinstance(value, list):  # conversational: exactly one assistant message
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in value]
            where.message, where.fix = (f"roles out of order: expected one assistant message, got roles {roles}",
                                        "make it [{\"role\": \"assistant\", \"content\": \"...\"}]; the user turn "
                                        "belongs in 'prompt'")
            return None
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        where.message, where.fix = ("missing or empty", "give a non-empty answer string (both chosen and rejected "
                                    "are needed: a pair teaches which of the two is better)")
        return None
    return value


def _prompt_messages(value, where: Problem):
    """The prompt as chat messages, or a problem (empty, or roles out of order)."""
    if isinstance(value, str):
        if not value.strip():
            where.message, where.fix = "missing or empty", "give the user's request as a non-empty string"
            return None
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        where.message, where.fix = "missing or empty", "give the prompt as a string or a list of chat messages"
        return None
    roles = [m.get("role") if isinstance(m, dict) else None for m in value]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * len(body)
    if not body or body != expected[:len(body)] or body[-1] != "user":
        where.message, where.fix = (f"roles out of order: {roles}",
                                    "an optional system message, then user/assistant turns alternating, ending "
                                    "with the user turn that chosen and rejected both answer")
        return None
    return [{"role": m["role"], "content": m["content"]} for m in value]


def check_preference(raw, file: str = "records", unit: str = "index", number: int = 0) -> tuple[dict | None, list]:
    """One raw record -> ``(canonical record or None, problems)``.

    The canonical record is ``{"messages": prompt as chat messages, "chosen": str, "rejected": str,
    "_source": "file:line", **other fields}``.
    """
    def problem(field_name):
        return Problem(file, unit, number, field_name, "", "")

    if not isinstance(raw, dict):
        return None, [Problem(file, unit, number, "(record)", f"not an object but {type(raw).__name__}",
                              "each record must be {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}")]
    problems = []
    for name in FIELDS:
        if name not in raw:
            problems.append(Problem(file, unit, number, name, "missing",
                                    "every preference record needs prompt, chosen and rejected"))
    if problems:
        return None, problems
    parsed = {}
    for name, parse in (("prompt", _prompt_messages), ("chosen", _answer_text), ("rejected", _answer_text)):
        p = problem(name)
        parsed[name] = parse(raw[name], p)
        if parsed[name] is None:
            problems.append(p)
    if not problems and parsed["chosen"].strip() == parsed["rejected"].strip():
        problems.append(Problem(file, unit, number, "rejected", "chosen and rejected are the same answer",
                                "a pair must differ, else it carries no preference: fix the rejected answer "
                                "or drop the record"))
    if problems:
        return None, problems
    source = f"{file}:{number}" if unit == "line" else f"{file}[{number}]"
    extra = {k: v for k, v in raw.items() if k not in FIELDS}
    return {"messages": parsed["prompt"], "chosen": parsed["chosen"], "rejected": parsed["rejected"],
            **extra, "_source": source}, []


def load_preferences(source, limit: int | None = None) -> list[dict]:
    """Read preference records (a JSONL path or a list), check every one, return them canonical.

    Raises ``ftlab.data.DataValidationError`` listing *every* bad record - file, line or index,
    field, what is wrong and the fix - rather than stopping at the first.

    Example:
        >>> recs = load_preferences([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
        >>> recs[0]["messages"], recs[0]["chosen"]
        ([{'role': 'user', 'content': '2+2?'}], '4')
    """
    rows = _read(source)[:limit]
    records, problems = [], []
    for file, unit, number, raw in rows:
        record, found = check_preference(raw, file, unit, number)
        problems += found
        if record is not None:
            records.append(record)
    if problems:
        raise DataValidationError(problems)
    if not records:
        raise ValueError(f"{source}: no preference records. Fix: give at least one prompt/chosen/rejected record.")
    return records


# --------------------------------------------------------------------------- tokenising and batching


def tokenize_preference(record: dict, tokenizer, max_length: int | None = None) -> dict:
    """Both sides of one pair, tokenised and masked exactly as SFT masks them.

    Returns ``{"chosen": {"input_ids", "labels"}, "rejected": {...}, "truncated": tokens cut}``.
    """
    out, cut = {}, 0
    for side in ("chosen", "rejected"):
        messages = record["messages"] + [{"role": "assistant", "content": record[side]}]
        ex = tokenize_example({"messages": messages}, tokenizer, max_length=max_length, train_on="last")
        if all(label == -100 for label in ex["labels"]):
            raise ValueError(f"{record.get('_source', 'record')}: max_length={max_length} cuts off the whole "
                             f"{side} answer. Fix: raise max_length or shorten the prompt.")
        out[side] = {"input_ids": ex["input_ids"], "labels": ex["labels"]}
        cut = max(cut, ex["truncated"])
    out["truncated"] = cut
    return out


def tokenize_preferences(records, tokenizer, max_length: int | None = None) -> list[dict]:
    """``tokenize_preference`` over a list; each result keeps its record's index in ``"index"``
    (the key of the reference cache)."""
    examples = []
    for i, record in enumerate(records):
        ex = tokenize_preference(record, tokenizer, max_length)
        ex["index"] = i
        examples.append(ex)
    return examples


def collate_preferences(examples, pad_token_id: int = 0) -> dict:
    """A batch of pairs: ``input_ids``/``attention_mask``/``labels`` of shape ``(2B, T)``, chosen rows
    first, and ``index`` (B,) pointing back to the examples."""
    rows = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    batch = collate(rows, pad_token_id=pad_token_id)
    batch["index"] = torch.tensor([e.get("index", -1) for e in examples], dtype=torch.long)
    return batch


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(2B, ...)`` tensor from a preference batch -> ``(chosen (B, ...), rejected (B, ...))``."""
    return values.chunk(2, dim=0)
