"""Metrics with exact definitions, grouped by family: what each number means, down to the tokenisation.

Every function states its definition in its docstring, and the tests check each one against the
implementation people cite (SQuAD's evaluation script, ``rouge-score``, ``sacrebleu``, the perplexity
recipe in the transformers docs).

Example:
    >>> from ftlab.evaluate.metrics import exact_match, token_f1
    >>> exact_match("The Eiffel Tower!", "eiffel tower")
    1.0
    >>> token_f1("in Paris, France", "Paris")   # precision 1/3, recall 1
    0.5
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    # short answers, structured output, labels
    "normalize_answer": "answers", "exact_match": "answers", "token_f1": "answers",
    "is_valid_json": "answers", "json_field_accuracy": "answers", "classification_scores": "answers",
    # n-gram overlap with a reference
    "rouge_tokenize": "rouge_family", "rouge_scores": "rouge_family", "rouge": "rouge_family",
    "SACREBLEU_VERSION": "bleu_chrf", "tokenize_13a": "bleu_chrf", "BLEUResult": "bleu_chrf", "bleu": "bleu_chrf",
    "CHRFResult": "bleu_chrf", "chrf": "bleu_chrf",
    # diversity and meaning
    "distinct_n": "diversity", "repetition_rate": "diversity",
    "load_embedding_model": "similarity", "semantic_similarity": "similarity",
    # from the model's logits
    "mean_token_accuracy": "language_model", "perplexity": "language_model",
    # shared helpers
    "ngram_counts": "common", "check_pairs": "common",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
