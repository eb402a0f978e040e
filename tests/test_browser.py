"""The course in a real browser: JupyterLab + headless Chromium, a notebook run, a slider moved.

nbval proves that every notebook's code runs; it cannot prove that the widgets render and react in
JupyterLab (the front-end extension, the kernel comms, the inline plots). This test does, the way
a learner would: it starts JupyterLab on localhost, opens a notebook in Debian's Chromium driven by
Playwright, runs all cells from the Run menu, moves a slider with the keyboard and checks that the
printed numbers and the plot changed. Screenshots land in ``artifacts/browser/``.

Chromium comes from ``scripts/install_browser.sh`` (``make browser``); Playwright never downloads
its own browser here. Run it alone with::

    FTLAB_PROFILE=ci .venv/bin/python -m pytest -q -m browser tests/test_browser.py

To drive a course notebook instead of the built-in demo, add a ``BrowserCase`` to ``CASES``: the
notebook's path, the description of the slider to move, and how many arrow-key presses. To try any
notebook from the command line::

    FTLAB_BROWSER_NOTEBOOK=notebooks/02_loss_math.ipynb FTLAB_BROWSER_SLIDER=warmup \
        FTLAB_PROFILE=ci FTLAB_SOLUTIONS=1 .venv/bin/python -m pytest -q -m browser tests/test_browser.py

On failure the test keeps ``<case>_failure.png``, the browser console and the JupyterLab log there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = Path(os.environ.get("FTLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--disable-background-networking",  # nothing may reach the network
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass(frozen=True)
class BrowserCase:
    name: str  # used in screenshot file names
    notebook: Path | None  # None: the demo notebook written by demo_notebook()
    slider: str  # the slider's description label, e.g. "steps"
    presses: int = 5  # ArrowRight presses on the slider's handle
    run_timeout_s: float = 60  # how long "Run All" may take


CASES = [
    # A real course notebook: Run All executes the whole lesson under the ci profile, then the
    # "batch" slider of the hardware table (estimated memory per model and method) is moved.
    BrowserCase("00_concepts", ROOT / "notebooks" / "00_concepts.ipynb", slider="batch", presses=3,
                run_timeout_s=300),
]
# The self-contained demo notebook (no course code) stays available for debugging the harness:
#   FTLAB_BROWSER_DEMO=1 pytest -m browser
if os.environ.get("FTLAB_BROWSER_DEMO"):
    CASES = [BrowserCase("demo", None, slider="steps", presses=5)]
# Any notebook from the command line, e.g. while writing one:
#   FTLAB_BROWSER_NOTEBOOK=notebooks/02_loss_math.ipynb FTLAB_BROWSER_SLIDER=warmup pytest -m browser
if os.environ.get("FTLAB_BROWSER_NOTEBOOK"):
    _path = Path(os.environ["FTLAB_BROWSER_NOTEBOOK"]).resolve()
    CASES = [BrowserCase(_path.stem, _path, slider=os.environ.get("FTLAB_BROWSER_SLIDER", ""),
                         presses=int(os.environ.get("FTLAB_BROWSER_PRESSES", "5")),
                         run_timeout_s=float(os.environ.get("FTLAB_BROWSER_TIMEOUT", "120")))]


def demo_notebook(path: Path) -> Path:
    """A small notebook shaped like a course notebook: profile set-up cell, one slider, a plot."""
    cells = [
        nbformat.v4.new_markdown_cell("# Browser test demo\nA slider drives a printed number and a plot."),
        nbformat.v4.new_code_cell("import ftlab\nprofile = ftlab.get_profile()\nprint('profile:', profile.name)"),
        nbformat.v4.new_code_cell(
            "import ipywidgets as widgets\n"
            "import matplotlib.pyplot as plt\n"
            "\n"
            "def show(steps=10):\n"
            "    total = sum(range(steps + 1))\n"
            "    print(f'steps={steps} total={total}')\n"
            "    fig, ax = plt.subplots(figsize=(4, 2.5))\n"
            "    ax.plot(range(steps + 1), [k * k for k in range(steps + 1)], marker='o')\n"
            "    ax.set_title(f'{steps} steps')\n"
            "    plt.show()\n"
            "    return total\n"
            "\n"
            "assert show(4) == 10  # the function behind the slider, checked without a browser\n"
            "\n"
            "def explore(steps=10):\n"
            "    show(steps)  # (interact() would also print show's return value)\n"
            "\n"
            "widgets.interact(explore, steps=widgets.IntSlider(value=10, min=1, max=40, description='steps'));"
        ),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (localhost only)
        return response.read()


class JupyterLab:
    """JupyterLab on 127.0.0.1 with a random token, serving ``root``; isolated config and state."""

    def __init__(self, root: Path, state: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            # Fresh config/runtime/workspace dirs: nothing from the user's own JupyterLab leaks in,
            # and the test leaves nothing behind. Lab extensions still come from the venv.
            JUPYTER_CONFIG_DIR=str(state / "config"),
            JUPYTER_RUNTIME_DIR=str(state / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(state / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
            FTLAB_PROFILE=os.environ.get("FTLAB_PROFILE", "ci"),
            MPLBACKEND="module://matplotlib_inline.backend_inline",
        )
        # No "get notified about Jupyter news?" toast over the notebook (and no news fetch).
        notification = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notification.parent.mkdir(parents=True, exist_ok=True)
        notification.write_text(json.dumps({"fetchNews": "false"}))
        self.clean_exit = False  # set by shutdown(): stopped by its API, exit status 0
        self.log = state / "jupyterlab.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
             f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={self.token}",
             "--ServerApp.port_retries=0",
             # no calls home: no news feed, no update check
             "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly",
             # window.jupyterapp lets the test read the notebook model (execution counts, errors)
             "--LabApp.expose_app_in_browser=True"]
            # CI containers run as root; JupyterLab refuses that unless told.
            + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            cwd=root, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"{self.base}/{path}?token={self.token}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                json.loads(_get(self.url("api/status")))
                return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def kernels(self) -> list[dict]:
        """The server's kernel list; [] while it cannot answer (a busy server may answer 500 for a moment)."""
        try:
            return json.loads(_get(self.url("api/kernels"), timeout=5))
        except OSError:  # URLError and HTTPError are OSErrors
            return []

    def kernel_idle(self) -> bool:
        kernels = self.kernels()
        return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)

    def wait_kernel_connected(self, timeout: float = 60) -> None:
        """Until the notebook's kernel is idle and the browser holds its websocket (code sent before is lost)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kernels = self.kernels()
            if any(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels):
                return
            time.sleep(0.3)
        raise TimeoutError(f"no connected idle kernel after {timeout:.0f} s: {kernels}")

    def shutdown(self) -> None:
        """Ask the server to stop (it shuts its kernels down too); kill it only if it will not."""
        if self.proc.poll() is None:
            try:
                request = urllib.request.Request(self.url("api/shutdown"), method="POST")
                urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
            except OSError:
                pass
            try:
                self.proc.wait(timeout=15)
                self.clean_exit = self.proc.returncode == 0
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log_file.close()


# The slider labelled `label`, the output area that belongs to it (an interact() box's Output
# widget, else the whole cell output holding the slider), and what that output shows.
_STATE_JS = """(label) => {
    const lab = [...document.querySelectorAll('.widget-slider .widget-label')]
        .find(l => l.textContent.trim() === label);
    if (!lab) return null;
    const box = lab.closest('.widget-interact') || lab.closest('.jp-OutputArea-output');
    const out = (box.querySelector('.widget-output') || box).cloneNode(true);
    // the controls' own labels and readouts are not "output": drop them before reading the text
    out.querySelectorAll('.widget-slider, .widget-label, .widget-readout').forEach(e => e.remove());
    return {
        readout: lab.closest('.widget-slider').querySelector('.widget-readout').textContent.trim(),
        text: out.textContent.replace(/\s+/g, ' ').trim(),
        images: [...out.querySelectorAll('img')].map(img => img.src),
    };
}"""


# Progress of "Run All", read from the notebook model: code cells executed so far, and errors.
_RUN_PROGRESS_JS = """() => {
    const model = window.jupyterapp.shell.currentWidget.content.model;
    const cells = [...Array(model.cells.length).keys()].map(i => model.cells.get(i))
        .filter(c => c.type === 'code' && c.sharedModel.getSource().trim());
    const errors = [];
    for (const cell of cells)
        for (let j = 0; j < cell.outputs.length; j++) {
            const out = cell.outputs.get(j).toJSON();
            if (out.output_type === 'error') errors.push(`${out.ename}: ${out.evalue}`);
        }
    return {total: cells.length, done: cells.filter(c => c.executionCount !== null).length, errors};
}"""


def _wait_all_cells_run(page, timeout: float) -> None:
    """Until every code cell has run; fail at once, with the message, if one raised."""
    deadline, progress = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        progress = page.evaluate(_RUN_PROGRESS_JS)
        if progress["errors"]:
            raise AssertionError(f"a cell raised in JupyterLab: {progress['errors'][0]}")
        if progress["done"] == progress["total"]:
            return
        page.wait_for_timeout(500)
    raise TimeoutError(f"Run All did not finish within {timeout:.0f} s ({progress['done']} of "
                       f"{progress['total']} code cells ran)")


def _output_state(page, slider: str) -> dict | None:
    """What the slider shows and what its output area shows now (None: no such slider yet)."""
    state = page.evaluate(_STATE_JS, slider)
    if state is not None:
        # Plots as short fingerprints of their PNG data URLs, readable in a failure message.
        state["images"] = [hashlib.sha256(src.encode()).hexdigest()[:12] for src in state["images"]]
    return state


def _wait_for_state(page, slider: str, ready, timeout: float, what: str) -> dict:
    """Poll the slider's output state until ``ready(state)``; fail with ``what`` and the last state."""
    deadline, state = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        state = _output_state(page, slider)
        if state is not None and ready(state):
            return state
        page.wait_for_timeout(250)
    raise TimeoutError(f"{what} within {timeout:.0f} s (last state: {state})")


