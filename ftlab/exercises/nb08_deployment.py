"""Exercises of notebook 08: deployment — GGUF file sizes, a latency percentile, what changes answers.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import numpy as np

from ftlab.exercises.checkers import Choice, Number, exercise

# Latencies (seconds) of 20 requests from a load test: the p95 exercise's data
LATENCIES = [0.84, 0.91, 1.02, 0.88, 0.95, 1.10, 0.87, 0.93, 2.40, 0.99,
             1.05, 0.90, 0.86, 1.20, 0.92, 0.97, 3.10, 1.01, 0.89, 0.94]


@exercise(
    "deploy.gguf_size_q8_7b", Number(rtol=1e-2),
    question="A 7-billion-parameter model is exported as GGUF Q8_0: blocks of 32 weights, each block stores 32 "
             "int8 values and one float16 scale. About how big is the file, in GB (10^9 bytes)? Ignore the "
             "metadata and the few F32 norm weights.",
    mistakes=[
        (lambda: 7.0, "That is 8 bits per weight; each block of 32 also stores a 16-bit scale: 8 + 16/32 = 8.5 bits."),
        (lambda: 7e9 * 8.5 / 8 / 2**30, "That is GiB (2^30 bytes); the question asks for GB (10^9 bytes)."),
        (lambda: 14.0, "That is float16 (2 bytes per weight); Q8_0 stores about 1 byte per weight."),
        (lambda: 7e9 * 4.5 / 8 / 1e9, "That is Q4_0 (4 bits + the scale: 4.5 bits per weight)."),
        (lambda: 7e9 * 8.5 / 1e9, "That is bits, not bytes: divide by 8."),
    ],
    explanation="Q8_0 costs 8.5 bits per weight: a 7B model is ~7.4 GB, about half of F16 (14 GB) and 53 % more "
                "than Q4_0 (3.9 GB). The file size is also the memory the weights take when served.",
)
def _gguf_size_q8_7b():
    params = 7e9
    bits_per_weight = 8 + 16 / 32  # int8 value + a float16 scale shared by 32 weights
    return params * bits_per_weight / 8 / 1e9  # = 7.44 GB


@exercise(
    "deploy.p95_latency", Number(rtol=1e-3),
    question="Twenty requests took ftlab.exercises.nb08_deployment.LATENCIES seconds. What is their p95 latency, "
             "with linear interpolation between the sorted values (numpy.percentile's default)?",
    mistakes=[
        (lambda: float(np.mean(LATENCIES)), "That is the mean; p95 is the value 95 % of requests stay under."),
        (lambda: float(np.median(LATENCIES)), "That is the median (p50); p95 looks at the slow tail."),
        (lambda: max(LATENCIES), "That is the maximum (p100); p95 sits between the 19th and 20th sorted values."),
        (lambda: sorted(LATENCIES)[18], "That is the 19th sorted value (nearest rank); with interpolation p95 lies "
                                       "5 % of the way further, towards the 20th."),
    ],
    explanation="p95 is what one user in twenty waits at least. Two slow requests out of twenty (2.4 s, 3.1 s) "
                "barely move the median but dominate p95: averages hide the tail that users notice.",
)
def _p95_latency():
    values = sorted(LATENCIES)
    position = 0.95 * (len(values) - 1)  # 18.05: between index 18 and 19
    low = int(position)
    return values[low] + (position - low) * (values[low + 1] - values[low])  # = 2.4 + 0.05 * 0.7 = 2.435


@exercise(
    "deploy.what_changes_answers", Choice({
        "a": "exporting the merged fp32 model to a GGUF file of type F32",
        "b": "serving the same weights behind an OpenAI-compatible API, greedy decoding",
        "c": "shipping the weights without the chat template the model was fine-tuned with",
        "d": "moving the server from port 8000 to port 8001",
    }),
    question="Which of these changes what the deployed model answers, with no error message anywhere?",
    mistakes=[
        (lambda: "a", "An F32 GGUF holds the same numbers: the notebook measured the logits equal to ~1e-6."),
        (lambda: "b", "The server runs the same greedy generation: the notebook asserted identical answers."),
        (lambda: "d", "The port changes where clients connect, not what the model computes."),
    ],
    explanation="Without its chat template the model sees prompts in a format it was never trained on: it still "
                "answers, just worse. That is why the GGUF carries the template and the round trip checks it.",
)
def _what_changes_answers():
    return "c"
