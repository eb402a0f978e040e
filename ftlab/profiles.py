"""Run profiles: one switch (``FTLAB_PROFILE``) decides how big every notebook's runs are.

=========  ==============================  ==============================================
profile    model                           meant for
=========  ==============================  ==============================================
``ci``     ``tiny`` (random weights)       CI and smoke tests: seconds per notebook
``laptop`` ``smollm2-135m-instruct``       the default: a real model on a laptop CPU
``gpu``    ``smollm2-1.7b-instruct``, bf16  a CUDA GPU or a DGX Spark
=========  ==============================  ==============================================

Notebooks call :func:`get_profile` once in their set-up cell and read every size from it,
so nothing in a notebook changes between CI and a learner's run.

Example:
    >>> import os; os.environ["FTLAB_PROFILE"] = "ci"
    >>> get_profile().model_name
    'tiny'
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

ENV_VAR = "FTLAB_PROFILE"
DEFAULT = "laptop"


@dataclass(frozen=True)
class Profile:
    """Sizes for one kind of machine. Every notebook reads its run sizes from here."""

    name: str
    model_name: str  # what ftlab.load_model() loads
    dtype: str | None  # None = ftlab's choice (bf16 on CUDA, fp32 on CPU)
    max_steps: int  # optimizer steps of a main training run
    short_steps: int  # steps of the quick comparison runs (learning rates, methods, ...)
    batch_size: int  # examples per optimizer step
    max_length: int  # tokens per example, longer ones are truncated (and counted)
    train_size: int  # training examples a notebook uses
    eval_size: int  # validation / test examples a notebook evaluates on
    eval_every: int  # validation every N steps
    max_new_tokens: int  # generation length for evaluation
    lora_rank: int
    learning_rate: float  # full fine-tuning
    lora_learning_rate: float
    eval_batch_size: int = 16  # prompts per generation batch of notebook 06's evaluations

    @property
    def is_ci(self) -> bool:
        return self.name == "ci"

    @property
    def run_batch(self) -> int:
        """Examples per step of the notebooks' method runs (03, 04, 06; 05's stop-token runs)."""
        return max(2, self.batch_size // 2)

    @property
    def quick_batch(self) -> int:
        """Examples per step of the short side-by-side runs of notebooks 01 and 02."""
        return max(2, self.batch_size // 4)

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "ci": Profile(
        name="ci", model_name="tiny", dtype="fp32", max_steps=6, short_steps=3, batch_size=4,
        max_length=256, train_size=48, eval_size=8, eval_every=3, max_new_tokens=16,
        lora_rank=4, learning_rate=1e-3, lora_learning_rate=3e-3,
    ),
    "laptop": Profile(
        name="laptop", model_name="smollm2-135m-instruct", dtype="fp32", max_steps=60, short_steps=15,
        batch_size=8, max_length=256, train_size=480, eval_size=48, eval_every=15, max_new_tokens=48,
        lora_rank=16, learning_rate=5e-5, lora_learning_rate=1e-3,
    ),
    "gpu": Profile(
        name="gpu", model_name="smollm2-1.7b-instruct", dtype=None, max_steps=300, short_steps=80,
        batch_size=16, max_length=512, train_size=2000, eval_size=200, eval_every=50, max_new_tokens=64,
        lora_rank=16, learning_rate=2e-5, lora_learning_rate=2e-4,
    ),
}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The active run profile: ``name``, else ``$FTLAB_PROFILE``, else ``"laptop"``.

    Keyword overrides replace single fields, e.g. ``get_profile(max_steps=10)``.
    """
    name = (name or os.environ.get(ENV_VAR) or DEFAULT).strip().lower()
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r} (from ${ENV_VAR}). Choose one of: {', '.join(PROFILES)}.")
    profile = PROFILES[name]
    return replace(profile, **overrides) if overrides else profile
