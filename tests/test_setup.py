"""Profiles, pins and the doctor: the course's spine."""

import importlib
import math
import re
import tomllib
from pathlib import Path

import pytest

import ftlab
from ftlab import profiles
from ftlab.preflight import system

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_switch_by_environment(monkeypatch):
    monkeypatch.setenv("FTLAB_PROFILE", "ci")
    assert ftlab.get_profile().model_name == "tiny"
    monkeypatch.setenv("FTLAB_PROFILE", "laptop")
    assert ftlab.get_profile().model_name == "smollm2-135m-instruct"
    monkeypatch.delenv("FTLAB_PROFILE")
    assert ftlab.get_profile().name == "laptop"  # the default is the real model on a CPU
    assert ftlab.get_profile("gpu").dtype is None  # bf16 chosen on CUDA by load_model
    assert ftlab.get_profile("ci", max_steps=2).max_steps == 2
    with pytest.raises(ValueError, match="Choose one of: ci, laptop, gpu"):
        profiles.get_profile("huge")


def test_ci_profile_is_smaller_than_laptop():
    ci, laptop = profiles.get_profile("ci"), profiles.get_profile("laptop")
    for f in ("max_steps", "train_size", "eval_size"):
        assert getattr(ci, f) < getattr(laptop, f)


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_every_direct_dependency_pinned_once_and_consistent():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    constraints = _constraints()
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[\w,\-]+\])?==([\w.]+)", dep)   # an extra, as in name[server]==x, is allowed
        assert m, f"{dep!r} in pyproject.toml is not pinned with =="
        name = m.group(1).lower().replace("_", "-")
        assert constraints.get(name) == m.group(2), f"{name}: pyproject {m.group(2)} vs constraints {constraints.get(name)}"
    assert constraints["torch"] == "2.13.0"
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_doctor_passes_here_and_reports_a_mismatch(monkeypatch):
    report = system.doctor(verbose=False)
    assert report.ok, str(report)
    monkeypatch.setattr(system, "_pins", lambda: {"torch": "0.0.1"})
    bad = system.doctor(verbose=False, check_model=False)
    assert not bad.ok
    (problem,) = bad.problems
    assert problem.name == "torch" and "pip install torch==0.0.1" in problem.fix


def test_cli_doctor_exit_code():
    from ftlab.cli import main

    assert main(["doctor"]) == 0


def test_every_public_name_resolves():
    for name in ftlab.__all__:
        assert getattr(ftlab, name) is not None, name
    importlib.import_module("ftlab.training")  # importing the submodule must not shadow the function

    assert callable(ftlab.train) and not isinstance(ftlab.train, type(ftlab))


def test_doctor_prices_bf16_on_a_cpu_and_setup_check_does_not(monkeypatch):
    """On a CPU-only machine ``ftlab doctor`` measures bf16 matrix products against fp32 (CPUs differ by a
    lot here, so the course states no fixed number); every notebook's quick set-up check
    skips that half second."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = next(c for c in system.doctor(verbose=False, check_model=False).checks if c.name == "bf16 on this CPU")
    ratio, bf16, fp32 = map(float, re.match(r"matrix products ([\d.e+-]+)x fp32's speed \(([\d.e+-]+) vs ([\d.e+-]+) "
                                            r"GFLOP/s\)", line.detail).groups())
    assert bf16 > 0 and fp32 > 0 and math.isclose(ratio, bf16 / fp32, rel_tol=0.01)  # 3-4 significant digits each
    assert "bf16 on this CPU" not in [c.name for c in ftlab.setup_check(verbose=False).checks]
