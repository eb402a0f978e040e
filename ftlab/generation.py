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

import functools
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


@functools.cache
def _growing_layer():
    """The class of one layer's key/value cache written into a buffer allocated once for the answer.

    transformers' ``DynamicLayer`` concatenates every new token onto the cache: a copy of all keys and
    values, per layer, per step (at batch 16 about a fifth of a decode step's memory traffic). Here the
    buffer has room for the prompt and every new token, a step writes its column in place, and
    attention reads a view of the filled part: the same numbers, without the copies. (Built on first
    use, so that importing this module needs no torch.)
    """
    import torch
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length, self._k, self._v = capacity, 0, None, None

        def update(self, key_states, value_states, *args, **kwargs):
            new = key_states.shape[-2]
            if self._k is None:
                self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
                self._k = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[-1])
                self._v = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[-1])
            if self.length + new > self.capacity:
                raise RuntimeError(f"KV cache full: {self.length} + {new} > {self.capacity} positions")
            self._k[:, :, self.length:self.length + new] = key_states
            self._v[:, :, self.length:self.length + new] = value_states
            self.length += new
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def _rows(self, index) -> None:
            if self._k is not None:
                self._k, self._v = self._k[index], self._v[index]
                self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def batch_select_indices(self, indices) -> None:
            self._rows(indices)

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._k is not None:
                self._rows(torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats))

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("ftlab's generation cache is never cropped")

    return GrowingLayer


def _new_cache(capacity: int):
    """A transformers ``DynamicCache`` whose layers are buffers of ``capacity`` positions."""
    from transformers import DynamicCache

    cache, layer = DynamicCache(), _growing_layer()
    cache.layers = []  # created as the forward reaches each model layer
    cache.layer_class_to_replicate = lambda: layer(capacity)
    return cache


def _shared_prefix(prompt_ids) -> int:
    """How many leading tokens every prompt of the batch shares (the chat template's system turn at
    least), leaving each prompt at least one token of its own."""
    first, shortest = prompt_ids[0], min(len(p) for p in prompt_ids)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompt_ids):
        n += 1
    return n


def _prefill(model, prompt_ids, pad_id: int, capacity: int, extra: dict):
    """Run the prompts through the model once; returns the output, the cache, the attention mask and
    each row's last position.

    The tokens every prompt shares (``_shared_prefix``) go through the model once, as one row, and
    their cache is copied to every row; only the rest of each prompt runs as a batch, left-padded
    behind the shared part. Position ids count real tokens only, so each row sees exactly the
    positions it would see alone - as in ``model.generate``, whose greedy tokens a test compares.
    """
    import torch

    device = next(model.parameters()).device
    cache = _new_cache(capacity)
    shared = _shared_prefix(prompt_ids) if len(prompt_ids) > 1 else 0
    if shared:
        head = torch.tensor([prompt_ids[0][:shared]], device=device)
        model(input_ids=head, position_ids=torch.arange(shared, device=device)[None], past_key_values=cache,
              use_cache=True, **extra)
        cache.batch_repeat_interleave(len(prompt_ids))
    rest = [p[shared:] for p in prompt_ids]
    width = max(len(p) for p in rest)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in rest], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(p)) + [1] * len(p) for p in rest], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                **extra)
    return out, cache, mask, positions[:, -1:]


def generate_tokens(model, prompt_ids, *, max_new_tokens: int, stop_ids, pad_id: int,
                    do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                    generator=None) -> list[list[int]]:
    """The generation loop of ftlab: continue every prompt (lists of token ids) as one batch.

    Returns the new tokens of each row; a row that ended includes its stop token (GRPO trains
    it), a row without one ran out of ``max_new_tokens``. Greedy gives the same tokens as
    ``model.generate(do_sample=False)``; sampling applies ``temperature`` then ``top_p`` and
    draws from ``generator`` (None: torch's global generator).

    How it is done (``python -m ftlab.bench.generate`` measures it): the prompts go through the
    model once (``_prefill``: the part all prompts share only once, the output layer at the last
    position only); then one token per step reuses the key/value cache, which is written in place
    into a buffer sized for the whole answer (``_GrowingKV``). A row that has produced its stop
    token leaves the batch (its cache rows are dropped), so the remaining rows pay for nothing
    they do not need. ``torch.inference_mode`` records no autograd state.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1 "
                         f"(got temperature={temperature}, top_p={top_p}); use do_sample=False for greedy")
    device = next(model.parameters()).device
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    rows = torch.arange(len(prompt_ids), device=device)  # which prompt each batch row still is
    new = [[] for _ in prompt_ids]
    with torch.inference_mode():
        capacity = max(len(p) for p in prompt_ids) + max_new_tokens
        out, cache, mask, positions = _prefill(model, prompt_ids, pad_id, capacity, extra)
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
