"""Turning records into training examples: chat templates, tokenisation and loss masking.

A language model is trained to predict every next token. For instruction tuning we only want it
to learn the *answers*, so each token gets a label: its own id where the model should learn it,
``-100`` where it should not (PyTorch's cross-entropy ignores -100). Labels are not shifted here;
Hugging Face models shift them inside ``forward`` (token ``i`` predicts label ``i+1``).

What is trained (``train_on="assistant"``, the default):

* every assistant turn of a conversation, from its first character to its end-of-turn token
  (``<|im_end|>`` for SmolLM2) - that token is how the model learns to *stop*;
* nothing of the system prompt, the user turns or the template's markup (``<|im_start|>user`` ...).

``train_on="last"`` trains only the final assistant turn; ``train_on="all"`` trains every token
(the "just train on everything" baseline, for comparison). Plain-text records (continued
pre-training) are always trained on every token, with an end-of-sequence token appended.

Templates. By default the tokenizer's own chat template is used, so training sees exactly the
text that ``chat()`` and ``generate`` will see. For tokenizers without a chat template (base
models) there is a documented fallback, an Alpaca-style layout (see ``FALLBACK_TEMPLATE_DOC``).

Example:
    >>> from ftlab import load_tokenizer
    >>> tok = load_tokenizer("tiny")
    >>> ex = tokenize_example({"messages": [{"role": "user", "content": "2+2?"},
    ...                                     {"role": "assistant", "content": "4"}]}, tok)
    >>> tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100])
    '4<|im_end|>'
"""

from __future__ import annotations

import html

from ftlab.data.records import load_records

IGNORE_INDEX = -100  # the label value PyTorch's cross_entropy skips

TRAIN_ON = ("assistant", "last", "all")

FALLBACK_TEMPLATE_DOC = """\
The fallback instruction template (used when the tokenizer has no chat template, or with
template="fallback"). An optional system message comes first, then one block per exchange:

    {system}\\n\\n                       <- only if the conversation has a system message
    ### Instruction:\\n{user}\\n\\n
    ### Response:\\n{assistant}{eos}
    \\n\\n                               <- between exchanges of a multi-turn conversation

Only "{assistant}{eos}" is trained; the eos token teaches the model to stop after its answer.
At inference, the prompt ends right after "### Response:\\n" (see render_prompt).
"""

_INSTRUCTION = "### Instruction:\n"
_RESPONSE = "\n\n### Response:\n"


class TemplateError(ValueError):
    """A record cannot be rendered with the chosen template."""


# --------------------------------------------------------------------------- rendering


def _use_chat_template(tokenizer, template) -> str | None:
    """Return the jinja chat template to use, or None for the fallback template."""
    if template is None:
        return tokenizer.chat_template or None
    if template == "fallback":
        return None
    if template == "chat":
        if not tokenizer.chat_template:
            raise TemplateError(
                "template='chat' but this tokenizer has no chat template. "
                "Fix: use template='fallback' (or None to choose automatically), or pass a jinja template string."
            )
        return tokenizer.chat_template
    if isinstance(template, str) and "{" in template:
        return template  # a custom jinja chat template
    raise TemplateError(f"unknown template {template!r}. Fix: use None, 'chat', 'fallback' or a jinja template string.")


