"""Evaluation: generate answers, score them, put error bars on the scores, compare models.

The loop is the one every fine-tuning project needs, written out so you can read it:

1. ``generate_answers`` -- batched generation with left padding (a batch of prompts must
   *end* at the same position so the new tokens line up), greedy or sampled, stopping at
   the end-of-turn token ``<|im_end|>``.
2. ``evaluate_model`` -- for each chat/instruction record, the prompt is every message
   before the last assistant message, rendered by the chat template with the generation
   prompt; the last assistant message is the reference. Course tasks are scored with
   ``ftlab.course_data.score_example``; other records with a metric you choose.
3. ``bootstrap_ci`` -- a percentile bootstrap confidence interval: how much the mean score
   would move with a different sample of test examples. With 100 examples an accuracy of
   0.60 is really "somewhere between about 0.50 and 0.70".
4. ``compare_models`` -- several models on the same examples: a table with CIs, the
   paired difference to the first model (with its own CI), the probe-set accuracy that
   shows forgetting, and a per-example view of what changed.
5. ``LLMJudge`` -- an optional judge with a written rubric, for answers no metric can check.
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
import re
import time
from dataclasses import dataclass, field

import numpy as np

from ftlab.evaluate import metrics

# ----------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos, ``<|im_end|>`` if the vocabulary has it,
    and whatever the model's generation config lists as eos."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end >= 0:
        ids.add(im_end)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    return sorted(ids)


def _as_messages(item, i) -> list[dict]:
    if isinstance(item, str):
        return [{"role": "user", "content": item}]
    if isinstance(item, dict) and "messages" in item:
        return list(item["messages"])
    if isinstance(item, dict):  # an instruction / prompt-completion / ShareGPT record
        return prepare_records([item])[0]["messages"]
    if isinstance(item, list) and all(isinstance(m, dict) and "role" in m for m in item):
        return item
    raise TypeError(f"generate_answers: prompt {i} must be a string (one user message), a list of "
                    f"role/content messages or a record with 'messages'; got {type(item).__name__}")


def generate_answers(model, tokenizer, prompts, *, max_new_tokens: int = 64, batch_size: int = 8,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int = 0, template=None, progress: bool = True,
                     return_details: bool = False):
    """Answer many prompts in batches; returns the answers (text, special tokens removed).

    ``prompts``: strings (each one user message), lists of role/content messages, or records
    with ``messages``; a trailing assistant message is dropped (it is the reference), and the
    rest goes through the chat template with the generation prompt
    (``ftlab.templates.render_prompt``, the same rendering training uses).

    Generation stops at the end-of-turn token (see ``stop_token_ids``) or after
    ``max_new_tokens``. Prompts are sorted by length before batching so little padding is
    wasted, and padded on the *left*: a decoder writes its next token after the last
    position, so every prompt of a batch must end there. Greedy by default; with
    ``do_sample=True``, ``temperature`` and ``top_p`` apply and ``seed`` makes the run
    repeatable (``torch.manual_seed``).

    With ``return_details`` also returns a list of dicts per answer: ``new_tokens`` (how
    many were generated) and ``stopped`` (True if it ended with the end-of-turn token
    rather than running out of ``max_new_tokens``).

    Example:
        >>> model, tok = load_model("tiny")                         # doctest: +SKIP
        >>> generate_answers(model, tok, ["Hi!", "What is 2+2?"], max_new_tokens=8)   # doctest: +SKIP
    """
    import torch
    from tqdm.auto import tqdm

    from ftlab.data.templates import render_prompt

    prompts = list(prompts)
    texts = [render_prompt(_as_messages(p, i), tokenizer, template) for i, p in enumerate(prompts)]
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    answers, details = [None] * len(texts), [None] * len(texts)
    device = next(model.parameters()).device
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id,
                      eos_token_id=stops)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        torch.manual_seed(seed)

    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    try:
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="generating", disable=not progress, unit="batch"):
            enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, **gen_kwargs)
            new = out[:, enc["input_ids"].shape[1]:].tolist()
            for i, tokens in zip(batch, new):
                # cut at the first stop token; what follows it is padding
                end = next((k for k, t in enumerate(tokens) if t in stops), None)
                kept = tokens if end is None else tokens[:end]
                answers[i] = tokenizer.decode(kept, skip_special_tokens=True).strip()
                details[i] = {"new_tokens": len(kept), "stopped": end is not None}
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return (answers, details) if return_details else answers


# ----------------------------------------------------------------------------------------
# Confidence intervals
# ----------------------------------------------------------------------------------------


def bootstrap_ci(scores, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0):
    """Percentile bootstrap confidence interval for the mean of ``scores``: ``(low, high)``.

    Draw ``n_resamples`` samples of the same size *with replacement* from the scores
    (a seeded ``numpy`` generator, so the interval is repeatable), take each sample's mean,
    and return the (1-confidence)/2 and (1+confidence)/2 percentiles of those means. It
    assumes the examples are a random sample of the kind of data you care about, and says
    nothing about bias in how they were chosen. NaN scores are left out.

    For the difference between two models on the *same* examples, pass the per-example
    differences (``b - a``): that paired interval is much narrower than the two separate
    intervals suggest, because both models face the same easy and hard examples.

    Example:
        >>> low, high = bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
        >>> low < 0.7 < high
        True
    """
    x = np.asarray(list(scores), dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError("bootstrap_ci: no scores (empty, or all NaN)")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // x.size)  # bound the index matrix's memory for big test sets
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        means[start:start + k] = x[rng.integers(0, x.size, size=(k, x.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def paired_difference(scores_a, scores_b, **bootstrap_kwargs) -> dict:
    """Mean of ``b - a`` over the same examples, its bootstrap CI, and ``p_not_better``: the
    fraction of bootstrap resamples in which b's mean is not above a's (a one-sided
    bootstrap p-value for "b is better than a").

    Example:
        >>> d = paired_difference([0, 0, 1, 0], [1, 1, 1, 0])
        >>> d["diff"]
        0.5
    """
    a, b = np.asarray(list(scores_a), float), np.asarray(list(scores_b), float)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.size} scores vs {b.size}; they must be the same examples")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = b[keep] - a[keep]
    if d.size == 0:
        raise ValueError("paired_difference: no examples scored by both")
    low, high = bootstrap_ci(d, **bootstrap_kwargs)
    rng = np.random.default_rng(bootstrap_kwargs.get("seed", 0) + 1)
    resampled = d[rng.integers(0, d.size, size=(1000, d.size))].mean(axis=1)
    return {"diff": float(d.mean()), "ci": (low, high), "p_not_better": float((resampled <= 0).mean()),
            "n": int(d.size)}


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
    whose task is a course task (``ftlab.course_data.TASKS``) is scored with
    ``ftlab.course_data.score_example``, and any other example with ``token_f1``. The names
    returned say which rule scored which example.
    """
    from ftlab.data.course import TASKS, score_example

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


