"""Every course notebook follows the conventions of notebooks/README.md (the checkable ones).

These run in a second, without a kernel: they catch a stored output, a missing objective or a
mistyped exercise id before nbval spends minutes executing the notebook.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

from ftlab.exercises import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "scripts"))
import strip_notebooks  # noqa: E402  (scripts/ is not a package)

CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']""")


def _params():
    if not NOTEBOOKS:
        return [pytest.param(None, marks=pytest.mark.skip(reason="notebooks/ has no notebooks yet"))]
    return [pytest.param(path, id=path.name) for path in NOTEBOOKS]


class Notebook:
    """A notebook file: its path and its cells (nbformat's node cannot carry the path itself)."""

    def __init__(self, path: Path):
        self.path, self.node = path, nbformat.read(path, as_version=4)
        self.cells = self.node.cells


@pytest.fixture(params=_params())
def notebook(request):
    return Notebook(request.param)


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _where(nb, cell) -> str:
    return f"{nb.path.name}, cell {nb.cells.index(cell) + 1}"


def test_name_and_format(notebook):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", notebook.path.name), (
        f"{notebook.path.name}: course notebooks are named NN_topic.ipynb (nbval runs every notebook in "
        "notebooks/; put drafts and templates elsewhere, e.g. docs/)")
    nbformat.validate(notebook.node)


def test_stored_without_outputs(notebook):
    found = strip_notebooks.problems(notebook.node)
    assert not found, (f"{notebook.path.name} is stored with run-time leftovers:\n  " + "\n  ".join(found)
                       + "\nFix: python scripts/strip_notebooks.py " + str(notebook.path.relative_to(ROOT)))


def test_opens_with_title_objectives_prerequisites_and_measured_time(notebook):
    first = notebook.cells[0]
    assert first.cell_type == "markdown", f"{notebook.path.name}: the first cell must be the markdown opening"
    text = first.source
    number = notebook.path.name[:2]
    assert text.startswith(f"# {number}"), f"{notebook.path.name}: the opening starts with the title '# {number} · ...'"
    assert re.search(r"you will be able to", text, re.I), f"{notebook.path.name}: the opening lists objectives under 'You will be able to'"
    assert re.search(r"\*\*prerequisites", text, re.I), f"{notebook.path.name}: the opening names its **Prerequisites:**"
    time_line = re.search(r"\*\*time:?\*\*:?(.*)", text, re.I)
    assert time_line, f"{notebook.path.name}: the opening gives the **Time:** it takes"
    assert re.search(r"\d", time_line.group(1)) and "__" not in time_line.group(1), (
        f"{notebook.path.name}: fill in the measured times in the **Time:** line (found {time_line.group(1).strip()!r})")


def test_one_setup_cell_reads_the_profile(notebook):
    code = _code(notebook)
    assert code and "get_profile(" in code[0].source, (
        f"{notebook.path.name}: the first code cell is the set-up cell and calls ftlab.get_profile()")
    for cell in code[1:]:
        assert "get_profile(" not in cell.source, f"{_where(notebook, cell)}: only the set-up cell reads the profile"
    for cell in code:
        assert not re.search(r"environ\[?.*FTLAB_(PROFILE|SOLUTIONS)|%env\s+FTLAB_", cell.source), (
            f"{_where(notebook, cell)}: notebooks never set FTLAB_PROFILE / FTLAB_SOLUTIONS; the environment does")


def test_setup_cell_checks_versions(notebook):
    setup = _code(notebook)[0].source
    assert re.search(r"\bsetup_check\(\)", setup), (
        f"{notebook.path.name}: the set-up cell calls ftlab.setup_check() (pins, widgets, model cache, device; "
        "see notebooks/README.md, section 2)")


def test_at_least_two_checked_exercises_with_known_ids(notebook):
    ids = [i for cell in _code(notebook) for i in CHECK_CALL.findall(cell.source)]
    assert len(set(ids)) >= 2, f"{notebook.path.name}: at least two exercises with check(...) (found {ids})"
    unknown = sorted(set(ids) - set(EXERCISES))
    assert not unknown, f"{notebook.path.name}: check() ids not registered in ftlab/exercises/: {unknown}"


def test_claims_are_asserted(notebook):
    asserts = sum(len(re.findall(r"^\s*assert\b|torch\.testing\.assert_close", c.source, re.M)) for c in _code(notebook))
    assert asserts >= 3, f"{notebook.path.name}: every claim the prose makes is asserted in code (found {asserts} asserts)"


def test_sliders_have_descriptions(notebook):
    for cell in _code(notebook):
        sliders = len(re.findall(r"Slider\(", cell.source))
        described = len(re.findall(r"description\s*=", cell.source))
        assert described >= sliders, (
            f"{_where(notebook, cell)}: give every slider a description= (the browser test finds sliders by it)")


def test_ends_with_takeaways_and_whats_next(notebook):
    last = notebook.cells[-1]
    assert last.cell_type == "markdown", f"{notebook.path.name}: the last cell is the markdown with the takeaways"
    assert re.search(r"^#+\s*key takeaways", last.source, re.I | re.M), f"{notebook.path.name}: the last cell has '## Key takeaways'"
    assert re.search(r"what'?s next|what comes next|^\W*next\b", last.source, re.I | re.M), (
        f"{notebook.path.name}: the last cell says what comes next")
