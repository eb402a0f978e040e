"""Exercises of notebook 02: loss math — cross-entropy, masking, accumulation, AdamW, schedules.

Each entry is a worked solution (the decorated function's body), a checker, and the typical mistakes
with their hints; ``ftlab/exercises/checkers.py`` says how answers are compared.
"""

from __future__ import annotations

import math

from ftlab.exercises.checkers import Function, Number, exercise


# --------------------------------------------------------------------------- loss (notebook 02)

_CE_LOGITS = [2.0, 0.5, -1.0, 0.0]  # a 4-token vocabulary
_CE_TARGET = 1


def _log_softmax(logits):
    top = max(logits)  # subtract the max so exp() cannot overflow; it cancels out
    log_z = top + math.log(sum(math.exp(z - top) for z in logits))
    return [z - log_z for z in logits]


@exercise(
    "loss.cross_entropy", Number(rtol=1e-3),
    question=f"Cross-entropy (in nats) of the logits {_CE_LOGITS} when the correct next token is index {_CE_TARGET}?",
    mistakes=[
        (lambda: -_log_softmax(_CE_LOGITS)[_CE_TARGET] / math.log(2), "That is in bits (log base 2); the loss uses the natural log."),
        (lambda: -_CE_LOGITS[_CE_TARGET], "The loss is -log softmax(logits)[target], not minus the raw logit: normalise first."),
        (lambda: math.exp(_log_softmax(_CE_LOGITS)[_CE_TARGET]), "That is the probability of the target; the loss is -log of it."),
        (lambda: -_log_softmax(_CE_LOGITS)[0], "That is the loss for index 0 (the largest logit); the target is index 1."),
    ],
    explanation="Cross-entropy = logsumexp(logits) - logits[target]; lower when the target's logit stands out.",
)
def _cross_entropy():
    logits, target = [2.0, 0.5, -1.0, 0.0], 1
    probs = [math.exp(z) for z in logits]
    probs = [p / sum(probs) for p in probs]  # softmax: p_i = e^{z_i} / sum_j e^{z_j}
    return -math.log(probs[target])  # ≈ 1.84 nats


def _ce_cases():
    import torch

    g = torch.Generator().manual_seed(0)
    cases = []
    for n_pos, vocab, masked in ((5, 7, [1, 3]), (3, 4, []), (6, 10, [0, 1, 2]), (1, 3, [])):
        logits = torch.randn(n_pos, vocab, generator=g) * 2
        targets = torch.randint(0, vocab, (n_pos,), generator=g)
        targets[masked] = -100
        cases.append((logits, targets))
    return cases


def _ce_ignoring_mask_in_mean():
    import torch

    def wrong(logits, targets):
        keep = targets != -100
        nll = -torch.log_softmax(logits.float(), -1)[keep, targets[keep]]
        return nll.sum() / len(targets)  # divides by *all* positions

    return wrong


@exercise(
    "loss.masked_cross_entropy", Function(_ce_cases, rtol=1e-4, atol=1e-5),
    question="Write masked_cross_entropy(logits, targets): logits [positions, vocab], targets [positions] "
             "with -100 on untrained positions; return the mean loss over the trained positions.",
    mistakes=[(_ce_ignoring_mask_in_mean, "Masked positions must leave the denominator too: divide by the "
                                          "number of trained tokens (targets != -100), not by all positions.")],
    explanation="Only trained tokens count, in the sum and in the count; this is what labels=-100 means.",
)
def _masked_cross_entropy():
    import torch

    def masked_cross_entropy(logits, targets):
        keep = targets != -100  # trained positions only
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        nll = -log_probs[keep, targets[keep]]  # -log p(correct token) at each trained position
        return nll.sum() / keep.sum()  # mean over trained tokens

    return masked_cross_entropy


# Gradient accumulation: two micro-batches of one optimizer step.
_ACC = [(30, 2.0), (10, 4.0)]  # (trained tokens, mean loss per trained token) per micro-batch


@exercise(
    "loss.accumulated_loss", Number(rtol=1e-3),
    question="One optimizer step has two micro-batches: 30 trained tokens with mean loss 2.0, then 10 trained "
             "tokens with mean loss 4.0. What is the step's loss, normalised per trained token?",
    mistakes=[
        (lambda: (2.0 + 4.0) / 2, "You averaged the two micro-batch means; that weights the 10-token batch like the "
                                  "30-token one. Sum the token losses, then divide by all 40 trained tokens."),
        (lambda: 2.0 + 4.0, "Your loss is ~2x too large: did you add the micro-batch means without dividing? "
                            "Weight each mean by its token count, then divide by the total."),
    ],
    explanation="Per-token normalisation across micro-batches makes accumulation equal to one big batch.",
)
def _accumulated_loss():
    total_loss = 30 * 2.0 + 10 * 4.0  # sum of per-token losses: 60 + 40
    total_tokens = 30 + 10
    return total_loss / total_tokens  # 2.5


