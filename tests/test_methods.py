"""ftlab.training: what each method trains, QLoRA on CPU, merging and saving adapters."""

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlab.training import (
    METHODS,
    count_parameters,
    dequantize_model,
    load_adapter,
    merge_and_save,
    num_virtual_tokens,
    parameter_table,
    prepare_model,
    quantize_model_nf4,
    save_adapter,
)
from ftlab.models import _fix_special_tokens, load_tokenizer, make_tiny_model
from ftlab.training import build_optimizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def tiny(tok, seed=0):
    model = make_tiny_model(tok, seed=seed)
    _fix_special_tokens(model, tok)
    return model


def batch(seed=0, length=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 5000, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # some padding, as in a real batch
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_steps(model, steps=2, lr=1e-2):
    opt = build_optimizer(model, "adamw", lr=lr, weight_decay=0.01)
    for step in range(steps):
        loss = model(**batch(step)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return loss.item()


@torch.no_grad()
def logits(model, b=None):
    model.eval()
    b = b or batch(99)
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_only_what_it_says(tok, method):
    model = tiny(tok)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = prepare_model(model, method, lora_rank=4, init_lora_weights=False) if method in ("lora", "dora", "qlora") \
        else prepare_model(model, method, lora_rank=4)
    assert model.ftlab_method == method
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    if method == "full":
        assert trainable == total
    else:
        assert trainable < 0.1 * total  # every other method trains a small part
    # one step: a gradient reaches every trainable tensor and nothing else
    out = model(**batch())
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{method}: no gradient for {name}"
        else:
            assert p.grad is None, f"{method}: gradient leaked into frozen {name}"
    opt = build_optimizer(model, "adamw", lr=1e-2)
    opt.step()
    # frozen base weights did not move (peft renames them: compare by the original name's suffix)
    frozen_after = {n: p for n, p in model.named_parameters() if not p.requires_grad and p.dtype.is_floating_point}
    for name, p in frozen_after.items():
        original = name.replace("base_model.model.", "").replace(".base_layer", "")
        if original in base_before and p.shape == base_before[original].shape:
            assert torch.equal(p, base_before[original]), f"{method}: frozen {name} changed"


def test_freeze_layers(tok):
    model = prepare_model(tiny(tok), "freeze", freeze_layers=1)  # tiny has 2 layers
    layers = model.model.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert model.model.norm.weight.requires_grad and not model.model.embed_tokens.weight.requires_grad
    assert count_parameters(prepare_model(tiny(tok), "freeze", trainable_layers=1)) == count_parameters(model)
    with pytest.raises(ValueError, match="decoder layers"):
        prepare_model(tiny(tok), "freeze", trainable_layers=3)
    with pytest.raises(ValueError, match="unknown method"):
        prepare_model(tiny(tok), "lorra")


def test_lora_targets_and_counts(tok):
    model = prepare_model(tiny(tok), "lora", lora_rank=4, target_modules=["q_proj", "v_proj"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)
    cfg = model.get_base_model().config
    q_out = cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    v_out = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    # per layer: q: r*(in + out), v: r*(in + out)
    expected = cfg.num_hidden_layers * 4 * ((cfg.hidden_size + q_out) + (cfg.hidden_size + v_out))
    assert count_parameters(model)[0] == expected
    assert "lora_A" in parameter_table(model)
    with pytest.raises(ValueError, match="already has adapters"):
        prepare_model(model, "lora")


def test_prompt_tuning_virtual_tokens(tok):
    model = prepare_model(tiny(tok), "prompt_tuning", num_virtual_tokens=5)
    assert num_virtual_tokens(model) == 5
    assert logits(model).shape[1] == 12 + 5
    assert num_virtual_tokens(prepare_model(tiny(tok), "lora", lora_rank=2)) == 0
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_and_save(model, tok, "unused")


def test_qlora_is_nf4_double_quant_and_trains_adapters_only(tok):
    reference = tiny(tok)
    model = prepare_model(tiny(tok), "qlora", lora_rank=4)
    base = model.get_base_model()
    quantized = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    n_linear = sum(isinstance(m, torch.nn.Linear) and name.split(".")[-1] != "lm_head" for name, m in reference.named_modules())
    assert len(quantized) == n_linear == 14  # 7 Linear layers per decoder layer, 2 layers
    for m in quantized:
        assert m.weight.dtype == torch.uint8 and m.weight.quant_state.quant_type == "nf4"
        assert m.weight.quant_state.nested  # double quantisation: the block scales are quantised too
    # peft wrapped the 4-bit layers with its bitsandbytes LoRA layer
    assert type(base.model.layers[0].mlp.up_proj).__module__ == "peft.tuners.lora.bnb"
    # 4-bit storage: a quarter of a byte per weight... plus the scales; well under fp32's 4 bytes
    q = base.model.layers[0].mlp.up_proj.base_layer.weight
    assert q.numel() * q.element_size() * 8 / (q.quant_state.shape.numel()) == 4
    # the quantised model is close to the fp32 one (NF4 keeps ~3 significant bits per weight)
    fp, qq = logits(reference), logits(model)
    assert (qq - fp).abs().max() < 0.25 * fp.abs().max()
    # training moves the adapters, never the packed 4-bit weights, and fits the batch
    packed_before = [m.weight.detach().clone() for m in quantized]
    model.train()
    opt = build_optimizer(model, "adamw", lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**batch(0)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.equal(a, m.weight) for a, m in zip(packed_before, quantized))
    assert losses[-1] < losses[0]


def test_qlora_gradients_equal_dequantized_lora(tok):
    """The adapters' gradients through 4-bit layers equal those through the same weights de-quantised."""
    import copy

    model = prepare_model(tiny(tok), "qlora", lora_rank=4, init_lora_weights=False, lora_dropout=0.0)
    reference = copy.deepcopy(model)
    logits(model)  # an eval-mode forward first: it must not switch the 4-bit layers to an inference-only layout
    dequantize_model(reference)  # same adapters, base weights as plain fp32 nn.Linear
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in reference.modules())
    for m in (model, reference):
        m.train()
        m(**batch(3)).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert grads.keys() == ref_grads.keys() and len(grads) == 28
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dequantize_reproduces_4bit_forward(tok):
    model = quantize_model_nf4(tiny(tok))
    q_logits = logits(model)
    dequantize_model(model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    torch.testing.assert_close(logits(model), q_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora", "qlora"])
def test_merge_and_save_reloads_with_transformers(tok, method, tmp_path):
    model = prepare_model(tiny(tok), method, lora_rank=4, init_lora_weights=False)
    train_steps(model, steps=1)
    expected = logits(model)
    path = merge_and_save(model, tok, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(logits(reloaded), expected, rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(path).pad_token_id == tok.pad_token_id
    # the adapter model is still intact after merging (merge works on a copy)
    torch.testing.assert_close(logits(model), expected)
    assert not list(tmp_path.glob(".merged.tmp-*"))  # atomic write left nothing behind


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_save_and_load_adapter(tok, method, tmp_path):
    model = prepare_model(tiny(tok), method, lora_rank=4, init_lora_weights=False)
    train_steps(model, steps=1)
    path = save_adapter(model, tmp_path / "adapter")
    files = {p.name for p in path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "ftlab_adapter.json"} <= files
    loaded = load_adapter(tiny(tok), path)  # a fresh base: for qlora it is quantised again
    assert loaded.ftlab_method == method
    torch.testing.assert_close(logits(loaded), logits(model))
    with pytest.raises(ValueError, match="no adapters"):
        save_adapter(tiny(tok), tmp_path / "nope")
