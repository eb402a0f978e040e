"""ftlab.align: bad preference data and rewards, and parity with TRL 1.16 on the same batch.

Parity is checked on the tiny model with a LoRA adapter whose B matrices are made non-zero *after*
the TRL trainer is built. Why: given a PEFT model, TRL's DPOTrainer copies its adapter into a frozen
"ref" adapter and uses that as the reference; ftlab switches the adapters off. Both are the
starting model exactly when the adapter starts at zero (B = 0), as a fresh LoRA does. Perturbing the
trained adapter afterwards moves the policy away from the reference, so rewards, margins and
accuracies are not trivially zero.

Both sides are fed the *same* tensors (ftlab's batch): TRL scores the newline the chat template puts
after ``<|im_end|>`` as part of the completion, ftlab does not (SFT does not train it, and generation
stops at ``<|im_end|>``); ``test_tokenisation_matches_trl`` pins that this newline is the only difference.
"""

import math
import tempfile

import pytest
import torch

from ftlab.align import (AlignConfig, RewardError, collate_preferences, completion_batch, dpo_loss,
                         group_advantages, grpo_loss, load_preferences, preference_loss, reference_logprobs,
                         score_completions, split_pairs, token_logprobs, tokenize_preferences, train_preferences,
                         task_reward)
from ftlab.align.trl_parity import as_trl_dataset, examples_from_trl, watch_grpo_loss
from ftlab.data import DataValidationError, data_dir
from ftlab.models import load_model

pytest.importorskip("trl")

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


# --------------------------------------------------------------------------- fixtures


def _lora_model(seed=0):
    from ftlab.training import prepare_model

    model, tok = load_model("tiny")
    torch.manual_seed(seed)
    model = prepare_model(model, "lora", lora_rank=4, lora_alpha=8, tokenizer=tok)
    return model, tok


def _perturb(model, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_gradients(ours, theirs, rtol=1e-4):
    """Every parameter's gradient agrees with TRL's to ``rtol`` of that gradient's norm (elements near
    zero differ by float rounding in the order of the sums, so a per-element relative test is meaningless)."""
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        err = (ours[name] - theirs[name]).norm() / theirs[name].norm().clamp(min=1e-12)
        assert err < rtol, (name, err.item())


def _pairs(n=4):
    records = load_preferences(data_dir() / "preferences.jsonl", limit=n)
    return records


def _completion_mask(labels):
    return (labels != -100).long()


def _dpo_trainer(model, tok, records, tmp, **kw):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp), report_to=[], use_cpu=True, per_device_train_batch_size=len(records),
                     bf16=False, **kw)
    return DPOTrainer(model=model, args=args, train_dataset=as_trl_dataset(records), processing_class=tok)


# --------------------------------------------------------------------------- DPO / IPO parity


@pytest.mark.parametrize("loss_type,beta,sft_weight", [("sigmoid", 0.1, 0.0), ("ipo", 0.5, 0.0), ("sigmoid", 0.1, 0.5)])
def test_dpo_matches_trl(tmp_path, loss_type, beta, sft_weight):
    """DPO, IPO, and DPO plus an SFT term on the chosen answers (TRL: loss_type=["sigmoid", "sft"])."""
    model, tok = _lora_model()
    records = _pairs(4)
    trl_kw = dict(loss_type=[loss_type, "sft"], loss_weights=[1.0, sft_weight]) if sft_weight else dict(loss_type=[loss_type])
    trainer = _dpo_trainer(model, tok, records, tmp_path, beta=beta, **trl_kw)
    _perturb(model)
    batch = collate_preferences(tokenize_preferences(records, tok), tok.pad_token_id)
    model.train()

    trl_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "completion_mask": _completion_mask(batch["labels"])}
    trl_loss = trainer.compute_loss(trainer.model, trl_inputs)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    trl_loss.backward()
    trl_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    config = AlignConfig(loss="ipo" if loss_type == "ipo" else "dpo", beta=beta, sft_weight=sft_weight)
    loss, metrics = preference_loss(model, batch, config)
    loss.backward()
    grads = _grads(model)

    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-5)
    assert trl_metrics["rewards/margins"] != 0  # the check is not trivial
    # ftlab runs each pair's prompt once (shared-prompt rows), TRL twice: the same sums in another order. A reward is
    # beta x the difference of two log-probs about 100x its size, so their float32 rounding (~1e-6 relative, measured)
    # shows in it at ~1e-4 relative
    for name in METRICS:
        assert math.isclose(metrics[name].item(), trl_metrics[name], rel_tol=1e-4, abs_tol=1e-5), (name, metrics[name].item(), trl_metrics[name])
    _assert_same_gradients(grads, trl_grads)


