"""Batching: dynamic padding, length-grouped batches, packing, and how much of a batch is padding.

Examples have different lengths, but a batch is a rectangle. Three ways to fill it:

* ``"pad"``   - shuffle, cut into batches, pad each batch to *its own* longest example
  (dynamic padding). Simple; wastes compute when a short and a long example meet.
* ``"group"`` - length-grouped: take a shuffled window of many batches, sort it by length, cut it
  into batches and shuffle the batch order. Neighbours have similar lengths, so little padding,
  while every epoch still sees a different order.
* ``"pack"``  - concatenate several examples into one row of ``max_length`` tokens, with
  ``position_ids`` restarting at 0 for each example. Almost no padding.

Packing and attention. Concatenated examples must not see each other. In transformers 5.x the
Llama family keeps them apart only when three things hold: the model gets ``position_ids``, gets
*no* 2-D ``attention_mask``, and runs with ``use_cache=False``. It then reads the restarts in
``position_ids`` and builds a block-diagonal causal mask (SDPA and eager attention, any batch
size - so also on a laptop CPU) or calls the variable-length kernel (flash-attention, batch size 1
only). Pass an ``attention_mask``, or leave ``use_cache`` at its default (``True``, even in training
mode), and that detection is skipped without a warning: every token then attends to all earlier
tokens of its row, other examples included. So call the model as
``model(**model_inputs(batch), use_cache=False)``. ``measure_packing_effect`` measures each case
against running the examples one by one.

Every batch is a dict of ``torch.LongTensor``: ``input_ids``, ``attention_mask`` (1 = real token),
``labels`` (-100 on padding and untrained tokens) and, for packed batches, ``position_ids``.

Example:
    >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                  {"input_ids": [8], "labels": [8]}], pad_token_id=0)
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[-100, 6, 7], [8, -100, -100]])
"""

from __future__ import annotations

import random

import torch

from ftlab.data.templates import IGNORE_INDEX

STRATEGIES = ("pad", "group", "pack")
GROUP_WINDOW = 32  # "group": sort windows of this many batches by length (like HF's megabatches)


