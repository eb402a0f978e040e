"""ftlab.deploy: GGUF export and its transformers round trip, the model card, monitoring, the load-test
maths, and a real ``transformers serve`` subprocess (start, chat, stream, bad requests, crash, stop)."""

import copy
import os
import socket
import threading
import time

import numpy as np
import pytest
import torch

from ftlab.data import SYSTEM_PROMPT
from ftlab.deploy import (
    GGUF_TYPES,
    GGUFExportError,
    ModelServer,
    ServerError,
    chat_completion,
    chat_request_problem,
    compare_logits,
    drift_report,
    export_gguf,
    gguf_size_bytes,
    load_gguf,
    percentile,
    permute_qk,
    post_json,
    read_gguf_summary,
    read_gguf_tensor,
    render_model_card,
)
from ftlab.models import _fix_special_tokens, chat, load_tokenizer, make_tiny_model
from ftlab.training import merge_adapters, merge_and_save, prepare_model

PROMPTS = ["Classify this message: my heater is broken.", "Extract the order id from: order BW-123456 is late."]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def lively_tiny(tok, seed=0, **overrides):
    """The tiny model with larger random weights, so greedy answers are varied text, not one repeated token."""
    model = make_tiny_model(tok, seed=seed, **overrides)
    _fix_special_tokens(model, tok)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def merged(tok):
    """A tiny LoRA model with non-zero adapters, merged: the deployment path starts here."""
    model = prepare_model(lively_tiny(tok), "lora", lora_rank=4, lora_alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter actually change the model
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return merge_adapters(model).eval()


# --------------------------------------------------------------------------- export: pure functions


@pytest.mark.parametrize("n_head,n_kv", [(4, 4), (4, 2)])
def test_permute_qk_is_undone_by_transformers(n_head, n_kv):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    head_dim = 8
    w = np.random.default_rng(0).normal(size=(n_kv * head_dim, 16)).astype(np.float32)
    back = LlamaTensorProcessor({"num_attention_heads": n_head, "num_key_value_heads": n_kv})
    restored = back._reverse_permute_weights(permute_qk(w, n_kv), n_head, n_kv)
    np.testing.assert_array_equal(restored, w)
    assert not np.array_equal(permute_qk(w, n_kv), w)  # it does reorder rows


def test_unsupported_architecture_lists_the_supported_ones(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok)))
    with pytest.raises(GGUFExportError, match="not supported.*llama, mistral, qwen2"):
        export_gguf(model, "/nonexistent/x.gguf", "F32", tokenizer=tok)


def test_rope_scaling_and_unknown_type_are_refused(tok, tmp_path):
    model = make_tiny_model(tok, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 1024})
    with pytest.raises(GGUFExportError, match="rope scaling 'llama3'"):
        export_gguf(model, tmp_path / "x.gguf", "F32", tokenizer=tok)
    with pytest.raises(GGUFExportError, match="Q4_K_M.*not offered.*Q8_0"):
        export_gguf(make_tiny_model(tok), tmp_path / "x.gguf", "Q4_K_M", tokenizer=tok)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gguf_size_of_a_7b_model():
    assert gguf_size_bytes(7e9, "Q8_0") == pytest.approx(7e9 * 8.5 / 8)
    assert gguf_size_bytes(7e9, "Q4_0") / gguf_size_bytes(7e9, "F16") == pytest.approx(4.5 / 16)


# --------------------------------------------------------------------------- export: round trip


@pytest.fixture(scope="module")
def exported(merged, tok, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    return {t: export_gguf(merged, folder / f"tiny-{t}.gguf", t, tokenizer=tok) for t in ("F32", "Q8_0", "Q4_0")}


def test_f32_round_trip_matches_the_merged_model(merged, tok, exported):
    loaded, loaded_tok = load_gguf(exported["F32"])
    logits = compare_logits(merged, loaded, tok, PROMPTS, system=SYSTEM_PROMPT)
    assert logits["max_abs_diff"] < 1e-4 and logits["top1_agreement"] == 1.0
    # the tokenizer and chat template travelled inside the file
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PROMPTS[0]}]
    ours = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert loaded_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == ours
    assert loaded_tok(ours)["input_ids"] == tok(ours)["input_ids"]
    for attr in ("eos_token_id", "bos_token_id", "pad_token_id"):
        assert getattr(loaded_tok, attr) == getattr(tok, attr), attr
    assert chat(loaded, loaded_tok, PROMPTS[1], max_new_tokens=8) == chat(merged, tok, PROMPTS[1], max_new_tokens=8)