@exercise(
    "loss.perplexity", Number(rtol=1e-3),
    question="Perplexity of a model whose mean cross-entropy is 2.0 nats per token?",
    mistakes=[(lambda: 2**2.0, "That is 2^loss; the loss is in nats, so perplexity is e^loss."),
              (lambda: 10**2.0, "That is 10^loss; the loss is in nats, so perplexity is e^loss.")],
    explanation="Perplexity e^loss is the number of equally likely tokens the model is choosing among.",
)
def _perplexity():
    mean_loss = 2.0  # nats per trained token
    return math.exp(mean_loss)  # ≈ 7.39


# --------------------------------------------------------------------------- optim (notebook 02)


@exercise(
    "optim.cosine_lr", Number(rtol=1e-3),
    question="Cosine schedule with linear warmup: peak lr 3e-4, 100 warmup steps, 1000 steps in total, floor 0. "
             "What is the learning rate at step 400?",
    mistakes=[
        (lambda: 3e-4 * 0.5 * (1 + math.cos(math.pi * 400 / 1000)),
         "The cosine starts after warmup: progress = (step - warmup) / (total - warmup) = 300/900."),
        (lambda: 3e-4 * math.cos(math.pi * 300 / 900), "The cosine factor is 0.5 * (1 + cos(pi * progress)), not cos(pi * progress)."),
        (lambda: 3e-4 * 0.5 * (1 + math.cos(math.pi * 400 / 900)), "Progress counts from the end of warmup: 400 - 100 = 300 steps of 900."),
    ],
    explanation="Same formula as transformers' get_cosine_schedule_with_warmup (and ftlab.optim.lr_at).",
)
def _cosine_lr():
    peak_lr, warmup, total, step = 3e-4, 100, 1000, 400
    progress = (step - warmup) / (total - warmup)  # 300 / 900 = 1/3 of the decay is done
    return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))  # 3e-4 * 0.75 = 2.25e-4


def _lr_cases():
    return [(s,) for s in (0, 1, 50, 99, 100, 101, 400, 550, 999, 1000)]


@exercise(
    "optim.cosine_with_floor_fn", Function(_lr_cases, rtol=1e-6, atol=1e-12),
    question="Write lr_at(step) for: peak 3e-4, 100 linear warmup steps from 0, then cosine decay to a floor "
             "of 10% of the peak (3e-5) at step 1000 (transformers' min_lr_rate=0.1 form).",
    mistakes=[
        (lambda: (lambda s: 3e-4 * s / 100 if s < 100 else 3e-4 * 0.5 * (1 + math.cos(math.pi * (s - 100) / 900))),
         "Your schedule decays to 0: the floor means lr = floor + (peak - floor) * cosine factor."),
        (lambda: (lambda s: 3e-4 * s / 100 if s < 100 else max(3e-5, 3e-4 * 0.5 * (1 + math.cos(math.pi * (s - 100) / 900)))),
         "Clipping at the floor is a different curve: rescale the cosine so it *ends* at the floor."),
    ],
    explanation="The floor form is factor * (1 - min_lr_rate) + min_lr_rate, applied after warmup.",
)
def _cosine_with_floor_fn():
    peak_lr, warmup, total, min_lr_rate = 3e-4, 100, 1000, 0.1

    def lr_at(step):
        if step < warmup:
            return peak_lr * step / warmup  # linear warmup from 0
        progress = (step - warmup) / (total - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))  # 1 -> 0
        return peak_lr * (min_lr_rate + (1 - min_lr_rate) * cosine)  # peak -> floor

    return lr_at


# --------------------------------------------------------------------------- loss (notebook 02)


