"""The step as a timeline: the tensors alive at each moment (forward, loss, backward layer by layer,
optimizer step), the peak among them, and the breakdown of what is alive at the peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ftlab.memory.breakdown import MemoryItem, _fmt
from ftlab.memory.forward import LossBuffers, Shared, kv_saved_width
from ftlab.memory.state import grad_bytes, trainable_parameters

AUTOCAST = "autocast 16-bit weight copies"


@dataclass
class Timeline:
    """Total bytes at each named moment; ``base`` (weights, optimizer states, the batch) is alive at all of them."""

    base: int
    phases: dict[str, int] = field(default_factory=dict)
    detail: dict[str, dict] = field(default_factory=dict)

    def moment(self, name: str, act_layers: dict, extra: dict) -> None:
        """Record one moment: per-layer saved activations still alive, plus named extra tensors."""
        self.phases[name] = int(self.base + sum(act_layers.values()) + sum(extra.values()))
        self.detail[name] = {"act": act_layers, "extra": extra}

    @property
    def peak(self) -> str:
        return max(self.phases, key=lambda p: self.phases[p])


def layer_temporaries(step) -> tuple[float, float]:
    """Transients inside the layer being run, above what it keeps: ``(forward, backward)``.

    Attention's and the MLP's working tensors (the larger of the two), two residual-width buffers, and
    with a quantised base the de-quantised weight of one matmul."""
    arch, T, H, I, m, r = step.arch, step.T, step.arch.hidden, step.arch.intermediate, step.m, step.r
    B, S, nh = step.batch_size, step.seq_len, arch.heads
    dq_w = (max(o * i for o, i in arch.linear_shapes().values()) * m) if step.quantization else 0
    if step.attention == "eager":
        attn_bwd = 2 * B * nh * S * S * 4
        attn_fwd = B * nh * S * S * (m + 4)
    else:
        attn_bwd = T * (2 * arch.q_dim + 2 * kv_saved_width(step)) * m
        attn_fwd = T * arch.q_dim * m * 2
    mlp_bwd = 3 * T * I * m
    return max(attn_fwd, 3 * T * I * m) + 2 * T * H * r + dq_w, max(attn_bwd, mlp_bwd) + 2 * T * H * r + dq_w


def autocast_copies(step, n_layers: int, with_head: bool) -> dict:
    """Autocast casts every fp32 Linear weight to 16 bits. The cast copies stay in autocast's cache until
    the forward's autocast region ends, and each one is also saved by its matmul for backward, so
    without checkpointing they live until that layer's backward; with checkpointing only the
    recomputed layer's copies (and lm_head's) exist during backward. 4-bit weights are not cast."""
    if not step.mixed:
        return {}
    arch = step.arch
    per_layer = (0 if step.quantization else sum(o * i for o, i in arch.linear_shapes().values())) * 2
    return {AUTOCAST: n_layers * per_layer + (arch.vocab * arch.hidden * 2 if with_head else 0)}


def forward_moments(tl: Timeline, step, saved_tot, stored, shared: Shared, loss: LossBuffers, common: dict) -> None:
    """Inside the last checkpointed layer (checkpointing only), and the end of the forward (the loss)."""
    L = step.arch.layers
    active_layers = [i for i in range(L) if saved_tot[i] > 0]
    if step.gradient_checkpointing and active_layers:
        last = active_layers[-1]
        tl.moment("forward: inside a layer (checkpointed)", {j: stored[j] for j in range(last)},
                  {**common, **autocast_copies(step, last + 1, False),
                   "one layer's working tensors": saved_tot[last] + layer_temporaries(step)[0]})
    tl.moment("forward: end (loss)", {i: stored[i] for i in range(L)},
              {**common, **autocast_copies(step, L, True), "saved: final norm + lm_head input": shared.head,
               "logits + cross-entropy buffers": loss.forward})


def backward_moments(tl: Timeline, step, saved_tot, stored, ckpt, shared: Shared, loss: LossBuffers, common: dict) -> None:
    """Backward from the loss down: its start, lm_head, the fullest decoder layer, the embedding.

    Activations are freed layer by layer while gradients appear; only the worst layer is recorded."""
    L, g_b, ck = step.arch.layers, grad_bytes(step), step.gradient_checkpointing
    tr = trainable_parameters(step)
    grad_head = tr.head * g_b
    grad_layers = [t * g_b for t in step.layer_trainable]
    acts_all = {i: stored[i] for i in range(L)}
    mp_bwd = autocast_copies(step, 1 if ck else L, True)
    head = {"saved: final norm + lm_head input": shared.head}
    tl.moment("backward: start (loss gradient)", acts_all, {**common, **mp_bwd, **head, "logits + cross-entropy buffers": loss.backward})
    tl.moment("backward: lm_head", acts_all, {**common, **mp_bwd, **head, "logits gradient": loss.gradient, "gradients so far": grad_head})
    bwd_tmp = layer_temporaries(step)[1]
    worst, worst_total = None, -1
    for i in reversed(range(L)):
        if saved_tot[i] == 0 and grad_layers[i] == 0:
            continue
        act = {j: stored[j] for j in range(i)}
        if ck:
            act[i] = ckpt[i]
        extra = {**common, **autocast_copies(step, 1 if ck else i + 1, False),
                 "this layer's activations" + (" (recomputed)" if ck else ""): saved_tot[i],
                 "backward temporaries": bwd_tmp, "gradients so far": grad_head + sum(grad_layers[i:])}
        tot = tl.base + sum(act.values()) + sum(extra.values())
        if tot > worst_total:
            worst, worst_total = (i, act, extra), tot
    if worst is not None:
        i, act, extra = worst
        tl.moment(f"backward: decoder layer {i}", act, extra)
    # Tied weights get two gradients (from lm_head early, from the embedding last). Autograd's input
    # buffer holds the first until the second arrives and then adds them out of place: for a moment
    # three vocab x hidden tensors exist (first, second, sum).
    emb = step.arch.vocab * step.arch.hidden
    emb_tmp = 2 * emb * g_b if (step.method == "full" and step.arch.tied) else 0
    tl.moment("backward: end (embedding gradient)", {}, {"gradients so far": grad_head + sum(grad_layers) + tr.embedding * g_b,
                                                          "embedding gradient before accumulation": emb_tmp})


def optimizer_step_moment(tl: Timeline, step) -> None:
    """The update: all gradients + states (+ the temporaries of an unfused AdamW)."""
    tr, s_b = trainable_parameters(step), grad_bytes(step)
    if step.optimizer_impl == "fused" or step.optimizer not in ("adamw",):
        opt_tmp = 0  # fused kernels and SGD update in place
    elif step.optimizer_impl == "foreach":
        opt_tmp = tr.total * s_b
    else:
        opt_tmp = 2 * tr.largest * s_b
    tl.moment("optimizer step", {}, {"gradients so far": tr.total * s_b, "optimizer temporaries": opt_tmp})


_NOTES = {
    "saved: final norm + lm_head input": "final RMSNorm input/rsqrt (+ lm_head input when it trains)",
    "this layer's activations": "everything one layer keeps for backward",
    "this layer's activations (recomputed)": "checkpointing re-runs this layer's forward in backward",
    "backward temporaries": "gradients of the MLP/attention intermediates inside one layer",
    "rope cos/sin + masks": "shared by all layers",
    AUTOCAST: "autocast casts fp32 Linear weights to 16 bits; backward keeps the copies",
    "embedding gradient before accumulation": "tied weights: embedding's dense gradient + its out-of-place sum with lm_head's",
    "one layer's working tensors": "intermediates of the layer being run",
}
_CATEGORIES = {"logits + cross-entropy buffers": "logits & loss", "logits gradient": "logits & loss",
               "saved: final norm + lm_head input": "activations", "saved: embedding indices": "activations",
               "this layer's activations": "activations", "this layer's activations (recomputed)": "activations",
               "rope cos/sin + masks": "activations", AUTOCAST: "transient", "one layer's working tensors": "transient"}


def peak_items(tl: Timeline, step, persistent: list[MemoryItem], saved: list[dict], loss: LossBuffers) -> list[MemoryItem]:
    """The breakdown of the peak moment: persistent state, gradients produced so far, activations, extras, the batch."""
    d, peak = tl.detail[tl.peak], tl.peak
    items = [c for c in persistent if c.category in ("weights", "quantisation constants", "LoRA adapters")]
    items += [replace(c) for c in persistent if c.category == "optimizer states"]
    full_grads = next(c for c in persistent if c.category == "gradients")
    g_now = d["extra"].get("gradients so far", 0)
    if g_now:
        whole = g_now == full_grads.bytes
        items.append(MemoryItem("gradients" + ("" if whole else " (produced so far)"), int(g_now), "gradients",
                                full_grads.note if whole else "layers already back-propagated"))
    act_layers = d["act"]
    if act_layers:
        n = len([v for v in act_layers.values() if v])
        if step.gradient_checkpointing:
            items.append(MemoryItem(f"activations: layer-input checkpoints ({n} layers)", int(sum(act_layers.values())), "activations",
                                    f"{_fmt(step.T * step.arch.hidden * step.r)} per layer (B x S x hidden x {step.r} B)"))
        else:
            for part, label in (("attention", "attention"), ("mlp", "MLP"), ("norms", "norms")):
                b = sum(saved[j][part] for j in act_layers)
                per = saved[max(act_layers)][part]
                items.append(MemoryItem(f"activations: {label} ({n} layers)", int(b), "activations", f"{_fmt(per)} per layer"))
    notes = {**_NOTES, "logits + cross-entropy buffers": loss.note if "start" in peak else "logits (model dtype) + fp32 upcast + log-probs",
             "optimizer temporaries": {"foreach": "torch's foreach AdamW: sqrt(v) for all params at once",
                                       "for-loop": "sqrt(v)/bias-correction of the largest parameter"}.get(step.optimizer_impl, "")}
    for k, v in d["extra"].items():
        if k == "gradients so far" or not v:
            continue
        items.append(MemoryItem(k, int(v), _CATEGORIES.get(k, "transient"), notes.get(k, "")))
    return items


def activation_components(step, saved: list[dict], ckpt: list[int], loss: LossBuffers) -> list[MemoryItem]:
    """The big activation and loss terms, whether or not they are alive at the peak (for teaching views)."""
    active = [i for i in range(step.arch.layers) if sum(saved[i].values()) > 0]
    per_layer = saved[active[-1]] if active else {"norms": 0, "attention": 0, "mlp": 0}
    n_act = len(active)
    comps = [MemoryItem(f"activations: {label} (all layers)", int(per_layer[part] * n_act), "activations", f"{_fmt(per_layer[part])} per layer")
             for part, label in (("attention", "attention"), ("mlp", "MLP"), ("norms", "norms"))]
    if step.gradient_checkpointing:
        comps.append(MemoryItem("activations: checkpoints (all layers)", int(sum(ckpt)), "activations", "what checkpointing keeps instead"))
    comps.append(MemoryItem("logits + cross-entropy buffers", int(loss.backward), "logits & loss", loss.note))
    return comps
