"""Is ftlab.memory's estimate right? Measure real peak training memory and compare.

``python -m ftlab.bench.memory`` runs one real training configuration after another (tiny model and
SmolLM2-135M; full / LoRA / QLoRA / freeze; with and without gradient checkpointing; AdamW and SGD;
several batch sizes and sequence lengths; transformers' loss with logits at every position, and
ftlab.train's with the output layer only where a label exists), two full steps each (forward, backward, optimizer step:
the second step is the steady state, because AdamW creates its states lazily in the first), and
prints per configuration:

* the estimate from :func:`ftlab.memory.estimate_memory` (config only, no weights),
* the measured peak: on CPU every tensor storage created, counted by
  ``torch.distributed._tools.mem_tracker.MemTracker`` (exact tensor accounting: it sees every
  allocation through the dispatcher and every free through storage weak references); on CUDA
  ``torch.cuda.max_memory_allocated``,
* the error in percent, and what accelerate's ``estimate-memory`` method says for the same model
  (weights x 4 for AdamW training, whatever the method, batch or sequence length).

The last line is ``max_abs_error_pct=X median_abs_error_pct=Y configs=N``.
Options: ``--only tiny`` (the fast half), ``--device cuda``, ``--list``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from ftlab.training.loss import count_trained_tokens
from ftlab.memory import estimate_memory
from ftlab.memory.breakdown import _fmt


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
CONFIGS = [
    Config(TINY, "full", 4, 64),
    Config(TINY, "full", 8, 128),
    Config(TINY, "full", 4, 128, optimizer="sgd"),
    Config(TINY, "full", 8, 128, checkpointing=True),
    Config(TINY, "full", 2, 256, optimizer="sgd_momentum", padded=False),
    Config(TINY, "full", 4, 128, attention="eager"),
    Config(TINY, "lora", 4, 128),
    Config(TINY, "lora", 8, 64, checkpointing=True),
    Config(TINY, "lora", 4, 128, lora_targets=["q_proj", "v_proj"], lora_dropout=0.0, padded=False),
    Config(TINY, "qlora", 4, 128),
    Config(TINY, "qlora", 4, 128, checkpointing=True),
    Config(TINY, "freeze", 8, 128, trainable_layers=1),
    Config(SMOL, "full", 1, 64, padded=False),
    Config(SMOL, "full", 4, 64),
    Config(SMOL, "full", 4, 64, optimizer="sgd"),
    Config(SMOL, "full", 4, 128, checkpointing=True),
    Config(SMOL, "full", 2, 128, optimizer="sgd_momentum", checkpointing=True),
    Config(SMOL, "lora", 4, 64),
    Config(SMOL, "lora", 8, 128),
    Config(SMOL, "lora", 8, 128, checkpointing=True),
    Config(SMOL, "lora", 4, 128, lora_targets=["q_proj", "v_proj"], lora_dropout=0.0, attention="eager"),
    Config(SMOL, "qlora", 4, 64),
    Config(SMOL, "qlora", 4, 128, checkpointing=True),
    Config(SMOL, "qlora", 8, 64, optimizer="sgd"),
    Config(SMOL, "freeze", 4, 128),
    Config(SMOL, "freeze", 8, 64, optimizer="sgd"),
    # ftlab.train's own loss: the output layer only where a label exists (TrainConfig.trained_logits_only)
    Config(TINY, "full", 8, 128, trained_fraction=0.2),
    Config(TINY, "lora", 8, 128, trained_fraction=0.2),
    Config(SMOL, "full", 4, 128, trained_fraction=0.2),
    Config(SMOL, "full", 4, 128, checkpointing=True, trained_fraction=0.5),
    Config(SMOL, "lora", 8, 128, trained_fraction=0.2),
    Config(SMOL, "qlora", 4, 128, trained_fraction=0.2),
]


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
    from ftlab import load_model
    from ftlab.training.methods import prepare_model
    from ftlab.training.optim import build_optimizer

    key = (cfg.model, device)
    if key not in _LOADED:  # load (and checksum) each model once; every configuration gets a fresh copy
        _LOADED[key] = load_model(cfg.model, device=device, dtype="fp32")[0]
    model = copy.deepcopy(_LOADED[key])
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


def accelerate_training_bytes(model) -> int:
    """accelerate's ``estimate-memory`` figure for "Training using Adam", fp32: the model's bytes x 4."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    total, _ = calculate_maximum_sizes(base)
    return max(estimate_training_usage(total, "float32").values())


