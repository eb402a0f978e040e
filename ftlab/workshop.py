"""Planning a workshop on one shared machine: ``ftlab workshop plan --participants 12 --device dgx-spark``.

For every notebook the plan takes its heaviest steps (:data:`NOTEBOOK_STEPS`: which run, which
batch, how many other copies of the model the kernel holds at that moment), reads their sizes from
the run profile (``ftlab/profiles.py``, the one place the notebooks read them), and asks the memory
estimator (``ftlab.memory``) for the peak. Sequence lengths and trained tokens come from the course
data itself, tokenised as the notebooks tokenise it. A participant's kernel then needs

    kernel baseline (Python, torch, transformers, the tokenizer, plots)
    + the step's estimated peak (weights, gradients, optimizer states, activations, logits)
    + the other model copies the notebook keeps alive at that moment.

On a CPU (``--device cpu``) a training step's heap part (activations, gradients, optimizer states) is
doubled (:data:`CPU_TRAIN_HEAP_FACTOR`): the plan is of resident memory, not only of live tensors.

From the peaks and the machine's usable memory the plan derives how many participants can run each
notebook at once, the budget per participant (``FTLAB_MEMORY_BUDGET_GIB``, see ``ftlab.budget``) and
a schedule: notebooks that do not fit everyone at once are run in staggered waves.
``scripts/check_workshop_plan.py`` compares the plan with the peak RSS of real notebook runs.

Example:
    >>> plan = make_plan(12, device="dgx-spark", profile="ci")
    >>> plan["participants"], plan["device"]
    (12, 'dgx-spark')
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

GiB = 2**30
# Resident memory of a participant's kernel before any model: ipykernel, torch, transformers, peft,
# pandas, matplotlib (one figure drawn), ftlab and SmolLM2's tokenizer. Measured as the kernel's VmHWM
# after such a set-up cell, 601 MiB (fp32 CPU build of torch 2.13, x86-64, 2026-11-29). A CUDA
# build maps more host libraries; the estimator adds the CUDA context separately.
KERNEL_BASE_BYTES = 601 * 2**20
# On a CPU a training step's resident memory grows by about twice what its activations, gradients and
# optimizer states need. glibc's heap serves those many mid-sized tensors, keeps what they free for reuse,
# and cannot always reuse it for the next sizes, so the high-water mark outruns the live tensors. Tensors
# above glibc's mmap threshold (the fp32 logits, tens to hundreds of MiB) go straight back to the OS.
# Measured with VmHWM against MemTracker on SmolLM2-135M (fp32, torch 2.13, x86-64, 2026-11-29): one DPO
# step (LoRA, 8 sequences) 1.8x; the training notebooks 02, 03 and 07 in the laptop profile 1.8-2.3x.
# CUDA's caching allocator is modelled by the estimator itself (``ftlab.memory.cuda``), so this is CPU only.
CPU_TRAIN_HEAP_FACTOR = 2.0


@dataclass(frozen=True)
class Step:
    """One memory-heavy moment of a notebook."""

    what: str
    kind: str  # "train" | "generate" | "score" (no-grad forward, logits at every position) | "hold" (weights only)
    batch: str = "batch_size"  # the Profile attribute that sizes it ("default": the function's default), or a number
    method: str = "full"
    copies: int = 0  # other copies of the model's weights the kernel holds at that moment
    logits: str = "trained"  # train: "trained" (ftlab.train: answer positions), "all" (train_on="all": every
    #                          position is trained) or "full" (transformers' loss: logits everywhere)
    data: str = "instructions"  # the course data whose token lengths size it ("domain_corpus": plain text)


# The heaviest moments of each notebook. Sizes are NOT here: they are Profile attributes (batch) and
# the profile's model, dtype, max_length and lora_rank. `copies` follows each notebook's code (which
# models are alive when the step runs; the notebooks `del` the ones they are done with).
NOTEBOOK_STEPS: dict[str, list[Step]] = {
    "00_concepts": [
        Step("evaluate the base model (evaluate_model)", "generate", batch="default"),
        Step("method table: a fresh copy prepared next to the base model", "hold", copies=1),
    ],
    "01_data_preparation": [
        Step("packing comparison: packed rows scored five ways (measure_packing_effect)", "score", 4, copies=0),
        Step("LoRA run on clean vs noisy data (fresh copy; base model kept)", "train", "quick_batch", "lora", 1),
    ],
    "02_loss_math": [
        Step("training playground run (LoRA at its default batch; fresh copy, base model kept)", "train", "run_batch",
             "lora", 1),
        Step("LoRA learning-rate runs (fresh copy; base model kept)", "train", "quick_batch", "lora", 1),
        Step("your loop vs ftlab.train: full FT of a fresh copy, logits everywhere (base model and ftlab.train's "
             "result kept)", "train", 2, "full", 2, logits="full"),
    ],
    "03_full_fine_tuning": [
        Step("training playground run (LoRA at its default batch; fresh copy, base model kept)", "train", "run_batch",
             "lora", 1),
        Step("live estimator check: full FT step with transformers' loss (logits everywhere; base model kept)",
             "train", "run_batch", "full", 1, logits="full"),
        Step("main full fine-tuning run of the base model", "train", "run_batch", "full", 0),
        Step("learning-rate runs: full FT of a fresh copy (tuned, overfit models and base weights kept)",
             "train", "run_batch", "full", 3),
        Step("transformers' Trainer: full FT of a fresh copy, logits everywhere (tuned, overfit and ftlab.train's "
             "models kept)", "train", 2, "full", 3, logits="full"),
    ],
    "04_lora_qlora": [
        Step("training playground run (LoRA at its default batch; fresh copy, base model kept)", "train", "run_batch",
             "lora", 1),
        Step("full fine-tuning run for the method table (fresh copy; base model kept)", "train", "run_batch", "full", 1),
        Step("LoRA run for the method table (base model and full-FT result kept)", "train", "run_batch", "lora", 2),
        # PEFT's prompt-tuning wrapper takes no logits mask, so ftlab.train falls back to logits everywhere;
        # frozen base with gradients through every layer: sized like LoRA
        Step("prompt-tuning run of the method table (fresh copy; base model kept)", "train", "run_batch", "lora", 1,
             logits="full"),
        Step("peft + Trainer LoRA run, logits everywhere (base model and ftlab.train's LoRA model kept)", "train", 2,
             "lora", 2, logits="full"),
    ],
    "05_instruction_tuning": [
        Step("second train_on run, train_on='all' (base model and first run kept)", "train", "batch_size", "lora", 2,
             logits="all"),
        Step("second end-of-turn run (base, two train_on runs and first stop run kept)", "train", "run_batch", "lora", 4),
        Step("TRL SFTTrainer LoRA run on the chats, logits everywhere (base, four earlier runs and ftlab.train's run "
             "kept)", "train", 2, "lora", 6, logits="full", data="chat"),
    ],
    "06_evaluation": [
        Step("LoRA run after the full-FT run (base model and full-FT model kept)", "train", "run_batch", "lora", 2),
        Step("full fine-tuning run (fresh copy; base model kept)", "train", "run_batch", "full", 1),
        Step("evaluate base, full and LoRA models", "generate", "eval_batch_size", copies=2),
        Step("domain perplexity of base, full and LoRA models (batch 4)", "score", 4, copies=2, data="domain_corpus"),
    ],
    # 07-09 were added later; they still size their batches inline (max(2, batch_size // 2) == run_batch).
    "07_alignment": [
        # run_batch pairs = batch_size sequences (chosen + rejected); the reference is the policy with adapters off
        Step("DPO run: LoRA on chosen + rejected sequences", "train", "batch_size", "lora", 0),
        Step("SFT run before GRPO", "train", "run_batch", "lora", 0),
    ],
    "08_deployment": [
        Step("LoRA run of the model to deploy (fresh copy; base model kept)", "train", "run_batch", "lora", 1),
        Step("evaluate base and merged models", "generate", "eval_batch_size", copies=1),
    ],
    "09_continued_pretraining": [
        Step("continued pretraining: full FT of a fresh copy (base model kept)", "train", "batch_size", "full", 1,
             logits="all", data="domain_corpus"),
        Step("held-out domain perplexity (batch 8; base and adapted models)", "score", 8, copies=1, data="domain_corpus"),
        Step("SFT after CPT (base and CPT models kept)", "train", "run_batch", "lora", 2),
    ],
}


def _hardware(device):
    from ftlab.memory import HARDWARE

    if device in (None, "cpu"):
        return None
    if device not in HARDWARE:
        raise ValueError(f"ftlab workshop plan: unknown device {device!r}. Fix: --device cpu or one of {', '.join(HARDWARE)}.")
    return HARDWARE[device]


def _batch(profile, name) -> int:
    if isinstance(name, int):
        return name
    if name == "default":  # the notebooks call evaluate_model without batch_size: read its default
        import inspect

        from ftlab.evaluate import evaluate_model

        return inspect.signature(evaluate_model).parameters["batch_size"].default
    return int(getattr(profile, name))


@functools.lru_cache(maxsize=8)
def _course_examples(data: str, train_size: int, max_length: int) -> tuple:
    from ftlab.data import load_course_data, load_records, tokenize_dataset
    from ftlab.models import load_tokenizer

    # All three profiles use SmolLM2's tokenizer ("tiny" borrows it), so this needs no large model.
    raw = load_course_data("instructions", "train", limit=train_size) if data == "instructions" else load_course_data(data)
    records = load_records(raw, verbose=False)
    return tuple(tokenize_dataset(records, load_tokenizer("tiny"), max_length=max_length, progress=False, verbose=False))


def _course_batch(profile, batch_size: int, data: str = "instructions") -> tuple[int, int]:
    """(padded length, trained tokens) of the largest batch of the profile's training data."""
    from ftlab.budget import longest_batch

    return longest_batch(_course_examples(data, profile.train_size, profile.max_length), batch_size, profile.max_length)


