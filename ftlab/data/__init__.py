"""Part 1 of the course: data.

readers (files) -> formats (detect, convert) -> validate (problems) -> records (``load_records``);
dedupe and splits (near copies, leak-free splits); report (``summarize_dataset``); templates (chat
templates, loss masking); batching (padding, packing); course (the course datasets).
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
    "FILE_TYPES": "readers",
    "FORMATS": "formats", "SHAREGPT_ROLES": "formats", "detect_format": "formats",
    "ROLES": "validate", "MAX_SHOWN": "validate", "Problem": "validate",
    "DataValidationError": "validate", "validate_records": "validate",
    "load_records": "records",
    "record_text": "dedupe", "normalize_text": "dedupe", "shingles": "dedupe", "jaccard": "dedupe",
    "near_duplicate_pairs": "dedupe", "duplicate_groups": "dedupe", "drop_duplicates": "dedupe",
    "DataReport": "report", "summarize_dataset": "report",
    "Splits": "splits", "split_records": "splits", "find_leaks": "splits", "leakage_demo": "splits",
    "TRAIN_ON": "templates", "FALLBACK_TEMPLATE_DOC": "templates", "TemplateError": "templates",
    "render_prompt": "templates", "mask_prompt_tokens": "templates",
    "tokenize_example": "templates", "tokenize_dataset": "templates",
    "render_token_view": "templates",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
