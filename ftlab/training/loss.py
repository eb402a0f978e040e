"""The causal language-modelling loss, as ftlab's training loop computes it.

Notebook 02 derives it; this is the code. Three functions:

* :func:`causal_lm_loss` - logits + labels -> the *summed* cross-entropy over trained tokens, their
  count and how many were predicted right. A sum, because the training loop divides once by the
  trained tokens of the whole optimizer step (every micro-batch, every process): averaging each
  micro-batch first would weight a token in a short micro-batch more than one in a long one (the
  gradient-accumulation bug found in many trainers in 2024).
* :func:`forward_loss` - one forward pass of a model on a batch -> the same three numbers; with
  ``trained_logits_only`` it computes the output layer only where a label exists.
* :func:`evaluate_loss` - validation loss, perplexity and next-token accuracy over batches.

Example:
    >>> import torch
    >>> logits = torch.zeros(1, 3, 5)                 # 3 positions, a 5-token vocabulary, all equal
    >>> loss_sum, n, correct = causal_lm_loss(logits, torch.tensor([[-100, 2, 4]]))
    >>> int(n), round(float(loss_sum / n), 4)           # 2 trained tokens, each costs ln(5)
    (2, 1.6094)
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from ftlab.data.batching import model_inputs
from ftlab.data.templates import IGNORE_INDEX
from ftlab.training.parameters import is_peft_model


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, per_example: bool = False):
    """Summed next-token cross-entropy over trained tokens; returns ``(loss_sum, n_tokens, n_correct)``.

    Position ``t`` predicts token ``t + 1``, so labels are shifted left by one (padded with -100 at the
    end) rather than slicing the logits, which would copy the biggest tensor of the step. The sum, not
    the mean, is returned: the caller divides by the trained tokens of the *whole* optimizer step.

    ``per_example``: each row's token losses are divided by that row's trained tokens first, so the sum
    is over examples (each one's mean loss) and the count is of rows with a trained token
    (``TrainConfig.loss_weighting="example"``).
    """
    logits = logits[:, -labels.shape[1]:]  # prompt tuning puts virtual tokens in front; drop them
    targets = next_token_targets(labels)
    mask = targets != IGNORE_INDEX
    n_correct = ((logits.argmax(-1) == targets) & mask).sum()
    if per_example:
        losses = F.cross_entropy(logits.float()[mask], targets[mask], reduction="none")
        return _per_example_sum(losses, mask), _rows_trained(mask), n_correct
    loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, mask.sum(), n_correct


def _per_example_sum(token_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over rows of each row's mean token loss; ``token_losses`` are the ``mask``'s True positions, in order."""
    per_row = mask.sum(1)
    rows = mask.nonzero()[:, 0]
    return (token_losses / per_row[rows]).sum()


def _rows_trained(mask: torch.Tensor) -> torch.Tensor:
    return mask.any(1).sum()


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` shifted left by one: the token each position must predict (-100 where none is trained)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def count_trained_tokens(labels: torch.Tensor) -> int:
    """Positions that have a next-token label: the denominator of the loss (the first token of a row
    is never predicted, so ``labels[:, 1:]``)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def count_trained_examples(labels: torch.Tensor) -> int:
    """Rows with at least one trained token: the denominator when every example weighs the same."""
    return int((labels[:, 1:] != IGNORE_INDEX).any(1).sum())


def accepts_logits_mask(model) -> bool:
    """Can ``model`` compute logits for chosen positions only (transformers' ``logits_to_keep`` mask)?

    Not with prompt tuning (peft adds virtual tokens in front, so positions shift) or with a model
    class whose ``forward`` has no ``logits_to_keep`` argument.
    """
    import inspect

    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    base = model.get_base_model() if is_peft_model(model) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def forward_loss(model, batch, trained_logits_only: bool = False, per_example: bool = False):
    """One forward pass -> ``causal_lm_loss``'s ``(loss_sum, n_tokens, n_correct)``.

    ``trained_logits_only``: run the output layer only where a token is trained. It is the biggest
    matmul of a small model (hidden x 49,152 vocabulary here) and its fp32 logits the biggest tensor;
    in instruction data most positions are prompt (label -100), and their logits would only be thrown
    away. The loss and every gradient are the same (a test checks it); time and memory are not.
    """
    inputs = model_inputs({k: v for k, v in batch.items() if k not in ("labels", "seq_lengths")})
    if not trained_logits_only:
        return causal_lm_loss(model(**inputs, use_cache=False).logits, batch["labels"], per_example)
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    # A boolean (batch, seq) mask: transformers returns the logits of the True positions, flattened.
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    targets = targets[keep]
    n_correct = (logits.argmax(-1) == targets).sum()
    if per_example:
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        return _per_example_sum(losses, keep), _rows_trained(keep), n_correct
    return F.cross_entropy(logits.float(), targets, reduction="sum"), keep.sum(), n_correct


@torch.no_grad()
def evaluate_loss(model, batches, accelerator=None, trained_logits_only: bool = True) -> dict:
    """Validation loss (mean over trained tokens), perplexity ``exp(loss)`` and next-token accuracy.

    ``trained_logits_only`` (default): logits only where a token is scored, as in training. The numbers
    are the same; a batch of 16 chat examples no longer materialises 16 x length x 49,152 fp32 logits."""
    was_training = model.training
    model.eval()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, tokens, correct
    for batch in batches[rank::world]:  # each process takes its share of the batches
        ctx = accelerator.autocast() if accelerator else contextlib.nullcontext()
        with ctx:
            loss_sum, n, correct = forward_loss(model, {k: v.to(device) for k, v in batch.items()}, trained_logits_only)
        totals += torch.stack([loss_sum.double(), n.double(), correct.double()])
    if accelerator and world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700)), "val_token_acc": (totals[2] / totals[1].clamp(min=1)).item()}