def prepare_records(records) -> list[dict]:
    """Turn records of any supported format into evaluation items: ``messages`` (the prompt:
    every message before the last assistant message), ``reference`` (that message's text),
    ``task`` (for multi-turn chat records, the task of the last turn), ``question`` (the last
    user message) and ``source``. Bad records raise ``ftlab.data.DataValidationError``
    naming the record and field."""
    from ftlab.data.records import load_records

    items = []
    for record in load_records(list(records), verbose=False):
        messages = record.get("messages")
        where = record.get("_source", "?")
        if not messages:
            raise ValueError(f"{where}: a plain-text record has no question and reference answer; "
                             "evaluate_model needs chat or instruction records (perplexity() "
                             "measures plain text)")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ValueError(f"{where}: field 'messages' has no assistant message to use as the "
                             "reference; add the expected answer as the last assistant message")
        prompt = messages[:last]
        user = [m["content"] for m in prompt if m["role"] == "user"]
        turn_tasks = record.get("turn_tasks")
        task = turn_tasks[-1] if isinstance(turn_tasks, list) and turn_tasks else record.get("task")
        items.append({"messages": prompt, "reference": messages[last]["content"], "task": task,
                      "question": user[-1] if user else "", "source": where})
    return items


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


# ----------------------------------------------------------------------------------------
# Forgetting: the general probe set
# ----------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """Probe-set accuracy (with its CI) and one row per probe."""

    name: str
    accuracy: float
    ci: tuple[float, float]
    rows: list[dict]
    seconds: float

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def probe_accuracy(model, tokenizer, probes=None, *, name: str = "model", max_new_tokens: int = 48,
                   batch_size: int = 8, seed: int = 0, progress: bool = True) -> ProbeResult:
    """Ask every probe question (greedy, chat template) and check the answer with
    ``ftlab.course_data.score_probe`` (an accepted answer appears in the reply).

    ``probes``: records ``{"question", "answers"}``; default the course probe set
    (``load_course_data("probes")``), which only holds questions the base
    SmolLM2-135M-Instruct answers correctly -- so its base accuracy is 1.0 and any drop after
    fine-tuning is forgetting.
    """
    from ftlab.data.course import load_course_data, score_probe

    start = time.perf_counter()
    probes = list(load_course_data("probes") if probes is None else probes)
    for i, p in enumerate(probes):
        if not isinstance(p, dict) or not isinstance(p.get("question"), str) or not p.get("answers"):
            raise ValueError(f"probe {i}: needs a 'question' string and a non-empty 'answers' list, got {p!r}")
    answers = generate_answers(model, tokenizer, [p["question"] for p in probes],
                               max_new_tokens=max_new_tokens, batch_size=batch_size,
                               progress=progress)
    rows = [{"question": p["question"], "answers": p["answers"], "prediction": a,
             "correct": bool(score_probe(a, p["answers"]))} for p, a in zip(probes, answers)]
    correct = [float(r["correct"]) for r in rows]
    return ProbeResult(name=name, accuracy=float(np.mean(correct)), ci=bootstrap_ci(correct, seed=seed),
                       rows=rows, seconds=time.perf_counter() - start)


