"""Evaluation: metrics with exact definitions, generation and scoring, confidence intervals,
model comparison, forgetting probes and the LLM judge.
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "ProbeResult": "compare", "probe_accuracy": "compare", "forgetting_report": "compare",
    "Comparison": "compare", "compare_models": "compare", "comparison_from_results": "compare",
    "stop_token_ids": "generate", "prepare_records": "generate", "generate_answers": "generate",
    "METRICS": "harness", "score_answers": "harness", "EvalResult": "harness",
    "evaluate_model": "harness",
    "JUDGE_RUBRIC": "judge", "LLMJudge": "judge",
    "normalize_answer": "metrics", "exact_match": "metrics", "token_f1": "metrics",
    "is_valid_json": "metrics", "json_field_accuracy": "metrics", "classification_scores": "metrics",
    "rouge": "metrics", "bleu": "metrics", "chrf": "metrics", "distinct_n": "metrics",
    "repetition_rate": "metrics", "semantic_similarity": "metrics", "mean_token_accuracy": "metrics",
    "perplexity": "metrics",
    "bootstrap_ci": "stats", "paired_difference": "stats",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
