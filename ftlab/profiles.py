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
from dataclasses import asdict, dataclass, fields, replace

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
        """True when the model is an untrained stand-in (``tiny``, or ``tiny-gpu`` for the gpu profile in CI):
        notebooks then assert only the mechanics, never what a pretrained model knows."""
        return self.name == "ci" or self.model_name.startswith("tiny")

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


OVERRIDES_VAR = "FTLAB_PROFILE_OVERRIDES"

# The gpu profile run on a CPU (CI): its model swapped for a random one of its architecture in
# miniature, in bf16 (ftlab.models.TINY_GPU), and its run lengths scaled down ~50x; the example length,
# LoRA rank and learning rates stay the gpu profile's own. Generation stops at ci's 16 tokens: 64 took
# twice the CPU time of the ci pass for notebook 00 and exercises no other code. `make test` runs the notebooks with
# FTLAB_PROFILE=gpu FTLAB_PROFILE_OVERRIDES=gpu-on-cpu (tests/test_gpu_profile.py checks the numbers).
NAMED_OVERRIDES = {
    "gpu-on-cpu": dict(model_name="tiny-gpu", max_steps=6, short_steps=2, batch_size=4, train_size=48,
                       eval_size=8, eval_every=2, eval_batch_size=8, max_new_tokens=16),
}


def _parse_overrides(text: str) -> dict:
    """``"max_steps=4,model_name=tiny"`` or a key of :data:`NAMED_OVERRIDES` -> typed field values."""
    text = text.strip()
    if not text:
        return {}
    if text in NAMED_OVERRIDES:
        return dict(NAMED_OVERRIDES[text])
    types = {f.name: f.type for f in fields(Profile)}
    out = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in types or key == "name":
            raise ValueError(f"${OVERRIDES_VAR}: {item!r} is not FIELD=VALUE with a profile field. Fix: use fields of "
                             f"{', '.join(k for k in types if k != 'name')}, or one of {', '.join(NAMED_OVERRIDES)}.")
        kind = str(types[key])
        try:
            out[key] = int(value) if kind == "int" else float(value) if kind == "float" else (
                None if value.lower() == "none" else value)
        except ValueError:
            raise ValueError(f"${OVERRIDES_VAR}: {key}={value!r} is not a valid {kind}.") from None
    return out


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The active run profile: ``name``, else ``$FTLAB_PROFILE``, else ``"laptop"``.

    Keyword overrides replace single fields, e.g. ``get_profile(max_steps=10)``; so does
    ``$FTLAB_PROFILE_OVERRIDES`` (``"max_steps=10,batch_size=2"``, or a name in :data:`NAMED_OVERRIDES`),
    which is how CI runs the gpu profile's code paths on a CPU. Keywords win over the variable.
    """
    name = (name or os.environ.get(ENV_VAR) or DEFAULT).strip().lower()
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r} (from ${ENV_VAR}). Choose one of: {', '.join(PROFILES)}.")
    overrides = {**_parse_overrides(os.environ.get(OVERRIDES_VAR, "")), **overrides}
    profile = PROFILES[name]
    return replace(profile, **overrides) if overrides else profile
