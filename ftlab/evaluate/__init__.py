"""Evaluation: metrics with exact definitions, generation and scoring, confidence intervals,
model comparison, forgetting probes and the LLM judge.
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.evaluate.compare import compare_models, comparison_from_results, forgetting_report, probe_accuracy
from ftlab.evaluate.generate import generate_answers, prepare_records
from ftlab.evaluate.harness import METRICS, evaluate_model, score_answers
from ftlab.evaluate.judge import JUDGE_RUBRIC, LLMJudge
from ftlab.evaluate.metrics.answers import (exact_match, is_valid_json, json_field_accuracy, normalize_answer,
                                            token_f1)
from ftlab.evaluate.metrics.bleu_chrf import bleu, chrf
from ftlab.evaluate.metrics.diversity import distinct_n, repetition_rate
from ftlab.evaluate.metrics.language_model import perplexity
from ftlab.evaluate.metrics.rouge_family import rouge
from ftlab.evaluate.prompting import best_prompt, evaluate_prompting, prompting_table
from ftlab.evaluate.scoring import score_example, score_probe
from ftlab.evaluate.stats import bootstrap_ci, paired_difference
