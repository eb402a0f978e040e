"""GRPO: sample a group of completions per prompt, score them with programs, push towards the better ones.

One step (:func:`grpo_step`):

1. **sample** ``G`` completions per prompt from the current policy (temperature, max new tokens);
2. **score** each with the reward functions (``ftlab.align.rewards``);
3. **advantage**: reward minus the group's mean, over the group's std - the group is the baseline,
   so no value model is needed (``group_advantages``);
4. **update**: the clipped policy-gradient objective with a k3 KL to the reference (``grpo_loss``);
   the reference is the model with its LoRA adapters off, as for DPO.

A group whose completions all get the same reward has advantage 0 everywhere and teaches nothing.
That is why GRPO starts from an SFT'd model: on the untrained base every completion of a course
task scores 0, every advantage is 0, and the gradient is exactly 0.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ftlab.align.logprobs import reference_model, token_logprobs
from ftlab.align.losses import group_advantages, grpo_loss
from ftlab.align.rewards import score_completions
from ftlab.data import collate, load_records, render_prompt
from ftlab.generation import generate_tokens, stop_token_ids


def grpo_prompts(rows) -> list[dict]:
    """Course records (any format ``load_records`` reads) -> ``{"messages", "reference", "task"}``:
    the prompt as SFT renders it, and the answer a reward function compares with."""
    out = []
    for record in load_records(rows, verbose=False):
        messages = record["messages"]
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"{record.get('_source', 'record')}: no answer to score against. "
                             "Fix: give records with an output / assistant turn (the reference answer).")
        out.append({"messages": messages[:-1], "reference": messages[-1]["content"], "task": record.get("task")})
    return out


def sample_completions(model, tokenizer, prompts: list[dict], num_generations: int, temperature: float = 1.0,
                       max_new_tokens: int = 48, top_p: float = 1.0, generator=None) -> dict:
    """``num_generations`` sampled completions of every prompt, the group's rows next to each other.

    Sampled by ftlab's one generation loop (``ftlab.evaluate.generate_tokens``) from torch's global
    generator (the training loop seeds it) or from ``generator``.
    Returns ``{"texts": [...], "prompt_ids": [[...]], "completion_ids": [[...]]}``; a completion's
    ids run up to and including its end-of-turn token (the token SFT trains, and that ends generation).
    """
    encoded = [tokenizer(render_prompt(p["messages"], tokenizer), add_special_tokens=False)["input_ids"]
               for p in prompts]
    prompt_ids = [ids for ids in encoded for _ in range(num_generations)]
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    was_training = model.training
    model.eval()
    try:
        completion_ids = generate_tokens(model, prompt_ids, max_new_tokens=max_new_tokens, stop_ids=stops,
                                         pad_id=pad_id, do_sample=True, temperature=temperature, top_p=top_p,
                                         generator=generator)
    finally:
        model.train(was_training)
    decoded = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return {"texts": decoded, "prompt_ids": prompt_ids, "completion_ids": completion_ids}


def completion_batch(prompt_ids, completion_ids, pad_token_id: int = 0) -> dict:
    """Prompt + completion per row, right-padded, labels only on the completion (as SFT masks)."""
    rows = [{"input_ids": p + c, "labels": [-100] * len(p) + c} for p, c in zip(prompt_ids, completion_ids)]
    return collate(rows, pad_token_id=pad_token_id)


def grpo_batch_loss(model, tokenizer, samples: dict, advantages: torch.Tensor, config):
    """The GRPO loss of sampled completions with given advantages (the update half of a step)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in completion_batch(samples["prompt_ids"], samples["completion_ids"], pad_id).items()}
    mask = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] != -100
    only = config.trained_logits_only
    logps = token_logprobs(model, batch, temperature=config.temperature, trained_logits_only=only)
    with torch.no_grad(), reference_model(model) as ref:
        ref_logps = token_logprobs(ref, batch, temperature=config.temperature, trained_logits_only=only)
    loss, metrics = grpo_loss(logps, logps.detach(), ref_logps, advantages.to(device), mask, epsilon=config.epsilon,
                              beta=config.kl_beta, loss_type=config.grpo_loss_type,
                              kl_ratio_correction=config.kl_ratio_correction)
    return loss, {**{k: v.item() for k, v in metrics.items()}, "tokens": int(batch["attention_mask"].sum())}


def grpo_step(model, tokenizer, prompts: list[dict], reward_fns, config, reward_weights=None):
    """Sample, score and compute the GRPO loss for ``prompts``; returns ``(loss, record, samples)`` (no backward).

    ``config``: an ``AlignConfig`` (num_generations, temperature, max_new_tokens, epsilon, kl_beta,
    grpo_loss_type).
    """
    G = config.num_generations
    t0 = time.time()
    samples = sample_completions(model, tokenizer, prompts, G, config.temperature, config.max_new_tokens)
    group_records = [p for p in prompts for _ in range(G)]
    rewards = score_completions(reward_fns, samples["texts"], group_records, reward_weights)
    samples["rewards"] = rewards
    sample_s = time.time() - t0  # the part of a step without gradients that DPO and ORPO do not have
    loss, metrics = grpo_batch_loss(model, tokenizer, samples, group_advantages(rewards, G), config)
    grouped = rewards.view(-1, G)
    record = {"loss": loss.item(), "reward": rewards.mean().item(), "reward_std": grouped.std(1).mean().item(),
              "zero_std_groups": (grouped.std(1) == 0).float().mean().item(),
              "completion_chars": sum(len(t) for t in samples["texts"]) / len(samples["texts"]), "sample_s": sample_s,
              **metrics}
    return loss, record, samples


def train_grpo(model, tokenizer, prompts, reward_fns, config=None, callbacks=(), reward_weights=None, **overrides):
    """GRPO on ``prompts`` (from :func:`grpo_prompts`), ``config.batch_size`` prompts per micro-batch
    (``grad_accum_steps`` micro-batches per step), each sampled ``config.num_generations`` times;
    returns ``ftlab.training.TrainResult``.

    Runs on ``ftlab.train``'s set-up, loop, checkpoints and logs, as DPO does (``ftlab.align.loop.run_steps``);
    only the step below is GRPO's. Start from an SFT'd model whose adapters are merged (the reference is that model).
    """
    from ftlab.align.loop import AlignConfig, run_steps, step_indices

    config = dataclasses.replace(config or AlignConfig(loss="grpo"), loss="grpo", **overrides)
    prompts = list(prompts)
    samples_log = []
    accum = config.grad_accum_steps

    def step_fn(policy, step):
        record, texts = {}, []
        for micro in range(accum):
            idx = step_indices(len(prompts), config.batch_size, step * accum + micro, config.seed)
            loss, part, samples = grpo_step(policy, tokenizer, [prompts[i] for i in idx], reward_fns, config,
                                            reward_weights)
            (loss / accum).backward()
            texts += samples["texts"]
            for k, v in part.items():  # the step's numbers: the mean over its micro-batches
                record[k] = record.get(k, 0) + (v if k in ("tokens", "sample_s") else v / accum)
        samples_log.append(texts)
        return record

    result = run_steps(model, tokenizer, config, step_fn, callbacks)
    result.samples = samples_log  # every step's completions, to read what the policy learned to say
    return result
