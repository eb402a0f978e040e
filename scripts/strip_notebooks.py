"""Store notebooks without outputs: clear outputs, execution counts and saved widget state.

Outputs in git make diffs unreadable, bloat the repository and show results from someone else's
machine; the course shows every number live instead. Run it before committing a notebook:

    python scripts/strip_notebooks.py                 # strip notebooks/*.ipynb and docs/*.ipynb
    python scripts/strip_notebooks.py path/to/x.ipynb # strip these files only
    python scripts/strip_notebooks.py --check         # change nothing; exit 1 if any needs stripping

Cell metadata that matters to the lesson (e.g. ``jupyter.source_hidden`` of a collapsed cell) is
kept; only run-time leftovers go.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GLOBS = ("notebooks/*.ipynb", "docs/*.ipynb")
RUNTIME_CELL_METADATA = ("execution", "scrolled", "collapsed", "ExecuteTime")  # left by running a cell
RUNTIME_NOTEBOOK_METADATA = ("widgets",)  # saved ipywidgets state: large, and stale on reload


def problems(nb) -> list[str]:
    """What would be stripped from this notebook, one line per cell (empty: it is clean)."""
    found = []
    for index, cell in enumerate(nb.cells, start=1):
        leftovers = [key for key in RUNTIME_CELL_METADATA if key in cell.get("metadata", {})]
        if cell.cell_type == "code":
            if cell.get("outputs"):
                leftovers.insert(0, f"{len(cell.outputs)} output(s)")
            if cell.get("execution_count") is not None:
                leftovers.insert(0, f"execution count {cell.execution_count}")
        if leftovers:
            found.append(f"cell {index} ({cell.cell_type}): " + ", ".join(leftovers))
    for key in RUNTIME_NOTEBOOK_METADATA:
        if key in nb.metadata:
            found.append(f"notebook metadata: saved {key!r}")
    return found


def strip(nb) -> None:
    """Remove outputs, execution counts and run-time metadata, in place."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in RUNTIME_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
    for key in RUNTIME_NOTEBOOK_METADATA:
        nb.metadata.pop(key, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb docs/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs")
    args = parser.parse_args(argv)

    paths = args.paths or sorted(p for pattern in DEFAULT_GLOBS for p in ROOT.glob(pattern))
    dirty = broken = 0
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as error:  # a broken file: name it and the fix, keep going with the others
            print(f"{path}: cannot read it as a notebook ({error}). Fix: repair the JSON or restore it from git.")
            broken += 1
            continue
        found = problems(nb)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: stored with outputs\n  " + "\n  ".join(found))
        else:
            strip(nb)
            nbformat.write(nb, path)
            print(f"{path}: stripped ({len(found)} item(s))")
    if args.check and dirty:
        print(f"{dirty} notebook(s) need stripping. Fix: python scripts/strip_notebooks.py")
    return 1 if broken or (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
