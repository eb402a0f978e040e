"""The VRAM estimator: its terms are pinned to real models, real quantisation and real measurement."""

import json

import pytest
import torch

from ftlab import memory as M


# ----------------------------------------------------------------------------- parameter counts


def test_tiny_parameter_count_equals_the_real_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftlab.models import TINY_CONFIG

    with torch.device("meta"):  # the same module load_model("tiny") builds, without the tokenizer
        model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, **TINY_CONFIG))
    assert M.get_architecture("tiny").num_parameters() == sum(p.numel() for p in model.parameters())
    assert M.get_architecture(model).num_parameters() == sum(p.numel() for p in model.parameters())


def test_smollm2_parameter_count_from_its_config_json():
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftlab.models import smollm2_dir

    folder = smollm2_dir()
    cfg = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # the real module structure, no weights
        real = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    assert real == 134_515_008
    assert M.get_architecture(str(folder)).num_parameters() == real
    assert M.get_architecture(cfg).num_parameters() == real
    assert M.get_architecture("smollm2-135m-instruct") == M.ARCHITECTURES["smollm2-135m"]


@pytest.mark.parametrize("name,published", [
    ("llama-3.1-8b", 8_030_261_248), ("llama-3.2-1b", 1_235_814_400), ("llama-2-7b", 6_738_415_616),
    ("qwen2.5-0.5b", 494_032_768), ("qwen2.5-7b", 7_615_616_512), ("mistral-7b-v0.1", 7_241_732_096),
    ("gemma-2b", 2_506_172_416), ("smollm2-1.7b", 1_711_376_384),
])
def test_table_parameter_counts_match_published_totals(name, published):
    assert M.ARCHITECTURES[name].num_parameters() == published


def test_table_architectures_build_the_same_module_structure_in_transformers():
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    for name, cls in (("llama-3.2-1b", LlamaConfig), ("qwen2.5-0.5b", Qwen2Config)):
        a = M.ARCHITECTURES[name]
        cfg = cls(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=2, num_attention_heads=a.heads,
                  num_key_value_heads=a.kv_heads, vocab_size=a.vocab, tie_word_embeddings=a.tied, head_dim=a.hd)
        with torch.device("meta"):
            real = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        two_layers = M.Architecture(**{**a.__dict__, "layers": 2})
        assert two_layers.num_parameters() == real, name


# ----------------------------------------------------------------------------- quantisation


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_bytes_per_parameter_match_bitsandbytes(double_quant):
    import bitsandbytes.functional as F

    w = torch.randn(256, 4096)  # 1M weights = 16384 blocks of 64 = 64 groups of 256 blocks
    packed, qs = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    n = w.numel()
    assert packed.numel() * packed.element_size() == n // 2  # two 4-bit codes per byte
    constants = qs.absmax.numel() * qs.absmax.element_size()
    if double_quant:
        constants += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    assert constants == M.nf4_constant_bytes(n, double_quant)
    expected = 0.5 + (4 / 64 if not double_quant else 1 / 64 + 4 / (64 * 256))
    assert M.nf4_bytes_per_parameter(double_quant) == pytest.approx(expected)
    assert (packed.numel() + constants) / n == pytest.approx(expected)


def test_qlora_weights_are_about_a_quarter_of_bf16():
    kw = dict(param_dtype="bf16", batch_size=1, seq_len=128, device="cpu")
    full = M.estimate_memory("llama-3.1-8b", method="lora", **kw)
    q = M.estimate_memory("llama-3.1-8b", method="qlora", **kw)
    w = lambda e: sum(i.bytes for i in e.items if i.category in ("weights", "quantisation constants"))  # noqa: E731
    assert 0.25 < w(q) / w(full) < 0.40  # embeddings + lm_head stay bf16