def forgetting_report(before: ProbeResult, after: ProbeResult) -> dict:
    """Compare probe results before and after fine-tuning: the accuracy drop (with a paired
    CI) and the questions lost and gained."""
    if [r["question"] for r in before.rows] != [r["question"] for r in after.rows]:
        raise ValueError("forgetting_report: the two results are not on the same probes")
    pair = paired_difference([r["correct"] for r in before.rows], [r["correct"] for r in after.rows])
    return {
        "before": before.accuracy, "after": after.accuracy, "change": pair["diff"], "change_ci": pair["ci"],
        "lost": [(a["question"], a["prediction"]) for b, a in zip(before.rows, after.rows)
                 if b["correct"] and not a["correct"]],
        "gained": [(a["question"], a["prediction"]) for b, a in zip(before.rows, after.rows)
                   if a["correct"] and not b["correct"]],
    }


# ----------------------------------------------------------------------------------------
# Comparing models
# ----------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Several models on the same examples. ``table``: a pandas DataFrame, one row per
    model; ``text``: the same as aligned text; ``results`` / ``probes``: the underlying
    ``EvalResult`` / ``ProbeResult`` per model; ``changes(a, b)``: what changed per example."""

    results: dict
    probes: dict
    table: object
    text: str

    def __str__(self):
        return self.text

    def _repr_html_(self):
        return self.table.to_html(float_format=lambda v: f"{v:.3f}")

    def changes(self, a: str | None = None, b: str | None = None, only_changed: bool = True):
        """Per-example view of ``a`` (default: the first model) vs ``b`` (default: the second):
        question, reference, both predictions and scores, and ``delta = score_b - score_a``,
        sorted from the biggest gain to the biggest loss."""
        import pandas as pd

        names = list(self.results)
        a = a or names[0]
        b = b or names[1]
        ra, rb = self.results[a].examples, self.results[b].examples
        rows = []
        for ea, eb in zip(ra, rb):
            delta = eb["score"] - ea["score"]
            if only_changed and delta == 0 and ea["prediction"] == eb["prediction"]:
                continue
            rows.append({"index": ea["index"], "task": ea["task"], "question": ea["question"],
                         "reference": ea["reference"], f"prediction_{a}": ea["prediction"],
                         f"prediction_{b}": eb["prediction"], f"score_{a}": ea["score"],
                         f"score_{b}": eb["score"], "delta": delta})
        frame = pd.DataFrame(rows)
        return frame.sort_values("delta", ascending=False, kind="stable") if rows else frame

    def change_counts(self, a: str | None = None, b: str | None = None) -> dict:
        """How many examples got better, worse, or stayed the same from ``a`` to ``b``."""
        names = list(self.results)
        ra, rb = self.results[a or names[0]].examples, self.results[b or names[1]].examples
        deltas = [eb["score"] - ea["score"] for ea, eb in zip(ra, rb)]
        return {"better": sum(d > 0 for d in deltas), "worse": sum(d < 0 for d in deltas),
                "same": sum(d == 0 for d in deltas)}


def compare_models(models: dict, records, *, probes=None, probe_max_new_tokens: int = 48,
                   confidence: float = 0.95, seed: int = 0, progress: bool = True,
                   **eval_kwargs) -> Comparison:
    """Evaluate every model on the same ``records`` and put the results side by side.

    ``models``: ``{"base": (model, tokenizer), "lora": (model, tokenizer), ...}``; the first
    entry is the baseline. ``probes``: ``True`` for the course probe set, a list of probe
    records, or None (default) to skip the forgetting check. Other keyword arguments go to
    ``evaluate_model`` (``max_new_tokens``, ``batch_size``, ``metric``, ``judge``, ...).

    The table has, per model: the mean score with its CI; ``vs_first`` -- the paired
    difference to the baseline on the same examples, with its own CI (a difference whose CI
    excludes 0 is unlikely to be luck of the sample); the mean score per task; the probe
    accuracy and its change (forgetting); and the wall time.

    Example:
        >>> cmp = compare_models({"base": (base, tok), "lora": (tuned, tok)}, test_records, probes=True)  # doctest: +SKIP
        >>> print(cmp.text); cmp.changes("base", "lora").head()                              # doctest: +SKIP
    """
    if not models:
        raise ValueError("compare_models: no models given")
    for key, value in models.items():
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise TypeError(f"compare_models: models[{key!r}] must be a (model, tokenizer) pair")
    records = list(records)
    if probes is True:
        from ftlab.data.course import load_course_data

        probes = load_course_data("probes")
    results, probe_results = {}, {}
    for name, (model, tok) in models.items():
        results[name] = evaluate_model(model, tok, records, name=name, confidence=confidence,
                                       seed=seed, progress=progress, **eval_kwargs)
        if probes is not None:
            probe_results[name] = probe_accuracy(model, tok, probes, name=name, seed=seed, progress=progress,
                                                 max_new_tokens=probe_max_new_tokens,
                                                 batch_size=eval_kwargs.get("batch_size", 8))
    return comparison_from_results(results, probe_results, confidence=confidence, seed=seed)


def comparison_from_results(results: dict, probe_results: dict | None = None, *,
                            confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Build the comparison table from ``EvalResult``s (and ``ProbeResult``s) you already have,
    e.g. the base model evaluated *before* LoRA training changed it in place. All results must
    be on the same examples, in the same order; the first one is the baseline."""
    import pandas as pd

    probe_results = dict(probe_results or {})
    first = next(iter(results))
    for name, res in results.items():
        if [e["reference"] for e in res.examples] != [e["reference"] for e in results[first].examples]:
            raise ValueError(f"comparison: {name!r} was not evaluated on the same examples as {first!r}")
    rows = []
    for name, res in results.items():
        row = {"model": name, "score": res.score, "ci_low": res.ci[0], "ci_high": res.ci[1]}
        if name != first:
            pair = paired_difference(results[first].scores, res.scores, confidence=confidence, seed=seed)
            row.update(vs_first=pair["diff"], vs_first_low=pair["ci"][0], vs_first_high=pair["ci"][1])
        else:
            row.update(vs_first=0.0, vs_first_low=math.nan, vs_first_high=math.nan)
        for task, t in res.by_task.items():
            row[task] = t["score"]
        if name in probe_results:
            row["probes"] = probe_results[name].accuracy
            base_probes = probe_results.get(first)
            row["probes_change"] = (probe_results[name].accuracy - base_probes.accuracy
                                    if base_probes else math.nan)
        row["stop_rate"] = res.extra["stop_rate"]
        row["seconds"] = res.seconds + (probe_results[name].seconds if name in probe_results else 0.0)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("model")
    return Comparison(results=results, probes=probe_results, table=table,
                      text=_format_table(table, results, first, confidence))


