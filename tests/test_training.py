"""The training loop: loss normalisation under gradient accumulation, resume, early stopping, NaN,
interrupts, logs, outputs, the command line. Everything runs on the tiny model in fp32 on the CPU."""

import json
import os
import random
import signal

import pytest
import torch
import torch.nn.functional as F

from ftlab.models import load_tokenizer, make_tiny_model
from ftlab.training import TrainConfig, TrainingDiverged, causal_lm_loss, train


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


VOCAB = 2048  # most tests use a small-vocabulary twin of the tiny model: the output layer dominates the cost


def small_model(seed=0):
    """The tiny Llama with a 2,048-token vocabulary (for tokenised examples with ids < 2048)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftlab.models import TINY_CONFIG

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, **TINY_CONFIG))


def masked_examples(n=16, seed=0, vocab=VOCAB):
    """Variable-length examples with a masked 'prompt' part of random length: the hard case for averaging."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(6, 40)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def chat_records(n, offset=0):
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
            for i in range(offset, offset + n)]


def cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), method="full", lr=1e-3, max_steps=2, batch_size=4,
                progress=False, log_to=("jsonl",), save_final=False, max_length=64)
    return TrainConfig(**{**base, **kw})


class GradGrab:
    """Callback keeping a copy of every parameter's gradient just before each optimizer step."""

    def __init__(self):
        self.grads = []

    def on_gradients(self, model):
        self.grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})


# --------------------------------------------------------------------------- gradient accumulation


def test_accumulation_splits_give_identical_loss_gradients_and_params(tok, tmp_path):
    data = masked_examples(16)
    runs = {}
    for bs, accum in [(8, 1), (4, 2), (2, 4)]:
        model = small_model()
        grab = GradGrab()
        result = train(model, tok, data, config=cfg(tmp_path / f"{bs}x{accum}", batch_size=bs, grad_accum_steps=accum,
                                                    max_grad_norm=None, weight_decay=0.1), callbacks=[grab])
        runs[(bs, accum)] = (result, grab.grads, {n: p.detach().clone() for n, p in model.named_parameters()})
    ref_result, ref_grads, ref_params = runs[(8, 1)]
    assert len(ref_result.history) == 2
    for key in [(4, 2), (2, 4)]:
        result, grads, params = runs[key]
        for a, b in zip(ref_result.history, result.history):
            assert a["step_tokens"] == b["step_tokens"]
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6), key
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), key
        for g_ref, g in zip(ref_grads, grads):
            for name in g_ref:
                torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key} grad {name}: {m}")
        # AdamW's first update is lr * g / (|g| + eps): for the rare gradient entry near eps (1e-8), float
        # rounding in g is amplified. 1e-5 is 1 % of lr; a wrong normalisation moves entries by ~lr.
        for name in ref_params:
            torch.testing.assert_close(params[name], ref_params[name], rtol=1e-5, atol=1e-5, msg=lambda m: f"{key} param {name}: {m}")


def test_example_weighting_gives_each_example_the_same_weight(tok, tmp_path):
    """loss_weighting="example": the step's loss is the mean over examples of each example's mean token loss,
    the same however the step is split into micro-batches, and different from the token mean."""
    data = masked_examples(8)
    model = small_model()
    with torch.no_grad():                      # the expected first loss, by hand, one example at a time
        means = []
        for e in data:
            logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            means.append(F.cross_entropy(logits, torch.tensor(e["labels"][1:]), ignore_index=-100))
        by_example, by_token = torch.stack(means).mean(), None
    runs = {}
    for bs, accum in [(8, 1), (2, 4)]:
        m = small_model()
        runs[(bs, accum)] = train(m, tok, data, config=cfg(tmp_path / f"ex{bs}", batch_size=bs, grad_accum_steps=accum,
                                                             loss_weighting="example", shuffle=False, max_steps=2))
    token = train(small_model(), tok, data, config=cfg(tmp_path / "tok", batch_size=8, shuffle=False, max_steps=1))
    all_logits = train(small_model(), tok, data, config=cfg(tmp_path / "all", batch_size=8, shuffle=False, max_steps=1,
                                                            loss_weighting="example", trained_logits_only=False))
    first = runs[(8, 1)].history[0]["loss"]
    assert first == pytest.approx(float(by_example), rel=1e-5)
    assert all_logits.history[0]["loss"] == pytest.approx(first, rel=1e-5)   # causal_lm_loss's path agrees
    assert abs(token.history[0]["loss"] - first) > 1e-3          # a real difference on unequal answer lengths
    for a, b in zip(runs[(8, 1)].history, runs[(2, 4)].history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    with pytest.raises(ValueError, match="batching='group'"):
        TrainConfig(loss_weighting="example", batching="pack")
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="sequence")


