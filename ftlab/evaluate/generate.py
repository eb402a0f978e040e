"""Generation for evaluation: batched, left-padded, greedy or sampled, stopping at the end of the turn.

A batch of prompts must *end* at the same position so the new tokens line up, hence left padding.
"""

from __future__ import annotations




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
    from ftlab.budget import check_generation  # a workshop's per-participant budget (evaluate_model comes here too)
    check_generation(model, min(batch_size, len(texts)), max(lengths, default=0), max_new_tokens)
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
