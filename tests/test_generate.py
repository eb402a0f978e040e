"""ftlab's one generation loop (``ftlab.generation``) against transformers' ``model.generate``.

Greedy tokens must be identical, with prompts of different lengths in one batch (left padding) and
rows that stop at different steps (they leave the batch early). The tiny model as initialised writes
one token over and over, so the tests draw its weights again, larger, to make its continuations vary
with the prompt, and pick stop tokens from what it writes (it never writes its end-of-turn token).
"""

import pytest
import torch

from ftlab.generation import generate_tokens, stop_token_ids

PROMPTS = ["Hi", "Tell me a long story about a lighthouse keeper and his cat.", "What is 2+2?",
           "Classify: my card was charged twice.", "Name three colours of the rainbow, please."]


@pytest.fixture(scope="module")
def tiny():
    from ftlab import load_model

    model, tok = load_model("tiny", device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(0.3 * torch.randn(weight.shape, generator=generator))
    return model.eval(), tok


def prompt_ids(tok, prompts):
    return [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                    return_dict=True)["input_ids"] for p in prompts]


def hf_generate(model, ids, max_new_tokens, stops, pad_id):
    """The reference: ``model.generate`` on one left-padded batch, cut after the first stop token."""
    width = max(map(len, ids))
    batch = torch.tensor([[pad_id] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    with torch.no_grad():
        out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=pad_id)
    rows = []
    for row in out[:, width:].tolist():
        end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:end])
    return rows


def test_greedy_equals_model_generate_with_rows_stopping_at_different_steps(tiny):
    model, tok = tiny
    ids = prompt_ids(tok, PROMPTS)
    free = hf_generate(model, ids, 12, [tok.eos_token_id], tok.pad_token_id)
    # stop tokens the model writes at different steps in different rows, so rows leave the batch one by one
    stops = sorted({free[0][2], free[1][5], free[3][8]})
    expected = hf_generate(model, ids, 12, stops, tok.pad_token_id)
    assert len({len(r) for r in expected}) > 1, "the rows should stop at different steps"
    got = generate_tokens(model, ids, max_new_tokens=12, stop_ids=stops, pad_id=tok.pad_token_id)
    assert got == expected
    # one row at a time gives the same tokens too (no padding at all)
    assert [generate_tokens(model, [p], max_new_tokens=12, stop_ids=stops, pad_id=tok.pad_token_id)[0]
            for p in ids] == expected


def test_greedy_equals_the_loop_before_the_speed_up_and_shares_prompt_prefixes(tiny):
    """The loop that shares the prompts' common prefix and writes its cache in place gives the tokens of
    the loop it replaced (kept in the benchmark) and of ``model.generate`` - also when prompts repeat
    (GRPO samples one prompt several times) or one prompt is the start of another."""
    from ftlab.bench.generate import _generate_before
    from ftlab.generation import _shared_prefix

    model, tok = tiny
    ids = prompt_ids(tok, PROMPTS)
    assert _shared_prefix(ids) > 10  # the chat template's system turn
    stops = sorted({row[3] for row in hf_generate(model, ids, 6, [tok.eos_token_id], tok.pad_token_id)})
    kw = dict(max_new_tokens=10, stop_ids=stops, pad_id=tok.pad_token_id)
    assert generate_tokens(model, ids, **kw) == _generate_before(model, ids, **kw)
    nested = [ids[1], ids[1], ids[1][:-3], ids[2]]
    assert _shared_prefix(nested) == _shared_prefix(ids) and _shared_prefix(nested[:2]) == len(ids[1]) - 1
    expected = hf_generate(model, nested, 10, stops, tok.pad_token_id)
    assert generate_tokens(model, nested, **kw) == _generate_before(model, nested, **kw) == expected
    assert generate_tokens(model, nested[:2], **kw) == expected[:2]



def test_prompts_of_very_different_lengths_are_read_in_groups_and_decoded_as_one_batch(tiny):
    """Short and long prompts in one call: each length group is read apart (no padding to the longest
    prompt), then all rows decode together. Every row gets the tokens ``model.generate`` gives it alone,
    also when rows stop at different steps, and the rows come back in the caller's order."""
    from ftlab.generation import _length_groups

    model, tok = tiny
    pad = tok.pad_token_id
    long = "Summarise this: " + "the lighthouse keeper counted the waves again and again, " * 6
    ids = prompt_ids(tok, ["Hi", long, "What is 2+2?", long + " Be brief.", "Name a colour."])
    groups = _length_groups(ids)
    assert sorted(map(sorted, groups)) == [[0, 2, 4], [1, 3]]
    free = [hf_generate(model, [p], 12, [tok.eos_token_id], pad)[0] for p in ids]
    stops = sorted({free[0][2], free[1][5], free[3][8]})
    alone = [hf_generate(model, [p], 12, stops, pad)[0] for p in ids]   # one prompt at a time: no padding at all
    assert len({len(r) for r in alone}) > 1, "the rows should stop at different steps"
    assert generate_tokens(model, ids, max_new_tokens=12, stop_ids=stops, pad_id=pad) == alone
    assert generate_tokens(model, ids[::-1], max_new_tokens=12, stop_ids=stops, pad_id=pad) == alone[::-1]