def test_label_smoothing_is_conservative_dpo():
    """cDPO: with eps, the loss is the eps-mixture of the loss for the label and for the flipped label
    (TRL 1.16 dropped eps from its 'sigmoid' loss, so this one is checked against the formula)."""
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-5.0, -7.0], [-9.0, -6.0], [-6.0, -7.5], [-8.0, -6.5]))
    right, _ = dpo_loss(pc, pr, rc, rr, beta=0.3)
    flipped, _ = dpo_loss(pr, pc, rr, rc, beta=0.3)
    smooth, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.2)
    torch.testing.assert_close(smooth, 0.8 * right + 0.2 * flipped)


def test_tokenisation_matches_trl(tmp_path):
    """Same token ids as TRL's DPOTrainer; the completion masks differ only in the newline after <|im_end|>."""
    model, tok = _lora_model()
    records = _pairs(4)
    trainer = _dpo_trainer(model, tok, records, tmp_path)
    ours = collate_preferences(tokenize_preferences(records, tok), tok.pad_token_id)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    diff = theirs["completion_mask"] - _completion_mask(ours["labels"])
    assert (diff >= 0).all() and (diff.sum(-1) == 1).all()
    assert {tok.decode(t) for t in ours["input_ids"][diff.bool()]} == {"\n"}
    # examples_from_trl (notebook 07's live DPO run) gives ftlab exactly TRL's batch, newline included
    bridged = collate_preferences(examples_from_trl(trainer.train_dataset), tok.pad_token_id)
    assert torch.equal(bridged["input_ids"], theirs["input_ids"])
    assert torch.equal(_completion_mask(bridged["labels"]), theirs["completion_mask"])


@pytest.mark.parametrize("method,temperature", [("lora", 1.0), ("lora", 0.7), ("full", 1.0)])
def test_lean_output_layer_gives_the_same_numbers(monkeypatch, method, temperature):
    """With gradients, token_logprobs keeps no logits for the backward (``_KeptLogProbs``): its
    log-probabilities and every gradient (the tied output layer's too, in full fine-tuning) equal
    plain autograd's to the bit."""
    import ftlab.align.logprobs as lp

    model, tok = _lora_model() if method == "lora" else load_model("tiny")
    if method == "lora":
        _perturb(model)
    batch = collate_preferences(tokenize_preferences(_pairs(4), tok), tok.pad_token_id)

    def run():
        model.zero_grad(set_to_none=True)
        per_token = lp.token_logprobs(model, batch, temperature=temperature)
        (per_token.sum(-1) * torch.arange(1.0, per_token.shape[0] + 1)).sum().backward()
        return per_token.detach(), _grads(model)

    assert lp._plain_output_layer(model) is not None  # the lean path is the one taken
    lean, lean_grads = run()
    monkeypatch.setattr(lp, "_plain_output_layer", lambda m: None)
    plain, plain_grads = run()
    assert torch.equal(lean, plain) and lean_grads.keys() == plain_grads.keys()
    assert all(torch.equal(lean_grads[n], plain_grads[n]) for n in plain_grads)



