"""How fast is ftlab's training loop? Three measurements, printed as numbers.

``python -m ftlab.bench.train`` (``--help`` for the options) runs, in one process, on the course
instruction data:

1. **ftlab vs transformers' Trainer.** The same fresh model, the same tokenised examples in the same
   order (padded batches, no shuffling), the same optimizer (fused AdamW), schedule, clipping and
   precision. Prints tokens/s of each and the ratio (target: ftlab >= 1.0x Trainer).
2. **Padding vs length grouping vs packing.** ftlab's loop with ``batching="pad" | "group" | "pack"``.
   What counts is *useful* tokens/s - real (non-pad) tokens per second - because a CPU or GPU spends
   the same time on a pad token as on a real one. Packed batches get as many rows as hold about the
   same number of tokens as a padded batch. Target: packing >= 1.5x padding. The batch size matters:
   the bigger the batch, the longer its longest example and the more padding. With batches of 8
   course examples 35 % of a padded batch is padding, so no packing can gain more than 1.48x (the
   script prints this bound); with 16 (the default here) it is 42 % and the bound is 1.64x.
3. **Full fine-tuning vs the matmul roofline.** It measures this machine's matmul FLOP/s (fp32 on a
   CPU, bf16 on a GPU; the best of a square and the model's own matrix shapes) and compares the
   packed full fine-tuning run against it. A training step costs about 6·N FLOP per token (2·N
   forward, 4·N backward; N = weights that take part in a matmul, so the tied embedding counts once,
   as the output layer), so the matmul-limited speed is ``FLOP/s / (6·N)`` tokens/s. Attention's
   own FLOP (small at these lengths) are not in 6·N. Target: >= 80 %.

Every timing leaves out the first ``--warmup`` steps (allocations, lazy optimizer state), and
counts the wall time between the ends of optimizer steps, everything included (data, clipping,
logging). On a shared machine the numbers move with the load: compare runs taken together, or use
``--repeats 2`` (ftlab, Trainer, Trainer, ftlab; best of each).

Example:
    python -m ftlab.bench.train                      # SmolLM2-135M, full fine-tuning, a few minutes on 2 cores
    python -m ftlab.bench.train --model tiny         # seconds: checks the script, the numbers mean little
    python -m ftlab.bench.train --method lora --parts trainer
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from functools import partial

import torch

from ftlab.training.loss import count_trained_tokens
from ftlab.training.measure import measure_matmul_flops, sync_device

TARGETS = {"vs_trainer": 1.0, "pack_vs_pad": 1.5, "full_ft_of_roofline": 0.80}


# --------------------------------------------------------------------------- data and helpers


def course_examples(tokenizer, n: int, max_length: int) -> list[dict]:
    """The first ``n`` course instruction examples, tokenised (assistant tokens trained)."""
    from ftlab.data.course import course_data_path
    from ftlab.data.records import load_records
    from ftlab.data.templates import tokenize_dataset

    records = load_records(course_data_path("instructions", "train"))[:n]
    return tokenize_dataset(records, tokenizer, max_length=max_length, verbose=False)


def _throughput(step_ends: list[float], batches: list[dict], warmup: int) -> dict:
    """Tokens/s of the steps after the first ``warmup``, timed from the end of step ``warmup`` to the end of the last."""
    if warmup < 1 or len(step_ends) < warmup + 1:
        raise RuntimeError(f"need warmup >= 1 and at least one timed step; got warmup={warmup}, {len(step_ends)} steps")
    timed = batches[warmup:len(step_ends)]
    seconds = step_ends[-1] - step_ends[warmup - 1]
    useful = sum(int(b["attention_mask"].sum()) for b in timed)
    processed = sum(b["input_ids"].numel() for b in timed)
    return {"seconds": seconds, "steps": len(timed), "useful_tokens": useful, "processed_tokens": processed,
            "useful_tok_s": useful / seconds, "processed_tok_s": processed / seconds,
            "s_per_step": seconds / len(timed)}


# --------------------------------------------------------------------------- the two loops


def run_ftlab(args, tokenizer, examples, batching: str, batch_size: int, shuffle: bool, method: str | None = None) -> dict:
    """ftlab.train on a fresh model; returns its throughput after warm-up."""
    from ftlab.data.batching import make_batches
    from ftlab.models import load_model
    from ftlab.training.loop import TrainConfig, train

    steps = args.warmup + args.steps
    # The batches the loop will see: BatchStream's first epoch is exactly this call.
    batches = make_batches(examples, batch_size, batching, max_length=args.max_length, seed=0, shuffle=shuffle,
                           pad_token_id=tokenizer.pad_token_id)
    if len(batches) < steps:
        raise SystemExit(f"--examples {args.examples} gives only {len(batches)} '{batching}' batches of {batch_size}; "
                         f"{steps} steps need more. Fix: raise --examples.")
    model, _ = load_model(args.model, device=args.device)
    step_ends = []
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            output_dir=out, method=method or args.method, lora_rank=args.lora_rank, lr=args.lr, max_steps=steps, batch_size=batch_size,
            max_length=args.max_length, batching=batching, shuffle=shuffle, scheduler="cosine", warmup_steps=0,
            max_grad_norm=1.0, seed=0, log_to=(), progress=False, save_final=False,
        )
        result = train(model, tokenizer, examples, config=config, callbacks=[lambda record: step_ends.append(time.perf_counter())])
    history = result.train_history
    for record, batch in zip(history, batches):  # same batches as we think, or the numbers are wrong
        if record["step_tokens"] != count_trained_tokens(batch["labels"]):
            raise RuntimeError(f"ftlab step {record['step']}: {record['step_tokens']} trained tokens, expected "
                               f"{count_trained_tokens(batch['labels'])}: the loop's batch order changed; update this benchmark.")
    out = _throughput(step_ends, batches, args.warmup)
    out["mean_loss"] = statistics.mean(h["loss"] for h in history)
    out["peak_memory_mb"] = max(h["peak_memory_mb"] for h in history)
    del model, result
    return out


def run_trainer(args, tokenizer, examples, batch_size: int) -> dict:
    """transformers' Trainer with the same model, data order, optimizer, schedule, clipping and precision."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

    from ftlab.data.batching import collate, make_batches
    from ftlab.training.methods import prepare_model
    from ftlab.models import load_model

    steps = args.warmup + args.steps
    batches = make_batches(examples, batch_size, "pad", max_length=args.max_length, shuffle=False,
                           pad_token_id=tokenizer.pad_token_id)
    step_ends = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *_, **__):
            sync_device(args.device)
            step_ends.append(time.perf_counter())

    model, _ = load_model(args.model, device=args.device)
    set_seed(0)
    model = prepare_model(model, args.method, lora_rank=args.lora_rank)
    cuda_bf16 = args.device.type == "cuda" and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=args.lr,
            lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0, bf16=cuda_bf16,
            use_cpu=args.device.type == "cpu", logging_strategy="no", save_strategy="no", report_to="none",
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=examples,
                          data_collator=partial(collate, pad_token_id=tokenizer.pad_token_id), callbacks=[StepTimer()])
        trainer.remove_callback(PrinterCallback)  # it would print the final metrics dict
        output = trainer.train()
    result = _throughput(step_ends, batches, args.warmup)
    result["mean_loss"] = output.training_loss
    del trainer, model
    return result