def test_kbit_preparation_on_cuda_keeps_embeddings_head_and_residual_in_fp32():
    """peft's prepare_model_for_kbit_training (ftlab's CUDA QLoRA path) casts non-4-bit params to fp32."""
    from ftlab.memory.cuda import kbit_training_extra_bytes

    kw = dict(method="qlora", param_dtype="bf16", batch_size=2, seq_len=1024, gradient_checkpointing=True)
    cpu, cuda = (M.estimate_memory("llama-3.1-8b", device=d, **kw) for d in ("cpu", "cuda"))
    w = lambda e: sum(i.bytes for i in e.components if i.category == "weights")  # noqa: E731
    assert w(cuda) - w(cpu) == kbit_training_extra_bytes("llama-3.1-8b")
    ck = lambda e: next(c.bytes for c in e.components if c.name.startswith("activations: checkpoints"))  # noqa: E731
    assert ck(cuda) == 2 * ck(cpu)   # the residual stream starts at the fp32 embedding
    # fp32 lm_head on an fp32 input: the logits are fp32 already (no separate bf16 copy and upcast)
    assert cuda.phases["forward: end (loss)"] > cpu.phases["forward: end (loss)"]


# ----------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_parameter_count_equals_peft(targets):
    from ftlab import load_model
    from ftlab.training import prepare_model

    model, _ = load_model("tiny")
    model = prepare_model(model, "lora", lora_rank=8, target_modules=targets)
    peft_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    est = M.estimate_memory("tiny", method="lora", lora_rank=8, lora_targets=targets, device="cpu")
    assert est.settings["trainable_params"] == peft_trainable


# ----------------------------------------------------------------------------- measured vs estimated


@pytest.mark.parametrize("cfg_kwargs", [
    dict(method="full", batch_size=2, seq_len=48),
    dict(method="lora", batch_size=2, seq_len=48, checkpointing=True),
    dict(method="full", batch_size=4, seq_len=64, trained_fraction=0.25),   # ftlab.train's loss (loss="trained")
])
def test_estimate_matches_memtracker_on_the_tiny_model(cfg_kwargs):
    from ftlab.training.measure import Config, build, estimate_for, make_batch, measure_training_peak
    from ftlab.training import count_trained_tokens

    torch.manual_seed(0)
    cfg = Config("tiny", **cfg_kwargs)
    model, opt = build(cfg, "cpu")
    batch = make_batch(model.config.vocab_size, cfg.batch_size, cfg.seq_len, cfg.padded,
                       trained_fraction=cfg.trained_fraction)
    trained_only = cfg.trained_fraction is not None
    measured, _ = measure_training_peak(model, opt, batch, trained_logits_only=trained_only)
    predicted = estimate_for(cfg, "cpu", count_trained_tokens(batch["labels"]) if trained_only else None).tensor_bytes
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)


def test_trained_logits_only_shrinks_the_logits_term():
    full = M.estimate_memory("tiny", batch_size=8, seq_len=128, device="cpu")
    trained = M.estimate_memory("tiny", batch_size=8, seq_len=128, loss="trained", trained_tokens=200, device="cpu")
    assert trained.tensor_bytes < full.tensor_bytes
    full_b, trained_b = (next(c.bytes for c in e.components if c.name == "logits + cross-entropy buffers")
                         for e in (full, trained))
    assert trained_b * 8 * 128 == pytest.approx(full_b * 200, rel=1e-9)   # proportional to the positions
    with pytest.raises(ValueError, match="trained_tokens"):
        M.estimate_memory("tiny", loss="trained", device="cpu")


# ----------------------------------------------------------------------------- the terms


def test_breakdown_adds_up_and_names_the_peak():
    e = M.estimate_memory("smollm2-135m", method="full", batch_size=8, seq_len=256, device="cuda")
    assert e.total_bytes == sum(i.bytes for i in e.items)
    assert e.peak_phase in e.phases and e.phases[e.peak_phase] == e.tensor_bytes
    cats = e.by_category()
    assert {"weights", "optimizer states", "activations", "logits & loss", "CUDA overhead"} <= set(cats)
    # the logits term is exactly 3 fp32 tokens x vocab buffers at the start of backward
    assert cats["logits & loss"] == 3 * 8 * 256 * 49152 * 4
    assert "CUDA" not in str(M.estimate_memory("tiny", device="cpu"))
    assert "<table>" in e._repr_html_()


