"""The prose of the notebooks tells the truth a program can check: figures and cross-references.

Runs in a second, without a kernel (like test_notebook_hygiene.py).

**Numbers come from code.** A *measured figure* in a markdown cell is a number with a unit of
memory (``4.3 GiB``, ``300 MB``), of time (``302 s``, ``5 min``), a percentage (``33 %``), a speed-up
(``3x faster``) or a score-like decimal with two or more places (``0.38``). Such a figure must be one of:

- asserted next to it: the same value appears as a literal on an ``assert`` line of a code cell at most
  ``NEAR`` cells before or after it (the bound the prose states is the bound the code checks), or in the
  question of an exercise the notebook checks -- a percentage also matches its fraction (``25 %`` and ``0.25``);
- a definition listed in ``TEXTBOOK`` below, with its reason (``95 %`` confidence intervals);
- in a place where it is not a claim about a run: inside ``$...$`` maths, inside `code` or a fenced
  block, inside a collapsed ``<details>`` solution, in a heading, or on the opening cell's ``**Time:**``
  line (measured by ``scripts/check_workshop_plan.py``, see notebooks/README.md);
- declared in the cell by an HTML comment, invisible to the learner, that names the figures and says why
  they are not measurements: ``<!-- given: 16 GB; 24 GB -- the cards' advertised memory -->``. A
  declaration without a reason, or naming a figure the cell does not contain, fails.

A measured number that must appear in prose is printed by a cell (a printed sentence, or Markdown rendered
from the variables), not typed into a markdown cell.

**Cross-references.** Every "notebook NN" / link ``NN_*.ipynb`` names a notebook that exists (and a
link's text ``NN · ...`` matches its file's number); every "section N" names a ``## N · ...`` heading of
the notebook it refers to; notebook 00's course map links every notebook with words of its real title; and
the "What's next" of every notebook but the last links a later notebook.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from ftlab.exercises import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BY_NUMBER = {p.name[:2]: p for p in NOTEBOOKS}

# --------------------------------------------------------------------------- what counts as a figure

_NUM = r"(?<![\w.\-])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?"
FIGURE = re.compile(
    _NUM + r"(?:"
    r"\s?(?P<pct>%)"
    r"|\s?(?P<mem>[KMGT]i?B|[kMGT]B)\b"
    r"|\s?(?P<time>ms|s|sec|seconds?|min|minutes?|h|hours?)\b(?!-)"
    r"|\s?(?P<speed>[x×])\s+(?:faster|slower|smaller|larger|bigger|less|more|fewer|cheaper)\b"
    r")"
    r"|(?<![\w.\-])(?P<score>[01]\.\d{2,})(?![\w.])"
)
# Figures that are definitions wherever they occur: the phrase, and why it is no measurement.
TEXTBOOK = {
    r"95 %(?=\s+(?:bootstrap\s+)?(?:confidence\s+)?(?:intervals?|CIs?)\b)": "the conventional confidence level, a choice",
    r"2\.5 % and 97\.5 %(?=\s+percentiles)": "the percentiles that bound a 95 % interval, by definition",
}
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']""")
CODE_NUMBER = re.compile(r"(?<![\w.])(\d+(?:_\d{3})*(?:\.\d+)?(?:e-?\d+)?)")
DECLARED = re.compile(r"<!--\s*given:(.*?)-->", re.S)


def _strip_unclaimed(text: str) -> str:
    """The text with everything that is not a claim about a run blanked out (same length kept)."""
    blank = lambda m: " " * len(m.group(0))  # noqa: E731
    for pattern in (r"(?s)<details>.*?</details>", r"(?s)```.*?```", r"`[^`\n]*`", r"(?s)\$\$.*?\$\$",
                    r"(?<!\\)\$[^$\n]+(?<!\\)\$", r"(?s)<!--.*?-->", r"(?m)^#+ .*$"):
        text = re.sub(pattern, blank, text)
    return text


def _value(text: str) -> float:
    return float(text.replace(",", "").replace("_", ""))


NEAR = 3  # an assert "next to" a markdown cell: within this many cells before or after it


def _code_values(nb, index: int) -> set[float]:
    values = set()
    for cell in nb.cells[max(0, index - NEAR): index + NEAR + 1]:
        if cell.cell_type == "code":
            asserted = [line for line in cell.source.splitlines() if re.match(r"\s*assert\b|.*assert_close", line)]
            values |= {_value(v) for line in asserted for v in CODE_NUMBER.findall(line.split("#")[0])}
    for ex_id in {i for c in nb.cells if c.cell_type == "code" for i in CHECK_CALL.findall(c.source)}:
        if ex_id in EXERCISES:
            values |= {_value(v) for v in CODE_NUMBER.findall(EXERCISES[ex_id].question)}
    return values


