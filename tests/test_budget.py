"""Per-participant memory budgets (ftlab.budget): train, evaluate and generate refuse a run that does not
fit $FTLAB_MEMORY_BUDGET_GIB, with the numbers and the fix; no budget means no check."""

import subprocess
import sys

import pytest
import torch

from ftlab import budget
from ftlab.models import load_tokenizer, make_tiny_model
from ftlab.training import TrainConfig, train

GiB = 2**30


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def records(n=8):
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "run"), method="full", lr=1e-3, max_steps=1, batch_size=4,
                max_length=64, progress=False, log_to=(), save_final=False)
    return TrainConfig(**{**base, **kw})


def test_no_budget_means_no_check(monkeypatch, tok):
    monkeypatch.delenv(budget.ENV_VAR, raising=False)
    assert budget.budget_gib() is None
    assert budget.check_generation(make_tiny_model(tok), 8, 100, 16) is None


@pytest.mark.parametrize("raw", ["lots", "0", "-2"])
def test_bad_budget_value_names_the_variable_and_fix(monkeypatch, raw):
    monkeypatch.setenv(budget.ENV_VAR, raw)
    with pytest.raises(ValueError, match=budget.ENV_VAR):
        budget.budget_gib()


def test_training_over_budget_is_refused_before_any_step(monkeypatch, tok, tmp_path):
    model = make_tiny_model(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    held = budget.resident_bytes() / GiB
    monkeypatch.setenv(budget.ENV_VAR, f"{held * 0.5:.3f}")  # less than the kernel already holds
    with pytest.raises(budget.BudgetExceeded) as err:
        train(model, tok, records(), config=config(tmp_path))
    msg = str(err.value)
    for needle in ("budget", budget.ENV_VAR, "batch_size (now 4)", "max_length (now 64)", "gradient_checkpointing",
                   "method='lora'"):
        assert needle in msg
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing was trained
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_within_budget_runs_and_the_need_is_held_plus_estimate(monkeypatch, tok, tmp_path):
    from ftlab.data import tokenize_dataset, load_records
    from ftlab.memory import estimate_memory

    model = make_tiny_model(tok)
    monkeypatch.setenv(budget.ENV_VAR, "1000")
    cfg = config(tmp_path)
    examples = tokenize_dataset(load_records(records()), tok, max_length=64, verbose=False)
    need = budget.check_training(model, cfg, examples)
    settings = budget.training_settings(model, cfg, examples)
    assert settings["seq_len"] == max(len(e["input_ids"]) for e in examples) <= 64
    est = estimate_memory(model, **settings).total_bytes
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert abs(need - (budget.resident_bytes() - weights + est)) < 64 * 2**20
    result = train(model, tok, records(), config=cfg)
    assert result.train_history


def test_generation_and_evaluation_over_budget_are_refused(monkeypatch, tok):
    from ftlab.evaluate import evaluate_model, generate_answers

    model = make_tiny_model(tok)
    monkeypatch.setenv(budget.ENV_VAR, "0.01")
    with pytest.raises(budget.BudgetExceeded, match=r"batch_size \(now 2\).*max_new_tokens \(now 7\)"):
        generate_answers(model, tok, ["Hi!", "What is 2+2?"], max_new_tokens=7, progress=False)
    with pytest.raises(budget.BudgetExceeded, match="0.01 GiB"):
        evaluate_model(model, tok, records(2), max_new_tokens=4, progress=False)


def test_process_limit_is_read_and_named(tmp_path):
    # What the hub's spawner does (workshop/jupyterhub_config.py): an address-space limit per process.
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (48 * 2**30, 48 * 2**30));"
            "from ftlab import budget; print(round(budget.process_limit_gib()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "48", out.stderr
    assert budget.process_limit_gib() is None or budget.process_limit_gib() > 0
