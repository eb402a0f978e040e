"""Exercise checkers for the notebooks: ``check(exercise_id, answer)`` says right or wrong, and why.

Every exercise lives in one registry. An entry is a *worked solution* (a small function whose
body computes the right answer step by step, with comments), a *checker* that says how an answer
is compared with it (a number within a tolerance, a function called on test inputs, a choice,
a piece of text), and a list of *known mistakes*: wrong answers learners typically produce, each
with the hint that explains it. When an answer matches no known mistake, number checkers still
diagnose it (about 2x off, percent instead of fraction, GB instead of GiB, wrong log base, ...).

In a notebook:

    >>> from ftlab import check
    >>> check("memory.weights_gib", 13.04)                                  # doctest: +SKIP
    ✅ memory.weights_gib: right! 7e9 parameters x 2 bytes = 13.04 GiB.
    True
    >>> check("memory.weights_gib", 14.0)                                   # doctest: +SKIP
    ❌ memory.weights_gib: 14 is not right (expected about 13.04).
       Hint: that is GB (10^9 bytes); the question asks for GiB (2^30 bytes).
    False
    >>> from ftlab.exercises.checkers import solution
    >>> solution("memory.weights_gib")                                      # doctest: +SKIP

Adding an exercise (notebook authors: put it in the section of your notebook below)::

    @exercise("loss.perplexity", Number(rtol=1e-3),
              question="Perplexity of a model whose mean cross-entropy is 2.0 nats per token?",
              mistakes=[(lambda: 2 ** 2.0, "That is 2^loss; the loss is in nats, so use e^loss.")])
    def _():
        mean_loss = 2.0                  # nats per trained token
        return math.exp(mean_loss)       # perplexity = e^(mean cross-entropy)

Solutions in CI: notebooks are stored with the learner's placeholders (``answer = ...``). With
``FTLAB_SOLUTIONS=1`` in the environment (the README's test command sets it), :func:`check`
checks the registered worked solution instead of the placeholder and *raises* if the solution
fails its own checker, so nbval exercises every checker. :func:`answer_or_solution` hands the
solution to later cells that use the learner's answer. Without the flag both do nothing special.
"""

from __future__ import annotations

import inspect
import math
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

SOLUTIONS_ENV = "FTLAB_SOLUTIONS"


# --------------------------------------------------------------------------- comparing values


def _as_array(value) -> np.ndarray:
    """Numbers, lists, numpy arrays and torch tensors as a float array (raises if not numeric)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().float().numpy()
    if isinstance(value, (str, bytes)) or value is None or value is Ellipsis:
        raise TypeError(f"not a number: {value!r}")
    return np.asarray(value, dtype=float)


def _close(got, expected, rtol: float, atol: float) -> bool:
    try:
        a, b = _as_array(got), _as_array(expected)
    except (TypeError, ValueError):
        try:
            return bool(got == expected)
        except Exception:  # e.g. comparing containers whose == is elementwise
            return False
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _short(value, limit: int = 80) -> str:
    """A value printed compactly: 4 significant digits for floats, shapes for arrays and tensors."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v, limit) for v in value) + ")"
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif hasattr(value, "shape") and getattr(value, "ndim", 0) == 0:
        text = f"{float(value):.4g}"
    elif hasattr(value, "shape"):
        text = f"{type(value).__name__} of shape {tuple(value.shape)}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ratio_hint(got: float, expected: float) -> str:
    """Diagnose a wrong number from how it relates to the right one (used when no known mistake matched)."""
    if expected == 0 or not math.isfinite(got):
        return "Recompute step by step; print the intermediate values."
    ratio = got / expected
    near = lambda x, tol=0.02: abs(ratio - x) <= tol * abs(x)  # noqa: E731
    if near(-1):
        return "Right size, wrong sign."
    if near(2):
        return "Your answer is ~2x too large: is something counted twice, or a 2 missing in a divisor?"
    if near(0.5):
        return "Your answer is ~2x too small: is a factor of 2 (or one of two parts) missing?"
    if near(100) or near(0.01):
        return "Off by 100: a percentage where a fraction is asked (or the other way round)?"
    if near(1e9 / 2**30, 0.005) or near(2**30 / 1e9, 0.005):
        return "Off by 7%: that is GB (10^9 bytes) vs GiB (2^30 bytes)."
    for power, unit in ((1, "KiB"), (2, "MiB"), (3, "GiB")):
        if near(1024**power) or near(1024.0**-power):
            return f"Off by 1024^{power}: check your units (bytes vs {unit})."
    if near(1 / math.log(2)) or near(math.log(2)):
        return "Off by a factor ln 2: natural log (nats) and log base 2 (bits) are mixed up."
    if near(8) or near(1 / 8):
        return "Off by 8: bits vs bytes?"
    exponent = math.log10(abs(ratio)) if ratio != 0 else 0.0
    if ratio > 0 and abs(exponent - round(exponent)) < 0.01 and round(exponent) != 0:
        return f"Off by 10^{round(exponent)}: check your units and powers of ten."
    if ratio < 0:
        return "Wrong sign, and the size is off too: recompute step by step."
    if ratio > 2 or ratio < 0.5:
        factor = ratio if ratio > 1 else 1 / ratio
        shown = f"{factor:,.0f}" if factor >= 10 else f"{factor:.2g}"
        return f"Your answer is about {shown}x too {'large' if ratio > 1 else 'small'}: recompute step by step."
    return f"Your answer is {abs(ratio - 1) * 100:.0f}% too {'large' if ratio > 1 else 'small'}."