@pytest.mark.parametrize("method", ["lora", "full"])
def test_shared_prompt_rows_give_the_same_logprobs_and_gradients(monkeypatch, method):
    """``token_logprobs(pairs=True)`` runs each pair's prompt once (one row: prompt, chosen, rejected, with a
    4-D mask): the same log-probabilities and gradients as the two rows apart, to float rounding, for fewer
    tokens - also for a pair whose answers share their first tokens, and with the prompt scored too (ORPO's
    ``orpo_nll_on="sequence"``). And a rejected answer never sees the chosen one: changing the chosen
    answer's tokens leaves every rejected log-probability as it was."""
    import ftlab.align.logprobs as lp

    shared_prompt_rows = lp.shared_prompt_rows
    model, tok = _lora_model() if method == "lora" else load_model("tiny")
    if method == "lora":
        _perturb(model)
    records = _pairs(3)
    records.append({**records[0], "chosen": "Positive, clearly.", "rejected": "Positive? Maybe negative."})
    batch = collate_preferences(tokenize_preferences(records, tok), tok.pad_token_id)
    prompt_too = {**batch, "labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}

    packed_calls = []
    monkeypatch.setattr(lp, "shared_prompt_rows", lambda *a: packed_calls.append(1) or shared_prompt_rows(*a))

    def run(b, pairs):
        model.zero_grad(set_to_none=True)
        per_token = lp.token_logprobs(model, b, pairs=pairs)
        (per_token.sum(-1) * torch.arange(1.0, per_token.shape[0] + 1)).sum().backward()
        return per_token.detach(), _grads(model)

    for b in (batch, prompt_too):
        apart, apart_grads = run(b, pairs=False)
        calls = len(packed_calls)
        shared, shared_grads = run(b, pairs=True)
        assert len(packed_calls) == calls + 1      # the packed path ran (not a silent fall-back to two rows)
        torch.testing.assert_close(shared, apart, rtol=1e-5, atol=1e-5)
        assert (shared != 0).sum() == (apart != 0).sum() > 0
        _assert_same_gradients(shared_grads, apart_grads, rtol=1e-4)
    packed = shared_prompt_rows(batch, torch.float32)
    assert packed["inputs"]["input_ids"].numel() < 0.75 * batch["input_ids"].numel()

    n = len(records)
    other = batch["input_ids"].clone()
    answer = (batch["labels"][:n] != -100) & (other[:n] != other[n:])   # the chosen answers' own tokens
    other[:n][answer] = (other[:n][answer] + 7) % model.config.vocab_size
    with torch.no_grad():
        before = lp.token_logprobs(model, batch, pairs=True)
        after = lp.token_logprobs(model, {**batch, "input_ids": other}, pairs=True)
    assert torch.equal(before[n:], after[n:]) and not torch.equal(before[:n], after[:n])



def test_models_with_a_sliding_window_keep_two_rows():
    """transformers passes a ready-made 4-D mask through unchanged, window or not: a model with sliding-window
    attention would lose its window in shared-prompt rows, so it keeps the two-row path."""
    import ftlab.align.logprobs as lp

    model, _ = _lora_model()
    config = model.get_base_model().config
    assert lp.takes_4d_masks(model)
    config.sliding_window = 4
    assert not lp.takes_4d_masks(model)
    config.use_sliding_window = False      # Qwen2's switch: the window is configured but not used
    assert lp.takes_4d_masks(model)


# --------------------------------------------------------------------------- ORPO parity


def test_orpo_matches_trl(tmp_path):
    """ORPOTrainer lives in ``trl.experimental.orpo`` in TRL 1.x. Its NLL term covers the whole chosen
    sequence (prompt too), so ftlab runs with ``orpo_nll_on="sequence"`` here; its default is the completion."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tok = _lora_model()
    records = _pairs(4)
    ds = as_trl_dataset(records).map(lambda r: {"prompt": tok.apply_chat_template(r["prompt"], tokenize=False),
                                                 "chosen": r["chosen"][0]["content"],
                                                 "rejected": r["rejected"][0]["content"]})
    args = ORPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, beta=0.2, bf16=False,
                      per_device_train_batch_size=4, max_length=512)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    _perturb(model)
    batch = collate_preferences(tokenize_preferences(records, tok), tok.pad_token_id)
    (c_ids, r_ids), (c_att, r_att), (c_lab, r_lab) = (split_pairs(batch[k]) for k in ("input_ids", "attention_mask",
                                                                                      "labels"))
    trl_batch = {"chosen_input_ids": c_ids, "chosen_attention_mask": c_att, "chosen_labels": c_lab,
                 "rejected_input_ids": r_ids, "rejected_attention_mask": r_att, "rejected_labels": r_lab}
    model.train()
    trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch)
    trl_loss.backward()
    trl_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    loss, metrics = preference_loss(model, batch, AlignConfig(loss="orpo", beta=0.2, orpo_nll_on="sequence"))
    loss.backward()
    grads = _grads(model)
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-5)
    for name in (*METRICS, "nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert math.isclose(metrics[name].item(), trl_metrics[name], rel_tol=1e-5, abs_tol=1e-5), (name, metrics[name].item(), trl_metrics[name])
    _assert_same_gradients(grads, trl_grads)


# --------------------------------------------------------------------------- GRPO parity


def test_group_advantages_match_trl_formula():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 0.2, 0.2, 0.2])
    grouped = rewards.view(-1, 4)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (nanstd(grouped, dim=1).unsqueeze(1) + 1e-4)
    torch.testing.assert_close(group_advantages(rewards, 4), expected.reshape(-1))
    assert (group_advantages(rewards, 4)[4:] == 0).all()  # equal rewards teach nothing


@pytest.mark.parametrize("loss_type,correction", [("grpo", True), ("bnpo", False)])
def test_grpo_loss_matches_trl(tmp_path, loss_type, correction):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _lora_model()
    G = 4
    args = GRPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, num_generations=G,
                      per_device_train_batch_size=G, beta=0.04, epsilon=0.2, loss_type=loss_type,
                      max_completion_length=16, temperature=1.0, use_bias_correction_kl=correction)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                          train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * G),
                          processing_class=tok)
    _perturb(model)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Classify: my card was charged twice."}],
                                     tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    answers = ["billing", "The category is billing, I think.", "shipping", "{}"]
    completion_ids = [tok(a, add_special_tokens=False)["input_ids"] + [end] for a in answers]
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), G)

    batch = completion_batch([prompt_ids] * G, completion_ids, tok.pad_token_id)
    mask = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] != -100
    ref = reference_logprobs(model, batch)[0]  # only to check shapes
    with torch.no_grad(), model.disable_adapter():
        ref_tokens = token_logprobs(model, batch)
    model.train()
    logps = token_logprobs(model, batch)
    loss, metrics = grpo_loss(logps, logps.detach(), ref_tokens, advantages, mask, epsilon=0.2, beta=0.04,
                              loss_type=loss_type, kl_ratio_correction=correction)
    loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)

    P, C = len(prompt_ids), max(len(c) for c in completion_ids)
    completion = torch.full((G, C), tok.pad_token_id)
    completion_mask = torch.zeros(G, C, dtype=torch.long)
    for i, c in enumerate(completion_ids):
        completion[i, :len(c)], completion_mask[i, :len(c)] = torch.tensor(c), 1
    inputs = {"prompt_ids": torch.tensor([prompt_ids] * G), "prompt_mask": torch.ones(G, P, dtype=torch.long),
              "completion_ids": completion, "completion_mask": completion_mask, "advantages": advantages,
              "ref_per_token_logps": ref_tokens[:, P - 1:P - 1 + C], "old_per_token_logps": None,
              "num_items_in_batch": completion_mask.sum()}
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); one micro-batch here
    trl_loss = trainer._compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = _grads(model)
    assert ref.shape == (G,)
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert math.isclose(metrics["kl"].item(), trainer._metrics["train"]["kl"][-1], rel_tol=1e-5, abs_tol=1e-7)
    assert metrics["kl"].item() > 0
    _assert_same_gradients(grads, trl_grads)


def test_grpo_loss_on_trls_own_samples(tmp_path):
    """notebook 07's live check: while GRPOTrainer.train() runs, ftlab's grpo_loss on each batch TRL sampled equals
    TRL's loss; the rewards differ within a group (length), so the advantages and the update are not zero."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _lora_model()
    args = GRPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, num_generations=4,
                      per_device_train_batch_size=4, max_steps=2, max_completion_length=8, loss_type="grpo",
                      learning_rate=1e-2, num_iterations=1, save_strategy="no", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [len(c[0]["content"]) / 50.0
                                                                                for c in completions]], args=args,
                          train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 4),
                          processing_class=tok)
    seen = watch_grpo_loss(trainer, tok.pad_token_id)
    trainer.train()
    assert len(seen) == 2 and seen[-1]["trl"] != 0 and seen[-1]["tokens"] > 0
    for step in seen:
        assert math.isclose(step["ftlab"], step["trl"], rel_tol=1e-4, abs_tol=1e-7), step
    with pytest.raises(ValueError, match="num_iterations"):
        trainer.args.num_iterations = 2
        watch_grpo_loss(trainer, tok.pad_token_id)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("record,field,words", [
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "missing or empty"),
    ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
    ({"prompt": "q", "chosen": "a", "rejected": "  "}, "rejected", "missing or empty"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "the same answer"),
    ({"prompt": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}], "chosen": "a",
      "rejected": "b"}, "prompt", "roles out of order"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", "roles out of order"),
])
def test_bad_preference_records_are_named(tmp_path, record, field, words):
    import json

    path = tmp_path / "prefs.jsonl"
    good = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataValidationError) as err:
        load_preferences(path)
    message = str(err.value)
    assert f"{path} line 2, field '{field}'" in message and words in message and "Fix:" in message


