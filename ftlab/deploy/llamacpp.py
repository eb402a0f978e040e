"""Open an exported GGUF with llama.cpp itself and check it against the model we evaluated.

transformers reads a GGUF back by de-quantising every tensor to fp32, so a round trip through it
proves the *file* is right, not what the runtime people use does with it. llama.cpp (and through it
Ollama and LM Studio) tokenises with its own tokenizer, renders the chat template stored in the
file, multiplies with its own kernels (which also quantise the *activations* to 8 bits for the
quantised weight types, and sum in another order) and stops at the end-of-turn token the file
names. Each of those can change an answer. This module measures them with ``llama-cpp-python``
(the pinned ``llama-cpp-python==0.3.36``, which vendors llama.cpp):

* :func:`compare_tokens`: llama.cpp's tokens of the chat prompt == the HF tokenizer's;
* :func:`greedy_tokens` / :func:`compare_greedy`: greedy answers token for token, with the logit
  margin where they part (a tie in the reference model explains a flip; a wide margin does not);
* :func:`compare_logits_llama`: the next-token logits at every prompt position;
* :func:`evaluate_llama`: the course task score with llama.cpp's own generation, as an ``EvalResult``;
* :func:`perplexity_llama`: perplexity of held-out text, computed from llama.cpp's logits.

When ``llama_cpp`` cannot be imported (the build failed), :func:`llama_cpp_check` says why and how to
fix it, and :data:`LLAMA_CPP_AVAILABLE` lets a notebook skip these parts with a clear message.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np

LLAMA_CPP_PIN = "0.3.36"
BUILD_HINT = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" pip install "llama-cpp-python[server]==0.3.36" '
              "-c constraints.txt  (needs a C/C++ compiler and CMake >= 3.21; about 10 CPU-minutes)")


def llama_cpp_check() -> tuple[bool, str, str]:
    """``(ok, detail, fix)`` for ``ftlab doctor``: is llama.cpp importable, at the pinned version, and loadable?"""
    import importlib.metadata as md

    try:
        import llama_cpp  # loads libllama.so: a broken build fails here, not at pip time
    except Exception as e:  # noqa: BLE001 - OSError from ctypes, ImportError, ...: all mean "not usable"
        try:
            have = md.version("llama-cpp-python")
        except md.PackageNotFoundError:
            return False, "llama-cpp-python not installed (notebook 08 skips its llama.cpp parts)", BUILD_HINT
        return False, f"llama-cpp-python {have} installed but its library does not load ({type(e).__name__}: {e})", \
            f"pip uninstall -y llama-cpp-python && {BUILD_HINT}"
    have = getattr(llama_cpp, "__version__", "?")
    if have != LLAMA_CPP_PIN:
        return False, f"llama-cpp-python {have} (course pins {LLAMA_CPP_PIN})", BUILD_HINT
    return True, f"llama-cpp-python {have}; {_system_info(llama_cpp)}", ""


def _system_info(llama_cpp) -> str:
    """The instruction sets llama.cpp was built with, e.g. 'CPU: AVX2 FMA F16C ...'."""
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    flags = [part.split("=")[0].strip().split(":")[-1].strip() for part in info.split("|") if part.strip().endswith("= 1")]
    return "CPU: " + " ".join(flags)


def _available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


LLAMA_CPP_AVAILABLE = _available()


def require_llama_cpp():
    """The ``llama_cpp`` module, or an ImportError that says how to build it."""
    ok, detail, fix = llama_cpp_check()
    if not ok:
        raise ImportError(f"llama.cpp is not usable here: {detail}. Fix: {fix}")
    import llama_cpp

    return llama_cpp


@contextlib.contextmanager
def captured_stderr():
    """Capture what C code writes to file descriptor 2 (llama.cpp logs there, past Python's sys.stderr).

    Yields a list that holds the captured text once the block ends.
    """
    import tempfile

    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def open_gguf(path, *, n_ctx: int = 1024, logits_all: bool = True, n_threads: int | None = None,
              n_gpu_layers: int = 0):
    """``llama_cpp.Llama`` for a GGUF file, quiet, keeping the logits of every position.

    ``n_gpu_layers``: layers offloaded to the GPU of a CUDA build (-1: all); 0 on the CPU.
    """
    llama_cpp = require_llama_cpp()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"open_gguf: {path} does not exist. Fix: write it with export_gguf() or quantize_gguf().")
    threads = n_threads or default_threads()
    # n_threads_batch (the threads of prompt processing) defaults to every core in llama-cpp-python, whatever
    # n_threads says: on a busy machine that alone made generation 7x slower here (85 vs 12 prompt tokens/s)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, seed=0,
                           n_threads=threads, n_threads_batch=threads, n_gpu_layers=n_gpu_layers)


def default_threads() -> int:
    """llama.cpp threads: every core on an idle machine, 1 on a busy one.

    llama.cpp's threads meet at a barrier several times per layer and spin while they wait; when other
    processes already keep every core busy, a descheduled thread makes the others spin for a whole time
    slice, and generation gets many times slower than with one thread. (The results do not depend on the
    thread count: threads split the rows of each matrix, not the sums.)
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] >= cores else cores


