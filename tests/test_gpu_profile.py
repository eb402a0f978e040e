"""The gpu profile's code paths run on a CPU: its model swapped for a bf16 stand-in of the same shape.

No GPU has run the course's ``gpu`` profile in CI. ``FTLAB_PROFILE=gpu FTLAB_PROFILE_OVERRIDES=gpu-on-cpu``
keeps what makes the gpu profile different (a multi-head-attention model with tied embeddings in bf16,
512-token examples, LoRA rank 16, its learning rates) and scales down only how long things run, so
`make test` can execute every notebook that way (the Makefile's second notebook pass). What a GPU alone
can show (CUDA kernels, memory, speed) is left to `make gpu-check`.
"""

from pathlib import Path

import pytest
import torch

import ftlab
from ftlab.memory.architectures import ARCHITECTURES
from ftlab.profiles import NAMED_OVERRIDES, OVERRIDES_VAR, PROFILES, get_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_on_cpu(monkeypatch):
    monkeypatch.setenv("FTLAB_PROFILE", "gpu")
    monkeypatch.setenv(OVERRIDES_VAR, "gpu-on-cpu")
    return get_profile()


def test_gpu_on_cpu_keeps_the_gpu_profiles_settings_and_shortens_the_runs(gpu_on_cpu):
    gpu, p = PROFILES["gpu"], gpu_on_cpu
    assert p.name == "gpu" and p.model_name == "tiny-gpu" and p.is_ci  # untrained: notebooks assert mechanics only
    for field in ("max_length", "lora_rank", "learning_rate", "lora_learning_rate", "dtype"):
        assert getattr(p, field) == getattr(gpu, field), field
    assert p.max_steps < gpu.max_steps and p.train_size < gpu.train_size and p.eval_size < gpu.eval_size
    assert p.eval_every < p.max_steps  # validation still happens inside the main runs, as on the GPU


def test_the_stand_in_has_the_gpu_models_architecture_in_bf16(gpu_on_cpu):
    model, tok = ftlab.load_model(gpu_on_cpu.model_name, device="cpu")
    real, cfg = ARCHITECTURES["smollm2-1.7b"], model.config
    assert next(model.parameters()).dtype == torch.bfloat16  # what ftlab picks on a GPU
    assert (cfg.num_key_value_heads == cfg.num_attention_heads) == (real.kv_heads == real.heads)
    assert cfg.tie_word_embeddings == real.tied and cfg.vocab_size == len(tok) == real.vocab
    assert cfg.intermediate_size / cfg.hidden_size == real.intermediate / real.hidden
    assert "UNTRAINED" in model.ftlab_label


def test_a_lora_run_in_bf16_with_the_gpu_settings(gpu_on_cpu, tmp_path):
    p = gpu_on_cpu
    model, tok = ftlab.load_model(p.model_name, device="cpu")
    data = [{"messages": [{"role": "user", "content": f"Add {i} and {i}."}, {"role": "assistant", "content": str(2 * i)}]}
            for i in range(p.run_batch * 2)]
    config = ftlab.TrainConfig(output_dir=str(tmp_path / "run"), method="lora", lora_rank=p.lora_rank,
                               lr=p.lora_learning_rate, max_steps=2, batch_size=p.run_batch, max_length=p.max_length,
                               progress=False, log_to=("jsonl",), save_final=False)
    result = ftlab.train(model, tok, data, config=config)
    assert len(result.train_history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.train_history)
    assert next(result.model.parameters()).dtype == torch.bfloat16


def test_overrides_are_checked(monkeypatch):
    monkeypatch.setenv(OVERRIDES_VAR, "max_steps=3, lora_learning_rate=1e-4")
    assert get_profile("ci").max_steps == 3 and get_profile("ci").lora_learning_rate == 1e-4
    assert get_profile("ci", max_steps=5).max_steps == 5  # keywords win
    for bad in ("max_steps", "no_such_field=1", "max_steps=many", "name=gpu"):
        monkeypatch.setenv(OVERRIDES_VAR, bad)
        with pytest.raises(ValueError, match=OVERRIDES_VAR):
            get_profile("ci")


def test_make_test_runs_the_notebooks_under_the_gpu_profile():
    makefile = (ROOT / "Makefile").read_text()
    assert "FTLAB_PROFILE=gpu FTLAB_PROFILE_OVERRIDES=gpu-on-cpu" in makefile and "gpu-on-cpu" in NAMED_OVERRIDES
