"""The recipe search as a table and a plot: every run that `python -m ftlab.bench.quality --log FILE` logged.

    python scripts/recipe_report.py docs/results/recipe_runs.jsonl --plot docs/results/recipe_frontier.png

Prints a Markdown table (one row per run, in the order they ran: settings, training wall and CPU minutes,
score with its 95 % CI, per task, probes) and marks the runs on the frontier: no other run scored higher
for fewer CPU-minutes. With --plot, draws score against CPU-minutes with the frontier line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_runs(path) -> list[dict]:
    runs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON ({e.msg}); each line must be one run from --log") from None
    if not runs:
        raise SystemExit(f"{path}: no runs")
    return runs


def frontier(runs) -> set[int]:
    """Indices of the runs no other run beats: higher score for no more CPU time (per evaluation split)."""
    keep = set()
    for i, r in enumerate(runs):
        beaten = any(o["cpu_s"] <= r["cpu_s"] and o["score"] > r["score"] and o["eval_split"] == r["eval_split"]
                     for j, o in enumerate(runs) if j != i)
        if not beaten:
            keep.add(i)
    return keep


def describe(r) -> str:
    method = f"LoRA r{r['rank']} {r['targets']}" if r["method"] == "lora" else "full"
    limit = f", {r['train_limit']} ex." if r.get("train_limit") else ""
    return (f"{method}, lr {r['lr']:g} {r['scheduler']}, {r['steps']} × {r['batch_size']}, "
            f"len {r['max_length']} {r['batching']}, replay {r['replay']:.0%}, loss per "
            f"{r.get('loss_weighting', 'token')}{limit}")


def table(runs) -> str:
    best = frontier(runs)
    tasks = sorted({t for r in runs for t in r["by_task"]})
    head = ["#", "settings", "split (n)", "train min (wall)", "CPU-min", "score [95% CI]"] + tasks + ["probes (change)",
                                                                                                    "frontier"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(runs, 1):
        probes = "-" if r.get("probes") is None else f"{r['probes']:.2f} ({r['probes_change']:+.2f})"
        cells = [str(i), describe(r), f"{r['eval_split']} ({r['n_test']})", f"{r['train_s'] / 60:.1f}",
                 f"{r['cpu_s'] / 60:.1f}", f"{r['score']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"]
        cells += [f"{r['by_task'].get(t, float('nan')):.2f}" for t in tasks]
        cells += [probes, "yes" if i - 1 in best else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for split, marker in (("validation", "o"), ("test", "s")):
        pts = [(i, r) for i, r in enumerate(runs, 1) if r["eval_split"] == split]
        if not pts:
            continue
        ax.errorbar([r["cpu_s"] / 60 for _, r in pts], [r["score"] for _, r in pts],
                    yerr=[[r["score"] - r["ci"][0] for _, r in pts], [r["ci"][1] - r["score"] for _, r in pts]],
                    fmt=marker, capsize=3, label=f"{split} sample")
        for i, r in pts:
            ax.annotate(str(i), (r["cpu_s"] / 60, r["score"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    best = sorted((runs[i] for i in frontier(runs) if runs[i]["eval_split"] == "validation"), key=lambda r: r["cpu_s"])
    if best:
        ax.plot([r["cpu_s"] / 60 for r in best], [r["score"] for r in best], "k--", lw=1, label="frontier (validation)")
    ax.set_xlabel("training CPU-minutes (2 cores: wall minutes x ~2)")
    ax.set_ylabel("course task score")
    ax.set_title("recipe search: SmolLM2-135M-Instruct, numbers = run # in docs/recipe.md")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="the JSONL file bench.quality --log wrote")
    p.add_argument("--plot", metavar="FILE.png")
    args = p.parse_args(argv)
    runs = read_runs(args.log)
    print(table(runs))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
