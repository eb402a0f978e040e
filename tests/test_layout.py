"""The package's layout: every module named in docs/architecture.md, small modules and functions, the
declared layers (no import goes up one, no cycles, counted through every kind of import), exports that
something uses, and public names that resolve to what they say (not to a submodule of the same name)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import layout_report  # noqa: E402

MAX_MODULE_LINES = 420      # "about 400": a little slack, no more
MAX_FUNCTION_LINES = 85     # "about 80"
# A module or function may be longer when splitting it would hide the idea; it then says why in a
# comment containing this marker (e.g. "# long on purpose: the definition follows sacrebleu line by line").
LONG_ON_PURPOSE = "long on purpose"


def _modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "ftlab").rglob("*.py")
            if p.name not in ("__init__.py", "__main__.py")}


def test_architecture_doc_names_every_module_and_only_existing_ones():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(ftlab/[\w/]+\.py)`", doc))
    missing = sorted(_modules() - named)
    stale = sorted(m for m in named if not (ROOT / m).exists())
    assert not missing, f"docs/architecture.md does not name these modules (add a row each): {missing}"
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_no_import_cycles():
    report = layout_report.report()
    assert report["cycles"] == [], f"import cycles at module level: {report['cycles']}"
    assert report["lazy_cycles"] == [], f"import cycles through imports inside functions: {report['lazy_cycles']}"
    assert report["package_cycles"] == [], f"packages that import one another: {report['package_cycles']}"


def test_no_import_goes_up_a_layer():
    report = layout_report.report()
    assert report["unplaced"] == [], (f"put these in a layer (scripts/layout_report.py LAYERS and "
                                      f"docs/architecture.md): {report['unplaced']}")
    assert report["upward"] == [], "imports that go up a layer:\n" + "\n".join(report["upward"])


def test_layers_are_the_ones_the_doc_declares():
    """docs/architecture.md's "Layers" list and LAYERS name the same units in the same order."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    declared = [(m.group(1), re.findall(r"`(ftlab[\w.]*)`", m.group(2)))
                for m in re.finditer(r"^\d+\. \*\*([^*]+)\*\*:?(.*)$", section, flags=re.M)]
    assert declared == [(name, units) for name, units in layout_report.LAYERS]


def _write(root: Path, files: dict):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_an_import_that_goes_up_is_caught_however_it_is_written(tmp_path):
    """Inside a function, through a package's exports, through the top-level lazy table, relative:
    each resolves to the defining module and is reported with file:line."""
    _write(tmp_path, {
        "ftlab/__init__.py": '_EXPORTS = {"score": "evaluate.scoring"}\n',
        "ftlab/evaluate/__init__.py": "from ftlab.evaluate.scoring import score\n",
        "ftlab/evaluate/scoring.py": "def score(): return 1\n",
        "ftlab/data/__init__.py": "",
        "ftlab/data/a.py": "def f():\n    from ftlab.evaluate import score\n    return score()\n",
        "ftlab/data/b.py": "from ftlab import score\n",
        "ftlab/data/c.py": "from ..evaluate.scoring import score\n",
        "ftlab/data/d.py": "import ftlab\n\n\ndef g():\n    return ftlab.score()\n",
        "ftlab/evaluate/ok.py": "from ftlab.data import a\n",  # down a layer: fine
    })
    upward = layout_report.report(root=tmp_path)["upward"]
    assert [u.split(" (")[0] for u in upward] == ["ftlab/data/a.py:2: ftlab.data.a", "ftlab/data/b.py:1: ftlab.data.b",
                                                  "ftlab/data/c.py:1: ftlab.data.c", "ftlab/data/d.py:5: ftlab.data.d"]
    assert all("imports ftlab.evaluate.scoring (layer evaluate)" in u and "own layer or lower ones" in u for u in upward)


def test_every_export_is_used_outside_its_module_and_every_used_name_is_exported():
    missing = []
    unused = layout_report.unused_exports(ROOT, missing)
    assert unused == [], f"exported, but nothing outside the defining module imports them from the package: {unused}"
    assert missing == [], f"used through a package (in ftlab, tests, scripts, notebooks) that does not offer them: {missing}"


def test_import_ftlab_and_the_workshop_plan_need_no_torch():
    """The hub imports ftlab.workshop before any kernel exists, and `import ftlab` stays instant."""
    code = "import sys, ftlab, ftlab.workshop, ftlab.profiles; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_modules_and_functions_fit_in_one_sitting():
    report = layout_report.report(top=10_000)
    too_long = []
    for n, name in report["largest_modules"]:
        path = ROOT / (name.replace(".", "/") + ".py")
        if n > MAX_MODULE_LINES and LONG_ON_PURPOSE not in path.read_text():
            too_long.append(f"module {name}: {n} lines")
    for n, name in report["largest_functions"]:
        if n > MAX_FUNCTION_LINES and not _says_why(name):
            too_long.append(f"function {name}: {n} lines")
    assert not too_long, ("split these, or say in a comment why not ('" + LONG_ON_PURPOSE + ": ...'): "
                          + "; ".join(too_long))


def _says_why(qualified: str) -> bool:
    """True when the function's def line or the line above it carries the marker."""
    parts = qualified.split(".")
    for i in range(len(parts), 0, -1):
        path = ROOT / ("/".join(parts[:i]) + ".py")
        if path.exists():
            lines = path.read_text().splitlines()
            name = parts[-1]
            for j, line in enumerate(lines):
                if re.match(rf"\s*(async )?def {re.escape(name)}\(", line):
                    window = " ".join(lines[max(0, j - 2): j + 1])
                    if LONG_ON_PURPOSE in window:
                        return True
            return False
    return False


def test_top_level_exports_resolve_to_their_definition():
    """``ftlab``'s lazy table (the only one: it keeps ``import ftlab`` free of torch)."""
    pkg = importlib.import_module("ftlab")
    for name, module in pkg._EXPORTS.items():
        value = getattr(pkg, name)
        defining = importlib.import_module(f"ftlab.{module}")
        assert getattr(defining, name) is value, f"ftlab.{name} is not ftlab.{module}.{name}"
        # Importing every submodule must not replace a function by a module of the same name.
        assert not isinstance(value, type(pkg)), f"ftlab.{name} resolves to a module"


def test_every_ftlab_import_names_a_module_that_exists():
    """An import of a module that moved away fails only when its line runs (an import inside a function,
    a rarely taken branch): find them all now, with file:line."""
    import ast

    def exists(dotted: str) -> bool:
        path = ROOT.joinpath(*dotted.split("."))
        return path.with_suffix(".py").exists() or (path / "__init__.py").exists()

    stale = []
    for f in sorted((ROOT / "ftlab").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            stale += [f"{f.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                      if n.startswith("ftlab.") and not exists(n)]
    assert not stale, f"imports of ftlab modules that do not exist (moved? see docs/architecture.md): {stale}"