# --------------------------------------------------------------------------- the roofline


def compute_params(model) -> int:
    """Weights that take part in a matmul: all, minus the input embedding unless it is tied to the output layer."""
    from ftlab.training.parameters import count_parameters

    total = count_parameters(model)[1]
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    return total if tied else total - embedding.numel()


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="tiny | smollm2-135m-instruct | a HF id (default %(default)s)")
    p.add_argument("--method", default="full", help="method for parts 1 and 2: full | lora | qlora | ... (default %(default)s)")
    p.add_argument("--parts", default="trainer,batching,roofline,trl",
                   help="comma list of trainer, batching, roofline, trl (SFT vs TRL's SFTTrainer)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run (default %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps per run, >= 1 (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per padded batch in parts 2 and 3 (default %(default)s)")
    p.add_argument("--trainer-batch-size", type=int, default=4, help="batch size of part 1 (default %(default)s)")
    p.add_argument("--max-length", type=int, default=256, help="token limit per example / packed row length (default %(default)s)")
    p.add_argument("--examples", type=int, default=128, help="course examples to use (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="part 1: 2 runs ftlab,Trainer,Trainer,ftlab (best of each)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: CUDA if present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    return p.parse_args(argv)


def bench_trainer(args, tokenizer, examples) -> dict:
    """[1] ftlab vs transformers.Trainer on the same examples in the same order (best of the repeats)."""
    print(f"\n[1] ftlab vs transformers.Trainer  (batch {args.trainer_batch_size}, padded, same order, "
          f"{args.method}, fused AdamW, cosine, clip 1.0)")
    runs = {"ftlab": [], "trainer": []}
    order = ["ftlab", "trainer"] + (["trainer", "ftlab"] if args.repeats >= 2 else [])
    for name in order:
        if name == "ftlab":
            r = run_ftlab(args, tokenizer, examples, "pad", args.trainer_batch_size, shuffle=False)
        else:
            r = run_trainer(args, tokenizer, examples, args.trainer_batch_size)
        runs[name].append(r)
        print(f"    {name:<8} {r['useful_tok_s']:8.1f} tokens/s   ({r['s_per_step']:.2f} s/step, {r['steps']} steps; "
              f"mean loss {r['mean_loss']:.5f})")
    best = {k: max(v, key=lambda r: r["useful_tok_s"]) for k, v in runs.items()}
    ratio = best["ftlab"]["useful_tok_s"] / best["trainer"]["useful_tok_s"]
    print(f"    ratio ftlab / Trainer = {ratio:.3f}x   (target >= {TARGETS['vs_trainer']:.1f}x); the equal mean "
          "losses show both did the same computation")
    return {"ftlab": runs["ftlab"], "trainer": runs["trainer"], "ratio": ratio}


def bench_trl_sft(args, tokenizer, examples) -> dict:
    """[1b] ftlab vs TRL's SFTTrainer: completion-only loss, same examples in the same order, padded.

    (TRL's padding-free packing needs flash-attention kernels, which a CPU does not have.)"""
    from ftlab.bench.align import run_trl_sft

    ours = run_ftlab(args, tokenizer, examples, "pad", args.trainer_batch_size, shuffle=False)
    theirs = run_trl_sft(args.model, tokenizer, examples, args.trainer_batch_size, args.steps, args.warmup, args.lr,
                         args.method, args.lora_rank, args.device)
    ratio = ours["useful_tok_s"] / theirs["useful_tok_s"]
    print(f"\n[1b] ftlab vs TRL SFTTrainer (completion-only loss, batch {args.trainer_batch_size}, padded, same order): "
          f"{ours['useful_tok_s']:.1f} vs {theirs['useful_tok_s']:.1f} tokens/s, mean loss {ours['mean_loss']:.5f} "
          f"vs {theirs['mean_loss']:.5f}")
    return {"ftlab": ours, "trl": theirs, "ratio": ratio}


def bench_batching(args, tokenizer, examples, strategies, method) -> dict:
    """[2] padding vs length grouping vs packing, at about the same number of tokens per step."""
    pack_rows = max(1, round(args.batch_size * statistics.mean(len(e["input_ids"]) for e in examples) / args.max_length))
    print(f"\n[2] batching  ({method}; pad/group: {args.batch_size} examples per batch; pack: {pack_rows} rows "
          f"of {args.max_length} tokens, about the same tokens per step; shuffled)")
    runs = {}
    for strategy in strategies:
        r = run_ftlab(args, tokenizer, examples, strategy, pack_rows if strategy == "pack" else args.batch_size,
                      shuffle=True, method=method)
        waste = 1 - r["useful_tokens"] / r["processed_tokens"]
        runs[strategy] = {**r, "padding_waste": waste}
        print(f"    {strategy:<6} {r['useful_tok_s']:8.1f} useful tokens/s   padding {100 * waste:4.1f} %   "
              f"({r['s_per_step']:.2f} s/step, {r['useful_tokens'] / r['steps']:.0f} useful tokens/step)")
    if "pad" in runs:
        for strategy in ("group", "pack"):
            runs[f"{strategy}_vs_pad"] = runs[strategy]["useful_tok_s"] / runs["pad"]["useful_tok_s"]
        # If a step's time were proportional to the token slots it processes (pads included), removing
        # padding could gain at most this much: the rest would have to come from bigger, better-shaped matmuls.
        bound = (1 - runs["pack"]["padding_waste"]) / (1 - runs["pad"]["padding_waste"])
        runs["pack_vs_pad_from_padding_alone"] = bound
        print(f"    group / pad = {runs['group_vs_pad']:.2f}x   pack / pad = {runs['pack_vs_pad']:.2f}x   "
              f"(target pack >= {TARGETS['pack_vs_pad']:.1f}x; removing the padding alone explains {bound:.2f}x)")
    return runs


def bench_roofline(args, pack_run, dtype, shapes, flops_before, n_compute) -> dict:
    """[3] packed full fine-tuning against the matmul-limited tokens/s of this machine."""
    flops_after = measure_matmul_flops(args.device, dtype, shapes)
    flops = {s: max(flops_before[s], flops_after[s]) for s in flops_after}
    peak = max(flops.values())
    roof = peak / (6 * n_compute)
    fraction = pack_run["processed_tok_s"] / roof
    print(f"\n[3] full fine-tuning vs matmul FLOP/s ({str(dtype).replace('torch.', '')})")
    print("    matmul GFLOP/s before / after the runs: " + ", ".join(
        f"{s}: {flops_before[s] / 1e9:.1f} / {flops_after[s] / 1e9:.1f}" for s in flops))
    print(f"    peak {peak / 1e9:.1f} GFLOP/s / (6 x {n_compute / 1e6:.1f} M) = {roof:.1f} tokens/s matmul-limited")
    print(f"    full FT (packed) {pack_run['processed_tok_s']:.1f} tokens/s = {100 * fraction:.1f} % of it   "
          f"(target >= {100 * TARGETS['full_ft_of_roofline']:.0f} %; {6 * n_compute * pack_run['processed_tok_s'] / 1e9:.1f} GFLOP/s achieved)")
    return {"matmul_flops_before": flops_before, "matmul_flops_after": flops_after, "peak_flops": peak,
            "roofline_tok_s": roof, "full_ft_tok_s": pack_run["processed_tok_s"], "fraction": fraction}


def print_summary(report: dict, seconds: float):
    print(f"\nsummary ({seconds:.0f} s; timings on a shared machine move with its load)")
    rows = []
    if "trainer" in report:
        rows.append(("ftlab / Trainer tokens/s", report["trainer"]["ratio"], TARGETS["vs_trainer"], "x"))
    if "trl_sft" in report:
        rows.append(("ftlab / TRL SFTTrainer tok/s", report["trl_sft"]["ratio"], TARGETS["vs_trainer"], "x"))
    if "batching" in report:
        rows.append(("pack / pad useful tokens/s", report["batching"]["pack_vs_pad"], TARGETS["pack_vs_pad"], "x"))
    if "roofline" in report:
        rows.append(("full FT / matmul-limited", report["roofline"]["fraction"], TARGETS["full_ft_of_roofline"], ""))
    for label, value, target, unit in rows:
        shown = f"{value:.2f}{unit}" if unit else f"{100 * value:.1f} %"
        goal = f"{target:.1f}{unit}" if unit else f"{100 * target:.0f} %"
        print(f"    {label:<28} {shown:>9}   target >= {goal:<6} {'met' if value >= target else 'NOT met'}")


def main(argv=None) -> dict:
    from ftlab.models import load_model, pick_device
    from ftlab.training.parameters import count_parameters

    args = parse_args(argv)
    args.device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"trainer", "batching", "roofline", "trl"}
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from trainer, batching, roofline, trl")
    model, tokenizer = load_model(args.model, device=args.device)
    n_compute, n_total = compute_params(model), count_parameters(model)[1]
    hidden, inter, vocab = model.config.hidden_size, model.config.intermediate_size, model.config.vocab_size
    del model
    examples = course_examples(tokenizer, args.examples, args.max_length)
    lengths = [len(e["input_ids"]) for e in examples]
    print(f"ftlab.bench.train  model={args.model} ({n_total / 1e6:.1f} M weights)  method={args.method}  "
          f"device={args.device} threads={torch.get_num_threads()}  examples={len(examples)} "
          f"(tokens per example: mean {statistics.mean(lengths):.0f}, min {min(lengths)}, max {max(lengths)})  "
          f"steps={args.warmup}+{args.steps} timed")
    # The roofline is measured before and after the training runs; the higher figure counts, so a
    # moment of lighter load on a shared machine cannot flatter the result.
    dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    tokens = args.batch_size * round(statistics.mean(lengths))
    shapes = [(2048, 2048, 2048), (tokens, hidden, inter), (tokens, inter, hidden), (tokens, hidden, vocab)]
    flops_before = measure_matmul_flops(args.device, dtype, shapes) if "roofline" in parts else {}
    report = {"model": args.model, "method": args.method, "device": str(args.device), "threads": torch.get_num_threads(),
              "params": n_total, "compute_params": n_compute}
    t_start = time.time()
    if "trainer" in parts:
        report["trainer"] = bench_trainer(args, tokenizer, examples)
    if "trl" in parts:
        report["trl_sft"] = bench_trl_sft(args, tokenizer, examples)
    pack_run = None
    if "batching" in parts or "roofline" in parts:
        method = args.method if "batching" in parts else "full"
        runs = bench_batching(args, tokenizer, examples, ["pad", "group", "pack"] if "batching" in parts else ["pack"],
                              method)
        if "batching" in parts:
            report["batching"] = runs
        pack_run = runs["pack"] if method == "full" else None
    if "roofline" in parts:
        if pack_run is None:  # the batching part used another method: one packed full fine-tuning run
            pack_run = bench_batching(args, tokenizer, examples, ["pack"], "full")["pack"]
        report["roofline"] = bench_roofline(args, pack_run, dtype, shapes, flops_before, n_compute)
    print_summary(report, time.time() - t_start)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
