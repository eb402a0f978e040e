"""Log-probabilities of completions under the policy and under the frozen reference.

``token_logprobs`` runs the model once and returns, per row and position, the log-probability of
the next token where a label exists (0 elsewhere) - the same positions, shifted the same way, as
SFT's cross-entropy (``ftlab.training.causal_lm_loss``): the prompt is excluded, the answer and its
end-of-turn token are included. A sequence's log-probability is the row sum.

**The reference without a second model.** DPO and GRPO compare the policy with the model they
started from. With LoRA the starting model is *inside* the policy: switch the adapters off
(peft's ``disable_adapter()``) and the same weights compute the reference. No copy of the weights,
no second ``load_model`` - the memory a separate reference would take (all of the base's
parameters again) is saved. For DPO the reference never changes, so its log-probabilities are
computed once, before training, and cached per example (``precompute_reference``).

**A pair's prompt once.** The chosen and the rejected answer of a pair follow the same prompt - in the
course's pairs ~110 of each side's ~130 tokens. With ``pairs=True`` (DPO, IPO, ORPO, the reference cache,
the held-out measurements and the reward model use it) the two sides become one row, prompt + chosen + rejected, under a mask that
lets each answer see the prompt and itself only, with each token at its own sequence's position: the same
log-probabilities, to float rounding, for ~40 % fewer tokens (measured on the real model: forward + backward of 4 pairs
in 2.0-2.2 s instead of 3.1-3.7 s, and a third less peak memory; ``tests/test_align.py`` checks the numbers and
that one answer never sees the other).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ftlab.data import IGNORE_INDEX, model_inputs
from ftlab.training import accepts_logits_mask, is_peft_model, next_token_targets


def token_logprobs(model, batch: dict, temperature: float = 1.0, trained_logits_only: bool = True,
                   pairs: bool = False) -> torch.Tensor:
    """``(N, T)`` log p(next token) at every labelled position, 0 where the label is -100.

    ``trained_logits_only`` runs the output layer only where a label exists (transformers'
    ``logits_to_keep`` mask): the log-probabilities are the same, the step is faster and smaller,
    because the prompt's logits - most of the sequence - are never built.
    ``temperature`` divides the logits (GRPO scores completions at the temperature they were sampled at).
    ``pairs``: ``batch`` is a preference batch (``collate_preferences``: chosen rows first, each pair's
    two rows starting with the same prompt); the prompt then runs once per pair (:func:`shared_prompt_rows`).
    """
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    head = _plain_output_layer(model) if trained_logits_only and accepts_logits_mask(model) else None
    if pairs and head is not None and shares_prompts(model, batch):
        with _hidden_states_out(head):  # each label's predicting hidden state
            hidden = shared_prompt_outputs(model, batch)
        picked = _KeptLogProbs.apply(hidden, head.weight, targets[keep], temperature)
        out = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
        return out.masked_scatter(keep, picked)
    inputs = model_inputs({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")})
    if head is not None and torch.is_grad_enabled():
        with _hidden_states_out(head):  # the kept positions' last hidden states, (n_kept, hidden)
            hidden = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        picked = _KeptLogProbs.apply(hidden, head.weight, targets[keep], temperature)
    else:
        if trained_logits_only and accepts_logits_mask(model):
            logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (n_kept, vocab)
        else:
            logits = model(**inputs, use_cache=False).logits[:, -targets.shape[1]:][keep]
        picked = _picked_logprobs(logits, targets[keep], temperature)
    out = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
    return out.masked_scatter(keep, picked)


def takes_4d_masks(model) -> bool:
    """Does the model's attention take a ready-made 4-D additive mask as the whole truth (transformers' sdpa and
    eager do; flash-attention kernels take only padding masks)? Not for models with sliding-window layers:
    transformers passes a 4-D mask through unchanged, so their window would be lost."""
    config = getattr(model.get_base_model() if is_peft_model(model) else model, "config", None)
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) is not False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager") and not sliding


def shares_prompts(model, batch: dict) -> bool:
    """Can ``model`` read this preference batch one row per pair (``shared_prompt_outputs``)?"""
    return accepts_logits_mask(model) and takes_4d_masks(model) and "position_ids" not in batch


def shared_prompt_outputs(model, batch: dict) -> torch.Tensor:
    """The model's output (logits, or hidden states inside ``_hidden_states_out``) at the position predicting
    each label of a preference batch, in the row-major order of its labels, from one row per pair."""
    packed = shared_prompt_rows(batch, next(model.parameters()).dtype)
    return model(**packed["inputs"], use_cache=False, logits_to_keep=packed["needed"]).logits[packed["take"]]


def shared_prompt_rows(batch: dict, dtype) -> dict:
    """One row per preference pair: the tokens both sides share, then the chosen answer, then the rejected.

    Why: a pair's chosen and rejected sequences start with the same prompt - here about 110 of their
    ~130 tokens - and a prompt token's hidden states do not depend on what follows it. So the prompt runs
    once and both answers attend to it: a 4-D mask lets each answer see the shared part and itself, never
    the other answer, and each token keeps the position id it has in its own sequence. Every labelled
    token then sees exactly the tokens, at exactly the positions, that it sees in its own row: the same
    log-probabilities (to float rounding: the products have other shapes), for ~40 % fewer tokens.

    Returns the model's ``inputs`` (ids, 4-D mask, position ids), ``needed`` (B, N): the positions whose
    hidden state predicts a label, ``take``: for each label of the ``(2B, T)`` batch in row-major order,
    the row of ``hidden[needed]`` that predicts it (the prompt's last position predicts both answers' first token),
    and ``last`` (2B,): where each row's last token sits in the packed rows, flattened (the reward model reads it).
    """
    device = batch["input_ids"].device
    ids, lengths = batch["input_ids"].cpu(), batch["attention_mask"].sum(-1).tolist()
    n_pairs = ids.shape[0] // 2
    keep = (next_token_targets(batch["labels"]) != IGNORE_INDEX).cpu()
    rows, where = [], torch.zeros(ids.shape, dtype=torch.long)  # where[r, t]: packed index of row r's position t
    for b in range(n_pairs):
        chosen, rejected = ids[b, :lengths[b]].tolist(), ids[n_pairs + b, :lengths[n_pairs + b]].tolist()
        shared = 0  # each side keeps at least its last token of its own
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        rows.append((chosen + rejected[shared:], list(range(len(chosen))) + list(range(shared, len(rejected))),
                     [0] * shared + [1] * (len(chosen) - shared) + [2] * (len(rejected) - shared)))
        where[b, :len(chosen)] = torch.arange(len(chosen))
        where[n_pairs + b, :len(rejected)] = torch.cat([torch.arange(shared),
                                                        torch.arange(len(chosen), len(chosen) + len(rejected) - shared)])
    n = max(len(r[0]) for r in rows)
    packed_ids = torch.zeros(n_pairs, n, dtype=torch.long)
    positions = torch.zeros(n_pairs, n, dtype=torch.long)
    segment = torch.full((n_pairs, n), -1)  # 0 shared, 1 chosen, 2 rejected, -1 padding
    for b, (tokens, pos, seg) in enumerate(rows):
        packed_ids[b, :len(tokens)], positions[b, :len(pos)] = torch.tensor(tokens), torch.tensor(pos)
        segment[b, :len(seg)] = torch.tensor(seg)
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    sees = causal & (key >= 0) & ((key == 0) | (key == query))
    sees |= torch.eye(n, dtype=torch.bool)  # a padding position sees itself, so that no row of the mask is empty
    mask = torch.zeros(n_pairs, 1, n, n, dtype=dtype).masked_fill(~sees[:, None], torch.finfo(dtype).min)
    flat = ((torch.arange(ids.shape[0]) % n_pairs)[:, None] * n + where)[keep]  # packed flat index of each label
    needed = torch.zeros(n_pairs * n, dtype=torch.bool)
    needed[flat] = True
    rank = needed.long().cumsum(0) - 1  # a needed position's row in hidden[needed]
    row = torch.arange(ids.shape[0])
    last = (row % n_pairs) * n + where[row, torch.tensor(lengths) - 1]
    return {"inputs": {"input_ids": packed_ids.to(device), "attention_mask": mask.to(device),
                       "position_ids": positions.to(device)},
            "needed": needed.view(n_pairs, n).to(device), "take": rank[flat].to(device), "last": last.to(device)}


def _picked_logprobs(logits, targets, temperature):
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return -F.cross_entropy(logits, targets, reduction="none")  # log_softmax at the target, fused


class _KeptLogProbs(torch.autograd.Function):
    """log p(target) from the kept positions' last hidden states and the output layer's weight.

    Why: the logits of the kept positions are the step's biggest tensors (n_kept x 49,152 in fp32).
    Through plain autograd, the log-softmax output stays saved from the forward to the backward, and
    the backward adds its gradient and the logits' gradient next to it: three such tensors alive at
    the start of the backward, on top of all the activations - the step's peak. Here the forward
    saves only the hidden states; the backward recomputes the logits, and their gradient takes the
    place of the gradient that reaches the log-softmax: at most two such tensors at a time. The
    operations are the ones autograd would run, so the numbers are the same, to the bit.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature = temperature
        return _picked_logprobs(F.linear(hidden, weight), targets, temperature)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets = ctx.saved_tensors
        logits = F.linear(hidden, weight).float()
        if ctx.temperature != 1.0:
            logits = logits / ctx.temperature
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        # The gradient reaching the log-softmax: `grad` at each row's target, 0 elsewhere (cross-entropy's).
        rows = torch.arange(len(targets), device=targets.device)
        grad_logits = torch.zeros_like(logp).index_put_((rows, targets), grad)
        # The very kernel autograd runs for log_softmax's backward, writing over its input (out=).
        torch._log_softmax_backward_data(grad_logits, logp, -1, logp.dtype, out=grad_logits)
        del logp
        if ctx.temperature != 1.0:
            grad_logits = grad_logits / ctx.temperature
        grad_logits = grad_logits.to(hidden.dtype)
        grad_hidden = grad_logits.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.t().mm(hidden) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None


