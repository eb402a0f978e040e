"""Metrics that read the model's logits: mean token accuracy and perplexity (with a sliding window)."""

from __future__ import annotations

import math

# ----------------------------------------------------------------------------------------
# Language-model metrics: perplexity and mean token accuracy
# ----------------------------------------------------------------------------------------


def mean_token_accuracy(logits, labels) -> float:
    """Fraction of trained positions where the model's most likely next token is the label.

    ``logits``: (batch, seq, vocab); ``labels``: (batch, seq), -100 where a token is not
    trained, *not* shifted (the same contract as Hugging Face models): position t's logits
    predict ``labels[t + 1]``. accuracy = #{t : labels[t+1] != -100 and
    argmax logits[t] == labels[t+1]} / #{t : labels[t+1] != -100}, pooled over the batch
    (token-weighted, not a mean of per-example accuracies).

    Example:
        >>> import torch
        >>> logits = torch.tensor([[[0., 9.], [9., 0.], [0., 0.]]])   # predicts 1, then 0
        >>> mean_token_accuracy(logits, torch.tensor([[-100, 1, 1]]))
        0.5
    """
    targets = labels[..., 1:]
    predicted = logits[..., :-1, :].argmax(-1)
    trained = targets != -100
    n = int(trained.sum())
    if n == 0:
        raise ValueError("mean_token_accuracy: no trained positions (every label is -100)")
    return int(((predicted == targets) & trained).sum()) / n


def _windows(n_tokens: int, max_length: int, stride: int):
    """(begin, end, first_scored) for each window over a sequence of ``n_tokens``.

    Window k covers tokens [begin, end). Its tokens before ``first_scored`` are context
    only: they were scored by the previous window (or, for the very first token, cannot be
    scored because nothing precedes it). So every token from 1 to n-1 is scored exactly once.
    """
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        first_scored = max(prev_end, begin + 1)
        if end > first_scored:
            yield begin, end, first_scored
        prev_end = end
        if end == n_tokens:
            break


def perplexity(model, tokenizer, texts, *, max_length: int | None = None, stride: int | None = None,
               batch_size: int = 4, return_details: bool = False, progress: bool = True):
    """Token-weighted perplexity of a causal LM over a corpus of texts.

    Definition. Each text is tokenised on its own (``tokenizer(text)``, so with the
    tokenizer's usual special tokens); the first token of a text has no context and is
    not scored. PPL = exp( Σ_texts Σ_{t>=1} -log p(x_t | context) / N ), N = number of
    scored tokens in the whole corpus. Long texts are not averaged per text: every token
    weighs the same, so a long text counts more than a short one.

    Texts longer than ``max_length`` tokens (default: the model's context, at most 1024)
    are cut into windows of ``max_length`` tokens that start every ``stride`` tokens
    (default ``max_length // 2``). Each token is scored once, in the first window that
    contains it with context: a window scores only the tokens the previous window did not
    reach, and the tokens it shares with the previous window serve as context. So a token
    is predicted from at least ``max_length - stride`` tokens of context (when the text has
    them). ``stride == max_length`` gives disjoint chunks (each chunk's first token then
    cannot be scored). This fixes a small weighting slip in the loop in the transformers
    docs, which weighs every window after the first by one token too few.

    Empty texts and one-token texts contribute no tokens. Raises ``ValueError`` if the
    corpus has no scorable token. Returns the perplexity, or with ``return_details`` a dict
    ``{"perplexity", "nll" (mean), "nll_sum", "n_tokens"}``.

    Example:
        >>> from ftlab import load_model
        >>> model, tok = load_model("tiny")                       # doctest: +SKIP
        >>> perplexity(model, tok, ["Hello world.", "A longer text ..."])   # doctest: +SKIP
    """
    import torch
    import torch.nn.functional as F

    limit = getattr(model.config, "max_position_embeddings", None) or 1024
    max_length = max_length or min(limit, 1024)
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise ValueError(f"perplexity: stride must be between 1 and max_length={max_length}, "
                         f"got {stride}; a stride larger than the window would skip tokens")
    if max_length < 2:
        raise ValueError("perplexity: max_length must be at least 2 tokens")

    windows = _text_windows(tokenizer, texts, max_length, stride)
    # Similar lengths together so padding stays small; padding never changes the result
    # because padded positions are masked out of attention and out of the sum.
    windows.sort(key=lambda w: len(w[0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    nll_sum, n_tokens = 0.0, 0
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    was_training = model.training
    model.eval()
    try:
        from tqdm.auto import tqdm

        for batch in tqdm(batches, desc="perplexity", disable=not progress or len(batches) < 3):
            input_ids, attention, targets = _window_batch(batch, pad_id)
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device),
                               attention_mask=attention.to(device)).logits
            # position t predicts token t+1; compute in fp32 at least (fp64 if the model is)
            logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
            shifted = targets[:, 1:].to(device)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), shifted.reshape(-1),
                                  ignore_index=-100, reduction="sum")
            nll_sum += float(nll)
            n_tokens += int((shifted != -100).sum())
    finally:
        model.train(was_training)
    mean_nll = nll_sum / n_tokens
    ppl = math.exp(mean_nll)
    if return_details:
        return {"perplexity": ppl, "nll": mean_nll, "nll_sum": nll_sum, "n_tokens": n_tokens}
    return ppl


def _text_windows(tokenizer, texts, max_length: int, stride: int) -> list[tuple[list[int], int]]:
    """Every text cut into windows: (token ids of the window, index of its first scored position)."""
    windows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"perplexity: texts[{i}] is {type(text).__name__}, expected str")
        ids = tokenizer(text)["input_ids"]
        for begin, end, first in _windows(len(ids), max_length, stride):
            windows.append((ids[begin:end], first - begin))
    if not windows:
        raise ValueError("perplexity: no scorable tokens (every text is empty or one token long)")
    return windows


def _window_batch(batch, pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and targets (-100 where a token is not scored)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (ids, first) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        targets[row, first: len(ids)] = torch.tensor(ids[first:])
    return input_ids, attention, targets
