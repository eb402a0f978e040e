"""The one generation loop of ftlab: ``chat``, evaluation (``generate_answers``) and GRPO sampling use it.

A batch of prompts is padded on the *left*: a decoder writes its next token after the last
position, so every prompt of a batch must end there. Greedy decoding gives the tokens
``model.generate`` gives (a test checks it); sampling applies temperature and top-p.

Why not ``model.generate``? It is general (beam search, processors, streamers, stopping
criteria) and keeps every row in the batch until the longest answer ends. Here a row that
has written its end-of-turn token leaves the batch, so a batch gets cheaper as it goes;
``python -m ftlab.bench.generate`` measures both. Prompts of very different lengths in one call
(notebook 07 asks its one-line probe questions next to 130-token tasks) are read in length groups,
each padded only to its own longest prompt, and then decoded as one batch (``_length_groups``).
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
            self._view()
            return self.keys, self.values

        def _view(self) -> None:  # what attention reads: the filled columns
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def place(self, n_rows: int, rows, source, end: int) -> None:
            """Copy ``source``'s filled columns into ``rows`` (of ``n_rows``), ending at column ``end``; columns
            no source fills stay zeros (``_merge_groups`` masks them)."""
            if self._k is None:
                k = source._k
                self.dtype, self.device, self.is_initialized = k.dtype, k.device, True
                self._k = k.new_zeros(n_rows, k.shape[1], self.capacity, k.shape[3])
                self._v = source._v.new_zeros(n_rows, source._v.shape[1], self.capacity, source._v.shape[3])
            self._k[rows, :, end - source.length:end] = source._k[:, :, :source.length]
            self._v[rows, :, end - source.length:end] = source._v[:, :, :source.length]
            self.length = max(self.length, end)
            self._view()

        def get_seq_length(self) -> int:
            return self.length

        def _rows(self, index) -> None:
            if self._k is not None:
                self._k, self._v = self._k[index], self._v[index]
                self._view()

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


def _length_groups(prompt_ids) -> list[list[int]]:
    """The prompts' indices in groups of similar length: shortest first, a new group where a prompt is at least
    twice as long as the shortest of the current one and 32 tokens longer (a few pad tokens are not worth a pass).

    Why: a batch is padded to its longest prompt, and reading the padding costs what reading tokens does. Ten
    one-line questions next to ten 130-token tasks would each read 130 positions; in their own group, 17. The
    groups are read apart and then decoded as one batch (``_merge_groups``): a decode step of a small model on
    a CPU costs about the same for 10 rows as for 60 (its time goes into reading the weights), so one decode
    for all groups is nearly as cheap as one for the largest.
    """
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    groups = [[order[0]]]
    for i in order[1:]:
        shortest = len(prompt_ids[groups[-1][0]])
        if len(prompt_ids[i]) >= max(2 * shortest, shortest + 32):
            groups.append([])
        groups[-1].append(i)
    return groups


def _merge_groups(parts, n_rows: int, capacity: int):
    """One batch from prompts prefilled in groups: ``parts`` = [(row indices, ``_prefill``'s result)].

    Every row must end at the same cache column, so each group's cache moves right to end where the longest
    group's does; the columns in front of it are zeros, masked out (attention gives them weight exactly 0).
    Rows keep their order in the caller's list, and their position ids: each row sees what it saw in its group.
    Returns the last logits, the cache, the attention mask and the last positions, as ``_prefill`` does."""
    import torch

    width = max(p[1][2].shape[1] for p in parts)  # the longest group's cache length
    if width > capacity:
        raise RuntimeError(f"KV cache full: prompts of {width} positions > {capacity}")
    first = parts[0][1]
    last = first[0].logits.new_empty(n_rows, first[0].logits.shape[-1])
    mask = first[2].new_zeros(n_rows, width)
    positions = first[3].new_empty(n_rows, 1)
    cache, layer = _new_cache(capacity), _growing_layer()
    cache.layers = [layer(capacity) for _ in first[1].layers]
    for rows, (out, group_cache, group_mask, group_positions) in parts:
        rows_t = torch.tensor(rows, device=group_mask.device)
        for merged, source in zip(cache.layers, group_cache.layers):
            merged.place(n_rows, rows_t, source, width)
        last[rows_t] = out.logits[:, -1]
        mask[rows_t, width - group_mask.shape[1]:] = group_mask
        positions[rows_t] = group_positions
    return last, cache, mask, positions


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
        groups = _length_groups(prompt_ids)
        if len(groups) == 1:
            out, cache, mask, positions = _prefill(model, prompt_ids, pad_id, capacity, extra)
            last = out.logits[:, -1]
        else:  # each group's prompts read apart (no padding to the longest prompt), then one decode for all
            # each group's cache only holds its prompts until it is copied into the merged one, then it is freed
            parts = [(rows_, _prefill(model, [prompt_ids[i] for i in rows_], pad_id,
                                      max(len(prompt_ids[i]) for i in rows_), extra)) for rows_ in groups]
            last, cache, mask, positions = _merge_groups(parts, len(prompt_ids), capacity)
            del parts
        for step in range(max_new_tokens):
            token = _next_tokens(last.float(), do_sample, temperature, top_p, generator)
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
            last = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True).logits[:, -1]
    return new