def step_peak(step: Step, profile, device="cpu") -> dict:
    """The estimated peak of one step for ``profile`` on ``device`` (a HARDWARE name or "cpu")."""
    from ftlab.memory import DTYPE_BYTES, estimate_inference_memory, estimate_memory, get_architecture
    from ftlab.memory.settings import estimator_settings

    hw = _hardware(device)
    kind = hw.kind if hw else "cpu"
    arch = get_architecture(profile.model_name)
    dtype = profile.dtype or ("bf16" if kind == "cuda" else "fp32")
    target = hw.name if hw else "cpu"
    batch = _batch(profile, step.batch)
    weights = arch.num_parameters() * DTYPE_BYTES[dtype]
    if step.kind == "train":
        seq_len, trained = _course_batch(profile, batch, step.data)
        if step.logits == "all":  # plain text or train_on="all": every position has a label
            trained = batch * seq_len
        est = estimate_memory(arch, **estimator_settings(
            step.method, batch, seq_len, param_dtype=dtype, device=target, lora_rank=profile.lora_rank,
            trained_tokens=None if step.logits == "full" else trained))
        run, detail = est.total_bytes, f"{step.method}, batch {batch} x {seq_len} tokens, {est.peak_phase}"
        if kind == "cpu":  # the heap's share: all but the weights and the big logits (those are mmapped)
            heap = est.total_bytes - weights - est.by_category().get("logits & loss", 0)
            run = est.total_bytes + int((CPU_TRAIN_HEAP_FACTOR - 1) * heap)
            detail += f"; heap part x{CPU_TRAIN_HEAP_FACTOR:g} on a CPU"
    elif step.kind == "score":
        seq_len = profile.max_length if step.data == "instructions" else _course_batch(profile, batch, step.data)[0]
        run = weights + score_bytes(arch, batch, seq_len)
        detail = f"no-grad forward, batch {batch} x {seq_len} tokens, logits at every position"
    elif step.kind == "generate":
        est = estimate_inference_memory(arch, batch_size=batch, context_len=profile.max_length + profile.max_new_tokens,
                                        param_dtype=dtype, device=target)
        run, detail = est.total_bytes, f"generation, batch {batch} x {profile.max_length + profile.max_new_tokens} tokens"
    else:
        run, detail = weights, "weights only"
    peak = KERNEL_BASE_BYTES + run + step.copies * weights
    return dict(step=step.what, detail=detail, run_bytes=run, copies=step.copies, copies_bytes=step.copies * weights,
                peak_bytes=peak)


