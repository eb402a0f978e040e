"""Prove an export did not change the model: load it back with transformers and compare.

Deployment changes a model in three quiet ways: a different precision (fp32 -> fp16/bf16), a
quantisation (8 or 4 bits per weight), and a different prompt format (a lost or altered chat
template). Each one can move answers without any error. The proof is a measurement on the same
inputs:

* **next-token logits** of the exported model against the merged one, on chat-formatted prompts:
  at F32 they must agree to ~1e-4 (same numbers, different file), at lower precision they move;
* **top-1 agreement**: the share of positions where both models pick the same next token;
* **the task score** on the course test split, with a bootstrap CI, and the *paired* difference to
  the merged model (both models answer the same questions, so the paired CI is the honest one).

Example:
    >>> table = quantization_table(model, tok, "runs/export", ["F32", "Q8_0", "Q4_0"], records)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ftlab.deploy.gguf_export import BITS_PER_WEIGHT, export_gguf


def load_gguf(path, dtype=torch.float32, with_tokenizer: bool = True):
    """Load a GGUF file with transformers (``gguf_file=``): ``(model, tokenizer or None)``.

    transformers de-quantises every tensor to ``dtype``: a Q4_0 file loads as a float model whose
    weights carry the 4-bit rounding, which is exactly what we want to measure.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_gguf: {path} does not exist. Fix: write it with export_gguf().")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name) if with_tokenizer else None
    return model, tokenizer


def _prompt_batches(tokenizer, prompts, system=None):
    """Each prompt rendered by the chat template (generation prompt added) as one 1-row tensor."""
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        if system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + messages
        yield tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]


@torch.no_grad()
def compare_logits(reference, candidate, tokenizer, prompts, system=None) -> dict:
    """Next-token logits of two models on the same chat prompts (every position of every prompt).

    Returns ``max_abs_diff`` (largest logit difference), ``mean_abs_diff``, ``top1_agreement``
    (share of positions where both argmaxes agree) and ``last_top1_agreement`` (the same, only for
    the position that picks the first answer token: what a user sees first), plus ``max_abs_logit``
    (largest reference logit) and ``relative_max_diff`` (their ratio), as :func:`compare_logits_llama`
    returns: a bf16 model's rounding is relative, so its tolerance is too.
    """
    reference.eval()
    candidate.eval()
    max_diff, sum_diff, n_values, agree, n_pos, last_agree, scale = 0.0, 0.0, 0, 0, 0, 0, 0.0
    n_prompts = 0
    for ids in _prompt_batches(tokenizer, prompts, system):
        a = reference(ids.to(reference.device)).logits[0].float().cpu()
        b = candidate(ids.to(candidate.device)).logits[0].float().cpu()
        diff = (a - b).abs()
        scale = max(scale, float(a.abs().max()))
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum())
        n_values += diff.numel()
        same = a.argmax(-1) == b.argmax(-1)
        agree += int(same.sum())
        n_pos += same.numel()
        last_agree += int(same[-1])
        n_prompts += 1
    if n_prompts == 0:
        raise ValueError("compare_logits: no prompts")
    return {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / n_values, "top1_agreement": agree / n_pos,
            "last_top1_agreement": last_agree / n_prompts, "positions": n_pos, "max_abs_logit": scale,
            "relative_max_diff": max_diff / max(scale, 1e-12)}


def quantization_table(model, tokenizer, folder, gguf_types, records, *, prompts=None, max_new_tokens: int = 48,
                       batch_size: int = 8, reference_result=None, loaded=None, progress: bool = False) -> list[dict]:
    """Export ``model`` once per type, load each file back with transformers, and measure it.

    One row per type: ``type``, ``bytes``, ``bits_per_weight``, ``max_abs_diff`` and
    ``top1_agreement`` of the logits against ``model`` on ``prompts`` (default: the records'
    questions), the task ``score`` on ``records`` with its ``ci``, and ``delta`` (paired difference
    to ``model`` with its ``delta_ci``). ``reference_result``: the merged model's ``EvalResult`` on the
    same records, if already computed. ``loaded``: ``{type: (path, model)}`` of files already exported
    and loaded (skips writing and loading them again). The first row is the merged model itself
    (``type='merged'``).
    """
    from ftlab.evaluate import evaluate_model, paired_difference, prepare_records

    folder = Path(folder)
    items = prepare_records(records)
    if prompts is None:
        prompts = [it["messages"] for it in items][:8]
    eval_kwargs = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    ref = reference_result or evaluate_model(model, tokenizer, records, name="merged", **eval_kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    rows = [{"type": "merged", "bytes": n_params * 4, "bits_per_weight": 32.0, "max_abs_diff": 0.0,
             "top1_agreement": 1.0, "score": ref.score, "ci": ref.ci, "delta": 0.0, "delta_ci": (0.0, 0.0),
             "seconds": ref.seconds, "result": ref}]
    for gguf_type in gguf_types:
        start = time.perf_counter()
        if loaded and gguf_type in loaded:
            path, candidate = loaded[gguf_type]
        else:
            path = export_gguf(model, folder / f"model-{gguf_type.lower()}.gguf", gguf_type, tokenizer=tokenizer)
            candidate, _ = load_gguf(path, with_tokenizer=False)
        logits = compare_logits(model, candidate, tokenizer, prompts)
        res = evaluate_model(candidate, tokenizer, records, name=gguf_type, **eval_kwargs)
        pair = paired_difference(ref.scores, res.scores)
        rows.append({"type": gguf_type, "bytes": path.stat().st_size, "bits_per_weight": BITS_PER_WEIGHT[gguf_type],
                     "max_abs_diff": logits["max_abs_diff"], "top1_agreement": logits["top1_agreement"],
                     "score": res.score, "ci": res.ci, "delta": pair["diff"], "delta_ci": pair["ci"],
                     "seconds": time.perf_counter() - start, "result": res})
        del candidate
    return rows