def gguf_chat_template(llm) -> str:
    """The chat template stored in the file (``tokenizer.chat_template``); an error if it has none."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("the GGUF file has no tokenizer.chat_template: llama.cpp would format chats with a "
                         "guessed template. Fix: export with the tokenizer (export_gguf(..., tokenizer=tok)).")
    return template


def _token_text(llm, token_id: int) -> str:
    return llm._model.token_get_text(token_id)


def render_chat(llm, messages) -> str:
    """The prompt llama-cpp-python builds for ``messages``: the file's Jinja template, generation prompt added."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(gguf_chat_template(llm), eos_token=_token_text(llm, llm.token_eos()),
                                    bos_token=_token_text(llm, llm.token_bos()))
    return formatter(messages=list(messages)).prompt


def _messages(prompt, system=None) -> list[dict]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    return messages


def llama_tokens(llm, text: str) -> list[int]:
    """llama.cpp's tokens of an already rendered prompt (special tokens such as <|im_start|> parsed)."""
    return list(llm.tokenize(text.encode(), add_bos=False, special=True))


def compare_tokens(llm, tokenizer, prompts, system=None) -> dict:
    """Render each prompt with the file's template, tokenise with llama.cpp and with the HF tokenizer.

    Returns ``{"prompts", "equal" (prompts whose tokens are identical), "tokens", "template_equal" (the
    file's template renders the HF template's text), "same_text" (both token lists decode to the same text:
    a mismatch is then a different *segmentation*, e.g. llama.cpp's pre-tokenizer keeps "\\n\\n" before a digit
    as one token where HF splits it), "first_mismatch"}``.
    """
    equal, tokens, template_equal, same_text, first = 0, 0, 0, 0, None
    for i, p in enumerate(prompts):
        messages = _messages(p, system)
        text = render_chat(llm, messages)
        hf_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        template_equal += text == hf_text
        ours, theirs = llama_tokens(llm, text), tokenizer(text, add_special_tokens=False)["input_ids"]
        tokens += len(theirs)
        same_text += llm.detokenize(ours, special=True).decode(errors="replace") == tokenizer.decode(theirs)
        if ours == theirs:
            equal += 1
        elif first is None:
            k = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            first = {"prompt": i, "position": k, "llama": [llm.detokenize([t], special=True).decode(errors="replace")
                                                            for t in ours[k:k + 3]],
                     "hf": [tokenizer.decode([t]) for t in theirs[k:k + 3]]}
    return {"prompts": len(prompts), "equal": equal, "tokens": tokens, "template_equal": template_equal,
            "same_text": same_text, "first_mismatch": first}


