"""The training playground: settings checked before anything loads, real ci runs, the table, stop, reload, panel."""

import json
import math
import time

import pytest

import ftlab
from ftlab.profiles import get_profile
from ftlab.ui import Playground, Settings, SettingsError, check_settings
from ftlab.ui import playground as pg_module

GOOD = Settings(method="lora", lr=1e-3, lora_rank=4, steps=3, batch_size=2, warmup=0, packing=False)


@pytest.fixture
def pg(tmp_path):
    profile = get_profile("ci")
    return Playground(profile=profile, runs_dir=tmp_path / "runs")


@pytest.mark.parametrize("change, words", [
    ({"steps": 0}, "at least 1 optimizer step"),
    ({"warmup": 3}, "warmup 3 >= steps 3"),
    ({"warmup": -1}, "cannot be negative"),
    ({"lr": 0.0}, "learning rate 0.0"),
    ({"lr": float("nan")}, "learning rate nan"),
    ({"lora_rank": 0}, "LoRA rank 0"),
    ({"batch_size": 0}, "at least 1 example"),
    ({"method": "dpo"}, "not one of full, lora, qlora"),
])
def test_impossible_settings_are_named_with_the_fix(change, words):
    problems = check_settings(Settings(**{**GOOD.__dict__, **change}))
    assert len(problems) == 1 and words in problems[0], problems


def test_good_settings_pass_and_rank_is_ignored_for_full():
    assert check_settings(GOOD) == []
    assert check_settings(Settings(**{**GOOD.__dict__, "method": "full", "lora_rank": 0})) == []
    assert "larger than the 4 training examples" in check_settings(Settings(**{**GOOD.__dict__, "batch_size": 8}), n_train=4)[0]


def test_qlora_where_bitsandbytes_cannot_run_is_a_message(monkeypatch):
    monkeypatch.setitem(pg_module._QLORA_PROBLEM, "cpu", None)
    assert check_settings(Settings(**{**GOOD.__dict__, "method": "qlora"}), "cpu") == []
    # A device where the 4-bit layer fails: the real check runs and turns the error into a sentence.
    monkeypatch.delitem(pg_module._QLORA_PROBLEM, "meta", raising=False)
    problems = check_settings(Settings(**{**GOOD.__dict__, "method": "qlora"}), "meta")
    assert len(problems) == 1 and problems[0].startswith("QLoRA needs bitsandbytes") and "Choose LoRA" in problems[0]


def test_impossible_settings_raise_before_anything_is_loaded(pg, monkeypatch):
    monkeypatch.setattr(ftlab, "load_model", lambda *a, **k: pytest.fail("the model must not be loaded"))
    with pytest.raises(SettingsError, match="at least 1 optimizer step"):
        pg.run(steps=0)
    with pytest.raises(TypeError, match="unknown setting"):
        pg.settings(stepz=3)
    assert pg.rows == [] and not pg.runs_dir.exists()


def test_a_ci_run_gives_a_table_row_and_keeps_its_folder(pg):
    seen = []
    row = pg.run(on_step=seen.append, steps=3, batch_size=2, warmup=1)
    assert row["steps done"] == 3 and row["stopped"] == "max_steps"
    assert [r["step"] for r in seen if "loss" in r] == [1, 2, 3]  # on_step saw every step live
    assert math.isfinite(row["final train loss"]) and math.isfinite(row["final val loss"])
    assert row["final train loss"] == seen[-1]["loss"] and row["final val loss"] == seen[-1]["val_loss"]
    assert 0 <= row["task score"] <= 1 and row["seconds"] > 0 and row["peak MiB"] > 0
    table = pg.table()
    assert list(table.index) == ["001-lora"] and table.loc["001-lora", "warmup"] == 1
    folder = pg.runs_dir / "001-lora"
    saved = json.loads((folder / "playground.json").read_text())
    assert saved["row"] == row and saved["settings"]["warmup"] == 1
    assert (folder / "final" / "adapter_config.json").exists()  # the adapter is kept: the run can be reloaded
    assert (folder / "config.yaml").exists() and (folder / "history.jsonl").exists()

    # A later session finds the run again: same row, same curve.
    later = Playground(profile=pg.profile, runs_dir=pg.runs_dir)
    assert later.load_runs() == 1 and later.load_runs() == 0
    assert later.rows == [row]
    assert [h["loss"] for h in later.curves["001-lora"] if "loss" in h] == [h["loss"] for h in seen if "loss" in h]
    assert later._next_name(GOOD) == "002-lora"


def test_stop_ends_a_run_after_the_current_step(pg):
    def press_stop(record):
        if record.get("step") == 2:
            pg.stop()

    row = pg.run(on_step=press_stop, method="full", lr=1e-3, steps=6, batch_size=2)
    assert row["steps done"] == 2 and row["stopped"] == "stop button"
    assert math.isfinite(row["task score"])
    assert not (pg.runs_dir / row["run"] / "final").exists()  # full runs keep no weights unless asked
    row2 = pg.run(steps=2, batch_size=2)  # the next run starts with the flag cleared
    assert row2["steps done"] == 2 and row2["run"] == "002-lora"


def test_figure_draws_every_run(pg):
    pg.curves = {"a": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0, "val_loss": 2.5}],
                 "b": [{"step": 1, "loss": 2.0}]}
    assert len(pg.figure().axes[0].lines) == 2  # both training curves; b (the newest) has no validation
    assert len(pg.figure(highlight="a").axes[0].lines) == 3  # + the highlighted run's validation curve
    assert pg.figure_png().startswith(b"\x89PNG")


def test_panel_reports_bad_settings_runs_in_a_thread_and_stops(pg):
    pytest.importorskip("ipywidgets")
    from ftlab.ui import PlaygroundPanel

    panel = PlaygroundPanel(pg)
    panel.steps.value = 0
    assert panel.start() is False and "at least 1 optimizer step" in panel.status.value
    assert not pg.runs_dir.exists()

    panel.method.value = "full"
    assert panel.lr.value == pytest.approx(pg.profile.learning_rate) and panel.rank.disabled
    panel.method.value = "lora"
    panel.steps.value, panel.batch.value = 2, 2
    before = panel.plot.value
    assert panel.start() is True
    panel.wait(300)
    assert "001-lora done after 2 steps" in panel.status.value, panel.status.value
    assert "001-lora" in panel.table.value and panel.plot.value != before
    assert not panel.run_button.disabled and panel.stop_button.disabled

    # Stop: a long run is ended from outside its thread, as the Stop button does.
    panel.steps.value = 40
    assert panel.start() is True
    deadline = time.monotonic() + 120
    while not [h for h in pg.curves.get("002-lora", []) if "loss" in h] and time.monotonic() < deadline:
        time.sleep(0.05)
    panel.stop_button.click()
    panel.wait(300)
    assert pg.rows[-1]["stopped"] == "stop button" and pg.rows[-1]["steps done"] < 40, pg.rows[-1]
    assert "stopped by you" in panel.status.value


def test_panel_shows_a_failing_run_as_a_message(pg, monkeypatch):
    pytest.importorskip("ipywidgets")
    from ftlab.ui import PlaygroundPanel

    def broken(*a, **k):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ftlab, "load_model", broken)
    panel = PlaygroundPanel(pg)
    assert panel.start() is True
    panel.wait(60)
    assert "The run failed: RuntimeError: out of memory (simulated)" in panel.status.value
    assert not panel.run_button.disabled