@exercise(
    "loss.ce_grad", Number(rtol=1e-3, atol=1e-4),
    question=f"Gradient of the cross-entropy with respect to the logits {_CE_LOGITS} when the target is index "
             f"{_CE_TARGET}: a list of 4 numbers.",
    mistakes=[
        (lambda: [-(math.exp(v) - (i == _CE_TARGET)) for i, v in enumerate(_log_softmax(_CE_LOGITS))],
         "Right size, wrong sign: the loss falls when the target's logit rises, so its gradient is negative."),
        (lambda: [math.exp(v) for v in _log_softmax(_CE_LOGITS)],
         "That is the softmax alone; subtract 1 at the target index (the one-hot vector)."),
        (lambda: [math.exp(v) - 1 for v in _log_softmax(_CE_LOGITS)],
         "Subtract 1 only at the target index: the one-hot vector is 1 there and 0 elsewhere."),
    ],
    explanation="dl/dz = softmax(z) - one_hot(y): the entries sum to 0, and only the target's is negative.",
)
def _ce_grad():
    logits, target = [2.0, 0.5, -1.0, 0.0], 1
    exps = [math.exp(z) for z in logits]
    softmax = [e / sum(exps) for e in exps]
    one_hot = [1.0 if i == target else 0.0 for i in range(len(logits))]
    return [p - o for p, o in zip(softmax, one_hot)]  # ≈ [0.710, -0.842, 0.035, 0.096]


# --------------------------------------------------------------------------- optim (notebook 02)


@exercise(
    "optim.adam_first_step", Number(rtol=1e-3),
    question="First AdamW step (lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay) for a weight whose "
             "gradient is 0.004: how large is the change of the weight?",
    mistakes=[
        (lambda: 1e-3 * 0.004, "That is plain SGD (lr x gradient). Adam divides by the root of the squared-gradient "
                               "average, so the gradient's size cancels out."),
        (lambda: 1e-3 * (0.1 * 0.004) / math.sqrt(0.001 * 0.004**2),
         "You forgot the bias correction: m_hat = m / (1 - 0.9^1) and v_hat = v / (1 - 0.999^1)."),
        (lambda: 1e-3 * (0.1 * 0.004) / (0.001 * 0.004**2),
         "The denominator is the square root of v_hat (plus eps), not v_hat itself."),
    ],
    explanation="On step 1, m_hat = g and sqrt(v_hat) = |g|, so every weight moves by ~lr whatever its gradient.",
)
def _adam_first_step():
    lr, (b1, b2), eps, g = 1e-3, (0.9, 0.999), 1e-8, 0.004
    m = (1 - b1) * g  # moments start at 0
    v = (1 - b2) * g**2
    m_hat, v_hat = m / (1 - b1**1), v / (1 - b2**1)  # bias correction: m_hat = g, v_hat = g^2
    return lr * m_hat / (math.sqrt(v_hat) + eps)  # ≈ lr = 1e-3


# --------------------------------------------------------------------------- the loop (notebook 02)


def _tiny_run(seed: int):
    """A fresh (model, steps, optimizer, scheduler) for checking a training loop: a two-layer toy LM whose
    ``model(input_ids=..., attention_mask=...)`` returns an object with ``.logits``, like transformers'."""
    import types

    import torch

    class TinyLM(torch.nn.Module):
        def __init__(self, vocab=13, dim=8):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(vocab, dim), torch.nn.Linear(dim, vocab)

        def forward(self, input_ids, attention_mask=None, **_):
            h = self.embed(input_ids).cumsum(1)  # each position sees its past (a causal toy)
            return types.SimpleNamespace(logits=self.head(torch.tanh(h)))

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyLM()

    def micro(rows, length, n_prompt):  # prompt tokens are masked, as in SFT
        ids = torch.randint(0, 13, (rows, length), generator=g)
        labels = ids.clone()
        labels[:, :n_prompt] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    # Micro-batches of one step differ in trained tokens, so averaging their means gives another loss.
    steps = [[micro(2, 9, 2), micro(3, 5, 3)] for _ in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01)
    warmup, total = 1, len(steps)  # warmup then cosine, as ftlab's build_scheduler

    def factor(k):
        return k / warmup if k < warmup else 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))

    return model, steps, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Loop:
    """The answer is a training loop ``fn(model, steps, optimizer, scheduler, max_grad_norm)`` returning the
    loss of each step; it and the worked solution each train a fresh toy model, and the losses and the final
    weights are compared (a loop changes its model, so the ordinary Function checker cannot be used)."""

    cases = ((0, 1.0), (1, 0.05))  # (seed, max_grad_norm): 0.05 clips every step, 1.0 some

    def _run(self, fn, seed, max_norm):
        model, steps, optimizer, scheduler = _tiny_run(seed)
        losses = [float(x) for x in fn(model, steps, optimizer, scheduler, max_norm)]
        return losses, [p.detach().clone() for p in model.parameters()]

    def _same(self, a, b):
        import torch

        return len(a[0]) == len(b[0]) and all(abs(x - y) <= 1e-5 for x, y in zip(a[0], b[0])) and \
            all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a[1], b[1]))

    def __call__(self, answer, solution_fn, mistakes) -> tuple[bool, str]:
        if not callable(answer):
            return False, f"expected a function, got {type(answer).__name__}."
        try:
            got = [self._run(answer, *case) for case in self.cases]
        except Exception as error:  # the learner's code: report, don't crash the cell
            return False, f"your loop raised {type(error).__name__}: {error}"
        want = [self._run(solution_fn(), *case) for case in self.cases]
        if all(self._same(g, w) for g, w in zip(got, want)):
            return True, f"same losses and same final weights as the reference loop on {len(self.cases)} toy runs!"
        for wrong_fn, hint in mistakes:
            if all(self._same(g, self._run(wrong_fn(), *case)) for g, case in zip(got, self.cases)):
                return False, f"your losses {[round(x, 4) for x in got[0][0]]} differ from the reference's.\n   Hint: {hint}"
        same_losses = all(len(g[0]) == len(w[0]) and all(abs(x - y) <= 1e-5 for x, y in zip(g[0], w[0]))
                          for g, w in zip(got, want))
        where = "the final weights differ (the update)" if same_losses else "the losses differ"
        return False, (f"{where}: yours {[round(x, 4) for x in got[0][0]]}, reference {[round(x, 4) for x in want[0][0]]}. "
                       "Check the order: all backward()s of the step, then clip, optimizer.step(), scheduler.step(), zero_grad().")