def score_bytes(arch, batch: int, seq_len: int) -> int:
    """A no-gradient forward pass that scores every token (perplexity, packing checks): the fp32 logits
    and the log-softmax that cross-entropy makes of them (two ``batch x seq_len x vocab`` tensors,
    49,152 wide for SmolLM2: they dwarf everything else), plus one layer's working tensors."""
    logits = 2 * batch * seq_len * arch.vocab * 4
    layer = batch * seq_len * (3 * arch.intermediate + 4 * arch.hidden) * 4
    return logits + layer


def notebook_peaks(profile=None, device="cpu") -> list[dict]:
    """Per notebook: the heaviest step's peak (kernel baseline + run + model copies) and every step's."""
    from ftlab.profiles import get_profile

    profile = get_profile(profile) if profile is None or isinstance(profile, str) else profile
    rows = []
    for notebook, steps in NOTEBOOK_STEPS.items():
        peaks = [step_peak(s, profile, device) for s in steps]
        top = max(peaks, key=lambda p: p["peak_bytes"])
        rows.append(dict(notebook=notebook, heaviest_step=top["step"], detail=top["detail"],
                         peak_bytes=top["peak_bytes"], peak_gib=round(top["peak_bytes"] / GiB, 2), steps=peaks))
    return rows


def usable_bytes(device) -> int:
    """Memory the participants share: the preset's usable figure, or this machine's RAM for "cpu"."""
    hw = _hardware(device)
    if hw is not None:
        return int(hw.usable_gib * GiB)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.85)  # keep 15 % for the OS and the hub


