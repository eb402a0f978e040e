"""Load-test a served model: N concurrent clients for a bounded time, and the numbers that matter.

Each client is a thread with its own ``openai`` client, sending streamed chat requests back to back
(a closed loop: a client waits for its answer before asking again) until the time is up. A request
started before the deadline is allowed to finish, so nothing is cut off half-way. We measure:

* **requests/s** and **generated tokens/s**: throughput, what the machine delivers in total;
* **TTFT** (time to first token): how long a user stares at an empty screen;
* **latency p50 / p95**: the whole answer; p95 is what one request in twenty waits *at least*;
* **errors**: must be 0. A fast server that drops requests is not fast.

Without continuous batching, ``transformers serve`` answers one request at a time: more clients
only queue, so latency grows with concurrency and throughput stays flat. With continuous batching,
requests share each forward pass, so tokens/s grows with the number of clients (up to what the
hardware can batch).

Example:
    >>> row = run_load(server, prompts, concurrency=4, seconds=20)        # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ftlab.deploy.serving import ServerError, chat_completion

# A queued request may wait for every request ahead of it (no batching, 8 clients, a slow CPU):
# generous, but bounded, so a dead server still ends the test.
REQUEST_TIMEOUT_S = 600.0


def percentile(values, q: float) -> float:
    """The ``q``-th percentile with linear interpolation between order statistics (numpy's default).

    Example:
        >>> percentile([1, 2, 3, 4], 50)
        2.5
    """
    values = np.asarray(list(values), dtype=float)
    if values.size == 0:
        return float("nan")
    return float(np.percentile(values, q))


def _client_loop(server, prompts, start_index, deadline, max_tokens, system, out, lock):
    client = server.client(timeout=REQUEST_TIMEOUT_S)
    i = start_index
    while time.perf_counter() < deadline:
        prompt = prompts[i % len(prompts)]
        i += 1
        try:
            r = chat_completion(client, server.model, prompt, system=system, max_tokens=max_tokens, stream=True,
                                server=server)
            r["error"] = None
        except ServerError as e:
            r = {"error": str(e).splitlines()[0], "latency_s": None, "ttft_s": None, "completion_tokens": 0}
        r["finished_at"] = time.perf_counter()
        with lock:
            out.append(r)
        if r["error"] and not server.alive:
            return


def run_load(server, prompts, *, concurrency: int, seconds: float, max_tokens: int = 48, system=None) -> dict:
    """Run ``concurrency`` closed-loop clients for ``seconds`` and summarise what they got."""
    if concurrency < 1 or seconds <= 0:
        raise ValueError(f"run_load: need concurrency >= 1 and seconds > 0, got {concurrency}, {seconds}")
    results: list[dict] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds
    threads = [threading.Thread(target=_client_loop, daemon=True,
                                args=(server, prompts, k * 7, deadline, max_tokens, system, results, lock))
               for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:  # every request has its own timeout, so this join is bounded too
        t.join(timeout=seconds + REQUEST_TIMEOUT_S + 60)
    if any(t.is_alive() for t in threads):
        raise ServerError(f"run_load: a client did not finish within {seconds + REQUEST_TIMEOUT_S + 60:.0f} s")
    return summarize(results, concurrency, time.perf_counter() - start)


def summarize(results, concurrency: int, wall_s: float) -> dict:
    """requests/s, tokens/s, TTFT and latency percentiles, and errors of one load-test run."""
    ok = [r for r in results if not r["error"]]
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    latencies = [r["latency_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    return {"concurrency": concurrency, "requests": len(ok), "errors": len(results) - len(ok),
            "wall_s": wall_s, "requests_per_s": len(ok) / wall_s, "tokens_per_s": tokens / wall_s,
            "ttft_p50_s": percentile(ttfts, 50), "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95),
            "mean_tokens": tokens / len(ok) if ok else float("nan"),
            "first_error": next((r["error"] for r in results if r["error"]), None)}


def format_load_table(rows) -> str:
    lines = [f"{'batching':<9} {'clients':>7} {'req':>5} {'req/s':>6} {'tok/s':>7} {'TTFT p50':>9} "
             f"{'lat p50':>8} {'lat p95':>8} {'errors':>6}"]
    for r in rows:
        lines.append(f"{r.get('mode', ''):<9} {r['concurrency']:>7} {r['requests']:>5} {r['requests_per_s']:6.2f} "
                     f"{r['tokens_per_s']:7.1f} {r['ttft_p50_s']:8.2f}s {r['latency_p50_s']:7.2f}s "
                     f"{r['latency_p95_s']:7.2f}s {r['errors']:>6}")
    return "\n".join(lines)
