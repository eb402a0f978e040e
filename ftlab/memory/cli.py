"""``ftlab estimate``: the estimator on the command line."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ftlab.memory.advice import advise
from ftlab.memory.architectures import ARCHITECTURES
from ftlab.memory.estimator import estimate_memory
from ftlab.memory.step import ATTENTIONS, ESTIMATOR_METHODS, ESTIMATOR_OPTIMIZERS
from ftlab.memory.hardware import HARDWARE
from ftlab.memory.inference import estimate_inference_memory


def cli_main(argv: list[str] | None = None) -> int:
    """``ftlab estimate --model llama-3.1-8b --method qlora --batch-size 4 --seq-len 2048 --device dgx-spark``."""
    p = argparse.ArgumentParser(prog="ftlab estimate", description="Predict peak training (or inference) memory, term by term.")
    p.add_argument("--model", required=True, help=f"table key ({', '.join(sorted(ARCHITECTURES))}), 'tiny', a folder or a config id")
    p.add_argument("--method", default="full", choices=ESTIMATOR_METHODS)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weight storage dtype")
    p.add_argument("--mixed-precision", default=None, choices=["bf16", "fp16"])
    p.add_argument("--quantization", default=None, choices=["nf4", "nf4-dq", "int8"])
    p.add_argument("--optimizer", default="adamw", choices=ESTIMATOR_OPTIMIZERS)
    p.add_argument("--optimizer-impl", default="fused", choices=["fused", "foreach", "for-loop"])
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-targets", default="all-linear")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--trainable-layers", type=int, default=None)
    p.add_argument("--attention", default="sdpa", choices=ATTENTIONS)
    p.add_argument("--loss", default="full", choices=["full", "trained", "chunked"],
                   help="full: logits at every position (transformers); trained: only at --trained-tokens positions (ftlab.train)")
    p.add_argument("--trained-tokens", type=int, default=None, help="with --loss trained: positions with a label per micro-batch")
    p.add_argument("--no-padding", action="store_true", help="batches without padding (packed / equal length)")
    p.add_argument("--device", default="cuda", help=f"cpu, cuda or one of {', '.join(HARDWARE)}")
    p.add_argument("--advise", action="store_true", help="also: largest batch/sequence that fits and what each change saves")
    p.add_argument("--inference", action="store_true", help="serving memory (weights + KV cache) instead of training")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    a = p.parse_args(argv)
    try:
        if a.inference:
            est = estimate_inference_memory(a.model, batch_size=a.batch_size, context_len=a.seq_len,
                                            param_dtype=a.dtype, quantization=a.quantization, device=a.device)
        else:
            kw = dict(method=a.method, batch_size=a.batch_size, seq_len=a.seq_len, param_dtype=a.dtype,
                      mixed_precision=a.mixed_precision, quantization=a.quantization, optimizer=a.optimizer,
                      optimizer_impl=a.optimizer_impl, gradient_checkpointing=a.checkpointing, lora_rank=a.lora_rank,
                      lora_targets=a.lora_targets, lora_dropout=a.lora_dropout, trainable_layers=a.trainable_layers,
                      attention=a.attention, loss=a.loss, padded=not a.no_padding)
            est = estimate_memory(a.model, device=a.device, trained_tokens=a.trained_tokens, **kw)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    if a.json:
        print(json.dumps({"model": est.model, "settings": est.settings, "total_bytes": est.total_bytes,
                          "peak_phase": est.peak_phase, "items": [asdict(i) for i in est.items], "phases": est.phases}, indent=2))
        return 0
    print(est)
    if a.advise and not a.inference:
        if est.device is None:
            print("\n(--advise needs a hardware preset as --device, e.g. --device dgx-spark)")
        else:
            print()
            if a.loss == "trained":  # the advice varies the batch, so a fixed count of trained tokens cannot follow it
                print("(the advice below assumes --loss full: an upper bound for ftlab.train)")
                kw["loss"] = "full"
            print(advise(a.model, a.device, **kw))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main())
