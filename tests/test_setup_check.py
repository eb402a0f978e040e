"""ftlab.setup_check: the quick check in every notebook's set-up cell. One line when all is well;
a fix per problem otherwise; never an exception."""

import importlib.metadata as md

import ftlab
from ftlab import models
from ftlab.preflight import system


def _device_ok(report):  # this machine's device and free memory are not under test here
    report.checks.append(system.Check("device", True, "CPU only (2 cores): the laptop profile runs"))


def test_all_well_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(system, "_check_device", _device_ok)
    report = ftlab.setup_check()
    out = capsys.readouterr().out.strip()
    assert report.ok and not [c for c in report.checks if not c.ok], str(report)
    assert out.count("\n") == 0 and out.startswith("✅ set-up ok")
    assert f"transformers {md.version('transformers')}" in out and "CPU only (2 cores)" in out


def test_a_device_warning_is_shown_with_its_fix(capsys, monkeypatch):
    monkeypatch.setattr(system, "meminfo", lambda: {"MemTotal": 8 * 2**30, "MemAvailable": 2**30})
    ftlab.setup_check()
    out = capsys.readouterr().out
    assert "system memory: 8.0 GiB total, 1.0 GiB available" in out and "Close other programs" in out


def test_pins_come_from_the_installed_metadata():
    pins = system._pins()
    assert pins["transformers"] == md.version("transformers")  # the one copy of the pins: pyproject
    assert pins["torch"] == md.version("torch").split("+")[0]


def test_a_version_mismatch_warns_with_the_fix(capsys, monkeypatch):
    real = md.version
    monkeypatch.setattr(system.md, "version", lambda name: "5.99.0" if name == "transformers" else real(name))
    report = ftlab.setup_check()
    out = capsys.readouterr().out
    assert not report.ok
    assert "⚠️ set-up check" in out and "the notebook may still run" in out
    assert "transformers: 5.99.0 (course pins" in out
    assert f"Fix: pip install transformers=={system._pins()['transformers']} -c constraints.txt" in out


def test_missing_package_widgets_and_model_each_get_a_fix(capsys, monkeypatch, tmp_path):
    real = md.version

    def version(name):
        if name == "peft":
            raise md.PackageNotFoundError(name)
        return real(name)

    def broken_cache(*args, **kwargs):
        raise models.ModelCacheError("ftlab_manifest.json missing")

    monkeypatch.setattr(system.md, "version", version)
    monkeypatch.setattr(system.sys, "prefix", str(tmp_path))  # no JupyterLab widget extension there
    monkeypatch.setattr(models, "verify_cache", broken_cache)
    ftlab.setup_check()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("⚠️ set-up check: 3 thing(s)")
    problems = {line.split(":")[0].strip(" -"): line for line in lines[1:]}
    assert "Run `make setup`" in problems["peft"]
    assert "jupyterlab_widgets" in problems["widgets"] and "restart JupyterLab" in problems["widgets"]
    assert "ftlab prefetch" in problems["converted model"]


def test_a_check_that_crashes_is_reported_not_raised(capsys, monkeypatch):
    def no_torch(report):
        raise ImportError("torch is broken")

    monkeypatch.setattr(system, "_check_device", no_torch)
    report = ftlab.setup_check()
    out = capsys.readouterr().out
    assert not report.ok and "could not run (ImportError: torch is broken)" in out and "ftlab doctor" in out


def test_quiet_mode_prints_nothing(capsys):
    ftlab.setup_check(verbose=False)
    assert capsys.readouterr().out == ""
