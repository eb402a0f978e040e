"""``make gpu-check`` / ``ftlab doctor --gpu``: a five-minute preflight proving that a GPU runs the course.

On a CUDA machine it runs the gpu profile's paths end to end on SmolLM2-135M (the tiny model when the
real one is not installed) and prints a pass/fail table with numbers:

* bf16 LoRA steps, QLoRA through ``BitsAndBytesConfig`` + peft, 8-bit AdamW, full fine-tuning, generation;
* the estimator against ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` on 6 configurations,
  with the error of each;
* the unified-memory facts (DGX Spark): what CUDA reports free against the OS's ``MemAvailable``.

Without a GPU it says so plainly, runs its CPU-side self-test (the estimate against MemTracker on the
tiny model, the table, the memory facts) and exits 0.

Usage: ``python -m ftlab.preflight.gpu_check [--budget-s 300]``.
"""

from __future__ import annotations

import argparse
import time

from ftlab.preflight.checks import Check, meminfo

TOLERANCE_PCT = 10.0  # an estimate row passes within +-10 % of the measured max_memory_allocated


def format_table(rows: list[Check]) -> str:
    w = max([len(r.name) for r in rows] + [10])
    lines = [f"{'check':<{w}}  result  {'time':>6}  detail", "-" * (w + 60)]
    for r in rows:
        lines.append(f"{r.name:<{w}}  {'PASS' if r.ok else 'FAIL':<6}  {r.seconds:>5.1f}s  {r.detail}")
    n_ok = sum(r.ok for r in rows)
    lines.append("-" * (w + 60))
    lines.append(f"{n_ok}/{len(rows)} passed")
    return "\n".join(lines)


def run_checks(checks, budget_s: float, clock=time.monotonic) -> list[Check]:
    """Run ``(name, fn)`` checks in order; an exception is a FAIL row, and checks that would start after
    the time budget is spent are reported as skipped (FAIL), so the whole run stays within the budget."""
    rows, start = [], clock()
    for name, fn in checks:
        if clock() - start > budget_s:
            rows.append(Check(name, False, f"skipped: the {budget_s:.0f} s budget is spent"))
            continue
        t0 = clock()
        try:
            row = fn()
        except Exception as e:  # a failing path is a result to report, not a crash
            row = Check(name, False, f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
        row.name, row.seconds = name, clock() - t0
        rows.append(row)
    return rows


def compare(name: str, estimated: int, measured: int, reserved_est: int | None = None, reserved: int | None = None) -> Check:
    """An estimate-vs-measurement row: the error in % of the measurement (allocated decides pass/fail)."""
    err = 100.0 * (estimated - measured) / measured
    detail = f"estimate {estimated / 2**20:8.1f} MiB, measured {measured / 2**20:8.1f} MiB, error {err:+5.1f} %"
    nums = dict(estimated=estimated, measured=measured, error_pct=err)
    if reserved is not None and reserved_est is not None:
        rerr = 100.0 * (reserved_est - reserved) / reserved
        detail += f"; reserved est {reserved_est / 2**20:.1f} vs {reserved / 2**20:.1f} MiB ({rerr:+.1f} %)"
        nums.update(reserved_estimated=reserved_est, reserved=reserved, reserved_error_pct=rerr)
    return Check(name, abs(err) <= TOLERANCE_PCT, detail, numbers=nums)


# ---------------------------------------------------------------------------- memory facts


def meminfo_available(text: str | None = None) -> int | None:
    """The OS's ``MemAvailable`` in bytes (Linux ``/proc/meminfo``), or None elsewhere."""
    return meminfo(text).get("MemAvailable")


def unified_memory_row(cuda=None, meminfo_text: str | None = None) -> Check:
    """CUDA's free memory (``cudaMemGetInfo``) against the OS's ``MemAvailable``.

    On a DGX Spark both describe one 128 GB pool: CUDA counts the page cache as used, the OS counts it
    as available, so the two differ, and the OS number is the one training can grow into after
    ``sync; echo 3 > /proc/sys/vm/drop_caches``. On a discrete GPU they are unrelated pools."""
    import torch

    cuda = cuda or torch.cuda
    free, total = cuda.mem_get_info()
    name = cuda.get_device_name(0)
    avail = meminfo_available(meminfo_text)
    unified = "GB10" in name or "Spark" in name
    detail = f"{name}: cudaMemGetInfo free {free / 2**30:.1f} of {total / 2**30:.1f} GiB"
    if avail is not None:
        detail += f"; OS MemAvailable {avail / 2**30:.1f} GiB"
    if unified:
        detail += " (unified memory: one pool shared with the OS)"
        return Check("memory: CUDA free vs OS", avail is not None and free > 0, detail,
                   numbers=dict(cuda_free=free, cuda_total=total, os_available=avail, unified=True))
    return Check("memory: CUDA free vs OS", free > 0, detail + " (discrete GPU memory)",
               numbers=dict(cuda_free=free, cuda_total=total, os_available=avail, unified=False))


# ---------------------------------------------------------------------------- the GPU checks


def _small_model(dtype):
    from ftlab.models import SMOLLM2, load_model

    try:
        return load_model(SMOLLM2, device="cuda", dtype=dtype)
    except Exception:  # the real model is not installed: the tiny one still exercises every path
        return load_model("tiny", device="cuda", dtype=dtype)


def _train_steps(model, opt, steps: int = 3, batch: int = 4, seq: int = 128) -> list[float]:
    import torch

    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device="cuda")
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _steps_row(name, model, opt) -> Check:
    import math

    losses = _train_steps(model, opt)
    ok = all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    return Check(name, ok, "losses " + " -> ".join(f"{x:.3f}" for x in losses) + ("" if ok else " (not decreasing)"))