def collate(examples, pad_token_id=0, pad_to_multiple_of=None) -> dict:
    """Right-pad a list of examples into one batch of LongTensors.

    Padding gets ``attention_mask`` 0 and label -100, so it never counts in the loss. The pad id
    itself therefore does not matter much, but use the tokenizer's (``tok.pad_token_id``).
    Examples that carry ``position_ids`` (packed rows) get them padded with a fresh 0, 1, 2 ... run,
    so the padding forms its own separate "example" that no real token can attend to.

    Example:
        >>> collate([{"input_ids": [1, 2], "labels": [1, 2]}], pad_to_multiple_of=4)["attention_mask"].tolist()
        [[1, 1, 0, 0]]
    """
    if not examples:
        raise ValueError("collate: got an empty list of examples")
    length = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    packed = any("position_ids" in e for e in examples)
    input_ids, attention_mask, labels, position_ids = [], [], [], []
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        if len(e["labels"]) != n:
            raise ValueError(f"collate: example {i} has {n} input_ids but {len(e['labels'])} labels (they must match)")
        pad = length - n
        input_ids.append(list(e["input_ids"]) + [pad_token_id] * pad)
        attention_mask.append([1] * n + [0] * pad)
        labels.append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        if packed:
            position_ids.append(list(e.get("position_ids", range(n))) + list(range(pad)))
    batch = {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    if packed:
        batch["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
    return batch


def model_inputs(batch) -> dict:
    """The tensors to call the model with: for packed batches, everything but ``attention_mask``.

    Without a 2-D mask (and with ``use_cache=False``, which you pass to the model yourself),
    transformers derives a block-diagonal mask from ``position_ids``, so packed examples cannot
    attend to each other (see the module docstring). Other batches pass unchanged.

    Example:
        >>> sorted(model_inputs({"input_ids": 1, "attention_mask": 1, "labels": 1, "position_ids": 1}))
        ['input_ids', 'labels', 'position_ids']
    """
    if "position_ids" in batch:
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return dict(batch)


def pack_examples(examples, max_length) -> list[dict]:
    """Pack examples into rows of at most ``max_length`` tokens (first-fit, longest first).

    Each row has ``input_ids``, ``labels``, ``position_ids`` (restarting at 0 for every example)
    and ``seq_lengths``. The label of each example's *first* token is set to -100: in a packed row
    it would otherwise be predicted from the previous example's last token, a target that does not
    exist when examples are trained one by one.

    An example longer than ``max_length`` is an error, not silently cut: truncate it explicitly
    with ``tokenize_example(..., max_length=...)`` first.

    Example:
        >>> rows = pack_examples([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
        ...                       {"input_ids": [4, 5], "labels": [4, 5]}], max_length=8)
        >>> rows[0]["position_ids"], rows[0]["labels"]
        ([0, 1, 2, 0, 1], [-100, 2, 3, -100, 5])
    """
    if max_length is None:
        raise ValueError("pack_examples needs max_length (the length of one packed row)")
    for i, e in enumerate(examples):
        if len(e["input_ids"]) > max_length:
            raise ValueError(
                f"example {i} has {len(e['input_ids'])} tokens, more than max_length={max_length}. "
                "Fix: raise max_length, or truncate explicitly with tokenize_example(..., max_length=...)."
            )
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows, room = [], []  # room[r] = tokens still free in row r
    for i in order:
        n = len(examples[i]["input_ids"])
        r = next((r for r, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([])
            room.append(max_length)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    packed = []
    for members in rows:
        row = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
        for i in members:
            e = examples[i]
            n = len(e["input_ids"])
            row["input_ids"] += list(e["input_ids"])
            row["labels"] += [IGNORE_INDEX] + list(e["labels"][1:])
            row["position_ids"] += list(range(n))
            row["seq_lengths"].append(n)
        packed.append(row)
    return packed


def _check_lengths(examples, max_length):
    if max_length is None:
        return
    for i, e in enumerate(examples):
        if len(e["input_ids"]) > max_length:
            raise ValueError(
                f"example {i} has {len(e['input_ids'])} tokens, more than max_length={max_length}. "
                "Fix: truncate explicitly with tokenize_example(..., max_length=...) or raise max_length."
            )


def make_batches(examples, batch_size, strategy="pad", max_length=None, seed=0, shuffle=True, pad_token_id=0) -> list[dict]:
    """Turn tokenised examples into a list of collated batches.

    Args:
        examples: dicts with ``input_ids`` and ``labels`` (from ``tokenize_dataset``).
        batch_size: examples per batch (``"pack"``: packed rows per batch).
        strategy: ``"pad"``, ``"group"`` or ``"pack"`` (see the module docstring).
        max_length: the longest allowed example (an error if one is longer); for ``"pack"``, the
            row length (default: the longest example).
        seed: the shuffling seed; the same seed gives the same batches.
        shuffle: ``False`` keeps the input order for ``"pad"`` (and sorts by length for ``"group"``).
        pad_token_id: the padding id (the tokenizer's ``pad_token_id``).

    Example:
        >>> exs = [{"input_ids": [1] * n, "labels": [1] * n} for n in (1, 9, 2, 8)]
        >>> [b["input_ids"].shape[1] for b in make_batches(exs, 2, "group", shuffle=False)]
        [9, 2]
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; use one of {STRATEGIES}")
    examples = list(examples)
    rng = random.Random(seed)
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)

    if strategy == "pack":
        if max_length is None:
            max_length = max(len(e["input_ids"]) for e in examples)
        rows = pack_examples([examples[i] for i in order], max_length)
        if shuffle:
            rng.shuffle(rows)
        chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        return [collate(c, pad_token_id) for c in chunks]

    _check_lengths(examples, max_length)
    if strategy == "group":
        length = lambda i: len(examples[i]["input_ids"])  # noqa: E731
        if not shuffle:
            order.sort(key=lambda i: -length(i))
        else:
            window = batch_size * GROUP_WINDOW
            order = [i for w in range(0, len(order), window) for i in sorted(order[w:w + window], key=lambda i: -length(i))]
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if strategy == "group" and shuffle:
        rng.shuffle(chunks)
    return [collate([examples[i] for i in c], pad_token_id) for c in chunks]


def padding_waste(batches) -> float:
    """Fraction of all token slots in ``batches`` that are padding (0.0 = no waste).

    Example:
        >>> padding_waste([collate([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}])])
        0.25
    """
    total = sum(b["attention_mask"].numel() for b in batches)
    pads = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    return pads / total if total else 0.0


@torch.no_grad()
def measure_packing_effect(model, examples, max_length=None) -> dict:
    """Measure whether packed examples leak into each other, by comparing losses with running them alone.

    The same examples are scored five ways (mean loss per trained token):

    * ``separate``         - one example per forward pass: the reference;
    * ``packed``           - packed rows fed the right way: ``position_ids``, no ``attention_mask``,
      ``use_cache=False``; transformers builds a block-diagonal mask;
    * ``packed_use_cache`` - the same, but with the model's default ``use_cache=True``: the cache
      switches the packed-sequence detection off, so examples attend to each other;
    * ``packed_with_mask`` - the rows *with* the 2-D ``attention_mask``: detection off as well;
    * ``concatenated``     - rows without ``position_ids`` at all (positions run on across examples).

    ``max_token_diff`` gives, per variant, the largest difference of any token's loss from the
    reference: float rounding (about 1e-5) when the examples are truly kept apart.

    Example:
        >>> from ftlab import load_model, load_records, tokenize_dataset
        >>> model, tok = load_model("tiny")                                           # doctest: +SKIP
        >>> exs = tokenize_dataset(load_records("tests/fixtures/data/chat.jsonl"), tok)  # doctest: +SKIP
        >>> measure_packing_effect(model, exs)["max_token_diff"]["packed"] < 1e-4        # doctest: +SKIP
        True
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    examples = [e for e in examples if len(e["input_ids"]) > 1]
    reference = [_example_losses(_logits(model, {"input_ids": torch.tensor([e["input_ids"]])}, device)[0], e, device)
                 for e in examples]  # every example alone
    if max_length is None:
        max_length = max(len(e["input_ids"]) for e in examples) * 2
    rows = pack_examples(examples, max_length)
    batch = collate(rows)
    segments = _packed_segments(examples, rows, batch)
    no_mask = model_inputs(batch)
    variants = {
        "packed": (no_mask, False),
        "packed_use_cache": (no_mask, None),
        "packed_with_mask": (dict(batch), False),
        "concatenated": ({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, False),
    }
    ref_total = sum(float((l * m).sum()) for l, m in reference)
    n_tokens = sum(int(m.sum()) for _, m in reference)
    result = {"separate": ref_total / max(1, n_tokens), "max_token_diff": {},
              "attn_implementation": getattr(model.config, "_attn_implementation", None), "rows": len(rows),
              "examples": len(examples), "trained_tokens": n_tokens}
    for name, (inputs, use_cache) in variants.items():
        logits = _logits(model, inputs, device, use_cache)
        total, worst = 0.0, 0.0
        for r, start, n, i in segments:
            ref_loss, mask = reference[i]
            loss, _ = _example_losses(logits[r, start:start + n - 1], examples[i], device)
            total += float((loss * mask).sum())
            if mask.any():
                worst = max(worst, float((loss - ref_loss).abs()[mask].max()))
        result[name] = total / max(1, n_tokens)
        result["max_token_diff"][name] = worst
    if was_training:
        model.train()
    return result


def _logits(model, inputs, device, use_cache=False):
    """The float logits of every position but the last (position t predicts label t+1)."""
    inputs = {k: v.to(device) for k, v in inputs.items() if k != "labels"}
    return model(**inputs, use_cache=use_cache).logits[:, :-1].float()


def _example_losses(logits, example, device):
    """Per-token losses of one example from its (unshifted) labels, and the mask of trained tokens."""
    import torch.nn.functional as F

    labels = torch.tensor(example["labels"][1:], device=device)
    return F.cross_entropy(logits, labels.clamp(min=0), reduction="none"), labels != IGNORE_INDEX


def _packed_segments(examples, rows, batch):
    """``(row, start, length, example index)`` of every packed segment, matched by content
    (identical examples have identical losses, so which copy matches which does not matter)."""
    remaining = {}
    for i, e in enumerate(examples):
        remaining.setdefault(tuple(e["input_ids"]), []).append(i)
    segments = []
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lengths"]:
            key = tuple(batch["input_ids"][r, start:start + n].tolist())
            segments.append((r, start, n, remaining[key].pop()))
            start += n
    return segments


def compare_strategies(examples, batch_size, max_length=None, seed=0, pad_token_id=0) -> dict:
    """Padding waste, number of batches and padded row length of each strategy on the same examples.

    Example:
        >>> exs = [{"input_ids": [1] * n, "labels": [1] * n} for n in (2, 30, 3, 29, 4, 31, 5, 28)]
        >>> {s: r["padding_waste"] for s, r in compare_strategies(exs, 2, 64).items()}
        {'pad': 0.441, 'group': 0.029, 'pack': 0.312}
    """
    out = {}
    for strategy in STRATEGIES:
        batches = make_batches(examples, batch_size, strategy, max_length=max_length, seed=seed, pad_token_id=pad_token_id)
        out[strategy] = {
            "padding_waste": round(padding_waste(batches), 3),
            "batches": len(batches),
            "token_slots": sum(b["input_ids"].numel() for b in batches),
            "mean_row_length": round(sum(b["input_ids"].shape[1] for b in batches) / max(1, len(batches)), 1),
        }
    return out


# --------------------------------------------------------------------------- what the training loop reads


def prepare_examples(data, tokenizer, max_length: int, train_on: str = "assistant", what: str = "train_data",
                     limit: int | None = None) -> list[dict]:
    """Anything ``ftlab.train`` accepts as data -> tokenised examples ``{"input_ids", "labels"}``.

    ``data`` may be a file path, tokenised examples, canonical records, or raw records in any
    format ``ftlab.data.load_records`` reads (instruction triples, prompt/completion, ShareGPT, ...).
    """
    import os

    from ftlab.data.templates import tokenize_dataset

    if isinstance(data, (str, os.PathLike)):
        from ftlab.data.records import load_records

        data = load_records(data)
    data = list(data)[:limit]
    if not data:
        raise ValueError(f"train(): {what} is empty.")
    if all(isinstance(r, dict) and "input_ids" in r and "labels" in r for r in data):
        for i, r in enumerate(data):
            if len(r["input_ids"]) > max_length:
                raise ValueError(f"train(): {what}[{i}] has {len(r['input_ids'])} tokens > max_length="
                                 f"{max_length}. Fix: raise max_length or tokenise with max_length.")
        return data
    if not all(isinstance(r, dict) and ("messages" in r or "text" in r) for r in data):
        from ftlab.data.records import load_records  # raw records: convert (and validate) them all at once

        data = load_records(data)
    return tokenize_dataset(data, tokenizer, max_length=max_length, train_on=train_on, verbose=True)


class BatchStream:
    """Micro-batches in a seeded order, epoch after epoch; ``position`` is saved in checkpoints.

    Example:
        >>> stream = BatchStream([{"input_ids": [1, 2], "labels": [1, 2]}] * 3, batch_size=2, seed=0)
        >>> [b["input_ids"].shape[0] for b in stream.take(3)], stream.position   # epoch 0: 2 + 1, then epoch 1
        ([2, 1, 2], {'epoch': 1, 'index': 1})

    Epoch ``e`` is ``make_batches(examples, seed=seed + e)``, so the order is a pure function of the seed
    and the position: a resumed run continues with exactly the batches it would have seen.
    """

    def __init__(self, examples, batch_size: int, strategy: str = "pad", max_length: int | None = None,
                 seed: int = 0, shuffle: bool = True, pad_token_id: int = 0):
        self.examples, self.pad_token_id = examples, pad_token_id
        self.batch_size, self.strategy, self.max_length, self.seed, self.shuffle = batch_size, strategy, max_length, seed, shuffle
        self.epoch, self.index, self._batches = 0, 0, None

    def _epoch_batches(self):
        if self._batches is None:
            self._batches = make_batches(self.examples, self.batch_size, self.strategy, max_length=self.max_length,
                                         seed=self.seed + self.epoch, shuffle=self.shuffle, pad_token_id=self.pad_token_id)
        return self._batches

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            batches = self._epoch_batches()
            if self.index >= len(batches):  # next epoch, new order
                self.epoch, self.index, self._batches = self.epoch + 1, 0, None
                continue
            out.append(batches[self.index])
            self.index += 1
        return out

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def seek(self, position: dict) -> None:
        self.epoch, self.index, self._batches = position["epoch"], position["index"], None
