"""ftlab: the small, readable package behind the fine-tuning course.

Every public name is importable from the top level (``from ftlab import train``), but modules are
imported only when first used, so ``import ftlab`` stays instant in a notebook.

Example:
    >>> import ftlab
    >>> ftlab.get_profile("ci").model_name
    'tiny'
"""

from __future__ import annotations

from ftlab._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it. The packages are stacked in the layers of
# docs/architecture.md: data -> memory -> training -> evaluate -> ..., the applications on top.
_EXPORTS = {
    "load_model": "models", "load_tokenizer": "models", "chat": "models", "prefetch": "models",
    "pick_device": "models", "pick_dtype": "models",
    "get_profile": "profiles", "Profile": "profiles",
    "load_records": "data.records", "validate_records": "data.validate",
    "DataValidationError": "data.validate", "summarize_dataset": "data.report",
    "split_records": "data.splits",
    "tokenize_example": "data.templates", "tokenize_dataset": "data.templates",
    "render_token_view": "data.templates", "mask_prompt_tokens": "data.templates",
    "collate": "data.batching", "make_batches": "data.batching", "padding_waste": "data.batching",
    "pack_examples": "data.batching",
    "load_course_data": "data.course", "score_example": "evaluate.scoring",
    "prepare_model": "training.methods", "count_parameters": "training.parameters",
    "TrainConfig": "training.config", "TrainResult": "training.config", "train": "training.loop",
    "Playground": "ui.playground", "playground": "ui.playground_panel",
    "estimate_memory": "memory.estimator", "estimate_inference_memory": "memory.inference",
    "HARDWARE": "memory.hardware",
    "evaluate_model": "evaluate.harness", "compare_models": "evaluate.compare",
    "bootstrap_ci": "evaluate.stats",
    "check": "exercises.answers",
    "quiet": "ui.widgets",
    "doctor": "preflight.system", "setup_check": "preflight.system",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
