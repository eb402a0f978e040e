"""Is prompting enough? The base model under several prompts, scored like a fine-tuned model.

Before fine-tuning, measure what prompting gets: the same test examples, the same scorer, the
same CIs, each prompt with its cost (prompt tokens per query, seconds per answer). The styles:

- ``zero-shot``: the instruction and input as one user turn, no system message (the chat template
  inserts the model's default one);
- ``zero-shot+system``: the same with the course system prompt (``ftlab.data.SYSTEM_PROMPT``);
- ``k-shot`` (k = 1, 3, 5): the system prompt, then k solved examples *of the same task drawn from
  the training split* as earlier user/assistant turns, then the question. Shots never come from
  the test split: that would leak answers' exact wording into the prompt;
- ``engineered``: the system prompt plus the output format spelled out for the task
  (``FORMAT_RULES``): what a careful prompt engineer writes after reading the scorer.

Example:
    >>> rows = prompting_records([{"instruction": "Label it.", "input": "x", "output": "other",
    ...                            "task": "classify"}], [], "zero-shot+system")
    >>> [m["role"] for m in rows[0]["messages"]]
    ['system', 'user', 'assistant']
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ftlab.data.course import LABELS, SYSTEM_PROMPT

# What each task's answer must look like, written from the scorer's rules (ftlab.evaluate.scoring).
FORMAT_RULES = {
    "extract_json": ('Answer with one line of compact JSON and nothing else (no code fences, no words): '
                     '{"customer":"<full name>","order_id":"BW-<6 digits>","product":"<product name>",'
                     '"quantity":<integer>}. Use null for order_id when the ticket has no order number.'),
    "classify": (f"Answer with exactly one lowercase word from: {', '.join(LABELS)}. billing = payments, "
                 "charges, refunds, invoices; shipping = parcels, delivery, couriers, addresses; technical = "
                 "the device does not work properly; account = login, password, profile, personal data; "
                 "other = anything else."),
    "rewrite": ("Answer with the rewritten value only. A date becomes YYYY-MM-DD (2024-03-05). A phone number "
                "becomes +1-AAA-BBB-CCCC (+1-415-555-0132). An agent note becomes "
                "Customer: <name> | Order: <order id> | Action: <action>."),
    "qa": ("Answer with the value only, copied exactly from the order data: a name, a product, a date like "
           "2024-03-05, a price like $49.99, a number, a carrier, a city or a status. No sentence."),
}
STYLES = ("zero-shot", "zero-shot+system", "1-shot", "3-shot", "5-shot", "engineered")


def _user_text(record) -> str:
    return f"{record['instruction']}\n\n{record['input']}" if record.get("input") else record["instruction"]


def _shots(style: str) -> int:
    return int(style.split("-")[0]) if style.endswith("-shot") and style[0].isdigit() else 0


def prompting_records(records, train_records, style: str, seed: int = 0) -> list[dict]:
    """``records`` (course instruction records) as chat records prompted in ``style``.

    For a k-shot style every record gets its own k shots, drawn (seeded) from ``train_records``
    of the same task; the reference answer is the record's ``output`` either way.
    """
    if style not in STYLES:
        raise ValueError(f"prompting_records: unknown style {style!r}; choose one of {', '.join(STYLES)}")
    k = _shots(style)
    pools = {}
    for r in train_records:
        pools.setdefault(r["task"], []).append(r)
    rng = random.Random(seed)
    out = []
    for r in records:
        messages = [] if style == "zero-shot" else [{"role": "system", "content": SYSTEM_PROMPT}]
        if k:
            pool = pools.get(r["task"], [])
            if len(pool) < k:
                raise ValueError(f"prompting_records: {style} needs {k} training examples of task "
                                 f"{r['task']!r}, got {len(pool)}; pass the course training split")
            for shot in rng.sample(pool, k):
                messages += [{"role": "user", "content": _user_text(shot)},
                             {"role": "assistant", "content": shot["output"]}]
        question = _user_text(r)
        if style == "engineered":
            question += "\n\n" + FORMAT_RULES[r["task"]]
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": r["output"]}]
        out.append({"messages": messages, "task": r["task"]})
    return out


@dataclass
class PromptRow:
    """One prompting style's result: the ``EvalResult`` and what each query cost."""

    style: str
    result: object  # ftlab.evaluate.harness.EvalResult
    prompt_tokens: float  # mean tokens in the rendered prompt
    seconds_per_answer: float  # wall time / answers, generating in batches


def evaluate_prompting(model, tokenizer, records, train_records, *, styles=STYLES, max_new_tokens: int = 48,
                       batch_size: int = 16, seed: int = 0, progress: bool = True) -> list[PromptRow]:
    """Evaluate ``model`` on ``records`` once per prompting style; one ``PromptRow`` per style."""
    from ftlab.data.templates import render_prompt
    from ftlab.evaluate.harness import evaluate_model

    rows = []
    for style in styles:
        prompted = prompting_records(records, train_records, style, seed=seed)
        tokens = [len(tokenizer(render_prompt(p["messages"], tokenizer), add_special_tokens=False)["input_ids"])
                  for p in prompted]
        start = time.perf_counter()
        res = evaluate_model(model, tokenizer, prompted, name=style, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed, progress=progress)
        seconds = time.perf_counter() - start
        rows.append(PromptRow(style, res, sum(tokens) / len(tokens), seconds / len(prompted)))
    return rows


def best_prompt(rows: list[PromptRow]) -> PromptRow:
    """The prompting row with the highest mean score (the bar a fine-tune has to clear)."""
    return max(rows, key=lambda r: r.result.score)


def prompting_table(rows: list[PromptRow], seed: int = 0) -> str:
    """The rows side by side: score with CI, paired difference to the first row, cost per query."""
    from ftlab.evaluate.stats import paired_difference

    first = rows[0].result
    tasks = list(first.by_task)
    head = ["prompt", "score [95% CI]", f"vs {rows[0].style} [95% CI]"] + tasks + ["tokens/query", "s/answer"]
    lines = []
    for row in rows:
        res = row.result
        pair = paired_difference(first.scores, res.scores, seed=seed)
        lines.append([row.style, f"{res.score:.3f} [{res.ci[0]:.3f}, {res.ci[1]:.3f}]",
                      "-" if row is rows[0] else f"{pair['diff']:+.3f} [{pair['ci'][0]:+.3f}, {pair['ci'][1]:+.3f}]"]
                     + [f"{res.by_task[t]['score']:.3f}" for t in tasks]
                     + [f"{row.prompt_tokens:.0f}", f"{row.seconds_per_answer:.2f}"])
    widths = [max(len(c) for c in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*cells) for cells in lines]
                     + [f"(n={len(first.examples)} test examples; shots from the training split; "
                        "percentile-bootstrap CIs, paired on the same examples)"])
