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


def _client_loop(server, prompts, start_index, deadline, max_tokens, system, out, lock, budget=None):
    client = server.client(timeout=REQUEST_TIMEOUT_S)
    i = start_index
    while time.perf_counter() < deadline:
        if budget is not None:  # a fixed number of requests for the whole level, shared by the clients
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
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


def run_load(server, prompts, *, concurrency: int, seconds: float, max_tokens: int = 48, system=None,
             requests: int | None = None) -> dict:
    """Run ``concurrency`` closed-loop clients and summarise what they got.

    Without ``requests``: for ``seconds``. With ``requests``: until that many requests are done (the
    clients share the count), ``seconds`` then only bounds the whole level (a server too slow for it
    ends the level early, and the row shows fewer requests).
    """
    if concurrency < 1 or seconds <= 0 or (requests is not None and requests < concurrency):
        raise ValueError(f"run_load: need concurrency >= 1, seconds > 0 and requests >= concurrency; got "
                         f"{concurrency}, {seconds}, {requests}")
    results: list[dict] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds
    budget = [requests] if requests is not None else None
    threads = [threading.Thread(target=_client_loop, daemon=True,
                                args=(server, prompts, k * 7, deadline, max_tokens, system, results, lock, budget))
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
            # the spread of single requests: with few requests a p95 is one or two of them
            "latency_std_s": float(np.std(latencies, ddof=1)) if len(latencies) > 1 else float("nan"),
            "ttft_p95_s": percentile(ttfts, 95),
            "mean_tokens": tokens / len(ok) if ok else float("nan"),
            "first_error": next((r["error"] for r in results if r["error"]), None)}


def load_frame(rows):
    """The load-test rows as a DataFrame (one row per server, mode and concurrency)."""
    import pandas as pd

    cols = ["server", "mode", "concurrency", "requests", "errors", "requests_per_s", "tokens_per_s", "ttft_p50_s",
            "ttft_p95_s", "latency_p50_s", "latency_p95_s", "latency_std_s"]
    return pd.DataFrame([{c: r.get(c) for c in cols if c in r or c in ("server", "mode")} for r in rows])


def format_load_table(rows) -> str:
    """The rows as aligned text: server, batching, clients, requests, throughput, TTFT and latency."""
    lines = [f"{'server':<15} {'batching':<8} {'clients':>7} {'req':>4} {'req/s':>6} {'tok/s':>7} {'TTFT p50':>9} "
             f"{'TTFT p95':>9} {'lat p50':>8} {'lat p95':>8} {'lat sd':>7} {'errors':>6}"]
    for r in rows:
        lines.append(f"{r.get('server', 'transformers'):<15} {r.get('mode', ''):<8} {r['concurrency']:>7} "
                     f"{r['requests']:>4} {r['requests_per_s']:6.2f} {r['tokens_per_s']:7.1f} {r['ttft_p50_s']:8.2f}s "
                     f"{r.get('ttft_p95_s', float('nan')):8.2f}s {r['latency_p50_s']:7.2f}s {r['latency_p95_s']:7.2f}s "
                     f"{r.get('latency_std_s', float('nan')):6.2f}s {r['errors']:>6}")
    return "\n".join(lines)
