"""The playground's widgets: controls, Run and Stop, a live loss plot and the comparison table.

All computing happens in :class:`ftlab.ui.playground.Playground`; this panel only turns the
controls into :class:`~ftlab.ui.playground.Settings`, starts ``Playground.run`` in a background
thread (so the notebook stays responsive and the Stop button can be pressed), and redraws. Every
control has a ``description``: the browser test finds them by it.

Impossible settings (0 steps, warmup longer than the run, QLoRA where bitsandbytes cannot run, ...)
and errors during a run are shown as a message in the panel, never as a traceback.

Example:
    >>> panel = PlaygroundPanel(Playground())          # doctest: +SKIP
    >>> panel                                         # doctest: +SKIP  (in a notebook: the panel)
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as widgets

from ftlab.ui.playground import PLAYGROUND_METHODS, Playground, Settings, SettingsError


class PlaygroundPanel(widgets.VBox):
    """Sliders and dropdowns for :class:`Settings`, Run / Stop / Reload buttons, plot, table."""

    def __init__(self, playground: Playground):
        self.playground = pg = playground
        d, p = pg.defaults, pg.profile
        style = {"description_width": "110px"}
        self.method = widgets.Dropdown(options=list(PLAYGROUND_METHODS), value=d.method, description="method", style=style)
        self.lr = widgets.FloatLogSlider(value=d.lr, base=10, min=-6, max=-1, step=0.1, readout_format=".1e",
                                         description="learning rate", style=style)
        self.rank = widgets.IntSlider(value=d.lora_rank, min=1, max=64, description="LoRA rank", style=style)
        self.steps = widgets.IntSlider(value=d.steps, min=0, max=max(40, 4 * d.steps), description="steps", style=style)
        self.batch = widgets.IntSlider(value=d.batch_size, min=1, max=max(16, 2 * d.batch_size),
                                       description="batch size", style=style)
        self.warmup = widgets.IntSlider(value=d.warmup, min=0, max=20, description="warmup", style=style)
        self.packing = widgets.Checkbox(value=d.packing, description="packing")
        self.run_button = widgets.Button(description="Run", button_style="success", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.reload_button = widgets.Button(description="Reload past runs", icon="refresh")
        self.status = widgets.HTML(value=f"<i>profile {html.escape(p.name)}: choose settings and press Run.</i>")
        self.plot = widgets.Image(value=pg.figure_png(), format="png")
        self.table = widgets.HTML(value=self._table_html())
        self._thread: threading.Thread | None = None
        self._last_draw = 0.0

        self.method.observe(self._method_changed, names="value")
        self.run_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.request_stop())
        self.reload_button.on_click(lambda _: self.reload())
        controls = widgets.VBox([self.method, self.lr, self.rank, self.steps, self.batch, self.warmup, self.packing])
        buttons = widgets.HBox([self.run_button, self.stop_button, self.reload_button])
        super().__init__([widgets.HBox([controls, self.plot]), buttons, self.status, self.table])
        self.add_class("ftlab-playground")
        self.rank.disabled = self.method.value == "full"

    # ---- controls -> settings

    def settings(self) -> Settings:
        return Settings(method=self.method.value, lr=float(self.lr.value), lora_rank=int(self.rank.value),
                        steps=int(self.steps.value), batch_size=int(self.batch.value), warmup=int(self.warmup.value),
                        packing=bool(self.packing.value))

    def _method_changed(self, change):
        # Full fine-tuning wants a far smaller learning rate than adapters: switch to the profile's.
        p = self.playground.profile
        self.lr.value = p.learning_rate if change["new"] == "full" else p.lora_learning_rate
        self.rank.disabled = change["new"] == "full"

    # ---- Run, Stop, Reload

    def _say(self, text: str, kind: str = "info") -> None:
        color = {"info": "#333", "error": "#b00020", "ok": "#1b5e20"}[kind]
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def start(self) -> bool:
        """Check the settings and start a run in a background thread; False (and a message) if it cannot."""
        if self._thread is not None and self._thread.is_alive():
            self._say("A run is still going: wait for it, or press Stop.", "error")
            return False
        settings = self.settings()
        problems = self.playground.problems(settings)
        if problems:
            self._say("Cannot run these settings: " + " ".join(problems), "error")
            return False
        self.run_button.disabled, self.stop_button.disabled = True, False
        self._say(f"loading the model and starting: {settings.label()} ...")
        self._thread = threading.Thread(target=self._run, args=(settings,), daemon=True, name="ftlab-playground")
        self._thread.start()
        return True

    def _run(self, settings: Settings) -> None:
        try:
            row = self.playground.run(settings, on_step=lambda record: self._on_step(record, settings))
        except SettingsError as e:
            self._say(f"Cannot run these settings: {e}", "error")
        except Exception as e:  # noqa: BLE001 (the panel reports any failure as a message, not a traceback)
            self._say(f"The run failed: {type(e).__name__}: {e}", "error")
        else:
            how = "stopped by you" if row["stopped"] == "stop button" else "done"
            self._say(f"{row['run']} {how} after {row['steps done']} steps in {row['seconds']:.0f} s: "
                      f"train loss {row['final train loss']:.3f}, validation loss {row['final val loss']:.3f}, "
                      f"task score {row['task score']:.2f}. Kept in {row['folder']}", "ok")
        finally:
            self.plot.value = self.playground.figure_png()
            self.table.value = self._table_html()
            self.run_button.disabled, self.stop_button.disabled = False, True

    def _on_step(self, record: dict, settings: Settings) -> None:
        if "loss" in record:
            self._say(f"step {record['step']} / {settings.steps}: loss {record['loss']:.3f}")
        if time.monotonic() - self._last_draw > 0.3 or record.get("step") == settings.steps:
            self._last_draw = time.monotonic()
            self.plot.value = self.playground.figure_png()

    def request_stop(self) -> None:
        self.playground.stop()
        self._say("stopping after this step ...")

    def reload(self) -> int:
        n = self.playground.load_runs()
        self.plot.value = self.playground.figure_png()
        self.table.value = self._table_html()
        self._say(f"{n} past run(s) added from {self.playground.runs_dir}." if n else
                  f"no other runs kept in {self.playground.runs_dir}.")
        return n

    def wait(self, timeout: float = 600) -> None:
        """Block until the current run has finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the playground run did not finish within {timeout:.0f} s")

    def _table_html(self) -> str:
        if not self.playground.rows:
            return "<i>no runs yet</i>"
        return self.playground.table().reset_index().to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-",
                                                             classes="ftlab-runs")


def playground(profile=None, **kwargs) -> PlaygroundPanel:
    """A new :class:`Playground` with its panel; earlier runs kept under ``runs/playground`` are loaded."""
    panel = PlaygroundPanel(Playground(profile=profile, **kwargs))
    panel.reload()
    return panel
