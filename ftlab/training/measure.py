"""Measuring memory: what the loop logs, what the benchmarks and ``ftlab doctor --gpu`` compare the
estimator with, and what notebook 07 measures per step.

* :func:`peak_memory_mb`: the peak so far (CUDA's allocated counter on a GPU, the process's peak RSS on a CPU);
* :func:`step_peak_mb`: the peak of tensor memory while one step runs;
* :func:`measure_training_peak`: the peak over real training steps of a :class:`Config`, built by :func:`build`
  on a batch from :func:`make_batch`, next to :func:`estimate_for` (the estimator's figure for it);
* :func:`tensor_tracker`: on a CPU, every tensor counted (torch's ``MemTracker``, global peak only).

And one measure of speed, :func:`measure_matmul_flops` (the benchmarks' compute limit, and ``ftlab doctor``'s
bf16-against-fp32 line on a CPU).
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass, field

import torch

from ftlab.memory import estimate_memory
from ftlab.memory.settings import estimator_settings

TINY, SMOL = "tiny", "smollm2-135m-instruct"


def peak_memory_mb(device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:  # Windows
        return float("nan")


def step_peak_mb(step, model) -> float:
    """Peak tensor memory (MiB) while ``step()`` runs (one forward + backward of a training step)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    tracker = tensor_tracker()
    tracker.track_external(model)
    with tracker:
        step()
    return max(d["Total"] for d in tracker.get_tracker_snapshot("peak").values()) / 2**20


@dataclass
class Config:
    model: str  # "tiny" | "smollm2-135m-instruct"
    method: str = "full"
    batch_size: int = 4
    seq_len: int = 64
    optimizer: str = "adamw"
    checkpointing: bool = False
    lora_rank: int = 8
    lora_targets: object = "all-linear"
    lora_dropout: float = 0.05
    attention: str = "sdpa"
    padded: bool = True
    trainable_layers: int | None = None
    trained_fraction: float | None = None  # None: every token trained, logits everywhere (transformers' path);
    # else the share of each row that is answer (the rest prompt, label -100) and the step runs
    # ftlab.train's loss with the output layer only at trained positions (loss="trained")
    extra: dict = field(default_factory=dict)

    def label(self) -> str:
        name = "tiny" if self.model == "tiny" else "135M"
        m = self.method + (f"-r{self.lora_rank}" if self.method in ("lora", "qlora") else "")
        if self.method in ("lora", "qlora") and self.lora_targets != "all-linear":
            m += "(" + ",".join(t[0] for t in self.lora_targets) + ")"
        if self.method in ("lora", "qlora") and self.lora_dropout == 0:
            m += "-nodrop"
        bits = [name, m, f"b{self.batch_size}", f"s{self.seq_len}", self.optimizer]
        if self.checkpointing:
            bits.append("ckpt")
        if self.attention != "sdpa":
            bits.append(self.attention)
        if not self.padded:
            bits.append("nopad")
        if self.trained_fraction is not None:
            bits.append(f"train{round(100 * self.trained_fraction)}%")
        return " ".join(bits)


TINY, SMOL = "tiny", "smollm2-135m-instruct"
def make_batch(tokenizer_vocab: int, batch_size: int, seq_len: int, padded: bool, seed: int = 0, device="cpu",
               trained_fraction: float | None = None) -> dict:
    """Random token ids; when ``padded``, every other sequence is a quarter shorter (dynamic padding).

    ``trained_fraction``: only the last part of each row is trained (the "answer"); the first part
    (the "prompt") gets label -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, tokenizer_vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    if padded:
        for b in range(0, batch_size, 2):
            cut = seq_len - max(1, seq_len // 4)
            mask[b, cut:] = 0
            ids[b, cut:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    if trained_fraction is not None:
        lengths = mask.sum(1)
        for b in range(batch_size):
            prompt = int(lengths[b]) - max(2, round(trained_fraction * int(lengths[b])))
            labels[b, :max(prompt, 0)] = -100
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


_LOADED: dict = {}


def build(cfg: Config, device: str = "cpu"):
    """Model (prepared for the method) and optimizer, as the course's training loop builds them."""
    from ftlab.models import load_model
    from ftlab.training.methods import prepare_model
    from ftlab.training.optim import build_optimizer

    # Load (and checksum) each model once, on the CPU, and give every configuration a fresh copy on the
    # device: a cached copy kept on a GPU would sit inside every later max_memory_allocated reading.
    if cfg.model not in _LOADED:
        _LOADED[cfg.model] = load_model(cfg.model, device="cpu", dtype="fp32")[0]
    model = copy.deepcopy(_LOADED[cfg.model]).to(device)
    model.config._attn_implementation = cfg.attention
    if cfg.method in ("lora", "qlora"):
        model = prepare_model(model, cfg.method, lora_rank=cfg.lora_rank, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.lora_targets)
    elif cfg.method == "freeze":
        model = prepare_model(model, "freeze", trainable_layers=cfg.trainable_layers)
    else:
        model = prepare_model(model, "full")
    if cfg.checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    if cfg.optimizer == "sgd_momentum":
        opt = build_optimizer(model, "sgd", lr=1e-3, momentum=0.9)
    else:
        opt = build_optimizer(model, cfg.optimizer, lr=1e-4 if cfg.optimizer == "adamw" else 1e-3)
    return model, opt


