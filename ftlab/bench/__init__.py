"""Benchmark scripts that print numbers (speed and memory targets live here, not in timed tests).

* ``python -m ftlab.bench.train``  - ftlab's loop vs transformers' Trainer, padding vs grouping vs
  packing, and full fine-tuning throughput against the machine's measured matmul FLOP/s.
* ``python -m ftlab.bench.generate`` - ftlab's generation loop vs ``model.generate`` at batch 1, 8, 16,
  and the matmul limit of this machine.
* ``python -m ftlab.bench.memory`` - the memory estimator against measured peaks.
* ``python -m ftlab.bench.quality`` - what fine-tuning does to task scores.
* ``python -m ftlab.bench.serve``   - ``transformers serve`` under 1-8 concurrent clients, continuous
  batching off and on: requests/s, tokens/s, time to first token, latency p50/p95, errors.

Each takes ``--help``. Timings on a shared machine vary; run them on an idle one to compare.
"""
