"""How much does continuous batching buy on a CPU? A load test of ``transformers serve``.

``python -m ftlab.bench.serve`` (``--help`` for the options) serves the real SmolLM2-135M-Instruct
with transformers' OpenAI-compatible server (through ``ftlab.deploy.ModelServer``: a subprocess on
127.0.0.1, offline), once with continuous batching off and once on. For each, 1, 2, 4 and 8
concurrent clients (threads with the ``openai`` client) send course test prompts with the course
system prompt, streamed and greedy, for ``--seconds`` each. It prints, per run: requests, requests/s,
generated tokens/s, time to first token (p50), latency p50 and p95, and errors (which must be 0),
then ``speedup_8_vs_1=...`` (generated tokens/s at 8 clients with continuous batching over 1 client
without) and ``target_met=yes|no`` (target: >= 2x, and no errors).

The machine is shared: other processes take CPU time during the run, so compare numbers taken in
one run, and repeat on an idle machine before drawing conclusions. Default run: about 2 x 4 x 30 s
of load plus two server starts, 5 minutes. ``--model tiny --seconds 5`` checks the script quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

TARGET_SPEEDUP = 2.0


def model_folder(name: str, workdir: str) -> str:
    """A folder ``transformers serve`` can load: the converted SmolLM2 cache, or a saved copy of ``name``."""
    import ftlab
    from ftlab.training import merge_and_save

    if name == "smollm2-135m-instruct":
        return str(ftlab.prefetch(verbose=False))
    model, tok = ftlab.load_model(name)
    return str(merge_and_save(model, tok, os.path.join(workdir, "model")))


def load_prompts(n: int) -> list:
    from ftlab.data import load_course_data
    from ftlab.evaluate import prepare_records

    return [it["messages"] for it in prepare_records(load_course_data("instructions", "test", limit=n))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="any name ftlab.load_model accepts")
    p.add_argument("--seconds", type=float, default=30.0, help="load time per concurrency level (default 30)")
    p.add_argument("--clients", default="1,2,4,8", help="comma-separated concurrency levels")
    p.add_argument("--modes", default="off,on", help="continuous batching: off, on, or off,on")
    p.add_argument("--max-tokens", type=int, default=48, help="generated tokens per answer at most (default 48)")
    p.add_argument("--prompts", type=int, default=64, help="course test prompts to cycle through")
    p.add_argument("--cb-num-blocks", type=int, default=None, help="KV cache blocks for continuous batching")
    p.add_argument("--cb-max-batch-tokens", type=int, default=None, help="tokens per continuous batch step")
    p.add_argument("--threads", type=int, default=None, help="server torch threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    from ftlab.data import SYSTEM_PROMPT
    from ftlab.deploy.loadtest import format_load_table, run_load
    from ftlab.deploy.serving import CPU_CB_MAX_BATCH_TOKENS, CPU_CB_NUM_BLOCKS, ModelServer, chat_completion

    clients = [int(c) for c in args.clients.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    prompts = load_prompts(args.prompts)
    print(f"model {args.model}, {len(prompts)} course test prompts, max_tokens {args.max_tokens}, "
          f"{args.seconds:.0f} s per level, CPU cores {os.cpu_count()}, server threads {args.threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-serve-") as workdir:
        folder = model_folder(args.model, workdir)
        for mode in modes:
            server = ModelServer(folder, continuous_batching=(mode == "on"), log_path=os.path.join(workdir, f"{mode}.log"),
                                 cb_num_blocks=args.cb_num_blocks or CPU_CB_NUM_BLOCKS,
                                 cb_max_batch_tokens=args.cb_max_batch_tokens or CPU_CB_MAX_BATCH_TOKENS,
                                 threads=args.threads)
            with server:
                print(f"\ncontinuous batching {mode}: server up in {server.startup_seconds:.1f} s on {server.url}")
                t0 = time.perf_counter()  # warm-up: the first request builds caches (and the CB scheduler)
                chat_completion(server.client(), server.model, prompts[0], system=SYSTEM_PROMPT, max_tokens=8, stream=True)
                print(f"warm-up request {time.perf_counter() - t0:.1f} s")
                for n in clients:
                    row = run_load(server, prompts, concurrency=n, seconds=args.seconds, max_tokens=args.max_tokens,
                                   system=SYSTEM_PROMPT)
                    row["mode"] = mode
                    rows.append(row)
                    print(format_load_table([row]).splitlines()[1], flush=True)
                    if row["errors"]:
                        print(f"  first error: {row['first_error']}")
    print("\n" + format_load_table(rows))
    base = next((r for r in rows if r["mode"] == "off" and r["concurrency"] == 1), None)
    best = next((r for r in rows if r["mode"] == "on" and r["concurrency"] == max(clients)), None)
    errors = sum(r["errors"] for r in rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if base and best:
        speedup = best["tokens_per_s"] / base["tokens_per_s"]
        met = speedup >= TARGET_SPEEDUP and errors == 0
        print(f"\nspeedup_{max(clients)}_vs_1={speedup:.2f} (tokens/s, {max(clients)} clients with continuous batching "
              f"over 1 client without)  errors={errors}  target_met={'yes' if met else 'no'}")
        return 0 if met else 1
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