# --------------------------------------------------------------------------- checkers
# A checker compares an answer with the worked solution and returns (ok, message).
# `mistakes` are (wrong_answer_maker, hint) pairs; a checker turns the first one that
# matches the learner's answer into the hint it prints.


@dataclass
class Number:
    """The answer is a number (or array) within ``rtol`` / ``atol`` of the solution's value."""

    rtol: float = 1e-3
    atol: float = 0.0

    def __call__(self, answer, solution_fn, mistakes) -> tuple[bool, str]:
        expected = solution_fn()
        try:
            got = float(_as_array(answer)) if np.ndim(_as_array(answer)) == 0 else _as_array(answer)
        except (TypeError, ValueError):
            return False, f"expected a number, got {type(answer).__name__} {_short(answer)}."
        if _close(got, expected, self.rtol, self.atol):
            return True, f"right! ({_short(expected)})"
        head = f"{_short(got)} is not right (expected about {_short(expected)})."
        for make_wrong, hint in mistakes:
            if _close(got, make_wrong(), max(self.rtol, 1e-3), self.atol):
                return False, f"{head}\n   Hint: {hint}"
        if np.ndim(got) == 0 and np.ndim(expected) == 0:
            return False, f"{head}\n   Hint: {_ratio_hint(float(got), float(expected))}"
        return False, head


@dataclass
class Function:
    """The answer is a function; it is called on every test case and compared with the solution.

    ``cases`` is a list of argument tuples, or a callable returning one (so cases can build
    torch tensors lazily). A mistake here is a *wrong function*: if the learner's function agrees
    with it on every case, its hint is shown.
    """

    cases: list | Callable[[], list]
    rtol: float = 1e-5
    atol: float = 1e-6

    def __call__(self, answer, solution_fn, mistakes) -> tuple[bool, str]:
        if not callable(answer):
            return False, f"expected a function, got {type(answer).__name__} {_short(answer)}."
        cases = self.cases() if callable(self.cases) else self.cases
        reference = solution_fn()  # the worked solution returns the reference function
        outputs = []
        for args in cases:
            try:
                got = answer(*args)
            except Exception as error:  # the learner's code: report, don't crash the cell
                return False, f"your function raised {type(error).__name__}: {error}\n   on input {_short(args)}."
            if got is None:
                return False, f"your function returned None on input {_short(args)}: did you forget `return`?"
            outputs.append(got)
        failed = [
            (args, got, reference(*args))
            for args, got in zip(cases, outputs)
            if not _close(got, reference(*args), self.rtol, self.atol)
        ]
        if not failed:
            return True, f"right on all {len(cases)} test inputs!"
        args, got, want = failed[0]
        head = (f"wrong on {len(failed)} of {len(cases)} test inputs, e.g. input {_short(args)}:\n"
                f"   yours {_short(got)}, expected {_short(want)}.")
        for wrong_fn, hint in mistakes:
            wrong = wrong_fn()
            try:
                if all(_close(got_i, wrong(*a), self.rtol, self.atol) for a, got_i in zip(cases, outputs)):
                    return False, f"{head}\n   Hint: {hint}"
            except Exception:  # a mistake model that does not apply to this input
                continue
        try:
            if np.ndim(_as_array(got)) == 0:
                return False, f"{head}\n   Hint: {_ratio_hint(float(_as_array(got)), float(_as_array(want)))}"
        except (TypeError, ValueError):
            pass
        return False, head


@dataclass
class Choice:
    """The answer is one of ``options`` (a letter or a name); each wrong option can carry its own hint."""

    options: dict[str, str]  # key -> text shown with the question

    def __call__(self, answer, solution_fn, mistakes) -> tuple[bool, str]:
        expected = solution_fn()
        key = str(answer).strip().lower().strip("() .")
        if key not in self.options:
            listing = ", ".join(f"{k!r}" for k in self.options)
            return False, f"{_short(answer)} is not one of the options ({listing})."
        if key == expected:
            return True, f"right! ({key}: {self.options[key]})"
        for wrong_fn, hint in mistakes:
            if key == wrong_fn():
                return False, f"{key} is not the best choice.\n   Hint: {hint}"
        return False, f"{key} is not the best choice. Re-read the constraints in the question."