def greedy_tokens(llm, prompt_ids, max_new_tokens: int) -> tuple[list[int], bool, float]:
    """Greedy decoding in llama.cpp: ``(new token ids, stopped at the file's end-of-turn token, seconds)``.

    The end-of-turn token is the file's ``tokenizer.ggml.eos_token_id`` (``<|im_end|>`` for SmolLM2), the
    token every runtime built on llama.cpp stops at. It is not part of the returned ids.
    """
    import llama_cpp

    out, start = [], time.perf_counter()
    for token in llm.generate(list(prompt_ids), temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):  # <|im_end|>, or any end-of-generation token
            return out, True, time.perf_counter() - start
        out.append(int(token))
        if len(out) >= max_new_tokens:
            break
    return out, False, time.perf_counter() - start


def _hf_prompt_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def compare_greedy(llm, model, tokenizer, prompts, *, max_new_tokens: int, system=None) -> list[dict]:
    """Greedy answers of llama.cpp and of the transformers ``model``, token for token, one row per prompt.

    Each row: ``question``, ``llama`` and ``hf`` (answer texts), ``equal`` (same token ids), ``stopped``
    (llama.cpp ended at the end-of-turn token before ``max_new_tokens``), ``hf_stopped``, and where the
    answers part: ``diverge_at`` (index of the first different token) and ``hf_margin`` (the reference
    model's logit gap between its top-2 tokens there: near 0 means a tie that any rounding can flip).
    """
    import torch

    from ftlab.evaluate.generate import stop_token_ids

    stops, rows = stop_token_ids(tokenizer, model), []
    for p in prompts:
        messages = _messages(p, system)
        ids = _hf_prompt_ids(tokenizer, messages)
        ours, stopped, _ = greedy_tokens(llm, ids, max_new_tokens)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tokenizer.pad_token_id or stops[0])[0, len(ids):]
        hf = [int(t) for t in out]
        hf_stopped = bool(hf) and hf[-1] in stops
        hf = hf[:-1] if hf_stopped else hf
        row = {"question": messages[-1]["content"], "llama": llm.detokenize(ours).decode(errors="replace"),
               "hf": tokenizer.decode(hf), "equal": ours == hf, "stopped": stopped, "hf_stopped": hf_stopped,
               "diverge_at": None, "hf_margin": None}
        if ours != hf:
            k = next((j for j, (a, b) in enumerate(zip(ours, hf)) if a != b), min(len(ours), len(hf)))
            with torch.no_grad():
                logits = model(torch.tensor([ids + hf[:k]])).logits[0, -1].float()
            top2 = torch.topk(logits, 2).values
            row.update(diverge_at=k, hf_margin=float(top2[0] - top2[1]))
        rows.append(row)
    return rows