def test_course_preferences_are_valid():
    records = load_preferences(data_dir() / "preferences.jsonl")
    assert len(records) == 600 and all(r["chosen"] != r["rejected"] for r in records)


def test_reward_errors_name_function_and_completion():
    def broken(completion, record):
        return record["missing"]

    def nan_reward(completion, record):
        return float("nan")

    record = {"reference": "billing", "task": "classify"}
    with pytest.raises(RewardError, match=r"'broken' raised KeyError.*'some answer'"):
        score_completions([task_reward, broken], ["some answer"], [record])
    with pytest.raises(RewardError, match=r"'nan_reward' returned nan on the completion 'billing'"):
        score_completions([nan_reward], ["billing"], [record])
    assert score_completions([task_reward], ["Billing.", "shipping"], [record] * 2).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- the loop


def test_preference_loop_resumes_exactly(tmp_path):
    """Two runs of 4 DPO steps: straight through, and stopped after 2 (by a callback) then resumed: same history."""
    records = _pairs(8)
    common = dict(loss="dpo", max_steps=4, batch_size=2, lr=1e-3, save_every=2, progress=False, log_to=("jsonl",),
                  save_final=False)
    model, tok = load_model("tiny")
    full = train_preferences(model, tok, records, AlignConfig(output_dir=str(tmp_path / "a"), **common)).history
    model, tok = load_model("tiny")
    train_preferences(model, tok, records, AlignConfig(output_dir=str(tmp_path / "b"), **common),
                      callbacks=[lambda record: record["step"] == 2])
    model, tok = load_model("tiny")
    resumed = train_preferences(model, tok, records, AlignConfig(output_dir=str(tmp_path / "b"), resume_from="latest",
                                                                 **common)).history
    assert len(resumed) == 4
    for a, b in zip(full, resumed):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
    assert full[-1]["rewards/margins"] > 0  # DPO moved the margin the right way


