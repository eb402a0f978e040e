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

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.evaluate.metrics.answers import (classification_scores, exact_match, is_valid_json, json_field_accuracy,
                                            normalize_answer, token_f1)
from ftlab.evaluate.metrics.bleu_chrf import bleu, chrf
from ftlab.evaluate.metrics.diversity import distinct_n, repetition_rate
from ftlab.evaluate.metrics.language_model import mean_token_accuracy, perplexity
from ftlab.evaluate.metrics.rouge_family import rouge, rouge_scores
from ftlab.evaluate.metrics.similarity import load_embedding_model, semantic_similarity
