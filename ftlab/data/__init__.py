"""Part 1 of the course: data. Reading files and formats, validation and reports, splits and
de-duplication, chat templates and loss masking, batching, and the course datasets.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "IGNORE_INDEX": "batching", "STRATEGIES": "batching", "GROUP_WINDOW": "batching",
    "collate": "batching", "model_inputs": "batching", "pack_examples": "batching",
    "make_batches": "batching", "padding_waste": "batching", "measure_packing_effect": "batching",
    "compare_strategies": "batching", "prepare_examples": "batching", "BatchStream": "batching",
    "TASKS": "course", "LABELS": "course", "SYSTEM_PROMPT": "course", "DATASETS": "course",
    "data_dir": "course", "course_data_path": "course", "load_course_data": "course",
    "mix_replay": "course", "score_example": "course", "score_probe": "course",
    "FORMATS": "records", "ROLES": "records", "SHAREGPT_ROLES": "records", "FILE_TYPES": "records",
    "MAX_SHOWN": "records", "Problem": "records", "DataValidationError": "records",
    "detect_format": "records", "validate_records": "records", "load_records": "records",
    "record_text": "records", "normalize_text": "records", "shingles": "records",
    "jaccard": "records", "near_duplicate_pairs": "records", "duplicate_groups": "records",
    "drop_duplicates": "records", "DataReport": "records", "summarize_dataset": "records",
    "Splits": "records", "split_records": "records", "find_leaks": "records",
    "leakage_demo": "records",
    "TRAIN_ON": "templates", "FALLBACK_TEMPLATE_DOC": "templates", "TemplateError": "templates",
    "render_prompt": "templates", "mask_prompt_tokens": "templates",
    "tokenize_example": "templates", "tokenize_dataset": "templates",
    "render_token_view": "templates",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
