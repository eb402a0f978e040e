"""ftlab: the small, readable package behind the fine-tuning course.

Every public name is importable from the top level (``from ftlab import train``), but modules are
imported only when first used, so ``import ftlab`` stays instant in a notebook.

Example:
    >>> import ftlab
    >>> ftlab.get_profile("ci").model_name
    'tiny'
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_model": "models", "load_tokenizer": "models", "chat": "models", "prefetch": "models",
    "pick_device": "models", "pick_dtype": "models",
    "get_profile": "profiles", "Profile": "profiles",
    "load_records": "data", "validate_records": "data", "DataValidationError": "data",
    "summarize_dataset": "data", "split_records": "data",
    "tokenize_example": "templates", "tokenize_dataset": "templates", "render_token_view": "templates",
    "mask_prompt_tokens": "templates",
    "collate": "batching", "make_batches": "batching", "padding_waste": "batching", "pack_examples": "batching",
    "load_course_data": "course_data", "score_example": "course_data",
    "prepare_model": "methods", "count_parameters": "methods",
    "TrainConfig": "train_config", "TrainResult": "train_config", "train": "training",
    "estimate_memory": "memory", "estimate_inference_memory": "memory", "HARDWARE": "memory",
    "evaluate_model": "evaluate", "compare_models": "evaluate", "bootstrap_ci": "evaluate",
    "check": "exercises",
    "quiet": "widgets",
    "doctor": "system",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ftlab.{module}"), name)
    globals()[name] = value
    return value
