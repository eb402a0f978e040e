"""Is ftlab.memory's estimate right? Measure real peak training memory and compare.

``python -m ftlab.bench.memory`` runs one real training configuration after another (tiny model and
SmolLM2-135M; full / LoRA / QLoRA / freeze; with and without gradient checkpointing; AdamW and SGD;
several batch sizes and sequence lengths; transformers' loss with logits at every position, and
ftlab.train's with the output layer only where a label exists), two full steps each (forward, backward, optimizer step:
the second step is the steady state, because AdamW creates its states lazily in the first), and
prints per configuration:

* the estimate from :func:`ftlab.memory.estimate_memory` (config only, no weights),
* the measured peak: on CPU every tensor storage created, counted by
  ``torch.distributed._tools.mem_tracker.MemTracker`` (exact tensor accounting: it sees every
  allocation through the dispatcher and every free through storage weak references); on CUDA
  ``torch.cuda.max_memory_allocated``,
* the error in percent, and what accelerate's ``estimate-memory`` method says for the same model
  (weights x 4 for AdamW training, whatever the method, batch or sequence length).

The last line is ``max_abs_error_pct=X median_abs_error_pct=Y configs=N``.
Options: ``--only tiny`` (the fast half), ``--device cuda``, ``--list``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from ftlab.training.loss import count_trained_tokens
from ftlab.memory.breakdown import _fmt
from ftlab.training.measure import (SMOL, TINY, Config, build, cuda_baseline, estimate_for, make_batch,
                                    measure_training_peak)


CONFIGS = [
    Config(TINY, "full", 4, 64),
    Config(TINY, "full", 8, 128),
    Config(TINY, "full", 4, 128, optimizer="sgd"),
    Config(TINY, "full", 8, 128, checkpointing=True),
    Config(TINY, "full", 2, 256, optimizer="sgd_momentum", padded=False),
    Config(TINY, "full", 4, 128, attention="eager"),
    Config(TINY, "lora", 4, 128),
    Config(TINY, "lora", 8, 64, checkpointing=True),
    Config(TINY, "lora", 4, 128, lora_targets=["q_proj", "v_proj"], lora_dropout=0.0, padded=False),
    Config(TINY, "qlora", 4, 128),
    Config(TINY, "qlora", 4, 128, checkpointing=True),
    Config(TINY, "freeze", 8, 128, trainable_layers=1),
    Config(SMOL, "full", 1, 64, padded=False),
    Config(SMOL, "full", 4, 64),
    Config(SMOL, "full", 4, 64, optimizer="sgd"),
    Config(SMOL, "full", 4, 128, checkpointing=True),
    Config(SMOL, "full", 2, 128, optimizer="sgd_momentum", checkpointing=True),
    Config(SMOL, "lora", 4, 64),
    Config(SMOL, "lora", 8, 128),
    Config(SMOL, "lora", 8, 128, checkpointing=True),
    Config(SMOL, "lora", 4, 128, lora_targets=["q_proj", "v_proj"], lora_dropout=0.0, attention="eager"),
    Config(SMOL, "qlora", 4, 64),
    Config(SMOL, "qlora", 4, 128, checkpointing=True),
    Config(SMOL, "qlora", 8, 64, optimizer="sgd"),
    Config(SMOL, "freeze", 4, 128),
    Config(SMOL, "freeze", 8, 64, optimizer="sgd"),
    # ftlab.train's own loss: the output layer only where a label exists (TrainConfig.trained_logits_only)
    Config(TINY, "full", 8, 128, trained_fraction=0.2),
    Config(TINY, "lora", 8, 128, trained_fraction=0.2),
    Config(SMOL, "full", 4, 128, trained_fraction=0.2),
    Config(SMOL, "full", 4, 128, checkpointing=True, trained_fraction=0.5),
    Config(SMOL, "lora", 8, 128, trained_fraction=0.2),
    Config(SMOL, "qlora", 4, 128, trained_fraction=0.2),
]


def accelerate_training_bytes(model) -> int:
    """accelerate's ``estimate-memory`` figure for "Training using Adam", fp32: the model's bytes x 4."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total, _ = calculate_maximum_sizes(base)
    return max(estimate_training_usage(total, "float32").values())


