"""An Ollama ``Modelfile`` for an exported GGUF, built from the file's own metadata.

The most reported failure of fine-tuned GGUF models in Ollama is "my model never stops": the
Modelfile has no ``TEMPLATE`` matching the chat format the model was trained on, or no ``stop``
parameter for its end-of-turn token, so generation runs past ``<|im_end|>`` into a made-up next turn.
Ollama's ``TEMPLATE`` is a Go template, not the Jinja template stored in the GGUF, so we *derive* it:
render the file's Jinja template for one system + user turn whose contents are markers, and replace
the markers by Ollama's ``{{ .System }}`` and ``{{ .Prompt }}``. The ``stop`` parameter is the text of
the file's end-of-sequence token. :func:`render_modelfile_prompt` fills the Go template back in, so a
test can check that Ollama would send the model exactly what the GGUF's template renders.
"""

from __future__ import annotations

from pathlib import Path

_SYSTEM_MARK, _USER_MARK = "\x00SYSTEM\x00", "\x00USER\x00"


def gguf_chat_metadata(path) -> dict:
    """``{"chat_template", "eos_token", "bos_token"}`` from a GGUF file's metadata."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    meta, _ = read_gguf_metadata(str(path), string_arrays={"tokenizer.ggml.tokens"})
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise ValueError(f"{path}: no tokenizer.chat_template in the file. Fix: export with the tokenizer, "
                         "export_gguf(..., tokenizer=tok).")
    tokens = meta["tokenizer.ggml.tokens"]
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return {"chat_template": template, "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]],
            "bos_token": tokens[bos] if bos is not None else ""}


def _render_jinja(meta: dict, messages) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(meta["chat_template"]).render(messages=messages, add_generation_prompt=True,
                                                         eos_token=meta["eos_token"], bos_token=meta["bos_token"])


def ollama_template(meta: dict) -> str:
    """The Go ``TEMPLATE`` equivalent to the GGUF's Jinja template for a system + user turn.

    Always used with a ``SYSTEM`` line: SmolLM2's template inserts its own default system prompt when a
    chat has none, which a plain Go template would not reproduce.
    """
    rendered = _render_jinja(meta, [{"role": "system", "content": _SYSTEM_MARK},
                                    {"role": "user", "content": _USER_MARK}])
    if rendered.count(_SYSTEM_MARK) != 1 or rendered.count(_USER_MARK) != 1:
        raise ValueError("ollama_template: the chat template does not place the system and user message once each; "
                         "write this Modelfile's TEMPLATE by hand")
    return (rendered.replace(_SYSTEM_MARK, "{{ .System }}").replace(_USER_MARK, "{{ .Prompt }}")
            + "{{ .Response }}" + meta["eos_token"] + "\n")


def write_modelfile(gguf_path, dest=None, *, system: str, temperature: float = 0.0,
                    num_ctx: int = 2048) -> Path:
    """Write a Modelfile next to ``gguf_path`` (or at ``dest``): FROM, TEMPLATE, stop, SYSTEM, parameters."""
    gguf_path = Path(gguf_path)
    meta = gguf_chat_metadata(gguf_path)
    dest = Path(dest) if dest else gguf_path.with_name("Modelfile")
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{ollama_template(meta)}"""',
             f'PARAMETER stop "{meta["eos_token"]}"', f"PARAMETER temperature {temperature:g}",
             f"PARAMETER num_ctx {num_ctx}", f'SYSTEM """{system}"""']
    dest.write_text("\n".join(lines) + "\n")
    return dest


def read_modelfile(path) -> dict:
    """``{"from", "template", "stop": [...], "system"}`` of a Modelfile written by :func:`write_modelfile`."""
    text = Path(path).read_text()
    out = {"from": None, "template": None, "stop": [], "system": None}
    for key in ("TEMPLATE", "SYSTEM"):
        if f'{key} """' in text:
            out[key.lower()] = text.split(f'{key} """', 1)[1].split('"""', 1)[0]
    for line in text.splitlines():
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith("PARAMETER stop "):
            out["stop"].append(line[len("PARAMETER stop "):].strip().strip('"'))
    return out


def render_modelfile_prompt(template: str, system: str, prompt: str) -> str:
    """What Ollama sends the model for a first turn: the Go template with System/Prompt filled, cut at .Response."""
    text = template.split("{{ .Response }}")[0]
    return text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)


def jinja_prompt(gguf_path, system: str, prompt: str) -> str:
    """The same first turn rendered by the GGUF's own Jinja template (what llama.cpp would send)."""
    return _render_jinja(gguf_chat_metadata(gguf_path), [{"role": "system", "content": system},
                                                         {"role": "user", "content": prompt}])