def _plain_output_layer(model):
    """The model's output layer if it is a plain, bias-free ``nn.Linear`` whose output is the logits as
    is (no soft-capping or scaling after it); else ``None`` (then the plain path runs)."""
    base = model.get_base_model() if is_peft_model(model) else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or config is None:
        return None
    if "forward" in vars(head):  # already replaced on the instance (e.g. accelerate's offloading hooks)
        return None
    if any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale")):
        return None
    return head


@contextlib.contextmanager
def _hidden_states_out(head):
    """While inside, the output layer passes its input through: the model returns hidden states."""
    head.forward = lambda hidden: hidden
    try:
        yield
    finally:
        del head.forward


def sequence_logprobs(model, batch: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of log-probs per row (N,), scored tokens per row (N,))``."""
    per_token = token_logprobs(model, batch, **kwargs)
    n_tokens = (next_token_targets(batch["labels"]) != IGNORE_INDEX).sum(-1)
    return per_token.sum(-1), n_tokens


@contextlib.contextmanager
def reference_model(model, ref_model=None):
    """Yield the reference: ``ref_model`` if given, else ``model`` with its adapters switched off.

    A full fine-tune has no adapters to switch off, so it needs an explicit ``ref_model``.
    """
    if ref_model is not None:
        yield ref_model
    elif is_peft_model(model):
        with model.disable_adapter():
            yield model
    else:
        raise ValueError("reference_model: the model has no LoRA adapters to switch off, so the reference would be "
                         "the policy itself. Fix: train with method='lora' (the default), or pass ref_model= a frozen "
                         "copy of the starting model.")


@torch.no_grad()
def reference_logprobs(model, batch: dict, ref_model=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logprobs`` under the reference (no gradients; dropout off while it runs)."""
    with reference_model(model, ref_model) as ref:
        was_training = ref.training
        ref.eval()
        try:
            return sequence_logprobs(ref, batch, **kwargs)
        finally:
            ref.train(was_training)


@torch.no_grad()
def precompute_reference(model, examples: list[dict], batch_size: int, pad_token_id: int = 0, ref_model=None,
                         progress: bool = False) -> list[dict]:
    """Store each example's reference log-probabilities in it (``ref_chosen``, ``ref_rejected``).

    Run once before DPO: the reference is frozen, so computing it again every step would only
    repeat the same forward passes. Examples that already carry them are skipped.
    """
    from ftlab.align.preferences import collate_preferences, split_pairs
    from ftlab.training import progress_bar

    todo = [e for e in examples if "ref_chosen" not in e]
    device = next(model.parameters()).device
    bar = progress_bar(len(todo), enabled=progress, desc="reference")
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate_preferences(chunk, pad_token_id).items()}
        logps, _ = reference_logprobs(model, batch, ref_model, pairs=True)  # the prompt once per pair
        chosen, rejected = split_pairs(logps.cpu())
        for e, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            e["ref_chosen"], e["ref_rejected"] = c, r
        bar.update(len(chunk))
    bar.close()
    return examples