def test_generate_answers_equals_the_model_generate_path(tiny):
    """``generate_answers`` (sorted batches, answers back in prompt order) == the batches through ``model.generate``."""
    from ftlab.evaluate import generate_answers

    model, tok = tiny
    stops = stop_token_ids(tok, model)
    ids = prompt_ids(tok, PROMPTS)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    expected = [None] * len(ids)
    for start in range(0, len(order), 2):
        batch = order[start:start + 2]
        for i, row in zip(batch, hf_generate(model, [ids[i] for i in batch], 9, stops, tok.pad_token_id)):
            expected[i] = tok.decode([t for t in row if t not in stops], skip_special_tokens=True).strip()
    assert generate_answers(model, tok, PROMPTS, max_new_tokens=9, batch_size=2, progress=False) == expected


def test_chat_equals_model_generate(tiny):
    from ftlab import chat

    model, tok = tiny
    ids = prompt_ids(tok, ["What is 2+2?"])
    row = hf_generate(model, ids, 10, stop_token_ids(tok, model), tok.pad_token_id)[0]
    assert chat(model, tok, "What is 2+2?", max_new_tokens=10) == tok.decode(row, skip_special_tokens=True).strip()
    model.train()
    chat(model, tok, "Hi", max_new_tokens=2)
    assert model.training  # the mode the caller had is restored
    model.eval()


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(tiny):
    model, tok = tiny
    ids = prompt_ids(tok, PROMPTS[:3])
    kw = dict(max_new_tokens=8, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id, do_sample=True)

    def sample(seed, **extra):
        return generate_tokens(model, ids, generator=torch.Generator().manual_seed(seed), **kw, **extra)

    assert sample(1) == sample(1) and sample(1) != sample(2)
    greedy = generate_tokens(model, ids, max_new_tokens=8, stop_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    assert sample(3, top_p=1e-6) == greedy  # only the most likely token is left to draw
    with pytest.raises(ValueError, match="temperature > 0"):
        sample(1, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(model, ids, max_new_tokens=0, stop_ids=[2], pad_id=0)


def test_grpo_samples_end_at_a_stop_token_and_the_model_still_trains(tiny):
    """GRPO's samples come from the same loop; the loop's inference mode must not leak into training."""
    from ftlab.align import sample_completions

    model, tok = tiny
    stops = stop_token_ids(tok, model)
    torch.manual_seed(0)
    prompts = [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS[:2]]
    samples = sample_completions(model, tok, prompts, num_generations=3, temperature=1.0, max_new_tokens=6)
    assert samples["prompt_ids"] == [p for p in prompt_ids(tok, PROMPTS[:2]) for _ in range(3)]
    for c in samples["completion_ids"]:
        assert len(c) == 6 or (c[-1] in stops and not set(c[:-1]) & set(stops))
    row = samples["prompt_ids"][0] + samples["completion_ids"][0]
    model.train()
    loss = model(input_ids=torch.tensor([row]), labels=torch.tensor([row])).loss
    loss.backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad()
    model.eval()


@pytest.mark.slow
def test_real_model_greedy_answers_equal_model_generate():
    """SmolLM2-135M-Instruct on course test prompts: the same tokens as ``model.generate``, batch 8."""
    from ftlab import load_model
    from ftlab.data import load_course_data, render_prompt
    from ftlab.evaluate import prepare_records

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    model.eval()
    stops = stop_token_ids(tok, model)
    items = prepare_records(load_course_data("instructions", "test", limit=8))
    ids = [tok(render_prompt(it["messages"], tok), add_special_tokens=False)["input_ids"] for it in items]
    expected = hf_generate(model, ids, 32, stops, tok.pad_token_id)
    assert any(r[-1] in stops for r in expected)  # some answers end before the budget
    assert generate_tokens(model, ids, max_new_tokens=32, stop_ids=stops, pad_id=tok.pad_token_id) == expected


def test_the_generation_benchmark_runs_and_prices_bf16(tmp_path, capsys):
    """``python -m ftlab.bench.generate`` on the tiny model: every fp32 path gives the same tokens (else it
    returns 1), and ``--bf16`` adds ftlab's loop on a bfloat16 copy with its answers counted, not asserted."""
    import json

    from ftlab.bench.generate import main

    out = tmp_path / "rows.json"
    assert main(["--model", "tiny", "--prompts", "4", "--max-new-tokens", "4", "--batches", "2",
                 "--bf16", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["same"] and row["batch"] == 2 and row["prompts"] == 4
    assert 0 <= row["bf16_same"] <= 4 and row["bf16_tok_s"] > 0
    assert "bf16 tok/s" in capsys.readouterr().out
