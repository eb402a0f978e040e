"""Two servers, one load test: ``transformers serve`` and ``llama_cpp.server`` side by side.

``python -m ftlab.bench.serve`` (``--help`` for the options) serves the real SmolLM2-135M-Instruct
twice, each as a subprocess on 127.0.0.1, offline: with transformers' OpenAI-compatible server (through
``ftlab.deploy.ModelServer``; continuous batching off, or off and on with ``--modes off,on``) and with
llama.cpp's (``ftlab.deploy.LlamaCppServer``, on the model exported to GGUF ``--gguf-type``, F16 by
default). The same ``openai`` client load test runs against each: 1, 2, 4 and 8 concurrent clients send
course test prompts with the course system prompt, streamed and greedy. Each server first answers
``--warmup`` requests that are not counted; then each level runs until ``--requests`` requests are done
(at least 30 by default, so a p95 rests on more than one or two requests; ``--seconds`` bounds a level).

It prints one row per server and level: requests, errors (which must be 0), requests/s, generated
tokens/s, time to first token p50/p95, latency p50/p95 and the standard deviation of single-request
latency (the spread behind the percentiles), then ``errors=N`` and, per server, tokens/s at 8 clients
over 1. With ``--modes off,on`` it also prints ``speedup_8_vs_1`` of continuous batching (target >= 2x).

The machine may be shared: the load average is printed first; compare numbers taken in one run.
``--model tiny --requests 8`` checks the script quickly.
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


def _run_server(server, name, mode, prompts, args, rows) -> None:
    from ftlab.data import SYSTEM_PROMPT
    from ftlab.deploy.loadtest import format_load_table, run_load
    from ftlab.deploy.serving import chat_completion

    with server:
        print(f"\n{name} (batching {mode}): up in {server.startup_seconds:.1f} s on {server.url}")
        t0 = time.perf_counter()  # warm-up: the first requests build caches (and the CB scheduler)
        for k in range(args.warmup):
            chat_completion(server.client(), server.model, prompts[k % len(prompts)], system=SYSTEM_PROMPT,
                            max_tokens=args.max_tokens, stream=True, server=server)
        print(f"warm-up: {args.warmup} requests in {time.perf_counter() - t0:.1f} s")
        for n in [int(c) for c in args.clients.split(",")]:
            row = run_load(server, prompts, concurrency=n, seconds=args.seconds, max_tokens=args.max_tokens,
                           system=SYSTEM_PROMPT, requests=max(args.requests, n))
            row.update(server=name, mode=mode)
            rows.append(row)
            print(format_load_table([row]).splitlines()[1], flush=True)
            if row["requests"] + row["errors"] < max(args.requests, n):
                print(f"  this level hit --seconds {args.seconds:.0f} after {row['requests'] + row['errors']} of "
                      f"{max(args.requests, n)} requests: its percentiles rest on fewer requests")
            if row["errors"]:
                print(f"  first error: {row['first_error']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="any name ftlab.load_model accepts")
    p.add_argument("--servers", default="transformers,llamacpp", help="transformers, llamacpp, or both")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level (default 32)")
    p.add_argument("--seconds", type=float, default=300.0, help="upper bound of one level in seconds (default 300)")
    p.add_argument("--warmup", type=int, default=3, help="uncounted requests before the first level (default 3)")
    p.add_argument("--clients", default="1,2,4,8", help="comma-separated concurrency levels")
    p.add_argument("--modes", default="off", help="transformers continuous batching: off, on, or off,on")
    p.add_argument("--gguf-type", default="F16", help="GGUF type llama.cpp serves (F32, F16, Q8_0, ...)")
    p.add_argument("--max-tokens", type=int, default=48, help="generated tokens per answer at most (default 48)")
    p.add_argument("--prompts", type=int, default=64, help="course test prompts to cycle through")
    p.add_argument("--cb-num-blocks", type=int, default=None, help="KV cache blocks for continuous batching")
    p.add_argument("--cb-max-batch-tokens", type=int, default=None, help="tokens per continuous batch step")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of both servers (default: llama.cpp's choice for this machine's load, for both)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    from ftlab.deploy.llamacpp import default_threads
    from ftlab.deploy.loadtest import format_load_table
    from ftlab.deploy.serving import CPU_CB_MAX_BATCH_TOKENS, CPU_CB_NUM_BLOCKS, ModelServer

    # the same thread count for both servers: transformers would take OMP_NUM_THREADS from the environment
    args.threads = args.threads or default_threads()
    servers = [s.strip() for s in args.servers.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    prompts = load_prompts(args.prompts)
    print(f"model {args.model}, {len(prompts)} course test prompts, max_tokens {args.max_tokens}, "
          f"{args.requests} requests per level after {args.warmup} warm-up, CPU cores {os.cpu_count()}, "
          f"server threads {args.threads} (both), load average {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftlab-bench-serve-") as workdir:
        folder = model_folder(args.model, workdir)
        if "transformers" in servers:
            for mode in modes:
                server = ModelServer(folder, continuous_batching=(mode == "on"), log_path=os.path.join(workdir, f"{mode}.log"),
                                     cb_num_blocks=args.cb_num_blocks or CPU_CB_NUM_BLOCKS,
                                     cb_max_batch_tokens=args.cb_max_batch_tokens or CPU_CB_MAX_BATCH_TOKENS,
                                     threads=args.threads)
                _run_server(server, "transformers", mode, prompts, args, rows)
        if "llamacpp" in servers:
            from ftlab.deploy.gguf_export import export_gguf
            from ftlab.deploy.llamacpp_server import LlamaCppServer

            gguf = export_gguf(folder, os.path.join(workdir, f"model-{args.gguf_type.lower()}.gguf"), args.gguf_type)
            server = LlamaCppServer(gguf, threads=args.threads, log_path=os.path.join(workdir, "llama.log"))
            _run_server(server, f"llama.cpp {args.gguf_type}", "off", prompts, args, rows)
    print("\n" + format_load_table(rows))
    errors = sum(r["errors"] for r in rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    print(f"\nerrors={errors}")
    for (name, mode) in dict.fromkeys((r["server"], r["mode"]) for r in rows):
        level = {r["concurrency"]: r for r in rows if (r["server"], r["mode"]) == (name, mode)}
        lo, hi = min(level), max(level)
        print(f"{name} (batching {mode}): tokens/s {level[lo]['tokens_per_s']:.1f} at {lo} client(s), "
              f"{level[hi]['tokens_per_s']:.1f} at {hi} ({level[hi]['tokens_per_s'] / level[lo]['tokens_per_s']:.2f}x)")
    base = next((r for r in rows if r["mode"] == "off" and r["server"] == "transformers" and r["concurrency"] == 1), None)
    best = next((r for r in rows if r["mode"] == "on" and r["concurrency"] == max(r["concurrency"] for r in rows)), None)
    if base and best:
        speedup = best["tokens_per_s"] / base["tokens_per_s"]
        print(f"speedup_{best['concurrency']}_vs_1={speedup:.2f} (transformers tokens/s with continuous batching over "
              f"1 client without)  target_met={'yes' if speedup >= TARGET_SPEEDUP and errors == 0 else 'no'}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
