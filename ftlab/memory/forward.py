"""The forward pass: what autograd saves for backward, layer by layer, and the loss's buffers.

These are exactly the tensors listed by transformers' Llama code and PyTorch's derivative formulas:
RMSNorm keeps its fp32 input and ``rsqrt``, SDPA keeps q, k, v, its output and a log-sum-exp, SiLU
keeps its input, the gate*up product keeps both factors, every trainable Linear keeps its input.
"""

from __future__ import annotations

from dataclasses import dataclass


# ---------------------------------------------------------------------------- which Linear keeps what


def linear_needs_input(step, name: str, layer: int) -> bool:
    """Does this Linear's backward keep its (shared) input tensor?

    A trainable weight needs its input for the weight gradient. A LoRA adapter's A matrix keeps
    its input too, which is the shared tensor itself unless dropout or a dtype cast made a copy."""
    if step.layer_trainable[layer] == 0:
        return False
    if step.method in ("full", "freeze"):
        return True
    return name in step.targets and step.lora_dropout == 0 and step.m == step.lora_b


def lora_input_copies(step, names, in_features: int, layer: int) -> float:
    """Extra saved bytes for the adapters' inputs (dropout copies / fp32 casts), beyond the shared input."""
    ts = [n for n in names if n in step.targets and step.layer_trainable[layer] > 0]
    if not ts:
        return 0
    T, lora_b = step.T, step.lora_b
    if step.lora_dropout > 0:  # every adapter drops out its own copy; CPU keeps a float noise tensor, CUDA a bool mask
        per = T * in_features * lora_b + T * in_features * (lora_b if step.kind == "cpu" else 1)
        return len(ts) * per
    if step.m != lora_b:  # the input is cast to the adapter's fp32 once per adapter
        return len(ts) * T * in_features * lora_b
    return 0


def lora_mid(step, names, layer: int) -> float:
    """The adapters' r-wide intermediates (x @ A), which B's weight gradient needs."""
    return sum(step.T * step.lora_rank * step.lora_b for n in names if n in step.targets and step.layer_trainable[layer] > 0)


def linear_trains(step, name: str, layer: int) -> bool:
    return step.layer_trainable[layer] > 0 and (step.method in ("full", "freeze") or name in step.targets)


def kv_saved_width(step) -> int:
    """Width of the k and v that attention keeps: repeated to every query head when the kernel needs that."""
    arch = step.arch
    repeat_kv = step.attention == "eager" or (step.attention == "sdpa" and step.padded and arch.kv_heads != arch.heads)
    return arch.q_dim if repeat_kv else arch.kv_dim


# ---------------------------------------------------------------------------- one decoder layer


def _norms_saved(step, input_grad: bool, norm_w: bool) -> float:
    """The two RMSNorms: fp32 input + rsqrt for d/dx, the normalised x for d/dweight."""
    T, H, r = step.T, step.arch.hidden, step.r
    norms = 0.0
    if input_grad:  # input_layernorm
        norms += T * H * 4 + T * 4
    if norm_w:
        norms += T * H * r
    norms += T * H * 4 + T * 4 + (T * H * r if norm_w else 0)  # post_attention_layernorm (grad always flows here)
    if step.arch.family == "gemma2":
        norms *= 2  # pre- and post- norms around both blocks
    return norms


def _attention_saved(step, i: int, input_grad: bool) -> float:
    """q/k/v projections' input, the kernel's q, k, v, output and log-sum-exp (or eager's probabilities)."""
    arch, T, H, m = step.arch, step.T, step.arch.hidden, step.m
    B, S, nh = step.batch_size, step.seq_len, arch.heads
    qkv = ("q_proj", "k_proj", "v_proj")
    attn = 0.0
    if any(linear_needs_input(step, n, i) for n in qkv):
        attn += T * H * m
    attn += (lora_input_copies(step, qkv, H, i) + lora_mid(step, qkv, i) + lora_mid(step, ("o_proj",), i)
             + lora_input_copies(step, ("o_proj",), arch.q_dim, i))
    if input_grad or any(linear_trains(step, n, i) for n in qkv):
        if step.attention == "eager":
            attn += T * arch.q_dim * m * 3  # q, repeated k, repeated v (the matmuls keep them)
            attn += B * nh * S * S * 4 + (B * nh * S * S * m if m != 4 else 0)  # softmax probs (fp32) (+ their cast)
            if linear_needs_input(step, "o_proj", i):
                attn += T * arch.q_dim * m  # transposed output made contiguous for o_proj
        else:
            attn += T * arch.q_dim * m + 2 * T * kv_saved_width(step) * m  # q, k, v
            attn += T * arch.q_dim * m  # output (SDPA's backward needs it)
            attn += B * nh * S * 4  # log-sum-exp
            if step.attention == "sdpa" and step.padded:
                attn += B * S * S * m  # each layer's SDPA converts the bool mask to a float one and keeps it
    elif linear_needs_input(step, "o_proj", i):
        attn += T * arch.q_dim * m
    return attn