@dataclass
class Text:
    """The answer is a string, compared after stripping (and lower-casing unless ``case=True``)."""

    case: bool = False

    def _norm(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text if self.case else text.lower()

    def __call__(self, answer, solution_fn, mistakes) -> tuple[bool, str]:
        if not isinstance(answer, str):
            return False, f"expected a string, got {type(answer).__name__} {_short(answer)}."
        expected = solution_fn()
        if self._norm(answer) == self._norm(expected):
            return True, "right!"
        for wrong_fn, hint in mistakes:
            if self._norm(answer) == self._norm(wrong_fn()):
                return False, f"{answer!r} is not right.\n   Hint: {hint}"
        return False, f"{answer!r} is not right (expected {len(expected)} characters like {expected[:20]!r}...)."


# --------------------------------------------------------------------------- the registry


@dataclass
class Exercise:
    id: str
    question: str
    checker: Callable[[Any, Callable[[], Any], list], tuple[bool, str]]
    solution: Callable[[], Any]  # the worked solution; its source is what `solution(id)` shows
    mistakes: list = field(default_factory=list)  # [(make_wrong_answer, hint), ...]
    explanation: str = ""  # one or two sentences printed after a right answer and with the solution


EXERCISES: dict[str, Exercise] = {}


def exercise(exercise_id: str, checker, *, question: str, mistakes=(), explanation: str = ""):
    """Decorator that registers the decorated function as the worked solution of an exercise.

    ``mistakes`` is a list of ``(make_wrong_answer, hint)``: for a :class:`Number` or :class:`Choice`
    checker, ``make_wrong_answer()`` returns the wrong value; for a :class:`Function` checker it
    returns the wrong function.
    """

    def register(solution_fn):
        if exercise_id in EXERCISES:
            raise ValueError(f"exercise {exercise_id!r} is registered twice (ftlab/exercises.py); ids must be unique")
        EXERCISES[exercise_id] = Exercise(exercise_id, question, checker, solution_fn, list(mistakes), explanation)
        return solution_fn

    return register


def _get(exercise_id: str) -> Exercise:
    if exercise_id not in EXERCISES:
        similar = [e for e in EXERCISES if exercise_id.split(".")[0] in e] or sorted(EXERCISES)
        raise KeyError(f"no exercise {exercise_id!r} in ftlab/exercises.py; known ids include: {', '.join(similar[:8])}")
    return EXERCISES[exercise_id]


def solutions_enabled() -> bool:
    """True when ``$FTLAB_SOLUTIONS`` is set to 1/true/yes (CI runs the notebooks that way)."""
    return os.environ.get(SOLUTIONS_ENV, "").strip().lower() in {"1", "true", "yes"}


def answer_or_solution(exercise_id: str, answer):
    """The learner's ``answer``, or the worked solution's answer when ``$FTLAB_SOLUTIONS`` is on.

    Use it where later cells build on an exercise's result, so CI runs them with a right answer::

        my_loss = answer_or_solution("loss.cross_entropy_fn", my_loss)
    """
    return _get(exercise_id).solution() if solutions_enabled() else answer


def check(exercise_id: str, answer) -> bool:
    """Check an answer: prints ✅ or ❌ with a specific hint, returns True / False.

    An answer that is still the placeholder ``...`` is reported as not answered yet. With
    ``$FTLAB_SOLUTIONS=1`` the worked solution is checked instead, and an AssertionError is raised
    if it fails (a broken exercise must fail CI, not print a cross).

    Example:
        >>> check("loss.perplexity", 7.389)   # doctest: +SKIP
        ✅ loss.perplexity: right! (7.389)
        True
    """
    ex = _get(exercise_id)
    if solutions_enabled():
        ok, message = ex.checker(ex.solution(), ex.solution, ex.mistakes)
        if not ok:
            raise AssertionError(f"the worked solution of {exercise_id!r} fails its own checker: {message}")
        print(f"✅ {exercise_id}: {message} (worked solution checked, ${SOLUTIONS_ENV}=1)")
        return True
    if answer is Ellipsis or answer is None:
        print(f"✏️ {exercise_id}: not answered yet. {ex.question}\n   Replace the `...` with your answer and run the cell again.")
        return False
    ok, message = ex.checker(answer, ex.solution, ex.mistakes)
    if ok:
        tail = f"\n   {ex.explanation}" if ex.explanation else ""
        print(f"✅ {exercise_id}: {message}{tail}")
    else:
        print(f"❌ {exercise_id}: {message}\n   Stuck? ftlab.exercises.solution({exercise_id!r}) shows a worked solution.")
    return ok


def solution_source(exercise_id: str) -> str:
    """The worked solution as text: question, the solution function's body, the explanation."""
    ex = _get(exercise_id)
    source = textwrap.dedent(inspect.getsource(ex.solution))
    body = source[source.index("def "):]  # drop the @exercise(...) decorator lines
    parts = [f"# {exercise_id}: {ex.question}", body.rstrip()]
    if ex.explanation:
        parts.append(f"# {ex.explanation}")
    return "\n".join(parts)


def solution(exercise_id: str) -> None:
    """Print the worked solution of an exercise (question, code, explanation)."""
    print(solution_source(exercise_id))


def list_exercises(prefix: str = "") -> list[str]:
    """Ids of the registered exercises, optionally only those starting with ``prefix``."""
    return sorted(e for e in EXERCISES if e.startswith(prefix))


# =========================================================================== the exercises
# One section per topic. Each entry: @exercise(id, checker, question=..., mistakes=[...]) above a
# function whose body is the worked solution, computed from first principles (the tests cross-check
# it against ftlab's modules). Ids are "<topic>.<name>"; the topic matches the ftlab module.

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


# --------------------------------------------------------------------------- memory (notebooks 00, 03)


@exercise(
    "memory.weights_gib", Number(rtol=5e-3),
    question="How many GiB do the weights of a 7-billion-parameter model take in bf16?",
    mistakes=[
        (lambda: 7e9 * 2 / 1e9, "That is GB (10^9 bytes); the question asks for GiB (2^30 bytes)."),
        (lambda: 7e9 * 4 / 2**30, "That is fp32 (4 bytes per parameter); bf16 has 16 bits = 2 bytes."),
        (lambda: 7e9 * 16 / 2**30, "That counts bits, not bytes: bf16 is 16 bits = 2 bytes per parameter."),
    ],
    explanation="Weights alone; training adds gradients, optimizer states and activations on top.",
)
def _weights_gib():
    n_params = 7e9
    bytes_per_param = 2  # bf16: 16 bits
    return n_params * bytes_per_param / 2**30  # ≈ 13.04 GiB


@exercise(
    "memory.adamw_bytes_per_param", Number(rtol=1e-6),
    question="Full fine-tuning in fp32 with AdamW: how many bytes per parameter for weights + gradients + "
             "optimizer states (activations not counted)?",
    mistakes=[
        (lambda: 12, "You are missing one 4-byte item: weights, gradients, AND two AdamW moments (m and v)."),
        (lambda: 8, "AdamW keeps two fp32 states per parameter (m and v) on top of weights and gradients."),
        (lambda: 4, "That is the weights only; training also stores gradients and AdamW's two moments."),
    ],
    explanation="4 (weights) + 4 (gradients) + 8 (AdamW m and v) = 16 bytes: 4x the weights alone.",
)
def _adamw_bytes():
    weights, grads = 4, 4  # fp32
    adam_m, adam_v = 4, 4  # first and second moment, fp32
    return weights + grads + adam_m + adam_v  # 16


# --------------------------------------------------------------------------- methods / LoRA (notebook 04)

# SmolLM2-135M: hidden 576, 9 query heads and 3 key/value heads of 64 dims, 30 layers.
_SMOL = dict(hidden=576, kv_dim=3 * 64, layers=30)


@exercise(
    "lora.trainable_params", Number(rtol=1e-6),
    question="LoRA with rank r=8 on q_proj and v_proj of SmolLM2-135M (hidden 576, 3 key/value heads of 64 dims, "
             "30 layers). How many trainable parameters?",
    mistakes=[
        (lambda: 8 * (576 + 576) * 2 * 30, "v_proj is not 576 -> 576: grouped-query attention has 3 KV heads x 64 = 192 outputs."),
        (lambda: 8 * (576 + 576) + 8 * (576 + 192), "That is one layer; the adapters sit in each of the 30 layers."),
        (lambda: (576 * 576 + 576 * 192) * 30, "That is the size of the frozen weights; LoRA trains A (r x in) and B (out x r)."),
        (lambda: 8 * 576 * 30 + 8 * 576 * 30, "Each adapter has two matrices: A is r x in_features, B is out_features x r."),
    ],
    explanation="An adapter on Linear(in, out) adds r*(in + out) parameters; here 0.34% of the 135M.",
)
def _lora_params():
    r, hidden, kv_dim, layers = 8, 576, 3 * 64, 30
    q_proj = r * (hidden + hidden)  # A: r x 576, B: 576 x r
    v_proj = r * (hidden + kv_dim)  # A: r x 576, B: 192 x r
    return (q_proj + v_proj) * layers  # 460,800


# --------------------------------------------------------------------------- batching (notebook 01)

_BATCH_LENGTHS = [12, 30, 7, 18]


@exercise(
    "batching.padding_waste", Number(rtol=1e-3),
    question=f"A batch of {len(_BATCH_LENGTHS)} sequences with lengths {_BATCH_LENGTHS} is padded to its longest. "
             "What fraction of the batch's tokens are padding (a number between 0 and 1)?",
    mistakes=[
        (lambda: 53 / 67, "Divide the pad tokens by all tokens in the padded batch (4 x 30), not by the real tokens."),
        (lambda: 67 / 120, "That is the fraction of real tokens; padding is the rest."),
    ],
    explanation="Padded to the longest, short sequences waste compute; length grouping and packing cut this.",
)
def _padding_waste():
    lengths = [12, 30, 7, 18]
    padded = len(lengths) * max(lengths)  # 4 x 30 = 120 token slots
    real = sum(lengths)  # 67 real tokens
    return (padded - real) / padded  # 53 / 120 ≈ 0.44


# --------------------------------------------------------------------------- concepts (notebook 00)


@exercise(
    "concepts.method_for_16gb", Choice({"a": "full fine-tuning in bf16", "b": "LoRA on bf16 weights",
                                        "c": "QLoRA (4-bit base weights + LoRA)", "d": "train from scratch"}),
    question="You have one GPU with 16 GB and want to adapt a 7B model to your task. Which method fits?",
    mistakes=[
        (lambda: "a", "Full FT of 7B needs ~16 bytes/param with AdamW (over 100 GB) before activations."),
        (lambda: "b", "The bf16 weights alone are ~13 GiB; with activations and the CUDA context that does not fit in 16 GB."),
        (lambda: "d", "Training from scratch needs vastly more data and compute than adapting a pretrained model."),
    ],
    explanation="4-bit weights (~3.5 GiB for 7B) leave room for adapters, activations and the optimizer.",
)
def _method_for_16gb():
    weights_bf16_gib = 7e9 * 2 / 2**30  # 13.0 GiB: too close to 16 GB with activations on top
    weights_nf4_gib = 7e9 * 0.5 / 2**30  # 3.3 GiB (+ quantisation constants): fits
    assert weights_nf4_gib < 16 < weights_bf16_gib + 4
    return "c"


# =========================================================================== notebooks 00-02 (helper N1)
# Exercises added for notebooks 00_concepts, 01_data_preparation and 02_loss_math, on top of the
# loss / optim / batching / concepts entries above (which those notebooks also use).

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


# --------------------------------------------------------------------------- concepts (notebook 00)


@exercise(
    "concepts.gain_per_cost", Number(rtol=1e-3),
    question="Prompting scores 0.55, a fine-tuned model 0.85; fine-tuning costs $600 more than prompting over the "
             "system's life. How many score points (0-100 scale) does it buy per $100?",
    mistakes=[
        (lambda: (0.85 - 0.55) / 6, "Scores 0.55 and 0.85 are 55 and 85 points on the 0-100 scale."),
        (lambda: (85 - 55) / 600 * 1000, "That is per $1,000; the question asks per $100."),
        (lambda: 85 / 6, "Count the gain over prompting (85 - 55), not the fine-tuned score itself."),
    ],
    explanation="Gain per cost compares options on one scale: extra quality bought per unit of extra money.",
)
def _gain_per_cost():
    gain_points = 100 * (0.85 - 0.55)  # 30 points better than prompting
    extra_cost_in_100s = 600 / 100  # $600 = 6 x $100
    return gain_points / extra_cost_in_100s  # 5 points per $100


@exercise(
    "concepts.which_approach", Choice({"a": "prompt engineering only", "b": "retrieval-augmented generation (RAG)",
                                       "c": "fine-tuning", "d": "training from scratch"}),
    question="A bank's assistant must answer questions about its current interest rates and fees, which change "
             "every week, quoting the official documents. You have 50 labelled conversations. Which approach "
             "should you build first?",
    mistakes=[
        (lambda: "c", "Fine-tuning would bake this week's rates into the weights (wrong next week), and 50 examples "
                      "are too few. Fine-tune later for tone or format, if at all."),
        (lambda: "a", "The prompt alone cannot hold all the bank's documents, and the model does not know this week's "
                      "rates: the facts must be looked up for every question."),
        (lambda: "d", "A pretrained model already handles the language; training from scratch costs millions and "
                      "still would not know next week's rates."),
    ],
    explanation="Knowledge that is large or changes often belongs in retrieval; fine-tuning teaches behaviour and format.",
)
def _which_approach():
    facts_change_weekly, labelled_examples = True, 50
    needs_lookup = facts_change_weekly  # weights cannot track weekly changes; a search index can
    assert labelled_examples < 100  # too few to fine-tune reliably anyway
    return "b" if needs_lookup else "c"


# --------------------------------------------------------------------------- data (notebook 01)

import functools  # noqa: E402  (used by this section only)


@dataclass
class Mapping:
    """The answer is a dict that must equal the solution's (order does not matter)."""

    known_values: tuple = ()  # the names allowed on the right-hand side, for a specific hint

    def __call__(self, answer, solution_fn, mistakes) -> tuple[bool, str]:
        expected = solution_fn()
        if not isinstance(answer, dict):
            return False, f"expected a dict, got {type(answer).__name__} {_short(answer)}."
        if answer == expected:
            return True, f"right! ({_short(expected, 120)})"
        for wrong_fn, hint in mistakes:
            if answer == wrong_fn():
                return False, f"{_short(answer, 120)} is not right.\n   Hint: {hint}"
        unknown = [v for v in answer.values() if self.known_values and v not in self.known_values]
        if unknown:
            return False, (f"{unknown} {'is' if len(unknown) == 1 else 'are'} not one of ftlab's field names "
                           f"{list(self.known_values)}.")
        missing = sorted(set(expected) - set(answer))
        if missing:
            return False, f"your mapping leaves out the field(s) {missing}."
        return False, f"{_short(answer, 120)} is not right: check which of your fields holds what."


_QA_ROW = {"query": "Where is order BW-100200?", "background": "BW-100200 | shipped | ParcelGo", "response": "shipped"}


@exercise(
    "data.field_map", Mapping(known_values=("instruction", "input", "output", "prompt", "completion", "messages", "text")),
    question=f"A dataset's rows look like {_QA_ROW}. Give the field_map (your names -> ftlab's) that loads it as "
             "instruction triples, with the background text as the input.",
    mistakes=[
        (lambda: {"instruction": "query", "input": "background", "output": "response"},
         "The mapping goes from the dataset's names (keys) to ftlab's names (values): {'query': 'instruction', ...}."),
        (lambda: {"query": "prompt", "response": "completion"},
         "That loads it as prompt/completion and leaves the background out of the prompt; use instruction / input / output."),
        (lambda: {"query": "instruction", "response": "output"},
         "The background is missing: without it the question cannot be answered. Map it to 'input'."),
    ],
    explanation="field_map renames fields before the format is detected, so any layout can be read without editing the file.",
)
def _field_map():
    # the question is the instruction, the background goes with it as the input, the response is the answer
    return {"query": "instruction", "background": "input", "response": "output"}


_DATE_RECORD = {"messages": [{"role": "user", "content": "Normalise the date: 3 July 2025"},
                             {"role": "assistant", "content": "2025-07-03"}]}


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer():
    from ftlab.models import load_tokenizer

    return load_tokenizer("tiny")  # SmolLM2's tokenizer (the tiny model shares it); loaded once


def _date_record_counts():
    from ftlab.data.templates import tokenize_example

    tok = _smollm2_tokenizer()
    ex = tokenize_example(_DATE_RECORD, tok)
    trained = sum(label != -100 for label in ex["labels"])
    return trained, len(ex["input_ids"]), len(tok("2025-07-03", add_special_tokens=False)["input_ids"])


@exercise(
    "data.trained_tokens", Number(rtol=0, atol=0.5),
    question=f"With SmolLM2's tokenizer and chat template, how many tokens of {_DATE_RECORD} are trained "
             "(label != -100) by ftlab.tokenize_example?",
    mistakes=[
        (lambda: _date_record_counts()[2], "You counted the answer's tokens but not the end-of-turn token <|im_end|>, "
                                           "which is trained too: it teaches the model to stop."),
        (lambda: _date_record_counts()[1], "That is every token of the rendered conversation; only the assistant's reply "
                                           "(and its <|im_end|>) is trained."),
    ],
    explanation="Only the answer and its end-of-turn token are trained; system prompt, question and markup are masked.",
)
def _trained_tokens():
    from ftlab.data.templates import tokenize_example

    tok = _smollm2_tokenizer()  # SmolLM2's tokenizer, as ftlab.load_tokenizer("tiny") returns it
    example = tokenize_example(_DATE_RECORD, tok)
    return sum(label != -100 for label in example["labels"])  # "2025-07-03" + <|im_end|>


# =========================================================================== notebook 03 (helper N2)
# Exercises of 03_full_fine_tuning: memory of full fine-tuning, early stopping, checkpoints.


@exercise(
    "memory.full_ft_135m_gib", Number(rtol=2e-3),
    question="SmolLM2-135M has 134,515,008 parameters. How many GiB do its weights, gradients and AdamW states "
             "take in full fp32 fine-tuning (activations not counted)?",
    mistakes=[
        (lambda: 134_515_008 * 4 / 2**30, "That is the weights only; training also keeps a gradient and AdamW's "
                                          "two moments (m and v) per parameter: 16 bytes in all."),
        (lambda: 134_515_008 * 12 / 2**30, "One 4-byte item is missing: weight, gradient, AdamW m AND AdamW v."),
        (lambda: 134_515_008 * 8 / 2**30, "AdamW keeps two fp32 states per parameter on top of weight and gradient."),
        (lambda: 134_515_008 * 16 / 1e9, "That is GB (10^9 bytes); the question asks for GiB (2^30 bytes)."),
    ],
    explanation="16 bytes per parameter: about 2 GiB for 135M, over 100 GiB for a 7B model, before activations.",
)
def _full_ft_135m_gib():
    n_params = 134_515_008
    bytes_per_param = 4 + 4 + 4 + 4  # fp32 weight, gradient, AdamW m, AdamW v
    return n_params * bytes_per_param / 2**30  # ≈ 2.00 GiB


def _best_step_cases():
    h1 = [{"step": 0, "val_loss": 2.0}, {"step": 5, "loss": 1.9}, {"step": 10, "loss": 1.5, "val_loss": 1.6},
          {"step": 15, "loss": 1.1}, {"step": 20, "loss": 0.7, "val_loss": 1.7}]
    h2 = [{"step": 0, "val_loss": 3.0}] + [{"step": s, "loss": 3.0 - 0.4 * s, "val_loss": 3.0 - 0.2 * s + 0.05 * s * s}
                                           for s in range(1, 7)]
    h3 = [{"step": 0, "val_loss": 1.0}, {"step": 2, "loss": 0.4, "val_loss": 1.3}, {"step": 4, "loss": 0.6, "val_loss": 1.1}]
    return [(h1,), (h2,), (h3,)]


@exercise(
    "training.best_step", Function(_best_step_cases),
    question="Write best_step(history): the 'step' whose 'val_loss' is lowest (only evaluation steps have one).",
    mistakes=[
        (lambda: (lambda history: min((h for h in history if "loss" in h), key=lambda h: h["loss"])["step"]),
         "You picked the lowest *training* loss; it keeps falling while the model memorises. Use 'val_loss'."),
        (lambda: (lambda history: [h for h in history if "val_loss" in h][-1]["step"]),
         "That is the last evaluation; early stopping keeps the best one, the lowest 'val_loss'."),
        (lambda: (lambda history: min(range(len(history)), key=lambda i: history[i].get("val_loss", math.inf))),
         "That is the position in the list; return the record's 'step' field."),
    ],
    explanation="Early stopping keeps the checkpoint of the lowest validation loss, not the last or lowest training loss.",
)
def _best_step():
    def best_step(history):
        evaluated = [h for h in history if h.get("val_loss") is not None]  # evaluation steps only
        return min(evaluated, key=lambda h: h["val_loss"])["step"]  # min keeps the first on ties

    return best_step


@exercise(
    "checkpoint.lost_steps", Number(rtol=0, atol=0.5),
    question="A run checkpoints every 20 steps (save_every=20, keep_last=2) and crashes right after step 90 has "
             "finished. After resume_from='latest', how many completed optimizer steps must be trained again?",
    mistakes=[
        (lambda: 90, "That is starting over; resume_from='latest' continues from the newest checkpoint."),
        (lambda: 30, "keep_last=2 keeps two checkpoints (steps 60 and 80); resuming takes the newest, step 80."),
        (lambda: 11, "Step 90 finished before the crash, so steps 81 to 90 are lost: count them again."),
    ],
    explanation="Only the steps since the newest checkpoint are lost; checkpoint often enough that a crash is cheap.",
)
def _lost_steps():
    save_every, crashed_after = 20, 90
    last_checkpoint = crashed_after // save_every * save_every  # 80: the newest checkpoint
    return crashed_after - last_checkpoint  # 10 steps to train again


# =========================================================================== notebook 04 (helper N3)
# LoRA merging and NF4 double quantisation. (notebook 04 also uses "lora.trainable_params" above.)


def _merge_cases():
    import torch

    g = torch.Generator().manual_seed(4)
    cases = []
    for d_out, d_in, r, alpha in ((6, 5, 2, 4.0), (8, 8, 4, 16.0), (3, 7, 1, 1.0), (5, 4, 3, 8.0)):
        cases.append((torch.randn(d_out, d_in, generator=g), torch.randn(r, d_in, generator=g),
                      torch.randn(d_out, r, generator=g), alpha, r))
    return cases


@exercise(
    "lora.merge_weight", Function(_merge_cases, rtol=1e-5, atol=1e-5),
    question="Write merge(W, A, B, alpha, r): W [d_out, d_in] frozen, A [r, d_in], B [d_out, r]; return the merged "
             "weight that computes the same as the LoRA layer.",
    mistakes=[
        (lambda: (lambda W, A, B, alpha, r: W + B @ A), "The adapter's update is scaled by alpha / r; multiply B @ A by it."),
        (lambda: (lambda W, A, B, alpha, r: W + alpha * (B @ A)), "The scale is alpha / r, not alpha: divide by the rank."),
        (lambda: (lambda W, A, B, alpha, r: W + (r / alpha) * (B @ A)), "The scale is alpha / r (you used r / alpha)."),
        (lambda: (lambda W, A, B, alpha, r: (alpha / r) * (B @ A)), "Only the update: add the frozen weight W too."),
    ],
    explanation="Merging folds W0 + (alpha/r)·B·A into one matrix: the same function, no adapter layers at inference.",
)
def _merge_weight():
    def merge(W, A, B, alpha, r):
        # W: [d_out, d_in], A: [r, d_in], B: [d_out, r]
        return W + (alpha / r) * (B @ A)  # the adapter's update folded into the weight

    return merge


@exercise(
    "quant.double_quant_bits", Number(rtol=1e-4),
    question="NF4 with double quantisation: 4-bit codes, blocks of 64 weights whose absmax is stored in 8 bits, and "
             "one fp32 scale per 256 of those absmax values. How many bits per weight in total (ignore the one offset)?",
    mistakes=[
        (lambda: 4 + 32 / 64, "That is NF4 without double quantisation (fp32 absmax): the absmax is stored in 8 bits here."),
        (lambda: 4.0, "The codes alone; every block of 64 also stores its scale (8 bits), and every 256 blocks an fp32 one."),
        (lambda: 4 + 8 / 64, "Almost: the second-level fp32 scale (one per 256 blocks of 64 weights) adds 32 / 16384 bit."),
        (lambda: (4 + 8 / 64 + 32 / (64 * 256)) / 8, "That is bytes per weight; the question asks for bits."),
    ],
    explanation="≈ 4.127 bits = 0.516 bytes per weight, against 4.5 bits with fp32 block scales and 32 bits in fp32.",
)
def _double_quant_bits():
    codes = 4  # the NF4 code of each weight
    absmax_8bit = 8 / 64  # one 8-bit absmax per block of 64 weights
    second_level = 32 / (64 * 256)  # one fp32 scale per 256 blocks
    return codes + absmax_8bit + second_level  # ≈ 4.127


# =========================================================================== notebook 05 (helper N4)
# Exercises of 05_instruction_tuning: the end-of-turn label, and diagnosing a model that never stops.


def _eot_cases():
    from ftlab.data.templates import tokenize_example

    tok = _smollm2_tokenizer()
    records = [
        _DATE_RECORD,
        {"messages": [{"role": "system", "content": "Answer with one word."},
                      {"role": "user", "content": "Category of: 'my card was charged twice'?"},
                      {"role": "assistant", "content": "billing"},
                      {"role": "user", "content": "And: 'the parcel never arrived'?"},
                      {"role": "assistant", "content": "shipping"}]},
    ]
    cases = []
    for record in records:
        ex = tokenize_example(record, tok)
        cases.append((ex["input_ids"], ex["labels"], tok.convert_tokens_to_ids("<|im_end|>")))
    return cases


@exercise(
    "templates.mask_end_of_turn", Function(_eot_cases, rtol=0, atol=0),
    question="Write mask_end_of_turn(input_ids, labels, end_id): return a copy of labels in which every trained "
             "end-of-turn token (label == end_id) gets the label -100; everything else unchanged.",
    mistakes=[
        (lambda: (lambda input_ids, labels, end_id: [l for l in labels if l != end_id]),
         "Don't delete the token: labels must stay aligned with input_ids, one label per token. Set it to -100."),
        (lambda: (lambda input_ids, labels, end_id: [-100 if t == end_id else t for t in input_ids]),
         "You rebuilt the labels from input_ids, so every masked prompt token became trained again. Start from labels."),
        (lambda: (lambda input_ids, labels, end_id: labels[:max(i for i, l in enumerate(labels) if l == end_id)]
                  + [-100] + labels[max(i for i, l in enumerate(labels) if l == end_id) + 1:]),
         "Only the last turn's end token is masked; a multi-turn conversation has one per assistant turn."),
    ],
    explanation="Without a trained end-of-turn token the model is never taught where an answer ends.",
)
def _mask_end_of_turn():
    def mask_end_of_turn(input_ids, labels, end_id):
        # labels are not shifted: position i's label is the token at position i (or -100)
        return [-100 if label == end_id else label for label in labels]

    return mask_end_of_turn


@exercise(
    "instruct.never_stops", Choice({
        "a": "the learning rate was too high",
        "b": "the end-of-turn token's label was -100 (e.g. pad token = eos token, and padding masked by id)",
        "c": "the training data had no system prompt",
        "d": "LoRA rank too small to learn the format",
    }),
    question="After fine-tuning, the model writes the right answer and then keeps going ('### Instruction: ...') "
             "until max_new_tokens. Which cause is the most likely?",
    mistakes=[
        (lambda: "a", "A too-high learning rate shows as a loss spike or gibberish, not as a right answer that never ends."),
        (lambda: "c", "A system prompt steers the style; it is not what tells the model where its answer ends."),
        (lambda: "d", "The answers are right, so the adapter learned the task; what it never saw is a trained stop token."),
    ],
    explanation="The model only learns to emit the end-of-turn token if that token is a trained label.",
)
def _never_stops():
    return "b"  # masking the end-of-turn label (a classic when pad == eos) removes the only 'stop here' signal


# =========================================================================== notebook 06 (helper N5)
# Exercises of 06_evaluation: token F1 by hand, a word-level grounding check, sizing a test set.


@exercise(
    "evaluate.token_f1_verbose", Number(rtol=1e-3),
    question="Reference 'ParcelGo', prediction 'It was shipped with ParcelGo.' What is the SQuAD token F1?",
    mistakes=[
        (lambda: 0.2, "That is the precision (1 shared word of 5); F1 also uses the recall (1 of 1): 2PR/(P+R)."),
        (lambda: 1.0, "That is the recall; the four extra words lower the precision to 1/5."),
        (lambda: 0.0, "That is exact match; token F1 gives partial credit for the shared word 'parcelgo'."),
        (lambda: 2 * (1 / 6) / (1 + 1 / 6), "Punctuation is removed before splitting: 'parcelgo.' becomes 'parcelgo', "
                                             "so there are 5 predicted words, not 6."),
    ],
    explanation="Padding a right value with words costs precision: F1 = 1/3 here, and 1.0 for the bare value.",
)
def _token_f1_verbose():
    pred = "it was shipped with parcelgo".split()  # lower case, punctuation removed, no article to drop
    ref = ["parcelgo"]
    overlap = 1  # 'parcelgo' occurs in both
    precision, recall = overlap / len(pred), overlap / len(ref)  # 1/5 and 1/1
    return 2 * precision * recall / (precision + recall)  # = 1/3


_GROUNDING_STOP = frozenset({"a", "an", "the", "is", "was", "it", "of", "to", "in", "order", "status"})


def _grounding_cases():
    row = "| BW-990054 | Quentin Silva | 2025-06-30 | AeroKettle Mini | qty 2 | $39.90 | ParcelGo | Graz | returned |"
    return [
        ("returned", row, _GROUNDING_STOP),
        ("It was RETURNED.", row, _GROUNDING_STOP),  # case and punctuation must not matter
        ("shipped to Vienna", row, _GROUNDING_STOP),  # nothing grounded
        ("The order went to Graz", row, _GROUNDING_STOP),  # 'went' is not in the row: 1 of 2 content words
        ("BW-990054 returned on 2025-07-01", row, _GROUNDING_STOP),  # digits split into tokens
        ("", row, _GROUNDING_STOP),  # claims nothing
        ("the of it", row, _GROUNDING_STOP),  # only function words: claims nothing
        ("Graz Graz Vienna", row, _GROUNDING_STOP),  # counted per occurrence
        ("returned", row, frozenset()),  # with no stopwords
        ("Kettle Mini", row, _GROUNDING_STOP),  # 'kettle' is only part of the token 'aerokettle'
    ]


def _words_lower(text):
    import re

    return re.findall(r"[a-z0-9]+", text.lower())


@exercise(
    "evaluate.grounded_fraction", Function(_grounding_cases),
    question="Write grounded_fraction(answer, context, stopwords): tokens = re.findall(r'[a-z0-9]+', text.lower()) "
             "minus stopwords; return the fraction of the answer's tokens found among the context's tokens "
             "(1.0 if the answer has no content token).",
    mistakes=[
        (lambda: (lambda answer, context, stopwords: (lambda a: sum(t in context.lower() for t in a) / len(a) if a else 1.0)(
            [t for t in _words_lower(answer) if t not in stopwords])),
         "You searched the context as one string: 'to' is found inside 'Quentin'. Compare whole tokens (a set of the context's tokens)."),
        (lambda: (lambda answer, context, stopwords: (lambda a, c: sum(t in c for t in a) / len(a) if a else 1.0)(
            _words_lower(answer), set(_words_lower(context)))),
         "Drop the stopwords first: function words like 'the' or 'was' say nothing about whether the answer is grounded."),
        (lambda: (lambda answer, context, stopwords: (lambda a, c: sum(t in c for t in a) / len(a) if a else 0.0)(
            [t for t in _words_lower(answer) if t not in stopwords], set(_words_lower(context)) - set(stopwords))),
         "An answer with no content word claims nothing, so nothing in it is made up: return 1.0, not 0.0."),
        (lambda: (lambda answer, context, stopwords: (lambda a, c: len(set(a) & c) / len(c) if c else 1.0)(
            [t for t in _words_lower(answer) if t not in stopwords], set(_words_lower(context)) - set(stopwords))),
         "That is the share of the context used by the answer; the check asks how much of the ANSWER is in the context."),
    ],
    explanation="A word-level check: it catches invented words, not a wrong value copied from the context.",
)
def _grounded_fraction():
    import re

    def grounded_fraction(answer, context, stopwords):
        def words(text):
            return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in stopwords]

        claimed, available = words(answer), set(words(context))
        if not claimed:
            return 1.0  # nothing claimed, nothing made up
        return sum(t in available for t in claimed) / len(claimed)

    return grounded_fraction


@exercise(
    "evaluate.ci_sample_size", Number(rtol=0, atol=0.5),
    question="How many test examples give a 95% CI half-width of at most 0.05 for an accuracy, in the worst case "
             "p = 0.5 (z = 1.96)?",
    mistakes=[
        (lambda: 384, "384.16 must be rounded UP: 384 examples give a half-width just above 0.05."),
        (lambda: 400, "That uses z = 2; with z = 1.96 the answer is 385 (400 is a fine, slightly safer round number)."),
        (lambda: 20, "Square it: n = (z / half-width)^2 · p(1-p), the square root is in the half-width formula."),
        (lambda: 1537, "That is for a half-width of 0.025 (or a full width of 0.05); the question asks for ±0.05."),
        (lambda: 97, "That is for ±0.10; a half-width of 0.05 needs four times as many examples."),
    ],
    explanation="n = ⌈(1.96/0.05)² · 0.25⌉ = 385; halving the interval costs four times the examples.",
)
def _ci_sample_size():
    z, p, half_width = 1.96, 0.5, 0.05
    return math.ceil((z / half_width) ** 2 * p * (1 - p))  # 384.16 -> 385