def test_tokenised_examples_reuse_their_cached_reference(tmp_path, monkeypatch):
    """Passing ``tokenize_preferences`` examples: the first run caches the reference in them, a second run
    from the same starting model computes no reference pass and follows the same history."""
    import ftlab.align.loop as loop

    records = _pairs(4)
    common = dict(loss="dpo", max_steps=2, batch_size=2, lr=1e-3, progress=False, log_to=("jsonl",), save_final=False)
    model, tok = load_model("tiny")
    from_records = train_preferences(model, tok, records, AlignConfig(output_dir=str(tmp_path / "a"), **common)).history
    examples = tokenize_preferences(records, tok, 256)
    model, tok = load_model("tiny")
    first = train_preferences(model, tok, examples, AlignConfig(output_dir=str(tmp_path / "b"), **common)).history
    assert all("ref_chosen" in e and "ref_rejected" in e for e in examples)
    calls = []
    real = loop.reference_logprobs
    monkeypatch.setattr(loop, "reference_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    import ftlab.align.logprobs as logprobs
    real_lp = logprobs.reference_logprobs
    monkeypatch.setattr(logprobs, "reference_logprobs", lambda *a, **k: calls.append(1) or real_lp(*a, **k))
    model, tok = load_model("tiny")
    second = train_preferences(model, tok, examples, AlignConfig(output_dir=str(tmp_path / "c"), **common)).history
    assert calls == []                                   # the cached reference was used
    for a, b, c in zip(from_records, first, second):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5) and math.isclose(b["loss"], c["loss"], rel_tol=1e-5)


# --------------------------------------------------------------------------- settings a loss cannot honour


@pytest.mark.parametrize("name,value,loss", [
    ("beta", 0.5, "grpo"), ("label_smoothing", 0.1, "ipo"), ("label_smoothing", 0.1, "orpo"), ("sft_weight", 0.5, "orpo"),
    ("orpo_nll_on", "sequence", "dpo"), ("max_length", 256, "grpo"), ("num_generations", 8, "dpo"),
    ("temperature", 0.7, "orpo"), ("max_new_tokens", 16, "ipo"), ("epsilon", 0.3, "dpo"), ("kl_beta", 0.1, "dpo"),
    ("kl_ratio_correction", False, "orpo"), ("grpo_loss_type", "bnpo", "dpo"),
])
def test_a_setting_the_loss_does_not_read_is_an_error(name, value, loss):
    from ftlab.align.loop import READ_BY

    with pytest.raises(ValueError, match=rf"AlignConfig: {name}=.* is not read by loss='{loss}'.*Fix: leave {name}"):
        AlignConfig(loss=loss, **{name: value})
    AlignConfig(loss=READ_BY[name][0], **{name: value})  # a loss that reads it takes it


def test_every_loss_specific_setting_has_its_error_test():
    from ftlab.align.loop import READ_BY

    marks = test_a_setting_the_loss_does_not_read_is_an_error.pytestmark
    tested = {params[0] for m in marks if m.name == "parametrize" for params in m.args[1]}
    assert tested == set(READ_BY)


def test_training_only_settings_are_not_alignment_settings(tmp_path):
    """ftlab.train's data and evaluation settings do not exist in AlignConfig: passing one is an error
    that names it, in Python and in a YAML file, never a silently ignored setting."""
    for name, value in [("eval_every", 5), ("early_stopping_patience", 2), ("batching", "pack"), ("compile", True),
                        ("train_on", "all"), ("load_best_at_end", True)]:
        with pytest.raises(TypeError, match=name):
            AlignConfig(**{name: value})
    path = tmp_path / "align.yaml"
    path.write_text("loss: dpo\neval_every: 5\n")
    with pytest.raises(ValueError, match=rf"{path}: unknown AlignConfig field 'eval_every'"):
        AlignConfig.from_yaml(path)
    with pytest.raises(ValueError, match="has its own trainer.*train_grpo"):
        train_preferences(None, None, [], AlignConfig(loss="grpo"))


