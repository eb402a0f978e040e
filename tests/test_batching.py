"""ftlab.data: padding, length grouping, packing (position ids, isolation), padding waste."""

import random
from collections import Counter

import pytest
import torch

from ftlab.data import (
    IGNORE_INDEX,
    collate,
    make_batches,
    measure_packing_effect,
    model_inputs,
    pack_examples,
    padding_waste,
)


def fake_examples(n=40, seed=0, lo=3, hi=60):
    """Examples with distinct token ids (so each can be traced through batching); first 2 tokens masked."""
    rng = random.Random(seed)
    out, next_id = [], 10
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = list(range(next_id, next_id + length))
        next_id += length
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX, IGNORE_INDEX] + ids[2:], "truncated": 0})
    return out


def real_tokens(batch):
    """The real (non-pad) token ids of a batch, as a multiset."""
    return Counter(batch["input_ids"][batch["attention_mask"].bool()].tolist())


def test_collate_right_pads_and_masks_padding():
    b = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert all(t.dtype == torch.long for t in b.values()) and "position_ids" not in b
    assert collate([{"input_ids": [1], "labels": [1]}], pad_to_multiple_of=8)["input_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match="labels"):
        collate([{"input_ids": [1, 2], "labels": [1]}])


@pytest.mark.parametrize("strategy", ["pad", "group", "pack"])
def test_every_strategy_keeps_every_token_once_and_is_deterministic(strategy):
    exs = fake_examples()
    batches = make_batches(exs, 4, strategy, max_length=128, seed=1)
    again = make_batches(exs, 4, strategy, max_length=128, seed=1)
    other = make_batches(exs, 4, strategy, max_length=128, seed=2)
    seen = sum((real_tokens(b) for b in batches), Counter())
    assert seen == Counter(t for e in exs for t in e["input_ids"])
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    assert any(not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other))
    for b in batches:
        assert (b["labels"][b["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_pad_without_shuffle_keeps_order():
    exs = fake_examples(10)
    batches = make_batches(exs, 3, "pad", shuffle=False)
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 3, 1]
    assert batches[0]["input_ids"][1, : len(exs[1]["input_ids"])].tolist() == exs[1]["input_ids"]


def test_group_and_pack_waste_less_padding_than_pad():
    exs = fake_examples(200, lo=5, hi=200)
    waste = {s: padding_waste(make_batches(exs, 8, s, max_length=256)) for s in ("pad", "group", "pack")}
    assert waste["pad"] > 0.3 and waste["group"] < waste["pad"] / 3 and waste["pack"] < 0.1


def test_padding_waste_definition():
    b = collate([{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}, {"input_ids": [5], "labels": [5]}])
    assert padding_waste([b]) == 3 / 8
    assert padding_waste([]) == 0.0


def test_pack_examples_restarts_position_ids_and_masks_first_tokens():
    exs = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]},
           {"input_ids": [6, 7, 8, 9], "labels": [-100, 7, 8, 9]}]
    rows = pack_examples(exs, max_length=7)
    assert [r["seq_lengths"] for r in rows] == [[4, 3], [2]]  # first fit, longest first
    assert rows[0]["input_ids"] == [6, 7, 8, 9, 1, 2, 3]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 0, 1, 2]
    # an example's first token would be predicted from the previous example's last token: not trained
    assert rows[0]["labels"] == [-100, 7, 8, 9, -100, 2, 3]
    batch = collate(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4]]  # padding: its own run
    assert "attention_mask" not in model_inputs(batch) and "attention_mask" in model_inputs(collate(exs))
    with pytest.raises(ValueError, match="example 2 has 4 tokens, more than max_length=3"):
        pack_examples(exs, max_length=3)


def test_too_long_examples_are_an_error_not_silently_cut():
    exs = fake_examples(5, lo=10, hi=10)
    with pytest.raises(ValueError, match="more than max_length=8"):
        make_batches(exs, 2, "pad", max_length=8)


def test_packed_examples_are_kept_apart_only_without_mask_and_cache():
    """The measurement the docs rely on, on the tiny model: packing is exact only when fed correctly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftlab.models import TINY_CONFIG

    # the tiny model's architecture with a small vocabulary: no tokenizer needed here
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=1200, **TINY_CONFIG))
    exs = fake_examples(6, lo=4, hi=12)
    for e in exs:  # use real vocabulary ids
        e["input_ids"] = [t % 1000 + 100 for t in e["input_ids"]]
        e["labels"] = [IGNORE_INDEX] * 2 + e["input_ids"][2:]
    result = measure_packing_effect(model, exs, max_length=48)
    diff = result["max_token_diff"]
    assert result["rows"] < len(exs)
    assert diff["packed"] < 1e-4 and abs(result["packed"] - result["separate"]) < 1e-4
    for leaky in ("packed_use_cache", "packed_with_mask", "concatenated"):
        assert diff[leaky] > 1e-3, leaky
