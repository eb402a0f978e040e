"""Does it fit, how far can it be pushed, and what does each change save? Plus the classic 7B exercise."""

from __future__ import annotations

from dataclasses import dataclass

from ftlab.memory.architectures import get_architecture
from ftlab.memory.breakdown import GiB, MemoryEstimate, _fmt
from ftlab.memory.estimator import estimate_memory
from ftlab.memory.hardware import HARDWARE, Hardware, _target


@dataclass
class Advice:
    """Does a configuration fit a device, how far can it be pushed, and what each change saves."""

    estimate: MemoryEstimate
    device: Hardware
    fits: bool
    usable_bytes: int
    largest_batch_size: int
    largest_seq_len: int
    changes: list[tuple[str, int, int]]  # (change, new total bytes, saving in bytes)

    def __str__(self) -> str:
        e = self.estimate
        lines = [f"{e.model} on {self.device.name}: {_fmt(e.total_bytes)} needed, {_fmt(self.usable_bytes)} usable -> "
                 + ("FITS" if self.fits else "DOES NOT FIT") + f" (peak during {e.peak_phase})",
                 f"  largest batch size at seq {e.settings['seq_len']}: {self.largest_batch_size or 'none (even batch 1 does not fit)'}",
                 f"  largest sequence length at batch {e.settings['batch_size']}: {self.largest_seq_len or 'none'}"]
        if self.changes:
            lines.append("  what each change does (alone):")
            for name, total, saving in self.changes:
                ok = "fits" if total <= self.usable_bytes else "still too big"
                effect = f"saves {_fmt(saving):>11}" if saving >= 0 else f"COSTS {_fmt(-saving):>11}"
                lines.append(f"    {name:<42} {_fmt(total):>11}  {effect}  ({ok})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        return "<pre>" + html.escape(str(self)) + "</pre>"


def _largest(fn, lo: int, hi: int, usable: int) -> int:
    """Largest x in [lo, hi] with fn(x) <= usable (fn increasing); 0 if none."""
    if fn(lo) > usable:
        return 0
    x = lo
    while x * 2 <= hi and fn(x * 2) <= usable:
        x *= 2
    a, b = x, min(x * 2, hi)  # fn(a) fits, fn(b) may not
    while b - a > 1:
        mid = (a + b) // 2
        if fn(mid) <= usable:
            a = mid
        else:
            b = mid
    return b if fn(b) <= usable else a


def advise(model, device="dgx-spark", max_seq_len: int = 131072, **settings) -> Advice:
    """Fit check on ``device`` plus the largest batch / sequence length and the saving of each change.

    Example:
        >>> a = advise("llama-3.1-8b", "rtx-4090-24gb", method="qlora", param_dtype="bf16", batch_size=4, seq_len=2048)
        >>> a.fits, a.changes[0][0]
        (False, 'gradient checkpointing')
    """
    kind, hw = _target(device)
    if hw is None:
        raise ValueError(f"advise: give a hardware preset, one of {', '.join(HARDWARE)}.")
    settings["device"] = hw.name
    est = estimate_memory(model, **settings)
    usable = int(hw.usable_gib * GiB)
    seq = est.settings["seq_len"]
    bs = est.settings["batch_size"]
    largest_b = _largest(lambda b: estimate_memory(model, **{**settings, "batch_size": b}).total_bytes, 1, 4096, usable)
    largest_s = _largest(lambda s: estimate_memory(model, **{**settings, "seq_len": s}).total_bytes, 1, max_seq_len, usable)
    trials = []
    s = est.settings
    if not s["gradient_checkpointing"]:
        trials.append(("gradient checkpointing", {"gradient_checkpointing": True}))
    if s["method"] == "full":
        trials.append(("LoRA (r=16, all linear layers)", {"method": "lora"}))
    if s["method"] in ("full", "lora"):
        trials.append(("QLoRA (NF4 base + LoRA)", {"method": "qlora", "quantization": "nf4-dq"}))
    if s["optimizer"] == "adamw" and kind == "cuda" and s["method"] in ("full", "freeze"):
        trials.append(("8-bit AdamW", {"optimizer": "adamw_8bit"}))
    if s["loss"] == "full":
        trials.append(("chunked loss (1024 tokens)", {"loss": "chunked"}))
    if s["param_dtype"] == "fp32" and not s["mixed_precision"] and kind == "cuda":
        trials.append(("bf16 weights", {"param_dtype": "bf16"}))
    if bs > 1:
        trials.append((f"batch {bs} -> {bs // 2} (2x gradient accumulation)", {"batch_size": bs // 2}))
    changes = []
    for name, ch in trials:
        try:
            new = estimate_memory(model, **{**settings, **ch}).total_bytes
        except ValueError:
            continue
        changes.append((name, new, est.total_bytes - new))
    changes.sort(key=lambda c: -c[2])
    return Advice(estimate=est, device=hw, fits=est.total_bytes <= usable, usable_bytes=usable,
                  largest_batch_size=largest_b, largest_seq_len=largest_s, changes=changes)


# --------------------------------------------------------------------------- the classic exercise


def worked_example_7b(model: str = "llama-2-7b", batch_size: int = 4, seq_len: int = 2048) -> list[tuple[str, float, str]]:
    """"How much memory to fine-tune a 7B model in FP16 with gradient checkpointing, seq 2048, batch 4?"

    The usual recipe: fp16 mixed precision (fp32 master weights, autocast to fp16), AdamW, gradient
    checkpointing, SDPA attention, no padding. Returns rows ``(term, GiB, how it is computed)``:
    every term first, then the sum of all terms (which never are all alive at once) and the real
    peak from :func:`estimate_memory`, with the moment it happens.

    Example:
        >>> rows = worked_example_7b()
        >>> rows[-1][0].startswith("peak")
        True
    """
    arch = get_architecture(model)
    est = estimate_memory(arch, method="full", batch_size=batch_size, seq_len=seq_len, param_dtype="fp32",
                          mixed_precision="fp16", optimizer="adamw", gradient_checkpointing=True, padded=False, device="cuda")
    P = arch.num_parameters()
    T = batch_size * seq_len
    H, V, L = arch.hidden, arch.vocab, arch.layers
    lin = L * sum(o * i for o, i in arch.linear_shapes().values())
    layer = next(c for c in est.components if c.name.startswith("activations: MLP")).bytes / max(L, 1)
    layer += (next(c for c in est.components if c.name.startswith("activations: attention")).bytes
              + next(c for c in est.components if c.name.startswith("activations: norms")).bytes) / max(L, 1)
    terms = [
        ("fp32 master weights", 4 * P, f"{P / 1e9:.2f}B params x 4 B"),
        ("fp32 gradients", 4 * P, f"{P / 1e9:.2f}B x 4 B"),
        ("AdamW states (m, v)", 8 * P, f"{P / 1e9:.2f}B x 2 x 4 B"),
        ("fp16 weight copies made by autocast", 2 * (lin + V * H), "Linear weights + lm_head x 2 B, held during the forward"),
        ("checkpoints: one hidden state per layer", L * T * H * 4, f"{L} layers x {T} tokens x {H} x 4 B (fp32 residual stream)"),
        ("one layer recomputed in backward", layer, "everything a layer keeps for backward (q, k, v, MLP, norms)"),
        ("logits + fp32 cross-entropy buffers", 3 * T * V * 4, f"3 x {T} tokens x {V} vocab x 4 B at the start of backward"),
    ]
    rows = [("parameters (billions)", P / 1e9, f"{L} layers x {arch.layer_parameters() / 1e6:.1f}M + embeddings")]
    rows += [(name, b / GiB, how) for name, b, how in terms]
    rows.append(("sum of all terms (never all alive at once)", sum(b for _, b, _ in terms) / GiB, "the naive answer"))
    alive = ", ".join(f"{i.name} {i.bytes / GiB:.1f}" for i in est.items if i.bytes > 0.05 * GiB and i.category != "CUDA overhead")
    rows.append((f"peak: {est.peak_phase}", est.tensor_bytes / GiB, f"alive then (GiB): {alive}"))
    return rows


def format_worked_example(rows) -> str:
    return "\n".join(f"{name:<52} {gib:>9.2f}  {how}" for name, gib, how in rows)