def _quant_tensors(model) -> list[torch.Tensor]:
    """bitsandbytes keeps absmax/code tensors in a QuantState, not as buffers: track them explicitly."""
    out = []
    for mod in model.modules():
        qs = getattr(getattr(mod, "weight", None), "quant_state", None)
        while qs is not None:
            for name in ("absmax", "code", "offset"):
                t = getattr(qs, name, None)
                if isinstance(t, torch.Tensor):
                    out.append(t)
            qs = getattr(qs, "state2", None)
    return out


def tensor_tracker():
    """A MemTracker that counts every tensor (parameters, gradients, optimizer states, activations)
    and keeps only the global peak, so that it is cheap enough for a 30-layer model on a CPU."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class Tracker(MemTracker):
        """MemTracker that also works with frozen parameters.

        MemTracker registers a gradient hook on every parameter only to *label* gradients; that
        raises for parameters without ``requires_grad`` (LoRA, QLoRA, freezing). Gradients are still
        counted without the hook, because they are created by tracked operations.
        """

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

        def _update_peak_stats(self, peak_state):
            # Only the global peak: the per-module peaks MemTracker also keeps cost a scan of every
            # module after every operation (minutes for a 30-layer model), and we do not use them.
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

    return Tracker()


def cuda_baseline() -> tuple[int, int]:
    """``(allocated, reserved)`` bytes on the GPU before a configuration is built, after freeing what can be
    freed. What earlier work left behind is not the next configuration's memory: subtract these from its
    ``max_memory_allocated`` / ``max_memory_reserved``."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


def measure_training_peak(model, optimizer, batch: dict, steps: int = 2,
                          trained_logits_only: bool = False) -> tuple[int, str]:
    """Peak bytes over ``steps`` training steps, and the phase in which it happened.

    The loss is transformers' (``model(**batch).loss``, logits at every position), or with
    ``trained_logits_only`` ftlab.train's (``ftlab.training.forward_loss``: the output layer only
    where a label exists)."""
    from ftlab.training.loss import forward_loss

    phases = []
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        peak = lambda: torch.cuda.max_memory_allocated()  # noqa: E731
        ctx = None
    else:
        ctx = tensor_tracker()
        ctx.track_external(model, optimizer, *batch.values(), *_quant_tensors(model))
        peak = lambda: max(d["Total"] for d in ctx.get_tracker_snapshot("peak").values())  # noqa: E731
    if ctx is not None:
        ctx.__enter__()
    try:
        for step in range(steps):
            if ctx is not None:
                ctx.reset_mod_stats()  # per-module stats are per iteration; the global peak is kept
            if trained_logits_only:
                loss_sum, n_trained, _ = forward_loss(model, batch, trained_logits_only=True)
                loss = loss_sum / n_trained
                del loss_sum
            else:
                loss = model(**batch).loss
            phases.append((f"step {step + 1} forward", peak()))
            loss.backward()
            del loss
            phases.append((f"step {step + 1} backward", peak()))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            phases.append((f"step {step + 1} optimizer", peak()))
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    final = phases[-1][1]
    where = next(name for name, p in phases if p == final)
    return final, where


def estimate_for(cfg: Config, device: str, trained_tokens: int | None = None):
    from ftlab.memory import get_architecture
    from ftlab.models import smollm2_dir

    arch = get_architecture("tiny" if cfg.model == TINY else str(smollm2_dir()))
    if (cfg.trained_fraction is not None) != (trained_tokens is not None):
        raise ValueError(f"estimate_for({cfg.label()}): trained_tokens is needed exactly when the configuration "
                         "trains only part of each row (trained_fraction); count the labels != -100 of its batch.")
    return estimate_memory(arch, **estimator_settings(
        cfg.method, cfg.batch_size, cfg.seq_len, device=device, mixed_precision=None, optimizer=cfg.optimizer,
        gradient_checkpointing=cfg.checkpointing, lora_rank=cfg.lora_rank, lora_dropout=cfg.lora_dropout,
        trainable_layers=cfg.trainable_layers, trained_tokens=trained_tokens,
        lora_targets=cfg.lora_targets, attention=cfg.attention, padded=cfg.padded))


def sync_device(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU has finished when a call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device, dtype, shapes, min_seconds: float = 0.4) -> dict:
    """Best sustained FLOP/s of ``a @ b`` over ``shapes`` ``(m, k, n)``: 2·m·k·n FLOP per product."""
    results = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        sync_device(device)
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b
            reps += 1
            if reps % 4 == 0 or device.type != "cuda":
                sync_device(device)
                if time.perf_counter() - t0 >= min_seconds:
                    break
        sync_device(device)
        results[f"{m}x{k}x{n}"] = 2 * m * k * n * reps / (time.perf_counter() - t0)
    return results
