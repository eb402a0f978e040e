"""The ``ftlab`` command line.

    ftlab doctor                      preflight: versions, device, memory, model, widgets
    ftlab prefetch [--force]          convert the offline model once (and fetch hub models for offline use)
    ftlab train --config run.yaml     the training loop outside notebooks
    ftlab estimate --model ... ...    the VRAM estimator's breakdown
"""

from __future__ import annotations

import argparse
import sys


def _prefetch(args) -> int:
    from ftlab import models

    models.prefetch(force=args.force)
    for name in args.model or []:
        # For GPU machines and workshops: pull hub models while the network is still there, so the
        # room can work offline. huggingface_hub keeps them in its own cache (HF_HOME).
        from huggingface_hub import snapshot_download

        repo = models.MODEL_ALIASES.get(name, name)
        print(f"[ftlab] downloading {repo} ...")
        path = snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        print(f"[ftlab] {repo} -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ftlab", description="ftlab: the fine-tuning course's command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check this machine for the course")
    p = sub.add_parser("prefetch", help="prepare models for offline use")
    p.add_argument("--force", action="store_true", help="re-convert the offline model even if the cache looks fine")
    p.add_argument("--model", action="append", help="also download this hub model (alias or id); repeatable")
    sub.add_parser("train", help="train from a YAML config (see configs/)", add_help=False)
    sub.add_parser("estimate", help="estimate training memory", add_help=False)

    if argv and argv[0] in ("train", "estimate"):
        # These two own their flags; hand the rest of the line over unchanged.
        if argv[0] == "train":
            from ftlab.training import cli_main
        else:
            from ftlab.memory import cli_main
        return int(cli_main(argv[1:]) or 0)

    args = parser.parse_args(argv)
    if args.command == "doctor":
        from ftlab.system import doctor

        return 0 if doctor().ok else 1
    if args.command == "prefetch":
        return _prefetch(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
