"""Exercise checkers for the notebooks: how an answer is compared with the worked solution, and the registry.

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
    >>> from ftlab.exercises import solution
    >>> solution("memory.weights_gib")                                      # doctest: +SKIP

Adding an exercise (notebook authors: put it in your notebook's module, ``nbNN_topic.py``)::

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
solution to later cells that use the learner's answer. Without the flag, a learner who skipped an
exercise still gets to the end of the notebook: :func:`answer_or_solution` says the exercise is not
answered yet and hands the worked solution on; an answered exercise hands on the learner's answer.
"""

from __future__ import annotations

import importlib
import math
import os
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
            raise ValueError(f"exercise {exercise_id!r} is registered twice (ftlab/exercises/); ids must be unique")
        EXERCISES[exercise_id] = Exercise(exercise_id, question, checker, solution_fn, list(mistakes), explanation)
        return solution_fn

    return register


def load_all() -> dict[str, Exercise]:
    """Import every notebook's exercise module (``ftlab/exercises/nbNN_*.py``) once; return the registry."""
    import pkgutil
    from pathlib import Path

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package's folder
        if info.name.startswith("nb"):
            importlib.import_module(f"ftlab.exercises.{info.name}")
    return EXERCISES


def _get(exercise_id: str) -> Exercise:
    load_all()
    if exercise_id not in EXERCISES:
        similar = [e for e in EXERCISES if exercise_id.split(".")[0] in e] or sorted(EXERCISES)
        raise KeyError(f"no exercise {exercise_id!r} in ftlab/exercises/; known ids include: {', '.join(similar[:8])}")
    return EXERCISES[exercise_id]


def solutions_enabled() -> bool:
    """True when ``$FTLAB_SOLUTIONS`` is set to 1/true/yes (CI runs the notebooks that way)."""
    return os.environ.get(SOLUTIONS_ENV, "").strip().lower() in {"1", "true", "yes"}


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