def test_alignment_runs_on_the_training_loop(tmp_path):
    """The shared set-up honours its settings for alignment too: gradient checkpointing gives the same
    losses; the run ends as ftlab.train's do (result.json, on_end callbacks, the saved adapter)."""
    records = _pairs(4)
    common = dict(loss="dpo", max_steps=2, batch_size=2, lr=1e-3, progress=False, log_to=("jsonl",))
    ends = []

    class OnEnd:
        def on_end(self, result):
            ends.append(result.stopped_because)

    model, tok = load_model("tiny")
    plain = train_preferences(model, tok, records, AlignConfig(output_dir=str(tmp_path / "a"), **common),
                              callbacks=[OnEnd()])
    model, tok = load_model("tiny")
    recomputed = train_preferences(model, tok, records, AlignConfig(output_dir=str(tmp_path / "b"),
                                                                    gradient_checkpointing=True, **common))
    for a, b in zip(plain.history, recomputed.history):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5) and math.isclose(a["grad_norm"], b["grad_norm"],
                                                                               rel_tol=1e-4)
    assert ends == ["max_steps"] and (tmp_path / "a" / "result.json").exists()
    assert (plain.final_path / "adapter_config.json").exists()


# --------------------------------------------------------------------------- resume after kill -9

KILLED_RUN = """
import json, sys, time
from ftlab.align import AlignConfig, grpo_prompts, length_reward, load_preferences, train_grpo, train_preferences
from ftlab.data import data_dir, load_course_data
from ftlab.models import load_model

loss, out, kill_at, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
resume = kill_at < 0

def wait_to_be_killed(record):
    if record["step"] == kill_at:
        open(marker, "w").write("step %d done" % kill_at)
        time.sleep(600)  # the test sends SIGKILL while this run is in the middle of its steps

config = AlignConfig(output_dir=out, loss=loss, max_steps=5, batch_size=2, lr=1e-3, save_every=2, progress=False,
                     log_to=("jsonl",), save_final=False, resume_from="latest" if resume else None,
                     lora_dropout=0.1, **({"max_new_tokens": 8, "num_generations": 3} if loss == "grpo" else {}))
model, tok = load_model("tiny")
callbacks = [] if resume else [wait_to_be_killed]
if loss == "grpo":
    prompts = grpo_prompts(load_course_data("instructions", "train", limit=6))
    result = train_grpo(model, tok, prompts, [length_reward], config, callbacks=callbacks)
else:
    result = train_preferences(model, tok, load_preferences(data_dir() / "preferences.jsonl", limit=6), config,
                               callbacks=callbacks)
print(json.dumps([[h["step"], h["loss"], h["grad_norm"]] for h in result.history]))
"""


@pytest.mark.parametrize("loss", ["dpo", "grpo"])
def test_alignment_resumes_after_kill_9(tmp_path, loss):
    """A run killed with SIGKILL after step 3 (its newest checkpoint: step 2) and resumed from 'latest'
    follows the straight run exactly: weights, optimizer, schedule and random generators (LoRA dropout,
    GRPO's sampling) all come back, and step 3 is redone."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    script, marker = tmp_path / "run.py", tmp_path / "killed-here"
    script.write_text(KILLED_RUN)

    def run(out, kill_at):
        return subprocess.run([sys.executable, str(script), loss, str(out), str(kill_at), str(marker)],
                              capture_output=True, text=True, timeout=600)

    straight = run(tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, str(script), loss, str(tmp_path / "killed"), "3", str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the run never reached step 3"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002"]
    resumed = run(tmp_path / "killed", -1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    want, got = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (straight, resumed))
    assert [h[0] for h in got] == [1, 2, 3, 4, 5]
    for a, b in zip(want, got):
        assert math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=1e-9) and math.isclose(a[2], b[2], rel_tol=1e-5), (a, b)


# --------------------------------------------------------------------------- the reward model (RLHF's first stage)


def test_reward_model_loss_matches_trl_reward_trainer(tmp_path):
    """ftlab's reward model reads the same token as transformers' sequence-classification head (what TRL trains), and
    its Bradley-Terry loss and gradients equal TRL's ``RewardTrainer.compute_loss`` on the same batch. TRL's own
    collator gives the same token ids as ftlab's tokenisation, up to the newline after <|im_end|> (as for DPO)."""
    import copy

    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from ftlab.align import reward_model_from
    from ftlab.align.reward_model import reward_loss

    lm, tok = load_model("tiny")
    ours = reward_model_from(lm, lora_rank=4, lora_alpha=8)
    config = copy.deepcopy(lm.config)
    config.num_labels, config.pad_token_id = 1, tok.pad_token_id
    hf = AutoModelForSequenceClassification.from_config(config)   # TRL's reward model: same trunk, same head
    hf.model.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        hf.score.weight.copy_(ours.base_model.model.score.modules_to_save["default"].weight)
    records = _pairs(4)
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=4, bf16=False,
                        gradient_checkpointing=False)
    trainer = RewardTrainer(model=hf, args=args, train_dataset=as_trl_dataset(records), processing_class=tok)
    batch = collate_preferences(tokenize_preferences(records, tok), tok.pad_token_id)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(records))])
    ours_ids = [row[m.bool()].tolist() for row, m in zip(batch["input_ids"], batch["attention_mask"])]
    their_ids = [row[m.bool()].tolist() for row, m in zip(theirs["input_ids"], theirs["attention_mask"])]
    assert all(t[:len(o)] == o and tok.decode(t[len(o):]) in ("", "\n") for o, t in zip(ours_ids, their_ids))

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hf.eval(), ours.eval()
    with torch.no_grad():  # a fresh adapter (B = 0): ftlab's model is exactly transformers' on the same weights
        torch.testing.assert_close(ours(**inputs).logits, hf(**inputs).logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reward_loss(ours, batch)[0], trainer.compute_loss(hf, dict(inputs)))

    _perturb(ours)  # move the adapters: the trunk's LoRA now matters
    ours.train(), hf.train()  # TRL files its metrics under "train" when its own model is in training mode
    trl_loss = trainer.compute_loss(ours, dict(inputs))
    trl_loss.backward()
    trl_grads = _grads(ours)
    ours.zero_grad(set_to_none=True)
    loss, metrics = reward_loss(ours, batch)
    loss.backward()
    torch.testing.assert_close(loss, trl_loss, rtol=1e-6, atol=1e-6)
    assert math.isclose(metrics["accuracy"].item(), trainer._metrics["train"]["accuracy"][-1], abs_tol=1e-6)
    assert math.isclose(metrics["margin"].item(), trainer._metrics["train"]["margin"][-1], rel_tol=1e-5, abs_tol=1e-6)
    assert abs(metrics["margin"].item()) > 1e-4  # not trivially zero
    _assert_same_gradients(_grads(ours), trl_grads)
    assert any("score" in name for name in trl_grads)  # the head is trained, not only the trunk's adapters