def _settled_state(page, lab: "JupyterLab", slider: str, timeout: float = 30) -> dict:
    """Each key press may re-run the widget's function: wait until the kernel is idle and the
    output stopped changing, so the state returned belongs to the slider's final value."""
    deadline = time.monotonic() + timeout
    last = _output_state(page, slider)
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        now = _output_state(page, slider)
        if now == last and lab.kernel_idle():
            return now
        last = now
    raise TimeoutError(f"the output kept changing for {timeout:.0f} s after the slider moved")


@pytest.fixture(scope="module")
def chromium_path():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing. Fix: run `bash scripts/install_browser.sh` (make browser), "
                    "or set FTLAB_CHROMIUM to your Chromium.")
    return str(CHROMIUM)


@contextlib.contextmanager
def notebook_run_all(tmp_path, chromium_path, notebook: Path | None, artifacts: str):
    """JupyterLab on a copy of ``notebook`` (None: the demo notebook), opened in headless Chromium, kernel
    ready, Run All pressed. Yields ``(page, lab)``. On a failure it keeps a screenshot, the browser console
    and JupyterLab's log under ``ARTIFACTS/<artifacts>_failure*``; it always closes the browser and stops
    JupyterLab (``lab.clean_exit`` says how that went)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    # A temporary copy laid out like the repository (notebooks/ next to data/), so running it
    # never writes outputs into the repository's notebooks and relative paths still work.
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    if notebook is None:
        notebook = demo_notebook(root / "notebooks" / "demo.ipynb")
    else:
        notebook = Path(shutil.copy(notebook, root / "notebooks" / notebook.name))
        if (ROOT / "data").is_dir():
            (root / "data").symlink_to(ROOT / "data")
    lab = JupyterLab(root, tmp_path / "state")
    console: list[str] = []
    try:
        lab.wait_ready()
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.set_default_timeout(30_000)
            try:
                # JupyterLab's first load parses several MB of JavaScript: generous on a busy 2-core box.
                page.goto(lab.url(f"lab/tree/notebooks/{notebook.name}"), timeout=90_000)
                page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=90_000)
                # Wait for the kernel: started, idle, and connected to this page.
                lab.wait_kernel_connected()
                page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
                    timeout=60_000)
                page.locator(".lm-MenuBar-item", has_text="Run").click()
                page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
                yield page, lab
            except Exception:
                # Keep what the browser showed, and its console, for whoever reads the CI log.
                page.screenshot(path=ARTIFACTS / f"{artifacts}_failure.png")
                (ARTIFACTS / f"{artifacts}_failure_console.txt").write_text("\n".join(console))
                shutil.copy(lab.log, ARTIFACTS / f"{artifacts}_failure_jupyterlab.log")
                raise
            finally:
                browser.close()
    finally:
        lab.shutdown()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_slider_changes_output_in_jupyterlab(case: BrowserCase, chromium_path, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{case.name}_*"):
        old.unlink()
    with notebook_run_all(tmp_path, chromium_path, case.notebook, case.name) as (page, lab):
        # All cells done (kernel idle again), then the slider and its output must be on the page.
        _wait_all_cells_run(page, case.run_timeout_s)
        before = _wait_for_state(page, case.slider, lambda st: st["images"] or st["text"],
                                 30, f"no slider {case.slider!r} with output appeared")
        slider = page.locator(".widget-slider").filter(has=page.get_by_text(case.slider, exact=True)).first
        widget = page.locator(".jp-OutputArea-output").filter(has=slider).last  # slider + its output
        widget.scroll_into_view_if_needed()
        page.screenshot(path=ARTIFACTS / f"{case.name}_1_before.png")
        widget.screenshot(path=ARTIFACTS / f"{case.name}_1_before_widget.png")

        # Move the slider the way a keyboard user would: focus its handle, press the arrows.
        slider.locator(".noUi-handle").first.focus()
        for _ in range(case.presses):
            page.keyboard.press("ArrowRight")
        _wait_for_state(page, case.slider, lambda st: st["readout"] != before["readout"], 10,
                        "the slider's value did not change after the key presses")
        after = _settled_state(page, lab, case.slider)
        widget.scroll_into_view_if_needed()
        page.screenshot(path=ARTIFACTS / f"{case.name}_2_after.png")
        widget.screenshot(path=ARTIFACTS / f"{case.name}_2_after_widget.png")

    assert after["readout"] != before["readout"], f"the slider did not move from {before['readout']}"
    assert (after["images"], after["text"]) != (before["images"], before["text"]), (
        f"moving the slider from {before['readout']} to {after['readout']} changed neither the plot nor the "
        f"printed output: {after}")
    if case.notebook is None:  # the demo: both must change, and its numbers are known exactly
        steps = int(after["readout"])
        assert steps == 10 + case.presses
        assert after["text"] == f"steps={steps} total={steps * (steps + 1) // 2}", after["text"]
        assert len(after["images"]) == 1 and after["images"] != before["images"], "the demo's plot did not change"
    assert lab.clean_exit, f"JupyterLab did not shut down cleanly (exit status {lab.proc.returncode})"


# --------------------------------------------------------------------------- the training playground

PLAYGROUND_NOTEBOOK = ROOT / "notebooks" / "02_loss_math.ipynb"

# The playground panel's state: its "steps" readout, how many runs its table shows, its plot, its status line.
_PLAYGROUND_JS = """() => {
    const panel = document.querySelector('.ftlab-playground');
    if (!panel) return null;
    const steps = [...panel.querySelectorAll('.widget-slider')]
        .find(s => s.querySelector('.widget-label').textContent.trim() === 'steps');
    const img = panel.querySelector('img');
    const rows = [...panel.querySelectorAll('table.ftlab-runs tbody tr')];
    return {
        steps: steps ? steps.querySelector('.widget-readout').textContent.trim() : null,
        rows: rows.map(r => [...r.querySelectorAll('th, td')].map(c => c.textContent.trim())),
        header: [...panel.querySelectorAll('table.ftlab-runs thead th')].map(c => c.textContent.trim()),
        image: img ? img.src : '',
        status: panel.querySelector('.widget-html-content') ? panel.querySelector('.widget-html-content').textContent : '',
    };
}"""


def _playground_state(page) -> dict | None:
    state = page.evaluate(_PLAYGROUND_JS)
    if state is not None:
        state["image"] = hashlib.sha256(state["image"].encode()).hexdigest()[:12]
    return state


def _wait_playground(page, ready, timeout: float, what: str) -> dict:
    deadline, state = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        state = _playground_state(page)
        if state is not None and ready(state):
            return state
        page.wait_for_timeout(500)
    raise TimeoutError(f"{what} within {timeout:.0f} s (last state: {state})")


def test_playground_run_adds_a_curve_and_a_row_in_jupyterlab(chromium_path, tmp_path):
    """Run All on notebook 02, move the playground's "steps" slider, press Run: a new curve and a new row."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("playground_*"):
        old.unlink()
    with notebook_run_all(tmp_path, chromium_path, PLAYGROUND_NOTEBOOK, "playground") as (page, lab):
        _wait_all_cells_run(page, 600)

        # The notebook's own cell ran one playground run: the table shows it.
        before = _wait_playground(page, lambda st: len(st["rows"]) >= 1 and st["steps"], 60,
                                  "no playground panel with a table row appeared")
        panel = page.locator(".ftlab-playground").first
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=ARTIFACTS / "playground_1_before.png")

        # Move the "steps" slider one step right with the keyboard, then press Run.
        slider = panel.locator(".widget-slider").filter(has=page.get_by_text("steps", exact=True)).first
        slider.locator(".noUi-handle").first.focus()
        page.keyboard.press("ArrowRight")
        moved = _wait_playground(page, lambda st: st["steps"] != before["steps"], 10,
                                 "the steps slider did not move")
        panel.locator("button[title='Run']").click()
        after = _wait_playground(page, lambda st: len(st["rows"]) == len(before["rows"]) + 1, 300,
                                 "pressing Run added no row to the table")
        after = _wait_playground(page, lambda st: st["image"] != before["image"] and "done" in st["status"],
                                 60, "the plot did not change after the run")
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=ARTIFACTS / "playground_2_after.png")

    steps = int(moved["steps"])
    assert steps == int(before["steps"]) + 1
    new_row = dict(zip(after["header"], after["rows"][-1]))
    assert new_row["steps"] == str(steps) and new_row["steps done"] == str(steps), new_row
    assert new_row["stopped"] == "max_steps" and float(new_row["final train loss"]) > 0, new_row
    assert after["rows"][:-1] == before["rows"]  # earlier rows stay as they were
    assert lab.clean_exit, f"JupyterLab did not shut down cleanly (exit status {lab.proc.returncode})"