def unbacked_figures(path: Path) -> list[str]:
    """'cell N: <figure> in "...context..."' for every figure no code produces and nothing declares."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        values = _code_values(nb, index)
        source = cell.source
        if index == 0:  # the opening's measured **Time:** line is checked by the workshop plan
            source = re.sub(r"^\*\*Time:?\*\*.*?(?=\n\s*\n|\Z)", lambda m: " " * len(m.group(0)), source,
                            flags=re.S | re.M)
        declared = []
        for decl in DECLARED.findall(source):
            figures, _, reason = decl.partition("--")
            figures = [f.strip() for f in figures.split(";") if f.strip()]
            if not reason.strip():
                found.append(f"cell {index + 1}: the declaration <!-- given:{decl}--> gives no reason after '--'")
            for fig in figures:
                if fig not in _strip_unclaimed(source):
                    found.append(f"cell {index + 1}: declared figure {fig!r} does not occur in the cell's prose")
            declared += figures
        text = _strip_unclaimed(source)
        for phrase in TEXTBOOK:
            text = re.sub(phrase, lambda m: " " * len(m.group(0)), text)
        for m in FIGURE.finditer(text):
            figure = m.group(0).strip()
            if any(figure.startswith(d) or d.startswith(figure) for d in declared):
                continue
            if m.group("score"):
                number = _value(m.group("score"))
            else:
                number = _value(m.group(1) + ("." + m.group(2) if m.group(2) else ""))
            candidates = {number} | ({round(number / 100, 10)} if m.group("pct") else set())
            if any(abs(c - v) <= 1e-9 * max(1.0, abs(c)) for c in candidates for v in values):
                continue
            line = text[max(0, m.start() - 50): m.end() + 30].replace("\n", " ").strip()
            found.append(f"cell {index + 1}: {figure!r} in \"...{line}...\"")
    return found


def _params():
    return [pytest.param(p, id=p.name) for p in NOTEBOOKS]


@pytest.mark.parametrize("path", _params())
def test_figures_in_prose_come_from_code(path):
    found = unbacked_figures(path)
    assert not found, (
        f"{path.name}: these figures in markdown are produced by no code cell. Print them from a cell (or render "
        "the Markdown from variables), assert them next to the prose, or -- for a figure that is not a "
        "measurement (a definition, a device's size, a textbook constant) -- declare it in the cell with "
        "<!-- given: FIGURE; FIGURE -- why it is not measured -->. The rule is in tests/test_notebook_truth.py.\n  "
        + "\n  ".join(found))


# --------------------------------------------------------------------------- cross-references

LINK = re.compile(r"\[([^\]]*)\]\((?:\./)?([^)\s]+\.ipynb)(?:#[^)]*)?\)")
NOTEBOOK_REF = re.compile(r"\bnotebooks?\s+(\d\d(?:\s*(?:[–-]|,|and|or|to)\s*\d\d)*)", re.I)
SECTION_REF = re.compile(r"\bsections?\s+(\d+(?:\s*(?:[–-]|,|and|or)\s*\d+)*)('s)?(?:\s+of\s+notebook\s+(\d\d))?", re.I)
OWNER_BEFORE = re.compile(r"\bnotebook\s+(\d\d)(?:'s)?\s*$", re.I)
# "01 section 3": a bare number before "section" reads as another notebook's section, but nothing can check which
# notebook is meant; the prose must say "notebook 01's section 3" (or "section 3 of notebook 01").
BARE_OWNER = re.compile(r"(?<!notebook )(?<![\w.,])(\d\d)(?:'s)?\s+sections?\s+\d", re.I)
HEADING = re.compile(r"^#{2,3}\s+(\d+)\s*·", re.M)


def _markdown(path: Path):
    nb = nbformat.read(path, as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]


def _sections(path: Path) -> set[int]:
    return {int(n) for _, text in _markdown(path) for n in HEADING.findall(text)}


def _numbers(spec: str) -> list[int]:
    out = []
    for part in re.split(r"\s*(?:,|and|or)\s*", spec):
        ends = re.split(r"\s*(?:[–-]|to)\s*", part)
        ends = [int(e) for e in ends if e.strip()]
        out += list(range(ends[0], ends[-1] + 1)) if len(ends) == 2 else ends
    return out


def broken_references(path: Path) -> list[str]:
    problems = []
    own = _sections(path)
    for index, text in _markdown(path):
        where = f"cell {index + 1}"
        for label, target in LINK.findall(text):
            file = (path.parent / target).resolve()
            if not file.exists():
                problems.append(f"{where}: link [{label}]({target}): no such notebook")
            elif re.match(r"\s*\d\d\b", label) and label.strip()[:2] != file.name[:2]:
                problems.append(f"{where}: link text {label!r} names another number than {target}")
        prose = re.sub(r"`[^`\n]*`|```.*?```", " ", text, flags=re.S)
        for m in NOTEBOOK_REF.finditer(prose):
            for n in _numbers(m.group(1)):
                if f"{n:02d}" not in BY_NUMBER:
                    problems.append(f"{where}: {m.group(0)!r} names notebook {n:02d}, which does not exist")
        for m in BARE_OWNER.finditer(prose):
            problems.append(f"{where}: {m.group(0)!r}: write \"notebook {m.group(1)}'s section ...\" so that it can be checked")
        for m in SECTION_REF.finditer(prose):
            before = OWNER_BEFORE.search(prose[: m.start()])
            after = m.group(3)
            owner = after or (before.group(1) if before else None)
            if re.search(r"(paper|§|et al\.?)[^.\n]{0,20}$", prose[max(0, m.start() - 25): m.start()], re.I):
                continue  # a section of a cited paper
            target = BY_NUMBER.get(owner) if owner else path
            if target is None:
                problems.append(f"{where}: {m.group(0)!r}: notebook {owner} does not exist")
                continue
            sections = own if target == path else _sections(target)
            for n in _numbers(m.group(1)):
                if n not in sections:
                    problems.append(f"{where}: {m.group(0)!r}: {target.name} has no '## {n} · ...' section "
                                    f"(it has {sorted(sections)})")
    return problems


@pytest.mark.parametrize("path", _params())
def test_cross_references_point_to_what_exists(path):
    problems = broken_references(path)
    assert not problems, f"{path.name}: broken cross-references:\n  " + "\n  ".join(problems)


def _title(path: Path) -> str:
    first = _markdown(path)[0][1]
    return re.match(r"#\s*\d\d\s*·\s*(.*)", first).group(1)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in {"and", "the", "its"}}


def test_course_map_in_00_covers_every_notebook_with_its_topic():
    map_cells = [text for _, text in _markdown(BY_NUMBER["00"]) if re.search(r"course map", text, re.I)]
    assert map_cells, "00_concepts.ipynb: a markdown cell with the 'course map' (a table linking every notebook)"
    links = {target[:2]: label for label, target in LINK.findall("\n".join(map_cells))}
    missing = sorted(set(BY_NUMBER) - set(links))
    assert not missing, f"00_concepts.ipynb: the course map does not link notebook(s) {missing}"
    for number, label in links.items():
        topic = _words(re.sub(r"^\s*\d\d\s*·", "", label))
        title = _words(_title(BY_NUMBER[number]))
        assert topic and topic <= title, (
            f"00_concepts.ipynb: the course map calls notebook {number} {label!r}, but its title is "
            f"{_title(BY_NUMBER[number])!r}; name it with words of its title")


@pytest.mark.parametrize("path", _params())
def test_whats_next_points_forward(path):
    last_number = max(BY_NUMBER)
    text = _markdown(path)[-1][1]
    m = re.search(r"^#+\s*what'?s next(.*)", text, re.I | re.M | re.S)
    assert m, f"{path.name}: the last cell has a '## What's next' section"
    if path.name[:2] == last_number:
        return
    later = [t for _, t in LINK.findall(m.group(1)) if t[:2].isdigit() and t[:2] > path.name[:2]]
    following = min(n for n in BY_NUMBER if n > path.name[:2])
    assert later, (f"{path.name}: 'What's next' links no later notebook; point the learner on, e.g. "
                   f"[{following} · ...]({BY_NUMBER[following].name})")


# --------------------------------------------------------------------------- the rules themselves can fail


def _write(tmp_path, cells, name="05_demo.ipynb"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
                for c in cells]
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def test_the_figure_rule_flags_what_it_should(tmp_path):
    opening = "md:# 05 · Demo\n\n**Time:** laptop 302 s, peak 4.3 GiB"  # the Time line is exempt
    path = _write(tmp_path, [
        opening,
        "md:The run took 41 s and 2.5 GiB; the score rose to 0.38, 12 % better.",   # four unbacked figures
        "md:Under $0.25$ in maths, `0.38` in code, and a score below 0.30 (asserted next door).",
        "assert score < 0.30",
        "md:<!-- given: 16 GB -- a T4's advertised memory -->A 16 GB card.\n<!-- given: 80 GB -->An 80 GB card.",
        "md:<details>Solution: 13.04 GiB</details>\n## 3 · Heading with 50 %",
    ])
    found = unbacked_figures(path)
    text = "\n".join(found)
    for figure in ("41 s", "2.5 GiB", "0.38", "12 %"):
        assert f"{figure!r}" in text, (figure, found)
    assert "gives no reason" in text and "'80 GB'" not in text  # declared, but without a reason
    assert "0.30" not in text and "0.25" not in text and "16 GB" not in text and "13.04" not in text
    assert len(found) == 5, found


def test_the_reference_rules_flag_what_they_should(tmp_path):
    path = _write(tmp_path, [
        "md:# 05 · Demo",
        "md:## 1 · One\nSee section 2, notebook 42, section 3 of notebook 00, and [01 · Data](07_alignment.ipynb).",
        "md:## 2 · Two\nAs the QLoRA paper, section 7 says; and [gone](99_gone.ipynb); see 01 section 1.",
    ])
    (tmp_path / "07_alignment.ipynb").write_text((ROOT / "notebooks" / BY_NUMBER["07"].name).read_text())
    problems = "\n".join(broken_references(path))
    assert "notebook 42" in problems and "99_gone.ipynb" in problems and "names another number" in problems
    assert "'01 section 1'" in problems   # a bare "NN section N" cannot be checked
    assert "'section 2'" not in problems and "section 7" not in problems
    assert ("has no '## 3" in problems) == (3 not in _sections(BY_NUMBER["00"]))