def _format_table(table, results, first, confidence) -> str:
    pct = int(round(confidence * 100))
    tasks = sorted({t for r in results.values() for t in r.by_task})
    head = ["model", f"score [{pct}% CI]", f"vs {first} [{pct}% CI]"] + tasks
    has_probes = "probes" in table.columns
    if has_probes:
        head += ["probes", "Δprobes"]
    head += ["stop", "time"]
    lines = []
    for name, row in table.iterrows():
        cells = [name, f"{row['score']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"]
        cells.append("-" if name == first else
                     f"{row['vs_first']:+.3f} [{row['vs_first_low']:+.3f}, {row['vs_first_high']:+.3f}]")
        cells += [f"{row[t]:.3f}" if t in row and not _isnan(row[t]) else "-" for t in tasks]
        if has_probes:
            cells += ["-" if _isnan(row.get("probes", math.nan)) else f"{row['probes']:.3f}",
                      "-" if _isnan(row.get("probes_change", math.nan)) else f"{row['probes_change']:+.3f}"]
        cells += [f"{row['stop_rate']:.2f}", f"{row['seconds']:.0f}s"]
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    n = len(next(iter(results.values())).examples)
    out = [fmt.format(*head)] + [fmt.format(*cells) for cells in lines]
    out.append(f"(n={n} examples; {pct}% percentile-bootstrap CIs; 'vs {first}' is the paired "
               "difference on the same examples)")
    return "\n".join(out)


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


