"""Evaluation: generate answers, score them, put error bars on the scores, compare models.

The loop is the one every fine-tuning project needs, written out so you can read it. This module
holds steps 2 (scoring) and the harness that ties them together; the others have modules of their own:

1. ``generate_answers`` (``evaluate/generate.py``) -- batched generation with left padding (a batch of prompts must
   *end* at the same position so the new tokens line up), greedy or sampled, stopping at
   the end-of-turn token ``<|im_end|>``.
2. ``evaluate_model`` -- for each chat/instruction record, the prompt is every message
   before the last assistant message, rendered by the chat template with the generation
   prompt; the last assistant message is the reference. Course tasks are scored with
   ``ftlab.evaluate.score_example``; other records with a metric you choose.
3. ``bootstrap_ci`` (``evaluate/stats.py``) -- a percentile bootstrap confidence interval: how much the mean score
   would move with a different sample of test examples. With 100 examples an accuracy of
   0.60 is really "somewhere between about 0.50 and 0.70".
4. ``compare_models`` (``evaluate/compare.py``) -- several models on the same examples: a table with CIs, the
   paired difference to the first model (with its own CI), the probe-set accuracy that
   shows forgetting, and a per-example view of what changed.
5. ``LLMJudge`` (``evaluate/judge.py``) -- an optional judge with a written rubric, for answers no metric can check.
   Off unless you pass one; any local model works (a small one judges badly -- measure it).

Example:
    >>> from ftlab import load_model
    >>> from ftlab.data.course import load_course_data
    >>> from ftlab.evaluate.harness import evaluate_model
    >>> model, tok = load_model("smollm2-135m-instruct")                  # doctest: +SKIP
    >>> result = evaluate_model(model, tok, load_course_data("instructions", "test", limit=40))  # doctest: +SKIP
    >>> print(result.summary())                                           # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ftlab.evaluate import metrics
from ftlab.evaluate.generate import generate_answers, prepare_records  # noqa: F401 (prepare_records: part of the harness)
from ftlab.evaluate.stats import bootstrap_ci


# ----------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------


def _sentence_chrf(prediction, reference):
    return metrics.chrf([prediction], [reference]).score / 100


def _rouge_l(prediction, reference):
    return metrics.rouge_scores(prediction, reference)["rougeL"]["f"]


METRICS = {
    # name -> function(prediction, reference) -> score in [0, 1]
    "exact_match": metrics.exact_match,
    "token_f1": metrics.token_f1,
    "json_field_accuracy": metrics.json_field_accuracy,
    "rougeL": _rouge_l,
    "chrf": _sentence_chrf,
    "semantic_similarity": None,  # batched: computed for all examples at once
}


def _scorer_name(metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def score_answers(predictions, references, tasks=None, metric=None) -> tuple[list[float], list[str]]:
    """Score each prediction against its reference; returns ``(scores, scorer names)``.

    Rules, per example: if ``metric`` is given (a name from ``METRICS`` or a function
    ``(prediction, reference) -> float``) it is used for every example. Otherwise an example
    whose task is a course task (``ftlab.data.TASKS``) is scored with
    ``ftlab.evaluate.score_example``, and any other example with ``token_f1``. The names
    returned say which rule scored which example.
    """
    from ftlab.data.course import TASKS
    from ftlab.evaluate.scoring import score_example

    predictions, references = list(predictions), list(references)
    tasks = list(tasks) if tasks is not None else [None] * len(predictions)
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)} or pass a "
                             "function (prediction, reference) -> float")
        if metric == "semantic_similarity":
            sims = metrics.semantic_similarity(predictions, references)
            return [max(0.0, s) for s in sims], [metric] * len(sims)
    scores, names = [], []
    for pred, ref, task in zip(predictions, references, tasks):
        if metric is not None:
            fn = METRICS[metric] if isinstance(metric, str) else metric
            scores.append(float(fn(pred, ref)))
            names.append(_scorer_name(metric))
        elif task in TASKS:
            scores.append(float(score_example(task, pred, ref)))
            names.append(f"course:{task}")
        else:
            scores.append(metrics.token_f1(pred, ref))
            names.append("token_f1")
    return scores, names


# ----------------------------------------------------------------------------------------
# Evaluating one model
# ----------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What ``evaluate_model`` measured. ``examples`` has one dict per example (question,
    reference, prediction, score, ...); ``score`` is the mean with its bootstrap ``ci``;
    ``by_task`` the same per task; ``extra`` the diagnostics (stop rate, answer length,
    distinct-2, repetition, JSON validity)."""

    name: str
    examples: list[dict]
    score: float
    ci: tuple[float, float]
    by_task: dict
    extra: dict
    seconds: float
    confidence: float = 0.95
    judge: dict | None = None

    @property
    def scores(self) -> list[float]:
        return [e["score"] for e in self.examples]

    def to_frame(self):
        """The per-example table as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.examples)

    def summary(self) -> str:
        pct = int(round(self.confidence * 100))
        lines = [f"{self.name}: score {self.score:.3f}  [{pct}% CI {self.ci[0]:.3f}, {self.ci[1]:.3f}]  "
                 f"n={len(self.examples)}  {self.seconds:.1f}s"]
        for task, t in self.by_task.items():
            lines.append(f"  {task:<14} {t['score']:.3f}  [{t['ci'][0]:.3f}, {t['ci'][1]:.3f}]  n={t['n']}")
        lines.append("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in self.extra.items()))
        if self.judge:
            lines.append(f"  judge: {self.judge['score']:.3f}  unparsed={self.judge['unparsed']}")
        return "\n".join(lines)

    def __repr__(self):
        return f"EvalResult({self.summary().splitlines()[0]})"


def evaluate_model(model, tokenizer, records, *, name: str = "model", metric=None,
                   max_new_tokens: int = 64, batch_size: int = 8, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   confidence: float = 0.95, n_resamples: int = 2000, judge=None,
                   template=None, progress: bool = True) -> EvalResult:
    """Generate an answer for every record, score it, and summarise with bootstrap CIs.

    ``records``: chat or instruction records in any format ``ftlab.load_records`` reads (the
    course's ``load_course_data("instructions", "test")`` or ``("chat", "test")`` for example).
    See ``prepare_records`` for how prompt and reference are taken from a record and
    ``score_answers`` for how each answer is scored. ``judge`` (default None): an optional
    ``LLMJudge`` or any function ``(questions, references, predictions) -> scores in [0, 1]``
    (NaN = could not judge); its scores are reported next to the metric, never instead of it.

    Example:
        >>> res = evaluate_model(model, tok, load_course_data("instructions", "test", limit=40))  # doctest: +SKIP
        >>> res.score, res.ci                                                         # doctest: +SKIP
    """
    start = time.perf_counter()
    items = prepare_records(records)
    if not items:
        raise ValueError("evaluate_model: no records to evaluate")
    answers, details = generate_answers(
        model, tokenizer, [it["messages"] for it in items], max_new_tokens=max_new_tokens,
        batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
        seed=seed, template=template, progress=progress, return_details=True)
    scores, scorers = score_answers(answers, [it["reference"] for it in items],
                                    [it["task"] for it in items], metric)
    examples = []
    for i, (it, answer, d, s, how) in enumerate(zip(items, answers, details, scores, scorers)):
        examples.append({"index": i, "task": it["task"], "question": it["question"],
                         "reference": it["reference"], "prediction": answer, "score": s,
                         "scorer": how, "stopped": d["stopped"], "new_tokens": d["new_tokens"],
                         "source": it["source"]})
    judged = None
    if judge is not None:
        judge_scores = list(judge([it["question"] for it in items], [it["reference"] for it in items], answers))
        for e, j in zip(examples, judge_scores):
            e["judge"] = float(j) if j is not None else math.nan
        valid = [e["judge"] for e in examples if not math.isnan(e["judge"])]
        judged = {"score": float(np.mean(valid)) if valid else math.nan,
                  "ci": bootstrap_ci(valid, confidence=confidence, seed=seed) if valid else (math.nan, math.nan),
                  "unparsed": len(examples) - len(valid)}
    return _summarise(name, examples, time.perf_counter() - start, confidence, n_resamples, seed, judged)


def _summarise(name, examples, seconds, confidence, n_resamples, seed, judged=None) -> EvalResult:
    scores = [e["score"] for e in examples]
    ci = bootstrap_ci(scores, confidence=confidence, n_resamples=n_resamples, seed=seed)
    by_task = {}
    for task in sorted({str(e["task"]) for e in examples}):
        ts = [e["score"] for e in examples if str(e["task"]) == task]
        by_task[task] = {"score": float(np.mean(ts)), "n": len(ts),
                         "ci": bootstrap_ci(ts, confidence=confidence, n_resamples=n_resamples, seed=seed)}
    predictions = [e["prediction"] for e in examples]
    extra = {
        "stop_rate": float(np.mean([e["stopped"] for e in examples])),
        "mean_new_tokens": float(np.mean([e["new_tokens"] for e in examples])),
        "distinct_2": metrics.distinct_n(predictions, 2),
        "repetition_3": metrics.repetition_rate(predictions, 3),
    }
    json_items = [e for e in examples if e["task"] == "extract_json"]
    if json_items:
        extra["json_valid"] = float(np.mean([metrics.is_valid_json(e["prediction"]) for e in json_items]))
    return EvalResult(name=name, examples=examples, score=float(np.mean(scores)), ci=ci,
                      by_task=by_task, extra=extra, seconds=seconds, confidence=confidence, judge=judged)