def _mlp_saved(step, i: int) -> float:
    """gate/up input, SiLU's input, act(gate) and up (the product's two factors), down_proj's input."""
    T, H, I, m = step.T, step.arch.hidden, step.arch.intermediate, step.m
    mlp = 0.0
    if linear_needs_input(step, "gate_proj", i) or linear_needs_input(step, "up_proj", i):
        mlp += T * H * m
    mlp += lora_input_copies(step, ("gate_proj", "up_proj"), H, i) + lora_mid(step, ("gate_proj", "up_proj", "down_proj"), i)
    mlp += lora_input_copies(step, ("down_proj",), I, i)
    mlp += 3 * T * I * m  # gate (act. input), act(gate), up: the product's two factors
    if linear_needs_input(step, "down_proj", i):
        mlp += T * I * m  # act(gate) * up, the input of down_proj
    return mlp


def layer_saved(step, i: int) -> dict[str, float]:
    """Bytes autograd keeps for decoder layer ``i``'s backward, by part (norms, attention, MLP).

    A layer keeps nothing when no gradient flows through it: frozen layers below the first trainable one."""
    L = step.arch.layers
    active = step.layer_trainable[i] > 0 or (step.lora and bool(step.targets))
    if step.method == "freeze" and i < L - step.n_train:
        active = False
    if not active:
        return {"norms": 0, "attention": 0, "mlp": 0}
    # no input gradient is needed below the lowest trainable layer (its input is the frozen embedding)
    input_grad = not (i == 0 and step.method != "full") and not (step.method == "freeze" and i == L - step.n_train)
    norm_w = step.method in ("full", "freeze")
    return {"norms": _norms_saved(step, input_grad, norm_w), "attention": _attention_saved(step, i, input_grad),
            "mlp": _mlp_saved(step, i)}


# ---------------------------------------------------------------------------- outside the layers


@dataclass
class Shared:
    """Saved tensors outside the decoder layers."""

    head: float  # final norm input/rsqrt (+ lm_head input when lm_head trains)
    inputs: int  # the batch: input_ids, attention mask, labels, shifted labels (int64)
    embedding: int  # embedding backward keeps the indices
    rope_and_masks: int  # cos/sin and the attention masks, shared by all layers


def shared_saved(step, any_layer_active: bool) -> Shared:
    """What the forward keeps outside the layers: the head's inputs, the batch, RoPE tables, masks."""
    T, S, B, H, m, r = step.T, step.seq_len, step.batch_size, step.arch.hidden, step.m, step.r
    any_grad = any_layer_active or step.method == "full"
    head = (T * H * 4 + T * 4 if any_grad else 0) + (T * H * r if step.method in ("full", "freeze") else 0)
    if step.method == "full":  # lm_head's input, for the lm_head (embedding) gradient: only the gathered rows with loss="trained"
        head += (step.trained_tokens if step.loss == "trained" else T) * H * m
    rope = 2 * S * step.arch.hd * m
    mask = (B * S * S if (step.padded and step.attention == "sdpa") else 0) + (B * S * S * m if step.attention == "eager" else 0)
    return Shared(head=head, inputs=4 * T * 8, embedding=T * 8 if step.method == "full" else 0, rope_and_masks=rope + mask)


@dataclass
class LossBuffers:
    """The logits and cross-entropy tensors, at the end of the forward and at the start of backward."""

    tokens: int  # positions whose logits exist at once
    forward: int  # logits (model dtype) + fp32 upcast + log-probs
    backward: int  # fp32 log-probs + their gradient + the logits' gradient
    gradient: int  # the logits' gradient as lm_head's backward sees it
    note: str


def loss_buffers(step) -> LossBuffers:
    """The loss: transformers upcasts the logits to fp32 before the cross-entropy, and at the start of
    backward three ``tokens x vocab`` fp32 buffers exist at once. ``loss="trained"`` makes logits only
    at labelled positions; ``"chunked"`` only for one chunk at a time."""
    V, m = step.arch.vocab, step.logit_b
    Tl = {"chunked": min(step.T, step.loss_chunk_tokens), "trained": step.trained_tokens}.get(step.loss, step.T)
    note = {"full": "fp32 log-probs + their grad + grad of logits (tokens x vocab each)",
            "trained": f"the same 3 fp32 buffers, for the {step.trained_tokens} trained tokens only",
            "chunked": f"chunks of {step.loss_chunk_tokens} tokens: 3 fp32 tokens x vocab buffers per chunk"}[step.loss]
    return LossBuffers(tokens=Tl, forward=Tl * V * m + Tl * V * 4 + (Tl * V * 4 if m != 4 else 0), backward=3 * Tl * V * 4,
                       gradient=Tl * V * m + (Tl * V * 4 if m != 4 else 0), note=note)
