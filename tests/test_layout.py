"""The package's layout: every module named in docs/architecture.md, small modules and functions, no
import cycles, and public names that resolve to what they say (not to a submodule of the same name)."""

from __future__ import annotations

import importlib
import re
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


PACKAGES = ["ftlab", "ftlab.data", "ftlab.training", "ftlab.memory", "ftlab.evaluate", "ftlab.evaluate.metrics",
            "ftlab.exercises"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_export_resolves_to_its_definition(package):
    pkg = importlib.import_module(package)
    for name, module in pkg._EXPORTS.items():
        value = getattr(pkg, name)
        defining = importlib.import_module(f"{package}.{module}")
        assert getattr(defining, name) is value, f"{package}.{name} is not {package}.{module}.{name}"
        # Importing every submodule must not replace a function by a module of the same name.
        assert not isinstance(value, type(pkg)), f"{package}.{name} resolves to a module"