def test_reward_model_reads_a_pairs_prompt_once(monkeypatch):
    """``reward_loss`` reads chosen and rejected in one row per pair (the shared-prompt rows DPO uses): the same
    rewards and gradients as the two rows apart, to float rounding, and the packed path really runs."""
    import ftlab.align.reward_model as rm
    from ftlab.align import reward_model_from

    lm, tok = load_model("tiny")
    model = reward_model_from(lm, lora_rank=4, lora_alpha=8)
    _perturb(model)
    records = _pairs(3)
    records.append({**records[0], "chosen": "Positive, clearly.", "rejected": "Positive? Maybe negative."})
    examples = tokenize_preferences(records, tok)
    longer = {k: v + [v[-1]] * 3 for k, v in examples[1]["chosen"].items()}   # chosen: a strict token prefix of rejected
    examples += [{"chosen": examples[1]["chosen"], "rejected": longer},
                 {"chosen": examples[2]["chosen"], "rejected": examples[2]["chosen"]}]   # and two equal rows
    batch = collate_preferences(examples, tok.pad_token_id)
    packed_calls, packed_rows = [], rm.shared_prompt_rows
    monkeypatch.setattr(rm, "shared_prompt_rows", lambda *a: packed_calls.append(1) or packed_rows(*a))

    def run(pairs):
        model.zero_grad(set_to_none=True)
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                        pairs=pairs).logits.squeeze(-1)
        (rewards * torch.arange(1.0, len(rewards) + 1)).sum().backward()
        return rewards.detach(), _grads(model)

    apart, apart_grads = run(pairs=False)
    assert not packed_calls
    shared, shared_grads = run(pairs=True)
    assert packed_calls == [1]
    torch.testing.assert_close(shared, apart, rtol=1e-5, atol=1e-6)
    assert apart.std() > 1e-3  # the rewards differ between rows: a mix-up of rows would show
    _assert_same_gradients(shared_grads, apart_grads, rtol=1e-4)
    loss, _ = rm.reward_loss(model, batch)
    assert len(packed_calls) == 2 and torch.isfinite(loss)


def test_reward_model_reads_the_last_real_token():
    """Right padding does not change a row's reward: the head reads the last attended position."""
    from ftlab.align import reward_model_from

    lm, tok = load_model("tiny")
    model = reward_model_from(lm, lora_rank=4, lora_alpha=8).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, tok.pad_token_id, tok.pad_token_id]])
    with torch.no_grad():
        alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        in_batch = model(input_ids=padded, attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-6)


def test_reward_model_learns_the_course_pairs(tmp_path):
    """A few Bradley-Terry steps on the tiny model lower the loss; train_preferences refuses loss='reward'."""
    from ftlab.align import reward_model_from, train_reward_model

    lm, tok = load_model("tiny")
    examples = tokenize_preferences(_pairs(8), tok)
    config = AlignConfig(output_dir=str(tmp_path), lr=3e-3, max_steps=6, batch_size=8, progress=False,
                         log_to=("jsonl",), save_final=False, scheduler="constant")
    history = train_reward_model(reward_model_from(lm, lora_rank=4, lora_alpha=8), tok, examples, config).history
    assert history[-1]["loss"] < history[0]["loss"]
    with pytest.raises(ValueError, match="train_reward_model"):
        train_preferences(lm, tok, examples, AlignConfig(loss="reward", output_dir=str(tmp_path)))