def test_averaging_micro_batch_means_is_wrong(tok):
    """The 2024 bug, shown: mean of per-micro-batch means != mean over all trained tokens of the step."""
    from ftlab.data import collate

    data = masked_examples(8, seed=1)
    model = small_model()

    def grads_of(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    def micro(i, k):  # micro-batch i of k
        b = collate(data[i * 8 // k:(i + 1) * 8 // k], pad_token_id=0)
        return causal_lm_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])

    def correct(k):
        parts = [micro(i, k) for i in range(k)]
        return sum(p[0] for p in parts) / sum(p[1] for p in parts)

    def naive(k):  # what a trainer does if it averages each micro-batch's mean loss
        parts = [micro(i, k) for i in range(k)]
        return sum(p[0] / p[1] for p in parts) / k

    loss_1, g_1 = grads_of(lambda: correct(1))
    loss_4, g_4 = grads_of(lambda: correct(4))
    naive_4, gn_4 = grads_of(lambda: naive(4))
    assert loss_4 == pytest.approx(loss_1, rel=1e-6)
    torch.testing.assert_close(g_4, g_1, rtol=1e-5, atol=1e-8)
    assert abs(naive_4 - loss_1) > 1e-3, "the data has equal token counts per micro-batch; the test proves nothing"
    assert (gn_4 - g_1).norm() / g_1.norm() > 1e-3


def test_causal_lm_loss_matches_transformers(tok):
    data = masked_examples(4, seed=2)
    from ftlab.data import collate

    b = collate(data, pad_token_id=0)
    model = small_model()
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    loss_sum, n, correct = causal_lm_loss(out.logits, b["labels"])
    assert n == sum(sum(1 for x in e["labels"][1:] if x != -100) for e in data)
    assert (loss_sum / n).item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert 0 <= correct <= n


@pytest.mark.parametrize("strategy", ["pad", "pack"])
def test_trained_logits_only_gives_the_same_loss_and_gradients(strategy):
    """The output layer at trained positions only (ftlab's default) changes cost, not results."""
    from ftlab.data import make_batches
    from ftlab.training import forward_loss

    model = small_model()
    batch = make_batches(masked_examples(8, seed=3), 4, strategy, max_length=64, pad_token_id=0, shuffle=False)[0]
    assert (batch["labels"] == -100).float().mean() > 0.2, "the batch must have untrained positions"
    results = []
    for only in (False, True):
        model.zero_grad()
        loss_sum, n, correct = forward_loss(model, batch, trained_logits_only=only)
        loss_sum.backward()
        results.append((loss_sum.item(), int(n), int(correct), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (full, n_full, c_full, g_full), (only, n_only, c_only, g_only) = results
    assert (n_only, c_only) == (n_full, c_full)
    assert only == pytest.approx(full, rel=1e-6)
    torch.testing.assert_close(g_only, g_full, rtol=1e-4, atol=1e-6)


def test_trained_logits_only_in_train_and_its_fallback(tok, tmp_path):
    from ftlab.training import accepts_logits_mask
    from ftlab.training import prepare_model

    runs = [train(small_model(), tok, masked_examples(16), config=cfg(tmp_path / str(only), max_steps=3,
                                                                      trained_logits_only=only))
            for only in (False, True)]
    for a, b in zip(*(r.train_history for r in runs)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    assert accepts_logits_mask(prepare_model(small_model(), "lora"))
    # prompt tuning puts virtual tokens in front: positions shift, so the loop falls back to all logits
    assert not accepts_logits_mask(prepare_model(small_model(), "prompt_tuning", tokenizer=tok))


# --------------------------------------------------------------------------- resume and checkpoints


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_gives_the_same_run(tok, tmp_path, method):
    data = masked_examples(24)
    # LoRA with dropout: resuming must also restore the random generators to draw the same masks.
    kw = dict(method=method, max_steps=4, batch_size=4, grad_accum_steps=2, scheduler="cosine", warmup_steps=1,
              lora_dropout=0.2, lr=5e-3, weight_decay=0.01)
    straight = train(small_model(), tok, data, config=cfg(tmp_path / "a", **kw))

    first = train(small_model(), tok, data, config=cfg(tmp_path / "b", save_every=2, **kw),
                  callbacks=[lambda rec: rec["step"] == 2])  # stop after step 2, like a crash
    assert first.stopped_because == "callback" and len(first.history) == 2
    resumed = train(small_model(), tok, data, config=cfg(tmp_path / "b", resume_from="latest", **kw))
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(straight.history, resumed.history):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
        assert a["lr"] == b["lr"]
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


def test_keep_last_and_best_checkpoint_and_early_stopping(tok, tmp_path):
    data = masked_examples(8)
    # SGD with a vanishing lr: the weights (and so the validation loss) cannot change, so the loss stops
    # improving after the first evaluation and early stopping must fire after `patience` evaluations.
    config = cfg(tmp_path, optimizer="sgd", lr=1e-30, max_steps=10, eval_every=1, early_stopping_patience=2,
                 save_every=1, keep_last=1, scheduler="constant")
    result = train(small_model(), tok, data[:4], data[4:], config=config)
    assert result.stopped_because == "early_stopping"
    assert [h["step"] for h in result.train_history] == [1, 2, 3]
    assert result.best_checkpoint.name == "step-000001" and result.best_checkpoint.exists()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-000001", "step-000003"]  # newest 1 kept + the best, protected
    assert result.history[0]["step"] == 0 and "val_loss" in result.history[0]
    assert all(0 <= h["val_token_acc"] <= 1 and h["val_ppl"] > 1 for h in result.eval_history)


def test_interrupt_saves_a_checkpoint_and_stops(tok, tmp_path):
    def press_ctrl_c(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    # A shell that starts a job in the background makes it ignore SIGINT; we want Python's default.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = train(small_model(), tok, masked_examples(16), config=cfg(tmp_path, max_steps=6),
                       callbacks=[press_ctrl_c])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler put back
    finally:
        signal.signal(signal.SIGINT, before)
    assert result.stopped_because == "interrupted"
    assert result.last_checkpoint.name == "step-000002" and (result.last_checkpoint / "state.json").exists()


def test_nan_loss_stops_with_advice(tok, tmp_path):
    def poison(record):
        with torch.no_grad():
            model.model.norm.weight.fill_(float("nan"))

    model = small_model()
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        train(model, tok, masked_examples(8), config=cfg(tmp_path, max_steps=3), callbacks=[poison])


# --------------------------------------------------------------------------- config


def test_config_yaml_roundtrip_and_errors(tmp_path):
    config = TrainConfig(method="lora", lora_rank=4, betas=(0.9, 0.95), target_modules=["q_proj", "v_proj"])
    config.save(tmp_path)
    again = TrainConfig.from_yaml(tmp_path / "config.yaml")
    assert again == config
    assert json.loads((tmp_path / "config.json").read_text())["lora_rank"] == 4
    (tmp_path / "bad.yaml").write_text("lora_rnak: 8\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown TrainConfig field 'lora_rnak'. Did you mean 'lora_rank'"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    for bad, match in [(dict(method="full", use_dora=True), "use_dora"), (dict(method="lora", trainable_layers=2), "freeze"),
                       (dict(optimizer="adamw", momentum=0.9), "momentum"), (dict(warmup_steps=10, max_steps=10), "warmup"),
                       (dict(scheduler="linear", min_lr_ratio=0.1), "min_lr_ratio"), (dict(batching="bucket"), "batching")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_device_checks(tok, tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match="allow_bf16_on_cpu"):
        train(model, tok, chat_records(4), config=cfg(tmp_path, mixed_precision="bf16"))
    with pytest.raises(ValueError, match="adamw_8bit.*CUDA"):
        train(model, tok, chat_records(4), config=cfg(tmp_path, optimizer="adamw_8bit"))


# --------------------------------------------------------------------------- outputs, logs, formats


def test_lora_outputs_logs_merge_and_chat(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from ftlab.training import LivePlot, read_history, read_tensorboard

    # raw records in the instruction format: converted by ftlab.data on the way in
    data = [{"instruction": f"Double {i}.", "output": str(2 * i)} for i in range(12)]
    config = cfg(tmp_path, method="lora", lora_rank=4, max_steps=3, eval_every=2, save_final=True, merge_lora=True,
                 log_to=("jsonl", "csv", "tensorboard"), batching="group")
    plot = LivePlot(show=False)
    result = train(make_tiny_model(tok, seed=0), tok, data[:8], data[8:], config=config, callbacks=[plot])
    assert (plot.steps, plot.val_steps) == ([1, 2, 3], [0, 2, 3])
    assert len(plot.figure.axes[0].lines) == 2  # drawn at the end: training and validation curves
    run = tmp_path / "run"
    assert set(result.history[1]) >= {"step", "loss", "lr", "grad_norm", "step_s", "tokens_per_s", "trained_tokens",
                                      "peak_memory_mb"}
    assert all(h["step_s"] > 0 for h in result.train_history)
    assert read_history(run) == json.loads(json.dumps(result.history))
    assert (run / "history.csv").read_text().splitlines()[0].startswith("step,loss,lr,grad_norm")
    tb = read_tensorboard(run)
    assert [v for _, v in tb["train/loss"]] == pytest.approx([h["loss"] for h in result.train_history], rel=1e-6)
    assert len(tb["val/loss"]) == 3  # steps 0, 2, 3
    assert (result.final_path / "adapter_config.json").exists()
    assert TrainConfig.from_yaml(run / "config.yaml") == config
    merged = AutoModelForCausalLM.from_pretrained(result.merged_path)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    torch.testing.assert_close(merged(ids).logits, result.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert isinstance(result.chat("Double 3.", max_new_tokens=4), str)


def test_qlora_and_gradient_checkpointing_run_on_cpu(tok, tmp_path):
    data = masked_examples(8)
    plain = train(small_model(), tok, data, config=cfg(tmp_path / "a", max_steps=1))
    ckpt_run = train(small_model(), tok, data,
                     config=cfg(tmp_path / "b", max_steps=1, gradient_checkpointing=True))
    assert ckpt_run.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-6)
    assert ckpt_run.history[0]["grad_norm"] == pytest.approx(plain.history[0]["grad_norm"], rel=1e-5)
    q = train(small_model(), tok, data, config=cfg(tmp_path / "c", method="qlora", lora_rank=4, max_steps=2))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in q.history)
    assert abs(q.history[0]["loss"] - plain.history[0]["loss"]) < 0.05  # 4-bit weights: close, not equal


def test_cli_trains_from_a_yaml_file(tmp_path, capsys):
    from ftlab.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in chat_records(8)))
    (tmp_path / "run.yaml").write_text(f"model: tiny\ntrain_file: {data}\noutput_dir: {tmp_path / 'out'}\n"
                                       "method: lora\nmax_steps: 2\nbatch_size: 4\nprogress: false\nlog_to: [jsonl]\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", "lr=0.001"]) == 0
    assert (tmp_path / "out" / "final" / "adapter_config.json").exists()
    assert TrainConfig.from_yaml(tmp_path / "out" / "config.yaml").lr == 0.001
    assert "done in" in capsys.readouterr().out


def test_shipped_run_configs_are_valid():
    from pathlib import Path

    configs = [p for p in (Path(__file__).parent.parent / "configs").glob("*.yaml") if not p.name.startswith("accelerate_")]
    assert len(configs) >= 4
    for path in configs:
        config = TrainConfig.from_yaml(path)
        assert config.model and config.train_file, path
        assert (Path(__file__).parent.parent / config.train_file).exists(), path
