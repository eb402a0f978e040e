"""Measuring an aligned model: preference accuracy and KL from the reference.

- ``implicit_margins``: per held-out pair, the DPO implicit reward margin
  ``(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))`` (beta left out);
  positive means the model moved towards the preferred answer relative to the reference. With
  ``reference=False`` it is the plain log-likelihood margin ``log pi(chosen) - log pi(rejected)``,
  what the base model "prefers" on its own.
- ``kl_from_reference``: the exact KL(policy || reference) of the next-token distributions, summed over
  the vocabulary, averaged over the answer tokens of fixed texts: how far the policy drifted.
- ``held_out_scores``: both, and each chosen answer's log-prob, from one forward of the policy, against a
  reference computed once (``reference_distributions``): what a table of many policies measured against one
  starting model needs, at half the forward passes.

A step's peak memory is ``ftlab.training.measure.step_peak_mb`` (CUDA's counter on a GPU, torch's
``MemTracker`` on a CPU, which counts tensors, not the process; ``tensor_tracker`` keeps only its global
peak, which makes it about 10x cheaper on a 30-layer model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftlab.align.logprobs import (reference_logprobs, reference_model, sequence_logprobs, shared_prompt_outputs,
                                  shares_prompts)
from ftlab.align.preferences import collate_preferences, split_pairs
from ftlab.data import IGNORE_INDEX, model_inputs
from ftlab.training import accepts_logits_mask, next_token_targets


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
        chosen, rejected = split_pairs(sequence_logprobs(model, batch, pairs=True)[0])   # each prompt once
        margin = chosen - rejected
        if reference:
            if all("ref_chosen" in e for e in chunk):
                ref_c = torch.tensor([e["ref_chosen"] for e in chunk], device=device)
                ref_r = torch.tensor([e["ref_rejected"] for e in chunk], device=device)
            else:
                ref_c, ref_r = split_pairs(reference_logprobs(model, batch, ref_model, pairs=True)[0])
            margin = margin - (ref_c - ref_r)
        margins += margin.tolist()
    model.train(was_training)
    return margins


def _kept_logprobs(model, batch, pairs: bool = False):
    """One forward: the full next-token log-distributions at every labelled position ``(n_kept, vocab)``, the
    row of each position, and its target token. The output layer runs only there (``logits_to_keep``).
    ``pairs``: a preference batch, whose prompts then run once per pair (``logprobs.shared_prompt_outputs``)."""
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    inputs = model_inputs({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")})
    if pairs and shares_prompts(model, batch):
        logits = shared_prompt_outputs(model, batch)
    elif accepts_logits_mask(model):
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits           # (n_kept, vocab)
    else:
        logits = model(**inputs, use_cache=False).logits[:, -targets.shape[1]:][keep]
    return F.log_softmax(logits.float(), dim=-1), keep.nonzero()[:, 0], targets[keep]


def _chosen_half(batch):
    """The chosen rows of a collated batch of pairs (``collate_preferences`` puts them first)."""
    half = batch["input_ids"].shape[0] // 2
    return {k: v[:half] for k, v in batch.items() if k != "index"}


def _kl(policy, reference):
    """Summed exact KL(policy || reference) over positions of two log-distributions, and the positions."""
    return (policy.exp() * (policy - reference)).sum().item(), policy.shape[0]


@torch.no_grad()
def reference_distributions(model, examples, batch_size: int = 8, pad_token_id: int = 0, ref_model=None) -> list:
    """The reference's next-token log-distributions at the chosen answers' positions, one tensor per batch, kept
    on the CPU (on a GPU they would sit inside every later memory reading).

    A fixed reference gives the same numbers for every policy measured against it: compute them once and
    pass them to ``held_out_scores`` (16 held-out pairs of the course's short answers keep ~40 MiB)."""
    device = next(model.parameters()).device
    with reference_model(model, ref_model) as ref:
        was_training = ref.training
        ref.eval()
        try:
            return [_kept_logprobs(ref, _chosen_half(batch))[0].cpu()
                    for batch in _batches(examples, batch_size, pad_token_id, device)]
        finally:
            ref.train(was_training)


@torch.no_grad()
def kl_from_reference(model, examples, batch_size: int = 8, pad_token_id: int = 0, ref_model=None) -> float:
    """Mean per-token KL(policy || reference) over the chosen answers of ``examples`` (nats/token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(examples, batch_size, pad_token_id, device):
        half = _chosen_half(batch)
        policy = _kept_logprobs(model, half)[0]
        with reference_model(model, ref_model) as ref:
            ref.eval()
            kl, n = _kl(policy, _kept_logprobs(ref, half)[0])
        total, count = total + kl, count + n
    model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def held_out_scores(model, examples, reference: list, batch_size: int = 8, pad_token_id: int = 0) -> dict:
    """Everything measured on held-out pairs, from one forward of the policy per batch:

    - ``margins``: the implicit reward margins against the examples' cached reference log-probs (as
      ``implicit_margins``; the examples must carry ``ref_chosen``/``ref_rejected``, ``precompute_reference``);
    - ``chosen_logps``: each chosen answer's summed log-prob under the policy;
    - ``kl``: the exact per-token KL(policy || reference) over the chosen answers, against ``reference`` =
      ``reference_distributions(...)`` computed once on the same examples with the same batch size.
    """
    missing = [i for i, e in enumerate(examples) if "ref_chosen" not in e or "ref_rejected" not in e]
    if missing:
        raise ValueError(f"held_out_scores: examples {missing[:5]} carry no cached reference log-probs. Fix: run "
                         f"precompute_reference(model, examples, batch_size) on them first.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    margins, chosen_logps, total, count = [], [], 0.0, 0
    batches = list(_batches(examples, batch_size, pad_token_id, device))
    if len(reference) != len(batches):
        raise ValueError(f"held_out_scores: {len(reference)} reference batches for {len(batches)} batches of examples. "
                         f"Fix: compute reference_distributions on the same examples with the same batch_size.")
    for start, batch, ref in zip(range(0, len(examples), batch_size), batches, reference):
        chunk = examples[start:start + batch_size]
        logp, row, target = _kept_logprobs(model, batch, pairs=True)   # each prompt once
        sums = torch.zeros(batch["input_ids"].shape[0], dtype=logp.dtype, device=logp.device).index_add_(
            0, row, logp.gather(1, target[:, None])[:, 0])                   # each row's summed answer log-prob
        policy = logp[row < batch["input_ids"].shape[0] // 2]                # the chosen rows' positions
        if policy.shape != ref.shape:
            raise ValueError(f"held_out_scores: batch at example {start} has {policy.shape[0]} answer tokens, its "
                             f"reference {ref.shape[0]}. Fix: reference_distributions on the same examples.")
        chosen, rejected = split_pairs(sums)
        ref_c = torch.tensor([e["ref_chosen"] for e in chunk], device=device, dtype=sums.dtype)
        ref_r = torch.tensor([e["ref_rejected"] for e in chunk], device=device, dtype=sums.dtype)
        margins += ((chosen - ref_c) - (rejected - ref_r)).tolist()
        chosen_logps += chosen.tolist()
        kl, n = _kl(policy, ref.to(device))
        total, count = total + kl, count + n
    model.train(was_training)
    return {"margins": margins, "chosen_logps": chosen_logps, "kl": total / max(count, 1)}