def test_grpo_history_times_its_sampling(tmp_path):
    """Each GRPO step logs its whole time (``step_s``) and the part without gradients (``sample_s``: sampling and
    scoring, summed over micro-batches): notebook 07's cost table reads both."""
    from ftlab.align import grpo_prompts, length_reward, train_grpo
    from ftlab.data import load_course_data

    model, tok = load_model("tiny")
    config = AlignConfig(output_dir=str(tmp_path / "g"), loss="grpo", max_steps=2, batch_size=1, grad_accum_steps=2,
                         num_generations=2, max_new_tokens=4, progress=False, log_to=(), save_final=False)
    history = train_grpo(model, tok, grpo_prompts(load_course_data("instructions", "train", limit=4)),
                         [length_reward], config).history
    assert len(history) == 2
    assert all(0 < h["sample_s"] < h["step_s"] for h in history)


# --------------------------------------------------------------------------- held-out measurements


def test_held_out_scores_equal_the_separate_measurements():
    """One forward per batch gives the same margins as implicit_margins, the same chosen log-probs as
    sequence_logprobs, and the exact KL computed pair by pair with the full output layer."""
    from ftlab.align import (held_out_scores, implicit_margins, kl_from_reference, precompute_reference,
                             reference_distributions, sequence_logprobs, tokenize_preferences)
    from ftlab.training import next_token_targets

    model, tok = _lora_model()
    _perturb(model)
    # The reference: another model, far from the policy, so that KL(p||q) and KL(q||p) differ by far more than
    # the tolerance (with adapters off, the tiny model's KL saturates near 0.03, where the two agree to 1e-3).
    other, _ = load_model("tiny")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    other.eval()
    pad = tok.pad_token_id
    examples = tokenize_preferences(_pairs(6), tok, 256)
    precompute_reference(model, examples, batch_size=4, pad_token_id=pad, ref_model=other)
    ref = reference_distributions(model, examples, batch_size=4, pad_token_id=pad, ref_model=other)
    got = held_out_scores(model, examples, ref, batch_size=4, pad_token_id=pad)

    want_margins = implicit_margins(model, examples, batch_size=4, pad_token_id=pad)
    torch.testing.assert_close(torch.tensor(got["margins"]), torch.tensor(want_margins), atol=1e-4, rtol=1e-4)
    model.eval()
    total, reverse, count, chosen = 0.0, 0.0, 0, []
    with torch.no_grad():
        for e in examples:    # one chosen answer at a time, no padding, the output layer everywhere
            batch = collate_preferences([e], pad)
            ids, labels = batch["input_ids"][:1], batch["labels"][:1]
            chosen.append(sequence_logprobs(model, {"input_ids": ids, "attention_mask": batch["attention_mask"][:1],
                                                    "labels": labels})[0].item())
            keep = next_token_targets(labels)[0] != -100
            policy = torch.log_softmax(model(input_ids=ids).logits[0][keep], -1)
            reference = torch.log_softmax(other(input_ids=ids).logits[0][keep], -1)
            total += (policy.exp() * (policy - reference)).sum().item()
            reverse += (reference.exp() * (reference - policy)).sum().item()
            count += int(keep.sum())
    want_kl = total / count
    assert abs(reverse - total) / total > 0.01            # the direction matters at this distance
    assert math.isclose(got["kl"], want_kl, rel_tol=1e-3), (got["kl"], want_kl)
    assert math.isclose(kl_from_reference(model, examples, batch_size=4, pad_token_id=pad, ref_model=other), want_kl,
                        rel_tol=1e-3)
    torch.testing.assert_close(torch.tensor(got["chosen_logps"]), torch.tensor(chosen), atol=1e-3, rtol=1e-4)


def test_held_out_scores_names_what_is_missing():
    from ftlab.align import held_out_scores, reference_distributions, tokenize_preferences

    model, tok = _lora_model()
    examples = tokenize_preferences(_pairs(4), tok, 256)
    ref = reference_distributions(model, examples, batch_size=2, pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="precompute_reference"):
        held_out_scores(model, examples, ref, batch_size=2, pad_token_id=tok.pad_token_id)
    for e in examples:
        e["ref_chosen"], e["ref_rejected"] = 0.0, 0.0
    with pytest.raises(ValueError, match="same batch_size"):
        held_out_scores(model, examples, ref, batch_size=4, pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="answer tokens"):          # a reference from other examples
        held_out_scores(model, examples, [r[:-1] for r in ref], batch_size=2, pad_token_id=tok.pad_token_id)
