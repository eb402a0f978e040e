"""Exercises of notebook 00: concepts — when to fine-tune, what it costs.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations


from ftlab.exercises.checkers import Choice, Number, exercise


# --------------------------------------------------------------------------- concepts (notebook 00)


@exercise(
    "concepts.method_for_16gb", Choice({"a": "full fine-tuning in bf16", "b": "LoRA on bf16 weights",
                                        "c": "QLoRA (4-bit base weights + LoRA)", "d": "train from scratch"}),
    question="You have one GPU with 16 GB and want to adapt a 7B model to your task. Which method fits?",
    mistakes=[
        (lambda: "a", "Full FT of 7B needs ~16 bytes/param with AdamW (over 100 GB) before activations."),
        (lambda: "b", "The bf16 weights alone are ~13 GiB; with activations and the CUDA context that does not fit in 16 GB."),
        (lambda: "d", "Training from scratch needs vastly more data and compute than adapting a pretrained model."),
    ],
    explanation="4-bit weights (~3.5 GiB for 7B) leave room for adapters, activations and the optimizer.",
)
def _method_for_16gb():
    weights_bf16_gib = 7e9 * 2 / 2**30  # 13.0 GiB: too close to 16 GB with activations on top
    weights_nf4_gib = 7e9 * 0.5 / 2**30  # 3.3 GiB (+ quantisation constants): fits
    assert weights_nf4_gib < 16 < weights_bf16_gib + 4
    return "c"


# --------------------------------------------------------------------------- concepts (notebook 00)


@exercise(
    "concepts.gain_per_cost", Number(rtol=1e-3),
    question="Prompting scores 0.55, a fine-tuned model 0.85; fine-tuning costs $600 more than prompting over the "
             "system's life. How many score points (0-100 scale) does it buy per $100?",
    mistakes=[
        (lambda: (0.85 - 0.55) / 6, "Scores 0.55 and 0.85 are 55 and 85 points on the 0-100 scale."),
        (lambda: (85 - 55) / 600 * 1000, "That is per $1,000; the question asks per $100."),
        (lambda: 85 / 6, "Count the gain over prompting (85 - 55), not the fine-tuned score itself."),
    ],
    explanation="Gain per cost compares options on one scale: extra quality bought per unit of extra money.",
)
def _gain_per_cost():
    gain_points = 100 * (0.85 - 0.55)  # 30 points better than prompting
    extra_cost_in_100s = 600 / 100  # $600 = 6 x $100
    return gain_points / extra_cost_in_100s  # 5 points per $100


@exercise(
    "concepts.which_approach", Choice({"a": "prompt engineering only", "b": "retrieval-augmented generation (RAG)",
                                       "c": "fine-tuning", "d": "training from scratch"}),
    question="A bank's assistant must answer questions about its current interest rates and fees, which change "
             "every week, quoting the official documents. You have 50 labelled conversations. Which approach "
             "should you build first?",
    mistakes=[
        (lambda: "c", "Fine-tuning would bake this week's rates into the weights (wrong next week), and 50 examples "
                      "are too few. Fine-tune later for tone or format, if at all."),
        (lambda: "a", "The prompt alone cannot hold all the bank's documents, and the model does not know this week's "
                      "rates: the facts must be looked up for every question."),
        (lambda: "d", "A pretrained model already handles the language; training from scratch costs millions and "
                      "still would not know next week's rates."),
    ],
    explanation="Knowledge that is large or changes often belongs in retrieval; fine-tuning teaches behaviour and format.",
)
def _which_approach():
    facts_change_weekly, labelled_examples = True, 50
    needs_lookup = facts_change_weekly  # weights cannot track weekly changes; a search index can
    assert labelled_examples < 100  # too few to fine-tune reliably anyway
    return "b" if needs_lookup else "c"


# --------------------------------------------------------------------------- memory (notebooks 00, 03)


@exercise(
    "memory.weights_gib", Number(rtol=5e-3),
    question="How many GiB do the weights of a 7-billion-parameter model take in bf16?",
    mistakes=[
        (lambda: 7e9 * 2 / 1e9, "That is GB (10^9 bytes); the question asks for GiB (2^30 bytes)."),
        (lambda: 7e9 * 4 / 2**30, "That is fp32 (4 bytes per parameter); bf16 has 16 bits = 2 bytes."),
        (lambda: 7e9 * 16 / 2**30, "That counts bits, not bytes: bf16 is 16 bits = 2 bytes per parameter."),
    ],
    explanation="Weights alone; training adds gradients, optimizer states and activations on top.",
)
def _weights_gib():
    n_params = 7e9
    bytes_per_param = 2  # bf16: 16 bits
    return n_params * bytes_per_param / 2**30  # ≈ 13.04 GiB