# ----------------------------------------------------------------------------------------
# LLM-as-judge (optional)
# ----------------------------------------------------------------------------------------

JUDGE_RUBRIC = """You grade answers written by an AI assistant. Compare the assistant's answer with the correct reference answer.

Task the assistant was given:
{question}

Correct reference answer:
{reference}

Assistant's answer:
{prediction}

Grade the assistant's answer from 1 to 5:
5 = means exactly what the reference says, in the format the task asked for, nothing added.
4 = correct and complete, but with small format differences or a few extra words.
3 = partly correct: some of the needed information is right, some is missing or wrong.
2 = wrong, but about the right subject.
1 = wrong, empty, off topic, or a refusal.

Reply with one digit (1-5) and nothing else."""


class LLMJudge:
    """A judge that asks a local chat model to grade answers with a written rubric.

    ``judge(questions, references, predictions)`` returns one score per answer in [0, 1]:
    the first digit 1-5 in the judge's reply, mapped by (grade - 1) / 4; NaN if the reply
    has no such digit (counted as ``unparsed`` in the results, never guessed).

    Any model that ``ftlab.load_model`` loads works as the judge; so does any function with
    the same call signature (a wrapper around a local server, a rule, a human's spreadsheet),
    which is all ``evaluate_model(judge=...)`` relies on. Judges have known biases (they
    favour long answers, their own style, and the first of two options); check a judge
    against exact metrics on examples where those are reliable before trusting it elsewhere.

    Example:
        >>> judge = LLMJudge(*load_model("smollm2-135m-instruct"))                 # doctest: +SKIP
        >>> evaluate_model(model, tok, records, judge=judge).judge                  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, rubric: str = JUDGE_RUBRIC, *, batch_size: int = 8,
                 max_new_tokens: int = 8, progress: bool = True):
        for key in ("{question}", "{reference}", "{prediction}"):
            if key not in rubric:
                raise ValueError(f"LLMJudge: the rubric must contain the placeholder {key}")
        self.model, self.tokenizer, self.rubric = model, tokenizer, rubric
        self.batch_size, self.max_new_tokens, self.progress = batch_size, max_new_tokens, progress
        self.last_replies: list[str] = []

    def prompt(self, question: str, reference: str, prediction: str) -> str:
        return self.rubric.format(question=question, reference=reference, prediction=prediction or "(empty)")

    @staticmethod
    def parse(reply: str) -> float:
        """(grade - 1) / 4 for the first digit 1-5 in ``reply``; NaN if there is none."""
        match = re.search(r"[1-5]", reply)
        return (int(match.group()) - 1) / 4 if match else math.nan

    def __call__(self, questions, references, predictions) -> list[float]:
        prompts = [self.prompt(q, r, p) for q, r, p in zip(questions, references, predictions)]
        self.last_replies = generate_answers(self.model, self.tokenizer, prompts,
                                             max_new_tokens=self.max_new_tokens,
                                             batch_size=self.batch_size, progress=self.progress)
        return [self.parse(r) for r in self.last_replies]
