"""Measuring an aligned model: preference accuracy and KL from the reference.

- ``implicit_margins``: per held-out pair, the DPO implicit reward margin
  ``(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))`` (beta left out);
  positive means the model moved towards the preferred answer relative to the reference. With
  ``reference=False`` it is the plain log-likelihood margin ``log pi(chosen) - log pi(rejected)``,
  what the base model "prefers" on its own.
- ``kl_from_reference``: the exact KL(policy || reference) of the next-token distributions, summed over
  the vocabulary, averaged over the answer tokens of fixed texts: how far the policy drifted.

A step's peak memory is ``ftlab.training.measure.step_peak_mb`` (CUDA's counter on a GPU, torch's
``MemTracker`` on a CPU, which counts tensors, not the process; ``tensor_tracker`` keeps only its global
peak, which makes it about 10x cheaper on a 30-layer model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftlab.align.logprobs import reference_logprobs, reference_model, sequence_logprobs
from ftlab.align.preferences import collate_preferences, split_pairs
from ftlab.data import model_inputs
from ftlab.training import next_token_targets


def _batches(examples, batch_size, pad_token_id, device):
    for start in range(0, len(examples), batch_size):
        batch = collate_preferences(examples[start:start + batch_size], pad_token_id)
        yield {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def implicit_margins(model, examples, batch_size: int = 8, pad_token_id: int = 0, reference: bool = True,
                     ref_model=None) -> list[float]:
    """Implicit reward margins (see the module docstring), one per pair, in nats.

    The reference is ``ref_model``, else ``model`` with adapters off; examples that carry cached
    ``ref_chosen``/``ref_rejected`` (``precompute_reference``) use those instead.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    margins = []
    for start, batch in zip(range(0, len(examples), batch_size), _batches(examples, batch_size, pad_token_id, device)):
        chunk = examples[start:start + batch_size]
        chosen, rejected = split_pairs(sequence_logprobs(model, batch)[0])
        margin = chosen - rejected
        if reference:
            if all("ref_chosen" in e for e in chunk):
                ref_c = torch.tensor([e["ref_chosen"] for e in chunk], device=device)
                ref_r = torch.tensor([e["ref_rejected"] for e in chunk], device=device)
            else:
                ref_c, ref_r = split_pairs(reference_logprobs(model, batch, ref_model)[0])
            margin = margin - (ref_c - ref_r)
        margins += margin.tolist()
    model.train(was_training)
    return margins


def _answer_logprobs(model, batch):
    """Full next-token log-distributions at the answer positions: ``(n_answer_tokens, vocab)``."""
    keep = next_token_targets(batch["labels"]) != -100
    inputs = model_inputs({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")})
    logits = model(**inputs, use_cache=False).logits
    return F.log_softmax(logits[keep].float(), dim=-1)


@torch.no_grad()
def kl_from_reference(model, examples, batch_size: int = 8, pad_token_id: int = 0, ref_model=None,
                      side: str = "chosen") -> float:
    """Mean per-token KL(policy || reference) over the ``side`` answers of ``examples`` (nats/token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(examples, batch_size, pad_token_id, device):
        rows = slice(0, batch["input_ids"].shape[0] // 2) if side == "chosen" else slice(batch["input_ids"].shape[0] // 2, None)
        half = {k: v[rows] for k, v in batch.items() if k != "index"}
        policy = _answer_logprobs(model, half)
        with reference_model(model, ref_model) as ref:
            ref.eval()
            reference = _answer_logprobs(ref, half)
        total += (policy.exp() * (policy - reference)).sum().item()
        count += policy.shape[0]
    model.train(was_training)
    return total / max(count, 1)