def llama_logits(llm, ids) -> np.ndarray:
    """llama.cpp's next-token logits at every position of ``ids`` (shape ``[len(ids), vocab]``)."""
    if len(ids) > llm.n_ctx():
        raise ValueError(f"llama_logits: {len(ids)} tokens do not fit the context of {llm.n_ctx()}; open with a larger n_ctx")
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def compare_logits_llama(llm, model, tokenizer, prompts, system=None) -> dict:
    """llama.cpp's logits against the transformers ``model``'s on the same chat prompts, every position.

    Returns ``max_abs_diff``, ``mean_abs_diff``, ``top1_agreement`` (share of positions with the same
    argmax) and ``positions``, as :func:`ftlab.deploy.compare_logits` does, plus ``max_abs_logit`` and
    ``relative_max_diff`` (the largest difference over the largest logit). Even for an F32 file the
    logits are not bit-equal: llama.cpp keeps the attention keys and values (the KV cache) in fp16 by
    default and sums in another order. So where two tokens nearly tie, the argmax may flip:
    ``flips_beyond_ties`` counts the positions whose argmax differs although transformers' margin
    between the two tokens is more than twice that position's largest difference (0 for a faithful file).
    """
    import torch

    max_diff, sum_diff, n_values, agree, n_pos, scale, beyond = 0.0, 0.0, 0, 0, 0, 0.0, 0
    for p in prompts:
        ids = _hf_prompt_ids(tokenizer, _messages(p, system))
        ours = llama_logits(llm, ids)
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].float().numpy()
        diff = np.abs(ours - theirs[:, :ours.shape[1]])
        scale = max(scale, float(np.abs(theirs).max()))
        max_diff, sum_diff, n_values = max(max_diff, float(diff.max())), sum_diff + float(diff.sum()), n_values + diff.size
        theirs = theirs[:, :ours.shape[1]]
        a, b = ours.argmax(-1), theirs.argmax(-1)
        agree += int((a == b).sum())
        rows = np.arange(len(a))
        margin = theirs[rows, b] - theirs[rows, a]        # 0 where they agree
        beyond += int(((a != b) & (margin > 2 * diff.max(-1))).sum())
        n_pos += len(ids)
    return {"max_abs_diff": max_diff, "mean_abs_diff": sum_diff / max(1, n_values),
            "top1_agreement": agree / max(1, n_pos), "positions": n_pos, "max_abs_logit": scale,
            "relative_max_diff": max_diff / max(scale, 1e-12), "flips_beyond_ties": beyond}


def perplexity_llama(llm, tokenizer, records) -> dict:
    """Perplexity of whole course conversations (prompt and reference answer) under llama.cpp's logits.

    Every token after the first is predicted from the ones before it; ``exp`` of the mean negative
    log-likelihood over all of them. Same records and tokens for every file, so the numbers compare.
    """
    from ftlab.evaluate import prepare_records

    nll, count = 0.0, 0
    for it in prepare_records(records):
        messages = it["messages"] + [{"role": "assistant", "content": it["reference"]}]
        ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"][: llm.n_ctx()]
        logits = llama_logits(llm, ids)[:-1].astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll += float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return {"perplexity": float(np.exp(nll / count)), "tokens": count}


def evaluate_llama(llm, tokenizer, records, *, name: str, max_new_tokens: int, progress: bool = False):
    """The course task score with llama.cpp's own greedy generation: an ``EvalResult`` like ``evaluate_model``'s.

    The whole path is llama.cpp's: the file's chat template, llama.cpp's tokenizer, its kernels and its stop
    token (:func:`compare_tokens` checks the first two equal transformers'), as a deployed model runs.
    ``extra`` adds ``tokens_per_s``: generated tokens over generation time (prompt processing included).
    """
    from ftlab.evaluate import prepare_records, score_answers
    from ftlab.evaluate.harness import _summarise

    start, items = time.perf_counter(), prepare_records(records)
    answers, details, gen_s, gen_tokens = [], [], 0.0, 0
    iterator = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc=f"llama.cpp {name}")
    for it in iterator:
        prompt = llama_tokens(llm, render_chat(llm, it["messages"]))   # the file's template, llama.cpp's tokenizer
        ids, stopped, seconds = greedy_tokens(llm, prompt, max_new_tokens)
        answers.append(llm.detokenize(ids).decode(errors="replace").strip())
        details.append({"stopped": stopped, "new_tokens": len(ids)})
        gen_s, gen_tokens = gen_s + seconds, gen_tokens + len(ids) + stopped
    scores, scorers = score_answers(answers, [it["reference"] for it in items], [it["task"] for it in items])
    examples = [{"index": i, "task": it["task"], "question": it["question"], "reference": it["reference"],
                 "prediction": a, "score": s, "scorer": how, "stopped": d["stopped"], "new_tokens": d["new_tokens"],
                 "source": it["source"]} for i, (it, a, d, s, how) in enumerate(zip(items, answers, details, scores, scorers))]
    result = _summarise(name, examples, time.perf_counter() - start, 0.95, 2000, 0)
    result.extra["tokens_per_s"] = gen_tokens / gen_s if gen_s else float("nan")
    return result