def test_quantised_files_are_smaller_and_close(merged, tok, exported):
    sizes = {t: read_gguf_summary(p) for t, p in exported.items()}
    assert sizes["Q8_0"]["tensor_types"].get("Q8_0") and sizes["Q4_0"]["tensor_types"].get("Q4_0")
    assert all(s["has_chat_template"] and s["n_tokens"] == len(tok) for s in sizes.values())
    assert sizes["Q8_0"]["bytes"] < 0.4 * sizes["F32"]["bytes"]
    assert sizes["Q4_0"]["bytes"] < sizes["Q8_0"]["bytes"]
    # de-quantise the stored down-projection as a GGUF reader does, and compare with the weights
    weight = merged.model.layers[0].mlp.down_proj.weight.numpy()
    np.testing.assert_array_equal(read_gguf_tensor(exported["F32"], "blk.0.ffn_down.weight"), weight)
    for gguf_type, max_rel_rms in (("Q8_0", 0.01), ("Q4_0", 0.15)):
        back = read_gguf_tensor(exported[gguf_type], "blk.0.ffn_down.weight")
        rel = np.sqrt(((back - weight) ** 2).mean() / (weight ** 2).mean())
        assert 0 < rel < max_rel_rms, (gguf_type, rel)


@pytest.mark.slow  # one more GGUF load (transformers parses the 49k-token vocabulary: 10-60 s)
def test_qwen2_round_trip_has_no_permutation(tok, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.bias.normal_()  # biases must travel too
    path = export_gguf(model, tmp_path / "qwen2.gguf", "F32", tokenizer=tok)
    loaded, _ = load_gguf(path, with_tokenizer=False)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"
    assert compare_logits(model, loaded, tok, PROMPTS[:1])["max_abs_diff"] < 1e-4



def test_compare_logits_gives_the_difference_relative_to_the_largest_logit(merged, tok):
    bf16 = copy.deepcopy(merged).to(torch.bfloat16)   # a bf16 model's rounding scales with its logits
    logits = compare_logits(merged, bf16, tok, PROMPTS[:2], system=SYSTEM_PROMPT)
    assert logits["max_abs_logit"] > 0 and 0 < logits["relative_max_diff"] < 0.2, logits   # rounding, no bug
    assert logits["relative_max_diff"] == pytest.approx(logits["max_abs_diff"] / logits["max_abs_logit"])

# --------------------------------------------------------------------------- card, monitoring, load maths


def test_model_card_only_states_what_was_passed():
    card = render_model_card(name="m", base_model="SmolLM2-135M-Instruct", method="LoRA r=16", data="480 examples",
                             evaluation=[{"model": "merged", "score": 0.4567, "ci": (0.4, 0.5), "n": 48}],
                             intended_use="course demos", limits=["English only"])
    assert "0.457" in card and "[0.400, 0.500]" in card and "English only" in card
    assert card.count("_not measured_") == 2  # forgetting and quantisation were not passed


def test_percentile_and_drift():
    lat = [0.5, 0.7, 0.6, 3.0, 0.8, 0.9, 0.65, 0.75, 0.55, 2.0]
    assert percentile(lat, 95) == pytest.approx(np.percentile(lat, 95))
    rng = np.random.default_rng(0)
    stable = [{"completion_tokens": int(x)} for x in rng.normal(20, 3, 200)]
    assert not drift_report(stable, baseline=100, window=50)["completion_tokens"]["drift"]
    longer = stable[:150] + [{"completion_tokens": int(x)} for x in rng.normal(30, 3, 50)]
    assert drift_report(longer, baseline=100, window=50)["completion_tokens"]["drift"]


def test_chat_request_problem():
    assert chat_request_problem({"messages": [{"role": "user", "content": "hi"}]}) is None
    assert "non-empty list" in chat_request_problem({"model": "x"})
    assert "role" in chat_request_problem({"messages": [{"role": "robot", "content": "hi"}]})
    assert "max_tokens" in chat_request_problem({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})


# --------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def served(tok, tmp_path_factory):
    model = lively_tiny(tok, seed=3)
    folder = merge_and_save(model, tok, tmp_path_factory.mktemp("serve") / "model")
    server = ModelServer(folder, startup_timeout=240).start()
    yield model, server
    pid = server.process.pid
    server.stop()
    assert server.process.returncode is not None and "Finished server process" in server.log_tail(5)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # no process left behind


def test_served_greedy_answers_equal_ftlab_chat(served, tok):
    model, server = served
    client = server.client(timeout=60)
    for prompt in PROMPTS:
        local = chat(model, tok, prompt, max_new_tokens=12, system=SYSTEM_PROMPT)
        plain = chat_completion(client, server.model, prompt, system=SYSTEM_PROMPT, max_tokens=12)
        streamed = chat_completion(client, server.model, prompt, system=SYSTEM_PROMPT, max_tokens=12, stream=True)
        assert len(set(local.split())) > 1  # a real sentence of tokens, not one repeated token
        assert plain["text"].strip() == local and streamed["text"].strip() == local
        assert plain["completion_tokens"] == streamed["completion_tokens"] == 12
        assert streamed["ttft_s"] is not None and streamed["ttft_s"] <= streamed["latency_s"]


def test_malformed_requests_get_4xx_and_the_server_survives(served):
    _, server = served
    url = f"{server.url}/v1/chat/completions"
    bad = ['{not json', {"model": server.model}, {"model": server.model, "messages": "hi"},
           {"model": server.model, "messages": [{"role": "robot", "content": "hi"}]},
           {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
           {"model": server.model, "messages": [{"role": "user", "content": "hi"}], "no_such_field": 1},
           {"model": "another-model", "messages": [{"role": "user", "content": "hi"}]}]
    for body in bad:
        status, _ = post_json(url, body)
        assert 400 <= status < 500, (body, status)
    assert server.health() == 200
    assert chat_completion(server.client(), server.model, "hi", max_tokens=2)["completion_tokens"] == 2


def test_port_in_use_and_public_host(served):
    _, server = served
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert ModelServer(server.model_dir, port=port)._pick_port() != port
        with pytest.raises(ServerError, match=f"port {port}.*in use"):
            ModelServer(server.model_dir, port=port, strict_port=True)._pick_port()
    with pytest.raises(ValueError, match="without authentication"):
        ModelServer(server.model_dir, host="0.0.0.0")


def test_continuous_batching_server_and_a_crash_mid_request(served, tok, tmp_path):
    model, first = served
    with ModelServer(first.model_dir, continuous_batching=True, startup_timeout=240,
                     log_path=tmp_path / "cb.log") as server:
        client = server.client(timeout=60)
        local = chat(model, tok, PROMPTS[0], max_new_tokens=10, system=SYSTEM_PROMPT)
        assert chat_completion(client, server.model, PROMPTS[0], system=SYSTEM_PROMPT, max_tokens=10)["text"].strip() == local
        errors = []

        def long_request():
            try:
                chat_completion(client, server.model, PROMPTS[1], max_tokens=4000, stream=True, server=server)
            except ServerError as e:
                errors.append(e)

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(1.0)
        server.kill()
        t.join(timeout=60)
        assert not t.is_alive(), "the client hung after the server died"
        assert errors and "exited with code" in str(errors[0])


# --------------------------------------------------------------------------- llama.cpp itself


@pytest.fixture(scope="module")
def llama_f32(merged, tok, exported):
    """The merged tiny model's F32 export, opened by llama.cpp (the build is part of `make setup`)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python did not build here: `ftlab doctor` says how to fix it")
    from ftlab.deploy import open_gguf

    return open_gguf(exported["F32"], n_ctx=256)


def test_llama_cpp_reads_the_export_like_transformers(merged, tok, llama_f32):
    from ftlab.deploy import compare_greedy, compare_logits_llama, compare_tokens

    tokens = compare_tokens(llama_f32, tok, PROMPTS, system=SYSTEM_PROMPT)
    assert tokens["equal"] == tokens["template_equal"] == len(PROMPTS), tokens["first_mismatch"]
    logits = compare_logits_llama(llama_f32, merged, tok, PROMPTS, system=SYSTEM_PROMPT)
    # F32 weights, fp16 KV cache: small differences, and an argmax may flip only where two tokens nearly
    # tie (the untrained tiny model has many such positions; a wrong export flips them everywhere)
    assert logits["relative_max_diff"] < 1e-2 and logits["flips_beyond_ties"] == 0, logits
    assert logits["top1_agreement"] > 0.9, logits
    rows = compare_greedy(llama_f32, merged, tok, PROMPTS, max_new_tokens=12, system=SYSTEM_PROMPT)
    for r in rows:  # an F32 file: the same greedy answer, token for token, as transformers gives
        assert r["equal"] and r["llama"] == r["hf"], r
        assert len(set(r["llama"].split())) > 1


def test_llama_cpp_prompt_threads_follow_n_threads(llama_f32, exported):
    """llama-cpp-python gives prompt processing every core unless told otherwise; on a busy machine that made
    generation several times slower, so open_gguf sets both thread counts to the same number."""
    from ftlab.deploy import open_gguf

    one = open_gguf(exported["F32"], n_ctx=64, n_threads=1)
    assert one.context_params.n_threads == one.context_params.n_threads_batch == 1
    assert llama_f32.context_params.n_threads_batch == llama_f32.context_params.n_threads


def test_ftlab_q4_0_bytes_equal_llama_cpp_q4_0(tok, exported, tmp_path):
    pytest.importorskip("llama_cpp")
    from ftlab.deploy import quantize_gguf, raw_tensor_bytes, tensor_types

    ours = exported["Q4_0"]
    theirs = quantize_gguf(exported["F32"], tmp_path / "llama-q4_0.gguf", "Q4_0")["path"]
    types = tensor_types(theirs)
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.1.ffn_down.weight"] == "Q4_0"
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight", "blk.1.ffn_down.weight"):
        assert raw_tensor_bytes(ours, name) == raw_tensor_bytes(theirs, name), name


def test_k_quants_fall_back_where_rows_do_not_divide_by_256(tok, tmp_path):
    pytest.importorskip("llama_cpp")
    from ftlab.deploy import bits_per_weight, quantize_gguf, tensor_types

    narrow = export_gguf(lively_tiny(tok), tmp_path / "narrow.gguf", "F32", tokenizer=tok)   # hidden 64
    wide = export_gguf(lively_tiny(tok, hidden_size=256, intermediate_size=512), tmp_path / "wide.gguf", "F32",
                       tokenizer=tok)
    q = quantize_gguf(narrow, tmp_path / "narrow-q4km.gguf", "Q4_K_M")
    types = tensor_types(q["path"])
    assert types["blk.0.attn_q.weight"] == "Q5_0" and types["token_embd.weight"] == "Q8_0"   # 64 % 256 != 0
    assert ("blk.0.attn_q.weight", "q4_K", "q5_0") in q["fallbacks"]
    wide_types = tensor_types(quantize_gguf(wide, tmp_path / "wide-q4km.gguf", "Q4_K_M")["path"])
    assert wide_types["blk.0.attn_q.weight"] == "Q4_K" and wide_types["token_embd.weight"] == "Q6_K"
    assert 4.0 < bits_per_weight(tmp_path / "wide-q4km.gguf") < bits_per_weight(q["path"]) < 9.0


def test_modelfile_carries_the_gguf_template_and_stop(tok, exported, tmp_path):
    from ftlab.deploy import gguf_chat_metadata, jinja_prompt, read_modelfile, render_modelfile_prompt, write_modelfile

    path = write_modelfile(exported["Q8_0"], tmp_path / "Modelfile", system=SYSTEM_PROMPT)
    mf, meta = read_modelfile(path), gguf_chat_metadata(exported["Q8_0"])
    assert mf["from"] == f"./{exported['Q8_0'].name}" and mf["system"] == SYSTEM_PROMPT
    assert mf["stop"] == [meta["eos_token"]] == ["<|im_end|>"]
    expected = tok.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                        {"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                       tokenize=False)
    assert render_modelfile_prompt(mf["template"], SYSTEM_PROMPT, PROMPTS[0]) == expected
    assert jinja_prompt(exported["Q8_0"], SYSTEM_PROMPT, PROMPTS[0]) == expected


def test_llama_cpp_server_answers_rejects_and_stops(merged, tok, exported, llama_f32, tmp_path):
    from ftlab.deploy import LlamaCppServer, greedy_tokens, render_chat, run_load
    from ftlab.deploy.llamacpp import llama_tokens

    with pytest.raises(ValueError, match="authentication"):
        LlamaCppServer(exported["F32"], host="0.0.0.0")
    server = LlamaCppServer(exported["F32"], n_ctx=512, log_path=tmp_path / "llama.log").start()
    try:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PROMPTS[1]}]
        ids, _, _ = greedy_tokens(llama_f32, llama_tokens(llama_f32, render_chat(llama_f32, messages)), 10)
        served = chat_completion(server.client(timeout=60), server.model, PROMPTS[1], system=SYSTEM_PROMPT,
                                 max_tokens=10, server=server)   # sends repeat_penalty=1.0: greedy
        assert served["text"] == llama_f32.detokenize(ids).decode() and served["completion_tokens"] == 10
        status, _ = post_json(f"{server.url}/v1/chat/completions", {"model": server.model, "messages": "hi"})
        assert 400 <= status < 500 and server.health() == 200
        row = run_load(server, [PROMPTS[0]], concurrency=2, seconds=60, max_tokens=4, requests=4)
        assert row["requests"] == 4 and row["errors"] == 0 and row["tokens_per_s"] > 0
    finally:
        pid = server.process.pid
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_doctor_reports_llama_cpp():
    from ftlab.deploy.llamacpp import llama_cpp_check

    ok, detail, fix = llama_cpp_check()
    assert ok == bool(pytest.importorskip("llama_cpp")) and "0.3.36" in detail and fix == ""