def check_bf16_lora() -> Check:
    import torch

    from ftlab.training import build_optimizer, prepare_model

    model, _ = _small_model(torch.bfloat16)
    model = prepare_model(model, "lora", lora_rank=8)
    return _steps_row("bf16 LoRA", model, build_optimizer(model, "adamw", lr=1e-3))


def check_qlora() -> Check:
    from ftlab.models import SMOLLM2
    from ftlab.training import build_optimizer, prepare_model
    from ftlab.training import load_model_4bit

    model, _ = load_model_4bit(SMOLLM2)
    model = prepare_model(model, "qlora", lora_rank=8)
    return _steps_row("QLoRA (BitsAndBytesConfig + peft)", model, build_optimizer(model, "adamw", lr=1e-3))


def check_adamw_8bit() -> Check:
    import bitsandbytes as bnb
    import torch

    model, _ = _small_model(torch.bfloat16)
    opt = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return _steps_row("8-bit AdamW (bitsandbytes)", model, opt)


def check_full_ft() -> Check:
    import torch

    from ftlab.training import build_optimizer, prepare_model

    model, _ = _small_model(torch.bfloat16)
    model = prepare_model(model, "full")
    return _steps_row("full fine-tuning (bf16)", model, build_optimizer(model, "adamw", lr=1e-4))


def check_generation() -> Check:
    import torch

    model, tok = _small_model(torch.bfloat16)
    ids = tok("The capital of France is", return_tensors="pt").to("cuda")
    model.generate(**ids, max_new_tokens=2, do_sample=False)  # warm-up: CUDA kernels load on first use
    torch.cuda.synchronize()
    t0 = time.monotonic()
    out = model.generate(**ids, max_new_tokens=32, do_sample=False)
    n = out.shape[1] - ids["input_ids"].shape[1]
    dt = time.monotonic() - t0
    return Check("generation", n > 0, f"{n} tokens in {dt:.2f} s ({n / dt:.0f} tok/s): {tok.decode(out[0][-n:])[:60]!r}")


ESTIMATE_CONFIGS = [  # (method, batch, seq, checkpointing): bench configurations on the real model
    ("full", 4, 128, False), ("full", 4, 256, True), ("lora", 8, 128, False),
    ("lora", 8, 256, True), ("qlora", 4, 128, False), ("freeze", 4, 128, False),
]


def check_estimate(method: str, batch: int, seq: int, checkpointing: bool) -> Check:
    import torch

    from ftlab.memory.cuda import reserved_bytes
    from ftlab.training.measure import SMOL, Config, build, cuda_baseline, estimate_for, make_batch, measure_training_peak

    cfg = Config(SMOL, method, batch, seq, checkpointing=checkpointing)
    allocated_before, reserved_before = cuda_baseline()
    model, opt = build(cfg, "cuda")
    data = make_batch(model.config.vocab_size, batch, seq, cfg.padded, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    measured, _ = measure_training_peak(model, opt, data)
    reserved = torch.cuda.max_memory_reserved()
    est = estimate_for(cfg, "cuda")
    del model, opt, data
    row = compare(cfg.label(), est.tensor_bytes, measured - allocated_before, reserved_bytes(est),
                  reserved - reserved_before)
    row.detail += f" (above {allocated_before / 2**20:.0f} MiB left by earlier checks)"
    return row


def gpu_checks():
    checks = [("bf16 LoRA", check_bf16_lora), ("QLoRA", check_qlora), ("8-bit AdamW", check_adamw_8bit),
              ("full fine-tuning", check_full_ft), ("generation", check_generation)]
    checks += [(f"estimate {m} b{b} s{s}{' ckpt' if c else ''}", (lambda m=m, b=b, s=s, c=c: check_estimate(m, b, s, c)))
               for m, b, s, c in ESTIMATE_CONFIGS]
    checks.append(("memory: CUDA free vs OS", unified_memory_row))
    return checks


# ---------------------------------------------------------------------------- without a GPU


def self_test() -> list[Check]:
    """The CPU side: estimate vs MemTracker on the tiny model (same code path as the GPU rows), the
    table logic, and the OS memory facts."""
    import torch

    from ftlab.training.measure import TINY, Config, build, estimate_for, make_batch, measure_training_peak

    def estimate_row(method):
        def fn():
            torch.manual_seed(0)
            cfg = Config(TINY, method, 2, 48)
            model, opt = build(cfg, "cpu")
            measured, _ = measure_training_peak(model, opt, make_batch(model.config.vocab_size, 2, 48, cfg.padded))
            return compare(cfg.label(), estimate_for(cfg, "cpu").tensor_bytes, measured)
        return fn

    def table_row():
        fake = [Check("a", True, "x"), Check("b", False, "y")]
        table = format_table(fake)
        return Check("table and budget logic", "1/2 passed" in table and "FAIL" in table, "format_table / run_checks")

    def os_row():
        avail = meminfo_available()
        return Check("memory: OS MemAvailable", avail is None or avail > 0,
                   "not Linux" if avail is None else f"MemAvailable {avail / 2**30:.1f} GiB")

    return run_checks([("estimate vs MemTracker: tiny full", estimate_row("full")),
                       ("estimate vs MemTracker: tiny lora", estimate_row("lora")),
                       ("table", table_row), ("os memory", os_row)], budget_s=600)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(prog="python -m ftlab.preflight.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting new checks after this many seconds")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: the GPU checks were NOT run. Running the CPU-side self-test instead.")
        rows = self_test()
        print(format_table(rows))
        print("(no GPU: exit 0; run this on the workshop's GPU machine before the workshop)")
        return 0
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
    rows = run_checks(gpu_checks(), budget_s=a.budget_s)
    print(format_table(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