def run(configs, device: str = "cpu", out=sys.stdout) -> list[dict]:
    from tqdm.auto import tqdm

    rows = []
    print(f"{'configuration':<44} {'estimate':>11} {'measured':>11} {'error':>8}  {'accelerate':>11}  "
          f"{'estimated peak phase':<34} {'measured peak':<18} time", file=out)
    for cfg in tqdm(configs, desc="memory bench", file=sys.stderr):
        torch.manual_seed(0)
        t0 = time.time()
        # on a GPU, what earlier configurations left allocated is not this one's memory (on a CPU the tracker
        # sees only this run's tensors)
        allocated_before = cuda_baseline()[0] if device.startswith("cuda") else 0
        model, opt = build(cfg, device)
        batch = make_batch(model.config.vocab_size, cfg.batch_size, cfg.seq_len, cfg.padded, device=device,
                           trained_fraction=cfg.trained_fraction)
        trained_only = cfg.trained_fraction is not None
        measured, where = measure_training_peak(model, opt, batch, trained_logits_only=trained_only)
        measured -= allocated_before
        acc = accelerate_training_bytes(model)
        est = estimate_for(cfg, device, count_trained_tokens(batch["labels"]) if trained_only else None)
        predicted = est.tensor_bytes
        err = 100.0 * (predicted - measured) / measured
        rows.append(dict(config=cfg.label(), estimate=predicted, measured=measured, error_pct=err, accelerate=acc,
                         est_phase=est.peak_phase, measured_phase=where, seconds=time.time() - t0))
        print(f"{cfg.label():<44} {_fmt(predicted):>11} {_fmt(measured):>11} {err:>+7.1f}%  {_fmt(acc):>11}  "
              f"{est.peak_phase:<34} {where:<18} {rows[-1]['seconds']:4.0f}s", file=out, flush=True)
        del model, opt, batch
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["tiny", "smollm2"], help="run only the configurations of one model")
    p.add_argument("--device", default=None, help="cpu (MemTracker) or cuda (max_memory_allocated); default: cuda if present")
    p.add_argument("--select", default=None, metavar="I:J", help="run only configurations I..J-1 (as numbered by --list)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    a = p.parse_args(argv)
    configs = [c for c in CONFIGS if a.only is None or (c.model == TINY) == (a.only == "tiny")]
    if a.select:
        i, _, j = a.select.partition(":")
        configs = configs[int(i or 0):int(j) if j else None]
    if a.list:
        for i, c in enumerate(configs):
            print(f"{i:>3}  {c.label()}")
        return 0
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    print(f"ftlab memory bench: device={device}, torch {torch.__version__}, {len(configs)} configurations, 2 training steps each")
    from ftlab.memory.published import (FIXTURE, LITGPT_FIXTURE, compare_litgpt_qlora, compare_peft_metamathqa,
                                        format_comparison, format_litgpt_comparison)

    if FIXTURE.exists():  # published GPU measurements (no GPU needed): see ftlab/memory/published.py
        print(format_comparison(compare_peft_metamathqa()) + "\n")
    if LITGPT_FIXTURE.exists():
        print(format_litgpt_comparison(compare_litgpt_qlora()) + "\n")
    t0 = time.time()
    rows = run(configs, device)
    errs = [abs(r["error_pct"]) for r in rows]
    under = [r for r in rows if r["error_pct"] < -5]
    print(f"\nwall time {time.time() - t0:.0f} s (CPU shared with other jobs: times are inflated)")
    print(f"within +-10 %: {sum(e <= 10 for e in errs)}/{len(rows)}; under-predicting by more than 5 %: {len(under)}")
    print(f"max_abs_error_pct={max(errs):.1f} median_abs_error_pct={statistics.median(errs):.1f} configs={len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