def make_plan(participants: int, device: str = "dgx-spark", profile: str | None = None) -> dict:
    """The whole plan as a dict (what ``--json`` prints)."""
    from ftlab.profiles import get_profile

    if participants < 1:
        raise ValueError(f"ftlab workshop plan: --participants must be >= 1 (got {participants}).")
    hw = _hardware(device)
    prof = get_profile(profile or ("gpu" if hw is not None and hw.kind == "cuda" else "laptop"))
    usable = usable_bytes(device)
    share = usable / participants
    rows = notebook_peaks(prof, device)
    warnings, schedule = [], []
    for row in rows:
        row["at_once"] = int(usable // row["peak_bytes"])
        row["waves"] = math.ceil(participants / row["at_once"]) if row["at_once"] else None
        if not row["at_once"]:
            warnings.append(f"{row['notebook']} needs {row['peak_gib']} GiB, more than the {usable / GiB:.1f} GiB usable: "
                            f"it cannot run here in the {prof.name!r} profile. Fix: a smaller profile for this notebook.")
        elif row["waves"] > 1:
            schedule.append(f"{row['notebook']}: {row['at_once']} participants at a time, {row['waves']} waves "
                            f"(stagger its heaviest step: {row['heaviest_step']}); the others read ahead or run "
                            f"the next notebook's first part meanwhile")
    heaviest = max(r["peak_bytes"] for r in rows)
    # The fair share (rounded down to 0.5 GiB) when every notebook fits in it; else the heaviest peak
    # (rounded up): a budget below a notebook's peak would refuse that notebook.
    budget_gib = math.floor(share / GiB * 2) / 2
    if heaviest > budget_gib * GiB:
        budget_gib = math.ceil(heaviest / GiB * 2) / 2
    if not schedule:
        schedule.append("every notebook fits all participants at once: no staggering needed")
    if budget_gib * participants * GiB > usable:
        warnings.append(room_warning(budget_gib, participants, usable / GiB))
    return dict(participants=participants, device=device, profile=prof.name, model=prof.model_name,
                usable_gib=round(usable / GiB, 1), fair_share_gib=round(share / GiB, 2), budget_gib=budget_gib,
                kernel_base_gib=round(KERNEL_BASE_BYTES / GiB, 2), notebooks=rows, schedule=schedule,
                warnings=warnings)


def model_cache_problem(home) -> str | None:
    """Why participants could not use the model cache under ``home`` (``FTLAB_HOME``), or None.

    Checked by the hub before it starts a participant's server: the converted model and its manifest
    must be there, complete, and readable by every user (the cache is shared and read-only).
    Cheap and torch-free (sizes and permission bits, no checksums).
    """
    import stat
    from pathlib import Path

    folder = Path(home) / "models" / "smollm2-135m-instruct"
    manifest = folder / "ftlab_manifest.json"
    if not manifest.is_file():
        return f"{folder} has no converted model (no ftlab_manifest.json)."
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{manifest} is unreadable ({e})."
    needs = [(p, stat.S_IXOTH) for p in reversed(folder.parents)]  # every folder above: enter it
    needs += [(folder, stat.S_IROTH | stat.S_IXOTH), (manifest, stat.S_IROTH)]
    needs += [(folder / name, stat.S_IROTH) for name in files]
    for path, need in needs:
        if not path.exists():
            return f"{path} is missing (half-written conversion?)."
        mode = path.stat().st_mode
        if mode & need != need:
            return f"{path} is not readable by the participants (mode {stat.filemode(mode)})."
    for name, info in files.items():
        if (folder / name).stat().st_size != info["size"]:
            return f"{folder / name} has the wrong size (truncated?)."
    return None


def room_warning(budget_gib: float, participants: int, machine_gib: float) -> str | None:
    """The warning when budgets add up to more than the machine (None when they do not)."""
    total = budget_gib * participants
    if total <= machine_gib:
        return None
    return (f"WARNING: {participants} participants x {budget_gib:g} GiB budget = {total:g} GiB, more than the "
            f"{machine_gib:.1f} GiB this machine can give them: if everyone runs the heaviest step at once, the machine "
            f"runs out of memory. Stagger the heavy notebooks (ftlab workshop plan), or lower the budget to "
            f"{math.floor(machine_gib / participants * 2) / 2:g} GiB.")


def format_markdown(plan: dict) -> str:
    lines = [f"# Workshop plan: {plan['participants']} participants on {plan['device']} "
             f"({plan['usable_gib']} GiB usable), profile `{plan['profile']}` ({plan['model']})", "",
             f"Peak per participant = kernel baseline {plan['kernel_base_gib']} GiB + the estimator's peak of the "
             "notebook's heaviest step + the other model copies the notebook keeps alive.", "",
             "| notebook | heaviest step | peak GiB | at once | waves for all |", "|---|---|---:|---:|---:|"]
    for r in plan["notebooks"]:
        lines.append(f"| {r['notebook']} | {r['heaviest_step']} ({r['detail']}) | {r['peak_gib']:.2f} | "
                     f"{r['at_once']} | {r['waves'] if r['waves'] else 'does not fit'} |")
    lines += ["", f"Fair share: {plan['usable_gib']} GiB / {plan['participants']} = {plan['fair_share_gib']} GiB per participant.",
              f"Budget per participant (FTLAB_MEMORY_BUDGET_GIB): **{plan['budget_gib']:g} GiB**"
              + (" (the heaviest notebook's peak; the schedule below keeps the sum in bounds)"
                 if plan["budget_gib"] > plan["fair_share_gib"] else ""), "", "Schedule:"]
    lines += [f"- {s}" for s in plan["schedule"]]
    if plan["warnings"]:
        lines += ["", *[f"> {w}" for w in plan["warnings"]]]
    return "\n".join(lines)


def cli_main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ftlab workshop", description="Plan a workshop on one shared machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="memory per notebook, participants at once, budget and schedule")
    p.add_argument("--participants", type=int, required=True)
    p.add_argument("--device", default="dgx-spark", help="a hardware preset (ftlab estimate --help) or 'cpu' for this machine")
    p.add_argument("--profile", choices=["gpu", "laptop", "ci"], help="default: gpu on a CUDA preset, laptop otherwise")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    plan = make_plan(args.participants, args.device, args.profile)
    print(json.dumps(plan, indent=1) if args.json else format_markdown(plan))
    return 0