def _apply(tokenizer, messages, chat_template, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _render_chat(messages, tokenizer, chat_template) -> tuple[str, list[tuple[int, int]]]:
    """Render with a chat template; return the text and the character span of each assistant turn.

    Chat templates are opaque jinja, so we find the assistant turns by rendering prefixes of the
    conversation: the text of ``messages[:i]`` followed by the generation prompt ends exactly where
    assistant turn ``i`` begins, and the turn ends at the first end-of-turn token after its content.
    """
    full = _apply(tokenizer, messages, chat_template)
    end_token = tokenizer.eos_token or ""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _apply(tokenizer, messages[:i], chat_template, add_generation_prompt=True)
        upto = _apply(tokenizer, messages[: i + 1], chat_template)
        if not (full.startswith(prefix) and full.startswith(upto) and len(upto) > len(prefix)):
            raise TemplateError(
                f"the chat template does not render conversations prefix by prefix (turn {i}), so the "
                "assistant tokens cannot be located. Fix: use template='fallback' or a simpler chat template."
            )
        start, turn = len(prefix), full[len(prefix):len(upto)]
        content_at = max(turn.find(message["content"]), 0)
        eot = turn.find(end_token, content_at + len(message["content"])) if end_token else -1
        # Train up to and including the end-of-turn token, but not the newline the template
        # prints after it: at inference generation stops at the end-of-turn token.
        end = start + eot + len(end_token) if eot >= 0 else start + len(turn.rstrip())
        spans.append((start, end))
    return full, spans


def _render_fallback(messages, tokenizer, for_generation=False) -> tuple[str, list[tuple[int, int]]]:
    """Render with the Alpaca-style fallback template (see ``FALLBACK_TEMPLATE_DOC``)."""
    eos = tokenizer.eos_token or ""
    text, spans = "", []
    for m in messages:
        if m["role"] == "system":
            text += m["content"] + "\n\n"
        elif m["role"] == "user":
            if spans:
                text += "\n\n"
            text += _INSTRUCTION + m["content"] + _RESPONSE
        else:  # assistant
            start = len(text)
            text += m["content"] + eos
            spans.append((start, len(text)))
    if for_generation and messages and messages[-1]["role"] == "assistant":
        raise TemplateError("render_prompt: the conversation already ends with an assistant turn")
    return text, spans


def render_prompt(messages, tokenizer, template=None) -> str:
    """The text a model should continue to answer the conversation (generation prompt included).

    ``messages`` is a list of role/content dicts (or a record with ``messages``); a trailing
    assistant turn is removed first, so a training record gives the prompt of its last answer.

    Example:
        >>> from ftlab import load_tokenizer
        >>> render_prompt([{"role": "user", "content": "Hi"}], load_tokenizer("tiny"), template="fallback")
        '### Instruction:\\nHi\\n\\n### Response:\\n'
    """
    if isinstance(messages, dict):
        messages = messages["messages"]
    messages = list(messages)
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    chat_template = _use_chat_template(tokenizer, template)
    if chat_template is None:
        return _render_fallback(messages, tokenizer, for_generation=True)[0]
    return _apply(tokenizer, messages, chat_template, add_generation_prompt=True)


# --------------------------------------------------------------------------- tokenising


def _tokenize_with_spans(text, spans, tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` and, per token, whether it starts inside one of ``spans``.

    A fast tokenizer tells us each token's character offsets, so we tokenise the whole text in one
    go (exactly what inference sees). Slow tokenizers have no offsets; then we tokenise the pieces
    between span boundaries separately and concatenate them.
    """
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        in_span = [any(s <= start < e for s, e in spans) for start, _ in offsets]
        return list(ids), in_span
    cuts = sorted({0, len(text), *[p for span in spans for p in span]})
    ids, in_span = [], []
    for a, b in zip(cuts, cuts[1:]):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece
        in_span += [any(s <= a < e for s, e in spans)] * len(piece)
    return ids, in_span


def mask_prompt_tokens(input_ids, trained_mask) -> list[int]:
    """Labels for ``input_ids``: the token id where ``trained_mask`` is true, -100 elsewhere.

    This one line is the whole idea of loss masking.

    Example:
        >>> mask_prompt_tokens([5, 6, 7, 8], [False, False, True, True])
        [-100, -100, 7, 8]
    """
    return [t if keep else IGNORE_INDEX for t, keep in zip(input_ids, trained_mask)]


def _as_record(record):
    if isinstance(record, dict) and ("messages" in record or "text" in record):
        return record
    return load_records([record])[0]  # a raw record in another format (instruction, prompt/completion, ...)


def tokenize_example(record, tokenizer, max_length=None, train_on="assistant", template=None) -> dict:
    """Tokenise one record and build its labels.

    Args:
        record: a canonical record (``{"messages": [...]}`` or ``{"text": ...}``); a raw record in
            any format ``ftlab.data.load_records`` understands is converted first.
        tokenizer: a Hugging Face tokenizer.
        max_length: cut the example to this many tokens (right truncation). The number of tokens
            cut is returned in ``"truncated"`` so truncation is never silent.
        train_on: ``"assistant"`` (every assistant turn, the default), ``"last"`` (only the final
            assistant turn) or ``"all"`` (every token, for comparison).
        template: ``None`` (the tokenizer's chat template, or the fallback if it has none),
            ``"chat"``, ``"fallback"`` (see ``FALLBACK_TEMPLATE_DOC``) or a jinja template string.

    Returns:
        ``{"input_ids": [...], "labels": [...], "truncated": n_tokens_cut}``; ``labels`` is -100 on
        untrained tokens and *not* shifted.

    Example:
        >>> from ftlab import load_tokenizer
        >>> tok = load_tokenizer("tiny")
        >>> ex = tokenize_example({"text": "Cats purr."}, tok)
        >>> ex["labels"] == ex["input_ids"], tok.decode(ex["input_ids"])
        (True, 'Cats purr.<|im_end|>')
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on={train_on!r}; use one of {TRAIN_ON}")
    record = _as_record(record)
    if "messages" in record:
        messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        chat_template = _use_chat_template(tokenizer, template)
        if chat_template is None:
            text, spans = _render_fallback(messages, tokenizer)
        else:
            text, spans = _render_chat(messages, tokenizer, chat_template)
        if train_on == "last":
            spans = spans[-1:]
        input_ids, trained = _tokenize_with_spans(text, spans, tokenizer)
        if train_on == "all":
            trained = [True] * len(input_ids)
    else:
        input_ids = list(tokenizer(record["text"])["input_ids"])
        if tokenizer.eos_token_id is not None and (not input_ids or input_ids[-1] != tokenizer.eos_token_id):
            input_ids.append(tokenizer.eos_token_id)  # mark the document's end
        trained = [True] * len(input_ids)
    labels = mask_prompt_tokens(input_ids, trained)
    truncated = 0
    if max_length is not None and len(input_ids) > max_length:
        truncated = len(input_ids) - max_length
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated}


def tokenize_dataset(records, tokenizer, max_length=None, train_on="assistant", template=None, progress=None,
                     verbose=True, on_too_long="truncate") -> list[dict]:
    """``tokenize_example`` over many records, with a progress bar and a count of what was cut.

    ``progress=None`` shows a bar for 500 records or more. With ``max_length``, examples longer
    than that are handled by ``on_too_long``: ``"truncate"`` (cut them; each carries its
    ``"truncated"`` count), ``"drop"`` (leave them out) or ``"error"``. Either way the number is
    printed - never silent.

    Example:
        >>> from ftlab import load_tokenizer
        >>> exs = tokenize_dataset([{"text": "a b c"}, {"text": "d"}], load_tokenizer("tiny"), verbose=False)
        >>> [len(e["input_ids"]) for e in exs]
        [4, 2]
    """
    from tqdm.auto import tqdm

    if on_too_long not in ("truncate", "drop", "error"):
        raise ValueError(f"on_too_long={on_too_long!r}; use 'truncate', 'drop' or 'error'")
    records = list(records)
    show = len(records) >= 500 if progress is None else progress
    examples = [
        tokenize_example(r, tokenizer, max_length=max_length, train_on=train_on, template=template)
        for r in tqdm(records, desc="tokenising", disable=not show)
    ]
    too_long = [i for i, e in enumerate(examples) if e["truncated"]]
    if too_long and on_too_long == "error":
        where = [records[i].get("_source", f"record {i}") if isinstance(records[i], dict) else f"record {i}" for i in too_long[:5]]
        raise ValueError(f"{len(too_long)} examples are longer than max_length={max_length} tokens (e.g. {', '.join(where)}). "
                         "Fix: raise max_length, or choose on_too_long='truncate' or 'drop'.")
    if too_long and on_too_long == "drop":
        cut = set(too_long)
        examples = [e for i, e in enumerate(examples) if i not in cut]
        if verbose:
            print(f"[ftlab] dropped {len(too_long)} of {len(records)} examples longer than {max_length} tokens (on_too_long='drop').")
    elif too_long and verbose:
        print(f"[ftlab] {len(too_long)} of {len(records)} examples were longer than {max_length} tokens and were truncated.")
    n_empty = sum(1 for e in examples if all(l == IGNORE_INDEX for l in e["labels"]))
    if verbose and n_empty:
        print(f"[ftlab] warning: {n_empty} examples have no trained token left (they add nothing to the loss).")
    return examples


# --------------------------------------------------------------------------- the token view

_TRAINED_STYLE = "background:#c8f7c5;color:#0b3d0b"
_MASKED_STYLE = "background:#eeeeee;color:#8a8a8a"


def render_token_view(example, tokenizer, max_tokens=None, train_on="assistant", template=None):
    """Show an example token by token: trained tokens green, masked (-100) tokens grey.

    Each token is a box, so its boundaries are visible; hover over a box to see its id and label.
    Newlines are shown as ``↵`` and spaces as ``·``. ``example`` is a tokenised example (with
    ``input_ids`` and ``labels``) or a record, which is tokenised first.

    Returns an ``IPython.display.HTML`` object (its ``.data`` is the HTML string).

    Example:
        >>> from ftlab import load_tokenizer
        >>> view = render_token_view({"text": "hi"}, load_tokenizer("tiny"))
        >>> "trained" in view.data
        True
    """
    from IPython.display import HTML

    if "input_ids" not in example:
        example = tokenize_example(example, tokenizer, train_on=train_on, template=template)
    ids, labels = list(example["input_ids"]), list(example["labels"])
    n_trained = sum(1 for l in labels if l != IGNORE_INDEX)
    shown = ids if max_tokens is None else ids[:max_tokens]
    boxes = []
    for i, (tid, label) in enumerate(zip(shown, labels)):
        piece = tokenizer.decode([tid])
        visible = html.escape(piece).replace(" ", "·").replace("\n", "↵")
        style = _TRAINED_STYLE if label != IGNORE_INDEX else _MASKED_STYLE
        boxes.append(
            f'<span title="#{i} id={tid} label={label}" style="{style};border:1px solid #999;'
            f'border-radius:3px;padding:0 2px;margin:1px;display:inline-block;font-family:monospace;'
            f'white-space:pre">{visible}</span>'
        )
        if piece.endswith("\n"):
            boxes.append("<br>")
    more = f" (first {len(shown)} shown)" if len(shown) < len(ids) else ""
    legend = (
        f'<div style="margin-bottom:4px;font-family:sans-serif">'
        f'<span style="{_TRAINED_STYLE};padding:0 4px">trained</span> '
        f'<span style="{_MASKED_STYLE};padding:0 4px">masked (label -100)</span> '
        f"&nbsp; {n_trained} of {len(ids)} tokens trained{more}"
        + (f" &nbsp; <b>truncated: {example['truncated']} tokens cut</b>" if example.get("truncated") else "")
        + "</div>"
    )
    return HTML(f'<div class="ftlab-token-view">{legend}<div style="line-height:1.9">{"".join(boxes)}</div></div>')
