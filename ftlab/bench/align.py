"""ftlab's DPO step against TRL's DPOTrainer step: same model, data, settings. Prints numbers.

``python -m ftlab.bench.align`` trains the same fresh LoRA adapter (same seed, so the same initial
weights) on the same preference pairs with DPO, once with ``ftlab.align.train_preferences`` and once
with ``trl.DPOTrainer``: beta 0.1, AdamW, constant lr, clipping 1.0, fp32, batch of ``--pairs`` pairs.
The data set *is* one batch, so both see identical batches every step and their losses must agree
step by step (printed). It reports tokens/s (real tokens, chosen + rejected, per second of optimizer
step, after ``--warmup`` untimed steps) and peak memory. Each side runs in its own process, so each
peak (the process's peak RSS on a CPU, allocated memory on a GPU) is its own.

Both sides compute the reference once, before the timed steps: ftlab caches it per example
(``precompute_reference``), TRL with ``precompute_ref_log_probs=True``. Without that, TRL runs the
reference forward in every step (its default); ``--trl-ref-every-step`` measures that too.

Both sides recompute activations in the backward (gradient checkpointing) or neither does
(``--gradient-checkpointing off``). TRL's configs turn it on by default and ftlab's off; before
this was set on both sides, TRL ran with it and ftlab without, which is why ftlab's peak looked
1.04-1.15x TRL's: the activations TRL recomputes, ftlab kept.

``run_trl_sft`` is used by ``python -m ftlab.bench.train --parts trl``: TRL's SFTTrainer with a
completion-only loss on the same tokenised examples.

Example:
    python -m ftlab.bench.align                    # SmolLM2-135M, about a minute or two on 2 cores
    python -m ftlab.bench.align --model tiny       # seconds: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from ftlab.training.measure import peak_memory_mb

TARGETS = {"speed": 1.0}


def _records(n):
    from ftlab.align import load_preferences
    from ftlab.data import data_dir

    return load_preferences(data_dir() / "preferences.jsonl", limit=n)


def _model(args):
    from accelerate.utils import set_seed

    from ftlab.models import load_model
    from ftlab.training import prepare_model

    model, tok = load_model(args.model, device=args.device)
    set_seed(0)
    return prepare_model(model, "lora", lora_rank=16, lora_alpha=32, tokenizer=tok), tok


def side_ftlab(args) -> dict:
    from ftlab.align import AlignConfig, train_preferences

    model, tok = _model(args)
    records = _records(args.pairs)
    ends = []
    with tempfile.TemporaryDirectory() as out:
        cfg = AlignConfig(output_dir=out, loss="dpo", beta=0.1, lr=args.lr, scheduler="constant", max_grad_norm=1.0,
                          max_steps=args.warmup + args.steps, batch_size=args.pairs, max_length=256, progress=False,
                          log_to=(), save_final=False, gradient_checkpointing=args.gradient_checkpointing == "on")
        result = train_preferences(model, tok, records, cfg, callbacks=[lambda r: ends.append(time.perf_counter())])
    tokens = result.history[-1]["tokens"]  # the same batch every step
    seconds = ends[-1] - ends[args.warmup - 1]
    return {"losses": [h["loss"] for h in result.history], "tok_s": tokens * args.steps / seconds,
            "s_per_step": seconds / args.steps, "peak_mb": peak_memory_mb(args.device), "tokens_per_step": tokens}


def side_trl(args) -> dict:
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from datasets import Dataset

    model, tok = _model(args)
    records = _records(args.pairs)
    data = Dataset.from_list([{"prompt": r["messages"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in records])
    ends, losses = [], []

    class Timer(TrainerCallback):
        def on_step_end(self, *_, **__):
            if args.device.type == "cuda":
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    with tempfile.TemporaryDirectory() as out:
        targs = DPOConfig(output_dir=out, beta=0.1, learning_rate=args.lr, lr_scheduler_type="constant",
                          max_grad_norm=1.0, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.pairs,
                          max_length=256, bf16=False, use_cpu=args.device.type == "cpu", report_to=[],
                          logging_steps=1, save_strategy="no", disable_tqdm=True, weight_decay=0.0, seed=0,
                          precompute_ref_log_probs=not args.trl_ref_every_step, dataloader_num_workers=0,
                          gradient_checkpointing=args.gradient_checkpointing == "on")
        trainer = DPOTrainer(model=model, args=targs, train_dataset=data, processing_class=tok, callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        first = trainer.data_collator([trainer.train_dataset[i] for i in range(args.pairs)])
    tokens = int(first["attention_mask"].sum())
    seconds = ends[-1] - ends[args.warmup - 1]
    return {"losses": losses, "tok_s": tokens * args.steps / seconds, "s_per_step": seconds / args.steps,
            "peak_mb": peak_memory_mb(args.device), "tokens_per_step": tokens}


def run_trl_sft(model_name, tokenizer, examples, batch_size, steps, warmup, lr, method, lora_rank, device) -> dict:
    """TRL's SFTTrainer on ftlab's tokenised ``examples`` (completion-only loss: the completion mask is
    ftlab's ``labels != -100``), in order, padded; tokens/s after ``warmup`` steps and the mean loss."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ftlab.models import load_model
    from ftlab.training import prepare_model

    data = Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": [int(l != -100) for l in e["labels"]]}
                              for e in examples])
    ends = []

    class Timer(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    model, _ = load_model(model_name, device=device)
    torch.manual_seed(0)
    model = prepare_model(model, method, lora_rank=lora_rank)
    with tempfile.TemporaryDirectory() as out:
        targs = SFTConfig(output_dir=out, per_device_train_batch_size=batch_size, max_steps=warmup + steps,
                          learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
                          max_grad_norm=1.0, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0,
                          bf16=False, use_cpu=device.type == "cpu", logging_strategy="no", save_strategy="no",
                          report_to="none", disable_tqdm=True, completion_only_loss=True, max_length=None)
        trainer = SFTTrainer(model=model, args=targs, train_dataset=data, processing_class=tokenizer,
                             callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
    timed = examples[warmup * batch_size:(warmup + steps) * batch_size]
    seconds = ends[-1] - ends[warmup - 1]
    useful = sum(len(e["input_ids"]) for e in timed)
    return {"useful_tok_s": useful / seconds, "s_per_step": seconds / steps, "steps": steps,
            "mean_loss": output.training_loss}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.align", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=4, help="preference pairs per batch (= the data set) (default %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps, >= 1 (default %(default)s)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--device", default=None)
    p.add_argument("--trl-ref-every-step", action="store_true", help="TRL: reference forward in every step (its default)")
    p.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                   help="recompute activations in the backward, on both sides (default %(default)s, TRL's default)")
    p.add_argument("--side", choices=("ftlab", "trl"), default=None, help=argparse.SUPPRESS)  # internal: one side
    return p.parse_args(argv)


def _run_side(side, argv) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ftlab.bench.align", *argv, "--side", side], capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    from ftlab.models import pick_device

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.device = pick_device(args.device)
    if args.side:
        print(json.dumps((side_ftlab if args.side == "ftlab" else side_trl)(args)))
        return {}
    t0 = time.time()
    print(f"ftlab.bench.align  model={args.model}  device={args.device}  DPO beta 0.1, LoRA r16, {args.pairs} pairs "
          f"per step, {args.warmup}+{args.steps} steps (timed after the first {args.warmup}); reference "
          f"{'every step in TRL' if args.trl_ref_every_step else 'precomputed on both sides'}; gradient checkpointing "
          f"{args.gradient_checkpointing} on both sides")
    ours, theirs = _run_side("ftlab", argv), _run_side("trl", argv)
    for name, r in (("ftlab", ours), ("TRL", theirs)):
        print(f"    {name:<6} {r['tok_s']:8.1f} tokens/s  ({r['s_per_step']:.2f} s/step, {r['tokens_per_step']} tokens "
              f"per step)  peak {r['peak_mb']:.0f} MB  losses {', '.join(f'{x:.5f}' for x in r['losses'])}")
    max_diff = max(abs(a - b) for a, b in zip(ours["losses"], theirs["losses"]))
    speed, memory = ours["tok_s"] / theirs["tok_s"], ours["peak_mb"] / theirs["peak_mb"]
    print(f"\nsummary ({time.time() - t0:.0f} s; timings on a shared machine move with its load)")
    print(f"    equal loss: max |ftlab - TRL| over {len(ours['losses'])} steps = {max_diff:.2e}")
    print(f"    ftlab / TRL tokens/s   {speed:.2f}x   target >= {TARGETS['speed']:.1f}x "
          f"{'met' if speed >= TARGETS['speed'] else 'NOT met'}")
    print(f"    ftlab / TRL peak memory {memory:.2f}x  (lower is better)")
    return {"ftlab": ours, "trl": theirs, "speed_ratio": speed, "memory_ratio": memory, "max_loss_diff": max_diff}


if __name__ == "__main__":
    main()
