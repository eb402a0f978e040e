"""What does a short LoRA fine-tune do to task scores, and what does it cost in general knowledge?

``python -m ftlab.bench.quality`` (``--help`` for the options), on the real SmolLM2-135M-Instruct
on a CPU by default:

1. draws a test sample from the course test split, the same number of examples per task
   (seeded), and prints how wide a confidence interval that sample size gives;
2. evaluates the base model on it (greedy, chat template, ``ftlab.evaluate``) and asks it the
   probe questions (general knowledge it answered correctly before any training);
3. trains LoRA adapters with ``ftlab.train`` on the course training data, mixed with a share of
   *general replay* (``--replay``, default 30 %: general prompts with the base model's own answers,
   ``data/general_replay.jsonl``), the guard against forgetting that notebook 03 measures;
4. evaluates the fine-tuned model on the same examples and probes;
5. prints the comparison table with 95 % bootstrap CIs, the paired improvement with its own
   CI, the forgetting report, a few examples that changed, the wall time of every phase, and a
   last line ``quality_gain=... target_met=yes|no``.

Target: the fine-tuned model beats the base model by a margin well outside the CI (the
paired CI's lower end above zero by a wide margin, here >= 0.15) with at most a small drop on
the probes (<= 10 points). The default run takes about 7-8 minutes on 2 idle cores;
``--model tiny --steps 3 --n-test 8`` checks the script in a minute (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

MIN_GAIN = 0.15  # the paired CI's lower end must clear this
MAX_PROBE_DROP = 0.10


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.quality", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="any name ftlab.load_model accepts")
    p.add_argument("--steps", type=int, default=60, help="LoRA optimizer steps (default 60)")
    p.add_argument("--n-test", type=int, default=96, help="test examples, split evenly over the tasks")
    p.add_argument("--batch-size", type=int, default=8, help="training examples per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--tasks", default="all", help="comma-separated course tasks to train and test on")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--no-probes", action="store_true", help="skip the forgetting check")
    p.add_argument("--n-probes", type=int, default=None, help="ask only the first N probes (default: all)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is faster on a machine crowded with other jobs)")
    p.add_argument("--system-prompt", choices=("course", "default"), default="course",
                   help="course: train and test with the course's system prompt, so the new behaviour is tied to "
                        "it and general questions (asked with the model's default prompt) are disturbed less; "
                        "default: no system message (the chat template inserts the model's own)")
    p.add_argument("--replay", type=float, default=0.3, metavar="FRACTION",
                   help="share of the training mix taken from data/general_replay.jsonl (general prompts with "
                        "the base model's own answers, default system prompt): a guard against forgetting; 0 = off")
    p.add_argument("--predictions", metavar="FILE.jsonl",
                   help="also write every test answer of both models here (task, reference, predictions, scores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=6, help="changed examples to print")
    args = p.parse_args(argv)
    from ftlab.data import TASKS

    args.tasks = TASKS if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(","))
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        p.error(f"--tasks: unknown {sorted(unknown)}; the course tasks are {', '.join(TASKS)}")
    return args


def load_data(args) -> dict:
    """Train / validation / test records of the chosen tasks, the replay mix and the probes."""
    from ftlab.data import SYSTEM_PROMPT, load_course_data, mix_replay, sample_test_records

    split = {name: [r for r in load_course_data("instructions", name) if r["task"] in args.tasks]
             for name in ("train", "validation", "test")}
    data = {"train": split["train"], "val": split["validation"][:32], "test_pool": split["test"],
            "test": sample_test_records(split["test"], args.n_test, args.seed),
            "probes": None if args.no_probes else load_course_data("probes")[: args.n_probes]}
    if args.system_prompt == "course":
        # A system prompt is part of the data: tying the task to it is a cheap guard against forgetting.
        for key in ("train", "val", "test"):
            data[key] = [{**r, "system": SYSTEM_PROMPT} for r in data[key]]
    data["n_task"] = len(data["train"])
    if args.replay:
        data["train"] = mix_replay(data["train"], load_course_data("general_replay"), args.replay, seed=args.seed)
    return data


def print_setup(args, data):
    import torch

    test, n_task = data["test"], data["n_task"]
    print(f"ftlab quality benchmark  model={args.model}  torch threads={torch.get_num_threads()}  "
          f"started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    per_task = ", ".join(f"{t}={sum(r['task'] == t for r in test)}" for t in args.tasks)
    print(f"test sample: {len(test)} of {len(data['test_pool'])} test-split examples ({per_task}); "
          f"a score's 95% CI is about ±1.96·sd/√n, ±{1.96 * 0.5 / len(test) ** 0.5:.3f} at worst "
          "(sd 0.5, scores 0/1); the paired difference's CI is usually narrower")
    print(f"training: LoRA r={args.rank} alpha={2 * args.rank} lr={args.lr} steps={args.steps} "
          f"batch={args.batch_size} on {n_task} task examples"
          + (f" + {len(data['train']) - n_task} general replay examples ({args.replay:.0%} of the mix)"
             if args.replay else "")
          + f" ({args.steps * args.batch_size} seen), system prompt: {args.system_prompt}")
    print(f"probes: {0 if data['probes'] is None else len(data['probes'])} general questions the base model "
          "answers correctly")


def evaluate(model, tok, data, args, name, phases):
    """Score ``model`` on the test sample and (unless --no-probes) the probes; time both phases."""
    from ftlab.evaluate import evaluate_model, probe_accuracy

    res = evaluate_model(model, tok, data["test"], name=name, max_new_tokens=args.max_new_tokens,
                         batch_size=args.eval_batch_size, seed=args.seed)
    phases[f"eval {name}"] = res.seconds
    print(res.summary())
    probe_res = None
    if data["probes"] is not None:
        probe_res = probe_accuracy(model, tok, data["probes"], name=name, batch_size=args.eval_batch_size)
        phases[f"probes {name}"] = probe_res.seconds
        print(f"probes: {probe_res.accuracy:.3f}")
    return res, probe_res


def finetune(model, tok, data, args, phases):
    """LoRA with ftlab.train; prints the loss summary, the wall time and the peak memory."""
    from ftlab.training import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="ftlab-quality-") as out:
        config = TrainConfig(method="lora", lora_rank=args.rank, lora_alpha=2 * args.rank,
                             lr=args.lr, scheduler="cosine", warmup_steps=max(1, args.steps // 20),
                             max_steps=args.steps, batch_size=args.batch_size, max_length=256,
                             batching="group", eval_every=0, output_dir=out, save_final=False,
                             log_to=("jsonl",), seed=args.seed)
        t = time.perf_counter()
        result = train(model, tok, data["train"], data["val"], config=config)
        phases["train"] = time.perf_counter() - t
    losses = [h["loss"] for h in result.train_history]
    vals = [h["val_loss"] for h in result.eval_history]
    k = max(1, len(losses) // 10)
    print(f"train loss: first {k} steps {sum(losses[:k]) / k:.3f} -> last {k} steps {sum(losses[-k:]) / k:.3f}; "
          f"validation loss {vals[0]:.3f} -> {vals[-1]:.3f}" if vals else "")
    peak = max(h["peak_memory_mb"] for h in result.train_history)
    print(f"training wall time {phases['train']:.0f}s ({phases['train'] / max(1, args.steps):.1f}s/step); "
          f"peak memory {peak / 1024:.2f} GiB ({'allocated on the GPU' if next(model.parameters()).device.type == 'cuda' else 'process RSS'})")
    return result.model


def print_changes(cmp, show: int):
    counts = cmp.change_counts()
    print(f"per example: {counts['better']} better, {counts['worse']} worse, {counts['same']} unchanged")
    changes = cmp.changes()
    if len(changes) and show:
        print(f"\nexamples that changed (biggest gains first, then the worst losses; {show} shown):")
        shown = changes.head(show - show // 3)
        losses_view = changes[changes["delta"] < 0].tail(show // 3)
        for _, row in list(shown.iterrows()) + list(losses_view.iterrows()):
            print(f"  [{row['task']}] Δ{row['delta']:+.2f}  reference: {row['reference']!r}")
            print(f"      base: {row['prediction_base'][:110]!r}")
            print(f"      lora: {row['prediction_lora'][:110]!r}")


def write_predictions(path, base, tuned):
    with open(path, "w", encoding="utf-8") as f:
        for b, t in zip(base.examples, tuned.examples):
            f.write(json.dumps({"task": b.get("task"), "reference": b.get("reference"),
                                "base": b.get("prediction"), "base_score": b.get("score"),
                                "lora": t.get("prediction"), "lora_score": t.get("score")},
                               ensure_ascii=False) + "\n")
    print(f"wrote every answer to {path}")


def print_forgetting(base_probes, tuned_probes):
    from ftlab.evaluate import forgetting_report

    forgetting = forgetting_report(base_probes, tuned_probes)
    print(f"\nforgetting: probe accuracy {forgetting['before']:.3f} -> {forgetting['after']:.3f} "
          f"(change {forgetting['change']:+.3f}, 95% CI {forgetting['change_ci'][0]:+.3f} .. "
          f"{forgetting['change_ci'][1]:+.3f}); lost {len(forgetting['lost'])}, gained {len(forgetting['gained'])}")
    for question, answer in forgetting["lost"][:5]:
        print(f"  lost: {question!r} -> {answer[:90]!r}")
    return forgetting


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ftlab import load_model
    from ftlab.evaluate import comparison_from_results

    t_start, phases = time.perf_counter(), {}
    data = load_data(args)
    print_setup(args, data)
    t = time.perf_counter()
    model, tok = load_model(args.model, seed=args.seed)
    phases["load"] = time.perf_counter() - t

    print("\n[1/4] base model on the test sample", flush=True)
    base, base_probes = evaluate(model, tok, data, args, "base", phases)
    print(f"\n[2/4] LoRA fine-tuning, {args.steps} steps", flush=True)
    tuned_model = finetune(model, tok, data, args, phases)
    print("\n[3/4] fine-tuned model on the same test sample", flush=True)
    tuned, tuned_probes = evaluate(tuned_model, tok, data, args, "lora", phases)

    print("\n[4/4] comparison", flush=True)
    probes = data["probes"] is not None
    cmp = comparison_from_results({"base": base, "lora": tuned},
                                  {"base": base_probes, "lora": tuned_probes} if probes else None, seed=args.seed)
    print(cmp.text)
    print_changes(cmp, args.show)
    if args.predictions:
        write_predictions(args.predictions, base, tuned)
    forgetting = print_forgetting(base_probes, tuned_probes) if probes else None

    total = time.perf_counter() - t_start
    print("\nwall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in phases.items()) + f"; total {total:.0f}s "
          f"({total / 60:.1f} min)")
    row = cmp.table.loc["lora"]
    gain, low, high = row["vs_first"], row["vs_first_low"], row["vs_first_high"]
    probe_change = forgetting["change"] if forgetting else 0.0
    met = low >= MIN_GAIN and probe_change >= -MAX_PROBE_DROP
    print(f"quality_gain={gain:+.3f} ci=[{low:+.3f}, {high:+.3f}] base={base.score:.3f} lora={tuned.score:.3f} "
          f"probes_change={probe_change:+.3f} n_test={len(data['test'])} steps={args.steps} "
          f"target_met={'yes' if met else 'no'} (needs ci_low >= {MIN_GAIN} and probe drop <= {MAX_PROBE_DROP})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