def test_checkpointing_lora_and_chunked_loss_each_save_memory():
    kw = dict(batch_size=2, seq_len=1024, param_dtype="bf16", device="cuda")
    base = M.estimate_memory("llama-3.2-1b", **kw).total_bytes
    assert M.estimate_memory("llama-3.2-1b", gradient_checkpointing=True, **kw).total_bytes < base
    assert M.estimate_memory("llama-3.2-1b", method="lora", **kw).total_bytes < base
    assert M.estimate_memory("llama-3.2-1b", loss="chunked", **kw).total_bytes < base


def test_lora_dropout_and_fp32_adapters_copy_the_input_per_adapter():
    # peft casts the input to the adapter's fp32 and drops it out separately for every target module
    kw = dict(method="lora", batch_size=8, seq_len=1024, param_dtype="bf16", device="cuda")
    act = lambda e: sum(c.bytes for c in e.components if c.category == "activations")  # noqa: E731
    with_dropout = M.estimate_memory("llama-3.2-1b", lora_dropout=0.05, **kw)
    without = M.estimate_memory("llama-3.2-1b", lora_dropout=0.0, **kw)
    qv_only = M.estimate_memory("llama-3.2-1b", lora_dropout=0.0, lora_targets=["q_proj", "v_proj"], **kw)
    assert act(with_dropout) > act(without) > act(qv_only)


def test_full_finetuning_of_a_small_batch_peaks_in_the_optimizer_step():
    e = M.estimate_memory("llama-3.2-1b", batch_size=1, seq_len=128, param_dtype="bf16", optimizer_impl="foreach")
    assert e.peak_phase == "optimizer step"


def test_worked_7b_example_term_by_term():
    rows = M.worked_example_7b()
    terms = {name: gib for name, gib, _ in rows}
    P = M.ARCHITECTURES["llama-2-7b"].num_parameters()
    assert terms["parameters (billions)"] == pytest.approx(P / 1e9)
    assert terms["fp32 master weights"] == pytest.approx(4 * P / 2**30)
    assert terms["fp32 gradients"] == pytest.approx(4 * P / 2**30)
    assert terms["AdamW states (m, v)"] == pytest.approx(8 * P / 2**30)
    assert terms["checkpoints: one hidden state per layer"] == pytest.approx(32 * 4 * 2048 * 4096 * 4 / 2**30)
    assert terms["logits + fp32 cross-entropy buffers"] == pytest.approx(3 * 8192 * 32000 * 4 / 2**30)
    naive = terms["sum of all terms (never all alive at once)"]
    assert naive == pytest.approx(sum(g for _, g, _ in rows[1:-2]))
    peak_name, peak, _ = rows[-1]
    est = M.estimate_memory("llama-2-7b", mixed_precision="fp16", gradient_checkpointing=True, batch_size=4, seq_len=2048, padded=False)
    assert peak == pytest.approx(est.tensor_bytes / 2**30)
    assert 16 * P / 2**30 < peak < naive  # at least weights + grads + states, less than everything at once
    assert "backward" in peak_name or "optimizer" in peak_name


def test_inference_kv_cache():
    e = M.estimate_inference_memory("llama-3.1-8b", batch_size=1, context_len=8192, param_dtype="bf16", device="cpu")
    assert e.by_category()["KV cache"] == 8192 * 2 * 32 * 8 * 128 * 2  # 128 KiB per token
    assert e.by_category()["weights"] == 8_030_261_248 * 2


def test_advise_largest_batch_is_the_boundary():
    a = M.advise("smollm2-360m", "t4-16gb", method="full", param_dtype="bf16", batch_size=4, seq_len=1024)
    usable = a.usable_bytes
    b = a.largest_batch_size
    assert b >= 1
    kw = dict(method="full", param_dtype="bf16", seq_len=1024, device="t4-16gb")
    assert M.estimate_memory("smollm2-360m", batch_size=b, **kw).total_bytes <= usable
    assert M.estimate_memory("smollm2-360m", batch_size=b + 1, **kw).total_bytes > usable
    assert any("checkpointing" in c[0] and c[2] > 0 for c in a.changes)
    assert [c[2] for c in a.changes] == sorted((c[2] for c in a.changes), reverse=True)
    assert "largest batch size" in str(a)


