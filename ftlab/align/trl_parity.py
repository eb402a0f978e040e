"""The bridge to TRL 1.16 for the parity checks (tests/test_align.py, notebook 07's "same runs in TRL").

Three small conversions, kept in one place so that the tests and the notebook compare the same things:

- ``as_trl_dataset``: ftlab's preference records -> TRL's conversational preference format.
- ``examples_from_trl``: the pairs exactly as ``DPOTrainer`` tokenised them -> ftlab's tokenised examples.
  TRL scores the newline the chat template puts after ``<|im_end|>`` as part of each answer, ftlab does not
  (SFT does not train it); training ftlab on TRL's own token ids makes a live run comparable step by step.
- ``watch_grpo_loss``: while ``GRPOTrainer.train()`` runs, compute ftlab's ``grpo_loss`` on each batch TRL
  sampled (same prompts, completions and advantages, same model state) next to TRL's loss. Sampling is
  random, so the same *batch*, not the same seed, is what makes the two comparable.
"""

from __future__ import annotations

import torch

from ftlab.align.grpo import completion_batch
from ftlab.align.logprobs import token_logprobs
from ftlab.align.losses import grpo_loss


def as_trl_dataset(records):
    """Preference records (``messages``, ``chosen``, ``rejected``) -> a ``datasets.Dataset`` of
    ``{"prompt": messages, "chosen": [assistant turn], "rejected": [assistant turn]}``."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["messages"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in records])


def examples_from_trl(dataset) -> list[dict]:
    """``DPOTrainer.train_dataset`` rows (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) -> ftlab's
    tokenised pairs (as ``tokenize_preferences`` returns them: prompt masked with -100)."""
    examples = []
    for i, row in enumerate(dataset):
        p = list(row["prompt_ids"])
        sides = {side: {"input_ids": p + list(row[f"{side}_ids"]), "labels": [-100] * len(p) + list(row[f"{side}_ids"])}
                 for side in ("chosen", "rejected")}
        examples.append({**sides, "truncated": 0, "index": i})
    return examples


def watch_grpo_loss(trainer, pad_token_id: int) -> list[dict]:
    """Wrap ``trainer._compute_loss`` so that each call also computes ftlab's ``grpo_loss`` on TRL's batch.

    Returns a list that fills during ``trainer.train()``: one ``{"trl": loss, "ftlab": loss, "tokens": n}``
    per micro-batch. ftlab's side strips TRL's padding, rebuilds the batch with ``completion_batch``, takes
    the reference with the adapters off (TRL's reference for a PEFT model) and TRL's advantages; ``old``
    log-probs are the policy's own (one update per batch: ``num_iterations=1``). Settings are TRL's.
    """
    args, seen, original = trainer.args, [], trainer._compute_loss
    if args.num_iterations != 1:
        raise ValueError(f"watch_grpo_loss compares single-update steps; got num_iterations={args.num_iterations}. "
                         "Fix: GRPOConfig(num_iterations=1).")

    def compute_loss(model, inputs):
        keep_p, keep_c = inputs["prompt_mask"].bool(), inputs["completion_mask"].bool()
        prompts = [ids[m].tolist() for ids, m in zip(inputs["prompt_ids"], keep_p)]
        completions = [ids[m].tolist() for ids, m in zip(inputs["completion_ids"], keep_c)]
        batch = completion_batch(prompts, completions, pad_token_id)
        batch = {k: v.to(inputs["prompt_ids"].device) for k, v in batch.items()}
        mask = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] != -100
        with torch.no_grad():
            logps = token_logprobs(model, batch)
            with model.disable_adapter():
                ref = token_logprobs(model, batch)
            ours, _ = grpo_loss(logps, logps, ref, inputs["advantages"], mask, epsilon=args.epsilon,
                                epsilon_high=args.epsilon_high, beta=args.beta, loss_type=args.loss_type,
                                kl_ratio_correction=args.use_bias_correction_kl)
        loss = original(model, inputs)
        seen.append({"trl": loss.item(), "ftlab": ours.item(), "tokens": int(mask.sum() + keep_p.sum())})
        return loss

    trainer._compute_loss = compute_loss
    return seen
