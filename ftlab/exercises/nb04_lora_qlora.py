"""Exercises of notebook 04: LoRA and QLoRA — adapter sizes, merging, double quantisation.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations


from ftlab.exercises.checkers import Function, Number, exercise


# --------------------------------------------------------------------------- methods / LoRA (notebook 04)

# SmolLM2-135M: hidden 576, 9 query heads and 3 key/value heads of 64 dims, 30 layers.
_SMOL = dict(hidden=576, kv_dim=3 * 64, layers=30)


@exercise(
    "lora.trainable_params", Number(rtol=1e-6),
    question="LoRA with rank r=8 on q_proj and v_proj of SmolLM2-135M (hidden 576, 3 key/value heads of 64 dims, "
             "30 layers). How many trainable parameters?",
    mistakes=[
        (lambda: 8 * (576 + 576) * 2 * 30, "v_proj is not 576 -> 576: grouped-query attention has 3 KV heads x 64 = 192 outputs."),
        (lambda: 8 * (576 + 576) + 8 * (576 + 192), "That is one layer; the adapters sit in each of the 30 layers."),
        (lambda: (576 * 576 + 576 * 192) * 30, "That is the size of the frozen weights; LoRA trains A (r x in) and B (out x r)."),
        (lambda: 8 * 576 * 30 + 8 * 576 * 30, "Each adapter has two matrices: A is r x in_features, B is out_features x r."),
    ],
    explanation="An adapter on Linear(in, out) adds r*(in + out) parameters; here 0.34% of the 135M.",
)
def _lora_params():
    r, hidden, kv_dim, layers = 8, 576, 3 * 64, 30
    q_proj = r * (hidden + hidden)  # A: r x 576, B: 576 x r
    v_proj = r * (hidden + kv_dim)  # A: r x 576, B: 192 x r
    return (q_proj + v_proj) * layers  # 460,800


# =========================================================================== notebook 04 (helper N3)
# LoRA merging and NF4 double quantisation. (notebook 04 also uses "lora.trainable_params" above.)


def _merge_cases():
    import torch

    g = torch.Generator().manual_seed(4)
    cases = []
    for d_out, d_in, r, alpha in ((6, 5, 2, 4.0), (8, 8, 4, 16.0), (3, 7, 1, 1.0), (5, 4, 3, 8.0)):
        cases.append((torch.randn(d_out, d_in, generator=g), torch.randn(r, d_in, generator=g),
                      torch.randn(d_out, r, generator=g), alpha, r))
    return cases


@exercise(
    "lora.merge_weight", Function(_merge_cases, rtol=1e-5, atol=1e-5),
    question="Write merge(W, A, B, alpha, r): W [d_out, d_in] frozen, A [r, d_in], B [d_out, r]; return the merged "
             "weight that computes the same as the LoRA layer.",
    mistakes=[
        (lambda: (lambda W, A, B, alpha, r: W + B @ A), "The adapter's update is scaled by alpha / r; multiply B @ A by it."),
        (lambda: (lambda W, A, B, alpha, r: W + alpha * (B @ A)), "The scale is alpha / r, not alpha: divide by the rank."),
        (lambda: (lambda W, A, B, alpha, r: W + (r / alpha) * (B @ A)), "The scale is alpha / r (you used r / alpha)."),
        (lambda: (lambda W, A, B, alpha, r: (alpha / r) * (B @ A)), "Only the update: add the frozen weight W too."),
    ],
    explanation="Merging folds W0 + (alpha/r)·B·A into one matrix: the same function, no adapter layers at inference.",
)
def _merge_weight():
    def merge(W, A, B, alpha, r):
        # W: [d_out, d_in], A: [r, d_in], B: [d_out, r]
        return W + (alpha / r) * (B @ A)  # the adapter's update folded into the weight

    return merge


@exercise(
    "quant.double_quant_bits", Number(rtol=1e-4),
    question="NF4 with double quantisation: 4-bit codes, blocks of 64 weights whose absmax is stored in 8 bits, and "
             "one fp32 scale per 256 of those absmax values. How many bits per weight in total (ignore the one offset)?",
    mistakes=[
        (lambda: 4 + 32 / 64, "That is NF4 without double quantisation (fp32 absmax): the absmax is stored in 8 bits here."),
        (lambda: 4.0, "The codes alone; every block of 64 also stores its scale (8 bits), and every 256 blocks an fp32 one."),
        (lambda: 4 + 8 / 64, "Almost: the second-level fp32 scale (one per 256 blocks of 64 weights) adds 32 / 16384 bit."),
        (lambda: (4 + 8 / 64 + 32 / (64 * 256)) / 8, "That is bytes per weight; the question asks for bits."),
    ],
    explanation="≈ 4.127 bits = 0.516 bytes per weight, against 4.5 bits with fp32 block scales and 32 bits in fp32.",
)
def _double_quant_bits():
    codes = 4  # the NF4 code of each weight
    absmax_8bit = 8 / 64  # one 8-bit absmax per block of 64 weights
    second_level = 32 / (64 * 256)  # one fp32 scale per 256 blocks
    return codes + absmax_8bit + second_level  # ≈ 4.127
