"""The one generation loop of ftlab: ``chat``, evaluation (``generate_answers``) and GRPO sampling use it.

A batch of prompts is padded on the *left*: a decoder writes its next token after the last
position, so every prompt of a batch must end there. Greedy decoding gives the tokens
``model.generate`` gives (a test checks it); sampling applies temperature and top-p.

Why not ``model.generate``? It is general (beam search, processors, streamers, stopping
criteria) and keeps every row in the batch until the longest answer ends. Here a row that
has written its end-of-turn token leaves the batch, so a batch gets cheaper as it goes;
``python -m ftlab.bench.generate`` measures both.
"""

from __future__ import annotations

import inspect


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


def _accepts_logits_to_keep(model) -> bool:
    """Whether the model's forward can skip the output layer on all but the last position (a PEFT
    wrapper forwards keyword arguments, so ask the model underneath)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _next_tokens(logits, do_sample: bool, temperature: float, top_p: float, generator):
    """One token per row: the argmax, or a sample from ``softmax(logits / temperature)`` restricted
    to the smallest set of most likely tokens whose probability reaches ``top_p``."""
    import torch

    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1)  # ascending: the unlikely tail comes first
        tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        tail[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(tail.scatter(-1, order, tail), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def generate_tokens(model, prompt_ids, *, max_new_tokens: int, stop_ids, pad_id: int,
                    do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                    generator=None) -> list[list[int]]:
    """The generation loop of ftlab: continue every prompt (lists of token ids) as one batch.

    Returns the new tokens of each row; a row that ended includes its stop token (GRPO trains
    it), a row without one ran out of ``max_new_tokens``. Greedy gives the same tokens as
    ``model.generate(do_sample=False)``; sampling applies ``temperature`` then ``top_p`` and
    draws from ``generator`` (None: torch's global generator).

    How it is done: prompts are padded on the left, so the next token of every row is written
    at the same position; position ids count only real tokens, as ``model.generate`` does.
    The prompt goes through the model once, computing the output layer at its last position
    only, and then one token per step reuses the key/value cache. A row that has produced its
    stop token leaves the batch (its cache rows are dropped), so the remaining rows pay for
    nothing they do not need. ``torch.inference_mode`` records no autograd state.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1 "
                         f"(got temperature={temperature}, top_p={top_p}); use do_sample=False for greedy")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    rows = torch.arange(len(prompt_ids), device=device)  # which prompt each batch row still is
    new = [[] for _ in prompt_ids]
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        cache, positions = out.past_key_values, positions[:, -1:]
        for step in range(max_new_tokens):
            token = _next_tokens(out.logits[:, -1].float(), do_sample, temperature, top_p, generator)
            for row, t in zip(rows.tolist(), token.tolist()):
                new[row].append(t)
            alive = ~torch.isin(token, stops)
            if step == max_new_tokens - 1 or not alive.any():
                break
            if not alive.all():  # finished rows leave the batch and the cache
                keep = alive.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, token, mask, positions = rows[keep], token[keep], mask[keep], positions[keep]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            positions = positions + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                        past_key_values=cache, use_cache=True)
    return new
