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

from pathlib import Path

from ftlab.data import oasst
from ftlab.data.formats import FORMATS, _convert, detect_format
from ftlab.data.readers import _read_source
from ftlab.data.validate import DataValidationError, _check_record, _loc_from_source, _Loc


def load_records(source, format=None, field_map=None, validate=True, on_invalid="raise", verbose=True) -> list[dict]:
    """Read training data from a file or memory into canonical records.

    Args:
        source: a path (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.parquet``, also gzipped as
            ``.jsonl.gz``), a list of dicts, a ``datasets.Dataset`` or a pandas DataFrame.
        format: one of ``FORMATS``; default: detected from the records' fields, so Alpaca, Dolly,
            FLAN, ShareGPT and OpenAssistant files load as distributed, without a ``field_map``.
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

    if format in (None, "oasst"):
        items, found = oasst.rows_to_trees(items)  # OpenAssistant's flat message rows -> one tree each
        problems += found
    records, bad = [], len(problems)
    for loc, raw in items:
        record, found = _load_one(loc, raw, format, field_map, validate)
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


def _load_one(loc: _Loc, raw, format, field_map: dict, validate: bool):
    """One raw record -> (canonical record or None, problems)."""
    if isinstance(raw, dict) and isinstance(raw.get("_source"), str):
        loc = _loc_from_source(raw, loc.number)  # records read earlier keep their origin
    # The format is decided per record, so a list that mixes formats still loads.
    mapped = {field_map.get(k, k): v for k, v in raw.items()} if isinstance(raw, dict) else raw
    fmt = format or detect_format(mapped)
    if format is None and isinstance(raw, dict) and {"chosen", "rejected"} <= set(mapped) and "completion" not in mapped:
        return None, [loc.problem(
            "(record)", "this is a preference pair (prompt/chosen/rejected), made for preference tuning such as DPO",
            "to fine-tune on the preferred answers, load it with field_map={'chosen': 'completion'} "
            "('rejected' is then kept as an extra field)")]
    if fmt is None and isinstance(raw, dict):
        keys = sorted(str(k) for k in raw if not str(k).startswith("_"))
        return None, [loc.problem(
            "(record)", f"cannot tell the data format from the fields {keys}",
            "rename your fields with field_map (e.g. {'question': 'prompt', 'answer': 'completion'}) "
            f"or pass format= one of {FORMATS}")]
    record, found = _convert(raw, loc, fmt or "chat", field_map)
    if record is not None and validate:
        found += _check_record(record, loc)
    return record, found
