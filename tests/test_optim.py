"""ftlab.training: parameter groups match transformers' Trainer; schedules are identical to transformers'."""

import pytest
import torch
from transformers import Trainer, TrainingArguments
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from ftlab.training import prepare_model
from ftlab.models import load_tokenizer, make_tiny_model
from ftlab.training import build_optimizer, build_scheduler, decay_parameter_names, lr_at


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def test_decay_names_match_trainer(tok):
    model = make_tiny_model(tok)
    ours = decay_parameter_names(model)
    theirs = Trainer.get_decay_parameter_names(None, model)  # uses no Trainer state
    assert ours == theirs
    # and the rule means what we say: matrices and embeddings decay, norms do not
    assert "model.embed_tokens.weight" in ours
    assert "model.layers.0.self_attn.q_proj.weight" in ours
    assert not [n for n in ours if "norm" in n]
    # LayerNorm modules (not matched by name) are excluded by type, biases by name
    seq = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    assert decay_parameter_names(seq) == ["0.weight"] == Trainer.get_decay_parameter_names(None, seq)


def test_optimizer_groups_match_trainer(tok, tmp_path):
    model = prepare_model(make_tiny_model(tok), "freeze", trainable_layers=1)
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, learning_rate=3e-4, report_to=[], use_cpu=True)
    reference = Trainer(model=model, args=args).create_optimizer()
    ours = build_optimizer(model, "adamw", lr=3e-4, weight_decay=0.1)
    assert type(ours) is type(reference)
    assert len(ours.param_groups) == len(reference.param_groups) == 2
    for g_ours, g_ref in zip(ours.param_groups, reference.param_groups):
        assert [id(p) for p in g_ours["params"]] == [id(p) for p in g_ref["params"]]
        for key in ("lr", "weight_decay", "betas", "eps", "fused"):
            assert g_ours[key] == g_ref[key], key
    # frozen parameters are not handed to the optimizer at all
    assert sum(len(g["params"]) for g in ours.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_weight_decay_spares_norms():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decay can move a weight
    opt.step()
    after = dict(model.named_parameters())
    assert not torch.equal(after["0.weight"], before["0.weight"])
    for name in ("0.bias", "1.weight", "1.bias"):
        assert torch.equal(after[name], before[name]), name


def test_sgd_momentum_and_8bit_on_cpu():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = build_optimizer(model, "sgd", lr=0.1, momentum=0.9)
    for _ in range(2):
        model.weight.grad = torch.ones_like(model.weight)
        opt.step()
    # step 1: v=1, w=1-0.1; step 2: v=0.9*1+1=1.9, w=0.9-0.19
    assert torch.allclose(model.weight, torch.full_like(model.weight, 0.71))
    with pytest.raises(RuntimeError, match="CUDA"):
        build_optimizer(model, "adamw_8bit", lr=1e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "adam_typo", lr=1e-3)
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, "adamw", lr=1e-3)


CASES = [(0, 1), (0, 10), (3, 10), (10, 10), (7, 50), (1, 2), (5, 4)]


@pytest.mark.parametrize("warmup,total", CASES)
@pytest.mark.parametrize("name,min_ratio", [("constant", 0.0), ("linear", 0.0), ("cosine", 0.0), ("cosine", 0.1)])
def test_schedules_identical_to_transformers(name, min_ratio, warmup, total):
    lr = 3e-4
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ours = build_scheduler(ours_opt, name, warmup_steps=warmup, total_steps=total, min_lr_ratio=min_ratio)
    if name == "constant":
        ref = get_constant_schedule_with_warmup(ref_opt, warmup)
    elif name == "linear":
        ref = get_linear_schedule_with_warmup(ref_opt, warmup, total)
    elif min_ratio:
        ref = get_cosine_with_min_lr_schedule_with_warmup(ref_opt, warmup, total, min_lr_rate=min_ratio)
    else:
        ref = get_cosine_schedule_with_warmup(ref_opt, warmup, total)
    for step in range(total + 3):  # a few steps past the end too
        expected = ref.get_last_lr()[0]
        assert ours.get_last_lr()[0] == expected, (step, ours.get_last_lr()[0], expected)  # exact, not close
        assert lr_at(step, lr, name, warmup, total, min_ratio) == expected
        ours_opt.step(), ref_opt.step()
        ours.step(), ref.step()


def test_schedule_shapes_and_errors():
    assert lr_at(0, 1.0, "cosine", 2, 10) == 0.0  # warmup starts at zero
    assert lr_at(2, 1.0, "cosine", 2, 10) == 1.0  # peak right after warmup
    assert lr_at(10, 1.0, "cosine", 2, 10, min_lr_ratio=0.1) == pytest.approx(0.1)  # the floor
    assert lr_at(6, 1.0, "linear", 2, 10) == 0.5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(opt, "cosine_typo", 0, 10)
    with pytest.raises(ValueError, match="only applies to the cosine"):
        build_scheduler(opt, "linear", 0, 10, min_lr_ratio=0.1)
    # a scheduler's state survives a checkpoint round trip
    sched = build_scheduler(opt, "linear", 2, 10)
    for _ in range(4):
        opt.step(), sched.step()
    fresh_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = build_scheduler(fresh_opt, "linear", 2, 10)
    fresh.load_state_dict(sched.state_dict())
    fresh_opt.step(), fresh.step(), opt.step(), sched.step()
    assert fresh.get_last_lr() == sched.get_last_lr() == [lr_at(5, 1.0, "linear", 2, 10)]
