"""Reading data files: JSONL, JSON, CSV/TSV and Parquet, plus lists, Datasets and DataFrames.

Each reader returns ``[(loc, raw_record), ...]`` and the problems it met (malformed lines are
reported with their line number, not skipped). The records are not interpreted here; see
``ftlab.data.formats`` for that.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

from ftlab.data.validate import _Loc

FILE_TYPES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")  # text types also gzipped: .jsonl.gz


def _open(path: Path, newline=None):
    """A text file, or a gzipped one (datasets such as OpenAssistant's ship as .jsonl.gz)."""
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return open(path, encoding="utf-8", newline=newline)


def _read_jsonl(path: Path, name: str):
    items, problems = [], []
    with _open(path) as f:
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
    with _open(path) as f:
        text = f.read()
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
    delimiter = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    with _open(path, newline="") as f:
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
        if suffix == ".gz":  # train.jsonl.gz is read as .jsonl
            suffix = Path(path.stem).suffix.lower()
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