def estimate_for(cfg: Config, device: str, trained_tokens: int | None = None):
    from ftlab.memory import get_architecture
    from ftlab.models import smollm2_dir

    arch = get_architecture("tiny" if cfg.model == TINY else str(smollm2_dir()))
    return estimate_memory(arch, method=cfg.method, batch_size=cfg.batch_size, seq_len=cfg.seq_len, optimizer=cfg.optimizer,
                           gradient_checkpointing=cfg.checkpointing, lora_rank=cfg.lora_rank, lora_targets=cfg.lora_targets,
                           lora_dropout=cfg.lora_dropout, attention=cfg.attention, padded=cfg.padded,
                           trainable_layers=cfg.trainable_layers, device=device,
                           loss="trained" if cfg.trained_fraction is not None else "full", trained_tokens=trained_tokens)


def run(configs, device: str = "cpu", out=sys.stdout) -> list[dict]:
    from tqdm.auto import tqdm

    rows = []
    print(f"{'configuration':<44} {'estimate':>11} {'measured':>11} {'error':>8}  {'accelerate':>11}  "
          f"{'estimated peak phase':<34} {'measured peak':<18} time", file=out)
    for cfg in tqdm(configs, desc="memory bench", file=sys.stderr):
        torch.manual_seed(0)
        t0 = time.time()
        model, opt = build(cfg, device)
        batch = make_batch(model.config.vocab_size, cfg.batch_size, cfg.seq_len, cfg.padded, device=device,
                           trained_fraction=cfg.trained_fraction)
        trained_only = cfg.trained_fraction is not None
        measured, where = measure_training_peak(model, opt, batch, trained_logits_only=trained_only)
        acc = accelerate_training_bytes(model)
        est = estimate_for(cfg, device, count_trained_tokens(batch["labels"]) if trained_only else None)
        predicted = est.tensor_bytes
        err = 100.0 * (predicted - measured) / measured
        rows.append(dict(config=cfg.label(), estimate=predicted, measured=measured, error_pct=err, accelerate=acc,
                         est_phase=est.peak_phase, measured_phase=where, seconds=time.time() - t0))
        print(f"{cfg.label():<44} {_fmt(predicted):>11} {_fmt(measured):>11} {err:>+7.1f}%  {_fmt(acc):>11}  "
              f"{est.peak_phase:<34} {where:<18} {rows[-1]['seconds']:4.0f}s", file=out, flush=True)
        del model, opt, batch
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftlab.bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["tiny", "smollm2"], help="run only the configurations of one model")
    p.add_argument("--device", default=None, help="cpu (MemTracker) or cuda (max_memory_allocated); default: cuda if present")
    p.add_argument("--select", default=None, metavar="I:J", help="run only configurations I..J-1 (as numbered by --list)")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    a = p.parse_args(argv)
    configs = [c for c in CONFIGS if a.only is None or (c.model == TINY) == (a.only == "tiny")]
    if a.select:
        i, _, j = a.select.partition(":")
        configs = configs[int(i or 0):int(j) if j else None]
    if a.list:
        for i, c in enumerate(configs):
            print(f"{i:>3}  {c.label()}")
        return 0
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    print(f"ftlab memory bench: device={device}, torch {torch.__version__}, {len(configs)} configurations, 2 training steps each")
    from ftlab.memory.published import (FIXTURE, LITGPT_FIXTURE, compare_litgpt_qlora, compare_peft_metamathqa,
                                        format_comparison, format_litgpt_comparison)

    if FIXTURE.exists():  # published GPU measurements (no GPU needed): see ftlab/memory/published.py
        print(format_comparison(compare_peft_metamathqa()) + "\n")
    if LITGPT_FIXTURE.exists():
        print(format_litgpt_comparison(compare_litgpt_qlora()) + "\n")
    t0 = time.time()
    rows = run(configs, device)
    errs = [abs(r["error_pct"]) for r in rows]
    under = [r for r in rows if r["error_pct"] < -5]
    print(f"\nwall time {time.time() - t0:.0f} s (CPU shared with other jobs: times are inflated)")
    print(f"within +-10 %: {sum(e <= 10 for e in errs)}/{len(rows)}; under-predicting by more than 5 %: {len(under)}")
    print(f"max_abs_error_pct={max(errs):.1f} median_abs_error_pct={statistics.median(errs):.1f} configs={len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
