"""Part 1 of the course: data.

readers (files) -> formats (detect, convert) -> validate (problems) -> records (``load_records``);
dedupe and splits (near copies, leak-free splits); report (``summarize_dataset``); templates (chat
templates, loss masking); batching (padding, packing); course (the course datasets).
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.data.batching import (BatchStream, prepare_examples, collate, compare_strategies, make_batches, measure_packing_effect,
                                 model_inputs, pack_examples, padding_waste)
from ftlab.data.course import LABELS, SYSTEM_PROMPT, TASKS, data_dir, load_course_data, mix_replay
from ftlab.data.dedupe import drop_duplicates, jaccard, near_duplicate_pairs, record_text, shingles
from ftlab.data.formats import detect_format
from ftlab.data.records import load_records
from ftlab.data.report import summarize_dataset
from ftlab.data.splits import find_leaks, leakage_demo, sample_test_records, split_records
from ftlab.data.templates import (IGNORE_INDEX, TemplateError, mask_prompt_tokens, render_prompt, render_token_view,
                                  tokenize_dataset, tokenize_example)
from ftlab.data.validate import DataValidationError, Problem, validate_records
