"""The course's fine-tuning recipe for its four tasks: one definition, read by every run that trains
the course's main result (``python -m ftlab.bench.quality``, notebook 00's short run, notebook 06's LoRA run).

Found by a search on the validation split (``docs/recipe.md``, the log in ``docs/results/recipe_runs.jsonl``):
what moved the score was *how the loss weighs the examples*. With the usual token average, a one-word
classification label is ~1 % of a step's loss next to JSON answers and the replay's long answers, and 60 steps
left classification at chance; weighting every example the same (``loss_weighting="example"``) learned it and
forgot less. 120 steps of 8 then reached 0.755 on the validation sample with every probe still answered.
The test split was used only for the final numbers (``docs/results/quality_laptop.json``).

Example:
    >>> config = recipe_config("runs/x", max_steps=10)
    >>> config.method, config.max_steps
    ('lora', 10)
"""

from __future__ import annotations

# The training settings (TrainConfig fields) and the data mix (replay share, system prompt).
RECIPE = {
    "method": "lora",
    "lora_rank": 16,
    "lora_alpha": 32,
    "target_modules": "all-linear",
    "lr": 2e-3,
    "scheduler": "cosine",
    "warmup_ratio": 0.05,
    "batch_size": 8,
    "max_steps": 120,
    "max_length": 256,
    "batching": "group",
    "loss_weighting": "example",
}
REPLAY_SHARE = 0.3  # share of the training mix from data/general_replay.jsonl (the guard against forgetting)
SYSTEM_PROMPT_IN_TRAINING = True  # train and ask with the course system prompt: ties the task to it


def recipe_config(output_dir: str, **overrides):
    """The recipe as a ``TrainConfig`` writing to ``output_dir``; ``overrides`` change single fields
    (``max_steps`` for a profile's budget, ``lr`` for an experiment). Unknown fields raise, naming them."""
    from ftlab.training.config import TrainConfig

    settings = {**RECIPE, **overrides}
    steps = settings["max_steps"]
    warmup = settings.pop("warmup_ratio")
    settings.setdefault("warmup_steps", max(1, round(warmup * steps)))
    return TrainConfig(output_dir=output_dir, **settings)