def test_dgx_spark_preset_is_unified_memory_with_a_reserve():
    spark = M.HARDWARE["dgx-spark"]
    assert spark.total_gib == pytest.approx(128e9 / 2**30, rel=0.01)
    assert spark.usable_gib < spark.total_gib - 8
    assert "unified" in spark.note


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        M.estimate_memory("no-such-model-anywhere")
    with pytest.raises(ValueError, match="method"):
        M.estimate_memory("tiny", method="magic")
    with pytest.raises(ValueError, match="qlora"):
        M.estimate_memory("tiny", method="full", quantization="nf4")
    with pytest.raises(ValueError, match="CUDA"):
        M.estimate_memory("tiny", optimizer="adamw_8bit", device="cpu")


def test_cli_prints_the_breakdown(capsys):
    assert M.cli_main(["--model", "smollm2-135m", "--method", "lora", "--batch-size", "4", "--device", "dgx-spark", "--advise"]) == 0
    out = capsys.readouterr().out
    assert "peak:" in out and "LoRA adapters" in out and "fits" in out and "largest batch size" in out
    assert M.cli_main(["--model", "tiny", "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_bytes"] == sum(i["bytes"] for i in data["items"])
    assert M.cli_main(["--model", "nope-model"]) == 2


def test_explorer_update_without_a_browser():
    from ftlab.ui import MemoryExplorer, plot_breakdown

    ex = MemoryExplorer(model="llama-3.1-8b", device="rtx-4090-24gb")
    s = ex.update(method="full", param_dtype="bf16", batch_size=4, seq_len=2048)
    assert not s.fits and "DOES NOT FIT" in s.verdict
    s = ex.update(method="qlora", gradient_checkpointing=True, batch_size=1)
    assert s.fits and "FITS" in s.verdict
    ax = plot_breakdown({"full": M.estimate_memory("tiny", device="cpu"), "lora": M.estimate_memory("tiny", method="lora", device="cpu")})
    assert len(ax.patches) >= 4
    import ipywidgets

    assert isinstance(ex.widget(), ipywidgets.VBox)


# ----------------------------------------------------------------------------- one test per phase of the step


def _step(model="tiny", **kw):
    from ftlab.memory.step import make_step

    args = dict(method="full", batch_size=2, seq_len=32, param_dtype="fp32", mixed_precision=None, quantization=None,
                optimizer="adamw", optimizer_impl="fused", gradient_checkpointing=False, lora_rank=8,
                lora_targets="all-linear", lora_dropout=0.0, trainable_layers=None, attention="sdpa", loss="full",
                loss_chunk_tokens=1024, trained_tokens=None, padded=False, device="cpu")
    return make_step(model, **{**args, **kw})


def test_phase_persistent_state_weights_adapters_gradients_states():
    from ftlab.memory.state import persistent_state

    P = M.ARCHITECTURES["llama-3.2-1b"].num_parameters()
    full = {i.category: i.bytes for i in persistent_state(_step("llama-3.2-1b", param_dtype="bf16", device="cuda"))}
    assert full == {"weights": 2 * P, "gradients": 2 * P, "optimizer states": 2 * 2 * P}
    lora = persistent_state(_step("llama-3.2-1b", method="lora", param_dtype="bf16", lora_rank=16, device="cuda"))
    a = M.ARCHITECTURES["llama-3.2-1b"]
    n = a.layers * sum(16 * (o + i) for o, i in a.linear_shapes().values())
    by = {i.category: i.bytes for i in lora}
    assert by["LoRA adapters"] == by["gradients"] == 4 * n   # fp32 adapters and fp32 grads on a bf16 base
    assert by["optimizer states"] == 8 * n


def test_phase_forward_saved_per_layer_equals_autograd_saved_tensors():
    """What one decoder layer saves for backward, counted by autograd's own saved-tensor hooks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftlab.memory.forward import layer_saved
    from ftlab.models import TINY_CONFIG

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, **TINY_CONFIG, attn_implementation="sdpa"))
    params = {p.data_ptr() for p in model.parameters()}
    B, S = 2, 32
    ids = torch.randint(0, 49152, (B, S))
    emb = model.model.embed_tokens(ids).detach().requires_grad_(True)
    pos = torch.arange(S)[None].expand(B, S)
    rope = model.model.rotary_emb(emb, pos)
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    layer = model.model.layers[1]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(emb, position_embeddings=rope, attention_mask=None, position_ids=pos)
    measured = sum(seen.values())  # the layer's input is among them: the first RMSNorm saves it
    predicted = sum(layer_saved(_step(batch_size=B, seq_len=S), 1).values())
    assert abs(predicted - measured) / measured < 0.05, (predicted, measured)


def test_phase_loss_buffers_three_fp32_vocab_buffers():
    from ftlab.memory.forward import loss_buffers

    V = 49152
    assert loss_buffers(_step()).backward == 3 * 64 * V * 4
    assert loss_buffers(_step(loss="trained", trained_tokens=10)).backward == 3 * 10 * V * 4
    assert loss_buffers(_step(batch_size=8, seq_len=256, loss="chunked", loss_chunk_tokens=512)).tokens == 512
    # bf16 logits: the model-dtype logits and their fp32 upcast both exist at the end of the forward
    assert loss_buffers(_step(param_dtype="bf16")).forward == 64 * V * (2 + 4 + 4)


def test_phase_backward_frees_activations_while_gradients_appear():
    kw = dict(batch_size=4, seq_len=512, param_dtype="bf16")
    e = M.estimate_memory("llama-3.2-1b", **kw)
    ck = M.estimate_memory("llama-3.2-1b", gradient_checkpointing=True, **kw)
    worst = lambda est: next(v for p, v in est.phases.items() if p.startswith("backward: decoder layer"))  # noqa: E731
    assert e.phases["backward: start (loss gradient)"] > e.phases["backward: end (embedding gradient)"]
    assert worst(ck) < worst(e)   # only checkpoints (+ the recomputed layer) are alive
    # the last moment of backward: bf16 weights + AdamW states + every gradient + the batch, and the tied
    # embedding's two gradients (lm_head's and the embedding's) before autograd adds them
    P = M.ARCHITECTURES["llama-3.2-1b"].num_parameters()
    batch = 4 * (4 * 512) * 8
    assert e.phases["backward: end (embedding gradient)"] == (2 + 4 + 2) * P + batch + 2 * (128256 * 2048) * 2


def test_phase_optimizer_step_temporaries_by_implementation():
    kw = dict(batch_size=1, seq_len=16, param_dtype="bf16")
    P = M.ARCHITECTURES["llama-3.2-1b"].num_parameters()
    fused = M.estimate_memory("llama-3.2-1b", **kw).phases["optimizer step"]
    foreach = M.estimate_memory("llama-3.2-1b", optimizer_impl="foreach", **kw).phases["optimizer step"]
    assert foreach - fused == 2 * P   # one bf16 temporary per trainable parameter


# ----------------------------------------------------------------------------- CUDA-stack terms (ftlab.memory.cuda)


def test_peft_metamathqa_published_rows_within_ten_percent():
    """PEFT's published L40S measurements (ftlab/memory/peft_metamathqa_memory.json, with their source)."""
    from ftlab.memory.published import FIXTURE, compare_peft_metamathqa

    data = json.loads(FIXTURE.read_text())
    assert data["source"]["repo"] == "huggingface/peft" and len(data["rows"]) == 3
    rows = compare_peft_metamathqa()
    asserted = [r for r in rows if r["asserted"]]
    assert len(asserted) == 6
    for r in asserted:
        assert abs(r["error_pct"]) <= 10, r
    for r in rows:  # the peak never under-predicts a published percentile: no surprise OOM
        if not r["asserted"]:
            assert r["predicted"] >= r["published"], r


def test_sdpa_saved_bytes_has_no_seq_by_seq_term_without_a_mask():
    from ftlab.memory.cuda import sdpa_saved_bytes

    a = M.ARCHITECTURES["llama-3.2-1b"]
    short, long_ = (sdpa_saved_bytes(a, 1, S, 2, padded=False) for S in (1024, 4096))
    assert long_ == 4 * short   # linear in the sequence: q, k, v, output and a logsumexp only
    T = 4096
    assert long_ == T * (2 * a.q_dim + 2 * a.kv_dim) * 2 + a.heads * T * 4
    # a padding mask: k and v repeated to every query head, plus the kept additive mask
    assert sdpa_saved_bytes(a, 1, 4096, 2, padded=True) - long_ == T * 2 * (a.q_dim - a.kv_dim) * 2 + T * T * 2


def test_dequant_buffer_and_kbit_casts():
    from ftlab.memory.cuda import dequant_buffer_bytes, kbit_training_extra_bytes

    a = M.ARCHITECTURES["llama-3.1-8b"]
    assert dequant_buffer_bytes(a) == 14336 * 4096 * 2   # gate/up/down: the largest Linear, bf16
    # embeddings + lm_head (untied) + norms go from bf16 to fp32: 2 extra bytes each
    rest = a.num_parameters() - a.layers * sum(o * i for o, i in a.linear_shapes().values())
    assert kbit_training_extra_bytes(a) == 2 * rest and rest > 2 * 128256 * 4096


def test_reserved_is_allocated_plus_slack_and_fits_compares_the_total():
    from ftlab.memory.cuda import reserved_bytes

    e = M.estimate_memory("llama-3.2-1b", batch_size=2, seq_len=512, param_dtype="bf16", device="dgx-spark")
    assert e.tensor_bytes < reserved_bytes(e) < e.total_bytes   # context is in total, not in reserved
    assert e.fits() == (e.total_bytes <= M.HARDWARE["dgx-spark"].usable_gib * 2**30)


def test_recompute_peak_and_after_step_state():
    from ftlab.memory.cuda import after_step_bytes, recompute_peak_bytes

    kw = dict(batch_size=2, seq_len=256, param_dtype="bf16")
    assert recompute_peak_bytes(M.estimate_memory("llama-3.2-1b", **kw)) == 0
    ck = M.estimate_memory("llama-3.2-1b", gradient_checkpointing=True, **kw)
    assert recompute_peak_bytes(ck) > 0
    P = M.ARCHITECTURES["llama-3.2-1b"].num_parameters()
    e = M.estimate_memory("llama-3.2-1b", optimizer_impl="foreach", **kw)
    batch = 4 * 2 * 256 * 8
    assert after_step_bytes(e) == (2 + 2 + 4) * P + batch   # the foreach temporaries are gone after the step
    assert after_step_bytes(e, held_logits_tokens=512) - after_step_bytes(e) == 512 * 128256 * 2


def test_fsdp_full_shard_halves_the_state_on_two_sparks():
    import yaml

    from ftlab.memory.cuda import fsdp_full_shard_per_gpu

    cfg = yaml.safe_load(open(__import__("pathlib").Path(__file__).parents[1] / "configs" / "accelerate_fsdp_2sparks.yaml"))
    world = cfg["num_processes"]
    assert world == 2 and cfg["fsdp_config"]["fsdp_reshard_after_forward"] is True
    one = fsdp_full_shard_per_gpu("llama-3.1-8b", 1, 4, 2048, mixed_precision=cfg["mixed_precision"])
    two = fsdp_full_shard_per_gpu("llama-3.1-8b", world, 4, 2048, mixed_precision=cfg["mixed_precision"])
    P = M.ARCHITECTURES["llama-3.1-8b"].num_parameters()
    assert two.sharded_state == 16 * P // 2 and one.sharded_state == 16 * P
    assert two.activations == one.activations   # activations are per rank: sharding does not split them
    assert two.total < 105 * 2**30 < one.total   # fits one Spark each only when sharded
