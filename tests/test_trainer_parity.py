"""ftlab's loop against transformers' Trainer: same tiny model, data order and hyperparameters (fp32, CPU).

Trainer (5.x) normalises the loss the same way ftlab does: it counts the trained tokens of all
micro-batches of an optimizer step (``num_items_in_batch``, over ``labels[..., 1:]``), and the model's
loss divides each micro-batch's *summed* loss by that count. Its AdamW groups leave biases and norm
weights without decay (``get_decay_parameter_names``), as ``ftlab.training`` does. So per-step loss,
gradient norm (before clipping) and learning rate must agree, and so must the final weights.
"""

import copy

import pytest
import torch

from ftlab.data import collate
from ftlab.models import load_tokenizer
from ftlab.training import TrainConfig, train

from test_training import masked_examples, small_model


@pytest.mark.parametrize("optimizer", ["adamw"])
def test_matches_transformers_trainer(tmp_path, optimizer):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    tok = load_tokenizer("tiny")
    data = masked_examples(32, seed=3)
    hp = dict(batch_size=4, grad_accum_steps=2, max_steps=4, lr=2e-3, weight_decay=0.1, betas=(0.9, 0.98),
              scheduler="cosine", warmup_steps=1, max_grad_norm=0.5)
    model = small_model(seed=0)
    hf_model = copy.deepcopy(model)

    # --- ftlab: no shuffling, plain padding, so micro-batch k holds examples 4k .. 4k+3, like Trainer's sequential sampler
    config = TrainConfig(output_dir=str(tmp_path / "ftlab"), method="full", optimizer=optimizer, shuffle=False,
                         batching="pad", progress=False, log_to=(), save_final=False, max_length=64, **hp)
    ours = train(model, tok, data, config=config).history

    # --- transformers' Trainer
    kept = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                kept.append({**logs, "step": state.global_step})

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["grad_accum_steps"], max_steps=hp["max_steps"], learning_rate=hp["lr"],
        weight_decay=hp["weight_decay"], adam_beta1=hp["betas"][0], adam_beta2=hp["betas"][1],
        lr_scheduler_type="cosine", warmup_steps=hp["warmup_steps"], max_grad_norm=hp["max_grad_norm"],
        logging_steps=1, train_sampling_strategy="sequential", report_to="none", use_cpu=True, save_strategy="no",
        seed=0, remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=hf_model, args=args, train_dataset=data,
                      data_collator=lambda feats: collate(feats, pad_token_id=0), callbacks=[Keep()])
    trainer.train()

    assert [h["step"] for h in ours] == [k["step"] for k in kept] == [1, 2, 3, 4]
    for a, b in zip(ours, kept):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a, b)
        assert a["lr"] == pytest.approx(b["learning_rate"], rel=1e-4, abs=1e-12), (a, b)
    assert ours[0]["grad_norm"] > hp["max_grad_norm"]  # clipping was really exercised
    for (name, p), q in zip(model.named_parameters(), hf_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")
    # and training really moved the weights (the comparison is not trivially true)
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), small_model(seed=0).parameters())) > 1e-3