def _wrong_loop(mean_of_means=False, clip=True, schedule=True, zero=True):
    import torch
    import torch.nn.functional as F

    def loop(model, steps, optimizer, scheduler, max_grad_norm=1.0):
        losses = []
        for micro_batches in steps:
            n_trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
            total = 0.0
            for b in micro_batches:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                targets = b["labels"][:, 1:]
                loss_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                           ignore_index=-100, reduction="sum")
                n = int((targets != -100).sum()) * len(micro_batches) if mean_of_means else n_trained
                (loss_sum / n).backward()
                total += loss_sum.item() / n
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            if schedule:
                scheduler.step()
            if zero:
                optimizer.zero_grad()
            losses.append(total)
        return losses

    return loop


@exercise(
    "loop.sft_loop", Loop(),
    question="Write sft_loop(model, steps, optimizer, scheduler, max_grad_norm): `steps` is a list of optimizer "
             "steps, each a list of micro-batches (dicts with input_ids, attention_mask, labels; -100 = not "
             "trained). Train one step per item and return the list of step losses (mean over the step's "
             "trained tokens).",
    mistakes=[
        (lambda: _wrong_loop(mean_of_means=True),
         "You averaged each micro-batch on its own, then averaged the means. Divide every micro-batch's summed "
         "loss by the trained tokens of the *whole step* (count them first, over all its micro-batches)."),
        (lambda: _wrong_loop(clip=False), "The gradient is never clipped: call torch.nn.utils.clip_grad_norm_("
                                          "model.parameters(), max_grad_norm) after the backward()s, before step()."),
        (lambda: _wrong_loop(schedule=False), "The learning rate never moves from its first value (0 during "
                                              "warmup): call scheduler.step() after every optimizer.step()."),
        (lambda: _wrong_loop(zero=False), "Gradients pile up from one step into the next: call "
                                          "optimizer.zero_grad() after every optimizer.step()."),
    ],
    explanation="This is ftlab.train's train_step, minus devices, logging and checkpoints.",
)
def _sft_loop():
    import torch
    import torch.nn.functional as F

    def sft_loop(model, steps, optimizer, scheduler, max_grad_norm=1.0):
        losses = []
        for micro_batches in steps:  # one item = one optimizer step
            # The denominator: trained tokens of the whole step (position t predicts label t+1).
            n_trained = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
            step_loss = 0.0
            for b in micro_batches:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                targets = b["labels"][:, 1:]  # shift: the label of the next position
                loss_sum = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                           ignore_index=-100, reduction="sum")
                (loss_sum / n_trained).backward()  # gradients add up over the micro-batches
                step_loss += loss_sum.item() / n_trained
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)  # rescale if the norm is larger
            optimizer.step()
            scheduler.step()  # the learning rate of the next step
            optimizer.zero_grad()  # start the next step from zero gradients
            losses.append(step_loss)
        return losses

    return sft_loop
