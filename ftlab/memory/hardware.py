"""Training targets: how much memory each device has, and how much a training process can really use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    """A training target: how much memory it has, and how much a training process can really use."""

    name: str
    total_gib: float
    usable_gib: float
    kind: str  # "cuda" | "cpu"
    note: str = ""


HARDWARE: dict[str, Hardware] = {h.name: h for h in [
    Hardware("cpu-8gb", 7.45, 5.0, "cpu", "laptop with 8 GB RAM; the OS, browser and Jupyter keep ~2.5 GiB"),
    Hardware("cpu-16gb", 14.9, 11.5, "cpu", "laptop with 16 GB RAM; the OS, browser and Jupyter keep ~3.5 GiB"),
    Hardware("cpu-32gb", 29.8, 25.5, "cpu", "workstation with 32 GB RAM"),
    Hardware("t4-16gb", 15.0, 14.5, "cuda", "NVIDIA T4 (Colab free tier); no bf16"),
    Hardware("rtx-3060-12gb", 12.0, 11.3, "cuda", "consumer GPU; the desktop may hold a few hundred MiB"),
    Hardware("rtx-4090-24gb", 23.6, 22.8, "cuda", "consumer GPU; the desktop may hold a few hundred MiB"),
    Hardware("l4-24gb", 22.0, 21.5, "cuda", "NVIDIA L4"),
    Hardware("a10g-24gb", 22.0, 21.5, "cuda", "NVIDIA A10G (AWS g5)"),
    Hardware("a100-40gb", 39.4, 38.8, "cuda", "NVIDIA A100 40 GB"),
    Hardware("a100-80gb", 79.1, 78.5, "cuda", "NVIDIA A100 80 GB"),
    Hardware("h100-80gb", 79.1, 78.5, "cuda", "NVIDIA H100 80 GB"),
    Hardware("h200-141gb", 139.8, 139.0, "cuda", "NVIDIA H200"),
    # 128 GB (119.2 GiB) of LPDDR5x shared by CPU and GPU. CUDA reports roughly the whole pool, but
    # the OS, desktop, page cache, the Python process itself and the data loader live in the same
    # memory; ~14 GiB for those is a realistic reserve, more with a desktop session and a browser.
    Hardware("dgx-spark", 119.2, 105.0, "cuda",
             "NVIDIA DGX Spark: 128 GB unified memory shared with the OS; ~105 GiB realistically usable for training"),
]}


def _target(device) -> tuple[str, Hardware | None]:
    if device is None or device == "cuda":
        return "cuda", None
    if device == "cpu":
        return "cpu", None
    if isinstance(device, Hardware):
        return device.kind, device
    key = str(device).lower()
    if key in HARDWARE:
        return HARDWARE[key].kind, HARDWARE[key]
    if key.startswith("cuda"):
        return "cuda", None
    raise ValueError(f"estimate_memory: unknown device {device!r}. Fix: 'cpu', 'cuda' or one of {', '.join(HARDWARE)}.")

