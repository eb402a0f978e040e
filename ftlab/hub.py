"""Hub models for offline use: short names, base checkpoints, and huggingface_hub's cache.

The course's own model needs no hub (``ftlab.models``). Everything else -- the gpu profile's bigger
models, and the *base* checkpoints that instruction tuning starts from (notebook 05) -- comes from the
Hugging Face hub: ``ftlab prefetch --model NAME`` downloads it into huggingface_hub's cache while a
network is there, and :func:`cached_snapshot` finds it there later without touching the network.

Example:
    >>> MODEL_ALIASES[BASE_MODELS["smollm2-135m-instruct"]]
    'HuggingFaceTB/SmolLM2-135M'
"""

from __future__ import annotations

from pathlib import Path

# Short names the course uses -> Hugging Face ids. None of these is in the offline package.
MODEL_ALIASES = {
    "smollm2-360m-instruct": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b-instruct": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "qwen2.5-0.5b-instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "llama-3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    # base checkpoints: pre-training only, what instruction tuning starts from
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
}
# Instruct model -> the base checkpoint it was instruction-tuned from. A base model shares its instruct
# sibling's vocabulary, so ftlab.load_model gives it the sibling's tokenizer: the chat template and the
# end-of-turn token the course trains (the base's own tokenizer ends documents, not turns).
BASE_MODELS = {
    "smollm2-135m-instruct": "smollm2-135m",
    "smollm2-360m-instruct": "smollm2-360m",
    "smollm2-1.7b-instruct": "smollm2-1.7b",
}
_INSTRUCT_OF = {base: instruct for instruct, base in BASE_MODELS.items()}
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # config, weights, tokenizer


class HubModelError(RuntimeError):
    """A hub model is not in the cache and cannot be downloaded, or cannot be loaded offline."""


def cached_snapshot(name: str) -> Path | None:
    """The folder of hub model ``name`` (short name or id) in huggingface_hub's cache, or None.

    Never uses the network. None also when the snapshot is known to be incomplete (an interrupted
    download) or holds no ``config.json`` and ``*.safetensors`` weights (it could not be loaded).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # IncompleteSnapshotError is a LocalEntryNotFoundError too
        folder = Path(snapshot_download(MODEL_ALIASES.get(name, name), local_files_only=True, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:
        return None
    return folder if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) else None


def download_model(name: str) -> Path:
    """Fetch hub model ``name`` (short name or id) into huggingface_hub's cache; returns its folder.

    Without a network, a complete earlier download is returned as it is (huggingface_hub falls back to
    its cache); anything else is an error that says how to get the model.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = MODEL_ALIASES.get(name, name)
    try:
        folder = Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError as e:
        raise HubModelError(f"{repo}: not in the cache, and the hub cannot be reached ({type(e).__name__}). Fix: run "
                            f"`ftlab prefetch --model {name}` on a machine with a network and copy its huggingface_hub "
                            "cache (HF_HOME) here.") from e
    if cached_snapshot(repo) is None:
        raise HubModelError(f"{repo}: {folder} has no config.json or no *.safetensors weights, so it cannot be loaded "
                            "offline. Fix: check the name (ftlab loads safetensors checkpoints only).")
    return folder


def base_model_for(name: str) -> str | None:
    """The short name of instruct model ``name``'s base checkpoint when it is in the cache, else None.

    Example:
        >>> base_model_for("tiny") is None      # the tiny model has no base checkpoint
        True
    """
    base = BASE_MODELS.get(name)
    return base if base is not None and cached_snapshot(base) is not None else None
