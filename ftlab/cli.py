"""The ``ftlab`` command line.

    ftlab doctor                      preflight: versions, device, memory, model, widgets
    ftlab prefetch [--force] [--model NAME]   convert the offline model once (and fetch hub models for offline use)
    ftlab train --config run.yaml     the training loop outside notebooks
    ftlab estimate --model ... ...    the VRAM estimator's breakdown
    ftlab workshop plan --participants N [--device dgx-spark]   memory plan for a class on one machine
"""

from __future__ import annotations

import argparse
import sys


def _prefetch(args) -> int:
    from ftlab import hub, models

    models.prefetch(force=args.force)
    for name in args.model or []:
        # For GPU machines, workshops, and notebook 05's base models: pull hub models while the network is
        # still there, so the room can work offline. huggingface_hub keeps them in its own cache (HF_HOME).
        print(f"[ftlab] downloading {hub.MODEL_ALIASES.get(name, name)} ...")
        try:
            print(f"[ftlab] {name} -> {hub.download_model(name)}")
        except hub.HubModelError as e:
            print(f"[ftlab] {e}", file=sys.stderr)
            return 1
    return 0


def _train(argv=None) -> int:
    """``ftlab train --config run.yaml [--set key=value ...]``: load model and data from the config, train, save."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="ftlab train", description="Fine-tune a model from a YAML config (see configs/).")
    parser.add_argument("--config", required=True, help="YAML file with TrainConfig fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set max_steps=10 (repeatable)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    from ftlab.training.config import TrainConfig

    config = TrainConfig.from_yaml(args.config, **overrides)
    if not config.model or not config.train_file:
        parser.error(f"{args.config}: needs 'model' (e.g. smollm2-135m-instruct) and 'train_file' for the command line.")
    from accelerate import PartialState

    from ftlab.models import load_model, pick_device
    from ftlab.training.loop import train

    # Under `accelerate launch`, every process loads the model straight onto its own device.
    state = PartialState(cpu=pick_device().type == "cpu")
    model, tokenizer = load_model(config.model, device=state.device)
    result = train(model, tokenizer, config.train_file, config.eval_file, config=config)
    if state.is_main_process:
        last = result.train_history[-1] if result.train_history else {}
        print(f"[ftlab] done in {result.wall_time_s:.1f} s: {len(result.train_history)} logged steps, "
              f"final loss {last.get('loss', float('nan')):.4f}, best val loss {result.best_val_loss}; "
              f"saved to {result.final_path or result.last_checkpoint}")
    return 130 if result.stopped_because == "interrupted" else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ftlab", description="ftlab: the fine-tuning course's command line")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="check this machine for the course")
    d.add_argument("--gpu", action="store_true", help="also run the GPU preflight (make gpu-check): training paths and memory on CUDA")
    p = sub.add_parser("prefetch", help="prepare models for offline use")
    p.add_argument("--force", action="store_true", help="re-convert the offline model even if the cache looks fine")
    p.add_argument("--model", action="append",
                   help="also download this hub model (short name or id); repeatable. Base checkpoints for notebook 05: "
                        "smollm2-135m, smollm2-360m, smollm2-1.7b (the gpu profile's)")
    sub.add_parser("train", help="train from a YAML config (see configs/)", add_help=False)
    sub.add_parser("estimate", help="estimate training memory", add_help=False)
    sub.add_parser("workshop", help="plan a workshop on one shared machine (workshop plan --help)", add_help=False)

    if argv and argv[0] == "workshop":
        from ftlab.workshop import cli_main as workshop_main

        return workshop_main(argv[1:])
    if argv and argv[0] in ("train", "estimate"):
        # These two own their flags; hand the rest of the line over unchanged.
        if argv[0] == "train":
            return _train(argv[1:])
        from ftlab.memory import cli_main

        return int(cli_main(argv[1:]) or 0)

    args = parser.parse_args(argv)
    if args.command == "doctor":
        from ftlab.preflight import doctor

        ok = doctor().ok
        if args.gpu:
            from ftlab.preflight.gpu_check import main as gpu_check

            ok = (gpu_check([]) == 0) and ok
        return 0 if ok else 1
    if args.command == "prefetch":
        return _prefetch(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
