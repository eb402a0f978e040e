"""Exercises of notebook 03: full fine-tuning — memory, early stopping, checkpoints.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import math

from ftlab.exercises.checkers import Function, Number, exercise


# =========================================================================== notebook 03 (helper N2)
# Exercises of 03_full_fine_tuning: memory of full fine-tuning, early stopping, checkpoints.


@exercise(
    "memory.full_ft_135m_gib", Number(rtol=2e-3),
    question="SmolLM2-135M has 134,515,008 parameters. How many GiB do its weights, gradients and AdamW states "
             "take in full fp32 fine-tuning (activations not counted)?",
    mistakes=[
        (lambda: 134_515_008 * 4 / 2**30, "That is the weights only; training also keeps a gradient and AdamW's "
                                          "two moments (m and v) per parameter: 16 bytes in all."),
        (lambda: 134_515_008 * 12 / 2**30, "One 4-byte item is missing: weight, gradient, AdamW m AND AdamW v."),
        (lambda: 134_515_008 * 8 / 2**30, "AdamW keeps two fp32 states per parameter on top of weight and gradient."),
        (lambda: 134_515_008 * 16 / 1e9, "That is GB (10^9 bytes); the question asks for GiB (2^30 bytes)."),
    ],
    explanation="16 bytes per parameter: about 2 GiB for 135M, over 100 GiB for a 7B model, before activations.",
)
def _full_ft_135m_gib():
    n_params = 134_515_008
    bytes_per_param = 4 + 4 + 4 + 4  # fp32 weight, gradient, AdamW m, AdamW v
    return n_params * bytes_per_param / 2**30  # ≈ 2.00 GiB


def _best_step_cases():
    h1 = [{"step": 0, "val_loss": 2.0}, {"step": 5, "loss": 1.9}, {"step": 10, "loss": 1.5, "val_loss": 1.6},
          {"step": 15, "loss": 1.1}, {"step": 20, "loss": 0.7, "val_loss": 1.7}]
    h2 = [{"step": 0, "val_loss": 3.0}] + [{"step": s, "loss": 3.0 - 0.4 * s, "val_loss": 3.0 - 0.2 * s + 0.05 * s * s}
                                           for s in range(1, 7)]
    h3 = [{"step": 0, "val_loss": 1.0}, {"step": 2, "loss": 0.4, "val_loss": 1.3}, {"step": 4, "loss": 0.6, "val_loss": 1.1}]
    return [(h1,), (h2,), (h3,)]


@exercise(
    "training.best_step", Function(_best_step_cases),
    question="Write best_step(history): the 'step' whose 'val_loss' is lowest (only evaluation steps have one).",
    mistakes=[
        (lambda: (lambda history: min((h for h in history if "loss" in h), key=lambda h: h["loss"])["step"]),
         "You picked the lowest *training* loss; it keeps falling while the model memorises. Use 'val_loss'."),
        (lambda: (lambda history: [h for h in history if "val_loss" in h][-1]["step"]),
         "That is the last evaluation; early stopping keeps the best one, the lowest 'val_loss'."),
        (lambda: (lambda history: min(range(len(history)), key=lambda i: history[i].get("val_loss", math.inf))),
         "That is the position in the list; return the record's 'step' field."),
    ],
    explanation="Early stopping keeps the checkpoint of the lowest validation loss, not the last or lowest training loss.",
)
def _best_step():
    def best_step(history):
        evaluated = [h for h in history if h.get("val_loss") is not None]  # evaluation steps only
        return min(evaluated, key=lambda h: h["val_loss"])["step"]  # min keeps the first on ties

    return best_step


@exercise(
    "checkpoint.lost_steps", Number(rtol=0, atol=0.5),
    question="A run checkpoints every 20 steps (save_every=20, keep_last=2) and crashes right after step 90 has "
             "finished. After resume_from='latest', how many completed optimizer steps must be trained again?",
    mistakes=[
        (lambda: 90, "That is starting over; resume_from='latest' continues from the newest checkpoint."),
        (lambda: 30, "keep_last=2 keeps two checkpoints (steps 60 and 80); resuming takes the newest, step 80."),
        (lambda: 11, "Step 90 finished before the crash, so steps 81 to 90 are lost: count them again."),
    ],
    explanation="Only the steps since the newest checkpoint are lost; checkpoint often enough that a crash is cheap.",
)
def _lost_steps():
    save_every, crashed_after = 20, 90
    last_checkpoint = crashed_after // save_every * save_every  # 80: the newest checkpoint
    return crashed_after - last_checkpoint  # 10 steps to train again


# --------------------------------------------------------------------------- memory

@exercise(
    "memory.adamw_bytes_per_param", Number(rtol=1e-6),
    question="Full fine-tuning in fp32 with AdamW: how many bytes per parameter for weights + gradients + "
             "optimizer states (activations not counted)?",
    mistakes=[
        (lambda: 12, "You are missing one 4-byte item: weights, gradients, AND two AdamW moments (m and v)."),
        (lambda: 8, "AdamW keeps two fp32 states per parameter (m and v) on top of weights and gradients."),
        (lambda: 4, "That is the weights only; training also stores gradients and AdamW's two moments."),
    ],
    explanation="4 (weights) + 4 (gradients) + 8 (AdamW m and v) = 16 bytes: 4x the weights alone.",
)
def _adamw_bytes():
    weights, grads = 4, 4  # fp32
    adam_m, adam_v = 4, 4  # first and second moment, fp32
    return weights + grads + adam_m + adam_v  # 16
