"""Generation for evaluation: many prompts in batches sorted by length, greedy or sampled.

The loop itself is ``ftlab.generation.generate_tokens``, the one that ``chat`` and GRPO use too.
"""

from __future__ import annotations

from ftlab.generation import generate_tokens, stop_token_ids

# ----------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------


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


def generate_answers(model, tokenizer, prompts, *, max_new_tokens: int = 64, batch_size: int = 8,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                     seed: int = 0, template=None, progress: bool = True,
                     return_details: bool = False):
    """Answer many prompts in batches; returns the answers (text, special tokens removed).

    ``prompts``: strings (each one user message), lists of role/content messages, or records
    with ``messages``; a trailing assistant message is dropped (it is the reference), and the
    rest goes through the chat template with the generation prompt
    (``ftlab.data.render_prompt``, the same rendering training uses).

    Generation (:func:`generate_tokens`) stops at the end-of-turn token (see
    ``stop_token_ids``) or after ``max_new_tokens``. Prompts are sorted by length before
    batching so little padding is wasted (answers come back in the order of ``prompts``).
    Greedy by default; with ``do_sample=True``, ``temperature`` and ``top_p`` apply and
    ``seed`` makes the run repeatable.

    With ``return_details`` also returns a list of dicts per answer: ``new_tokens`` (how
    many were generated) and ``stopped`` (True if it ended with the end-of-turn token
    rather than running out of ``max_new_tokens``).

    Example:
        >>> model, tok = load_model("tiny")                         # doctest: +SKIP
        >>> generate_answers(model, tok, ["Hi!", "What is 2+2?"], max_new_tokens=8)   # doctest: +SKIP
    """
    import torch
    from tqdm.auto import tqdm

    from ftlab.budget import check_generation  # a workshop's per-participant budget (evaluate_model comes here too)
    from ftlab.data.templates import render_prompt

    prompts = list(prompts)
    texts = [render_prompt(_as_messages(p, i), tokenizer, template) for i, p in enumerate(prompts)]
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    check_generation(model, min(batch_size, len(texts)), max(map(len, encoded), default=0), max_new_tokens)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if do_sample else None
    answers, details = [None] * len(texts), [None] * len(texts)
    was_training = model.training
    model.eval()
    try:
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="generating", disable=not progress, unit="batch"):
            new = generate_tokens(model, [encoded[i] for i in batch], max_new_tokens=max_new_tokens,
                                  stop_ids=stops, pad_id=pad_id, do_sample=do_sample,
                                  temperature=temperature, top_p=top_p, generator=generator)
            for i, tokens in zip(batch, new):
                stopped = tokens[-1] in stops
                kept = tokens[:-1] if stopped else tokens
                answers[i] = tokenizer.decode(kept, skip_special_tokens=True).strip()
                details[i] = {"new_tokens": len(kept), "stopped": stopped}
    finally:
        model.train(was_training)
    return (answers, details) if return_details else answers
