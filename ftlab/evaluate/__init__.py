"""Evaluation: metrics with exact definitions, generation and scoring, confidence intervals,
model comparison, forgetting probes and the LLM judge.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "stop_token_ids": "harness", "generate_answers": "harness", "bootstrap_ci": "harness",
    "paired_difference": "harness", "METRICS": "harness", "score_answers": "harness",
    "prepare_records": "harness", "EvalResult": "harness", "evaluate_model": "harness",
    "ProbeResult": "harness", "probe_accuracy": "harness", "forgetting_report": "harness",
    "Comparison": "harness", "compare_models": "harness", "comparison_from_results": "harness",
    "JUDGE_RUBRIC": "harness", "LLMJudge": "harness",
    "normalize_answer": "metrics", "exact_match": "metrics", "token_f1": "metrics",
    "is_valid_json": "metrics", "json_field_accuracy": "metrics",
    "classification_scores": "metrics", "rouge_tokenize": "metrics", "rouge_scores": "metrics",
    "rouge": "metrics", "SACREBLEU_VERSION": "metrics", "tokenize_13a": "metrics",
    "BLEUResult": "metrics", "bleu": "metrics", "CHRFResult": "metrics", "chrf": "metrics",
    "distinct_n": "metrics", "repetition_rate": "metrics", "load_embedding_model": "metrics",
    "semantic_similarity": "metrics", "mean_token_accuracy": "metrics", "perplexity": "metrics",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
