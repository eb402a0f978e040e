"""What a notebook calls: ``check`` an answer, hand ``answer_or_solution`` on to later cells, show a ``solution``.

Run All must never stop at an exercise. A learner who skipped one sees "not answered yet" and the
lesson goes on with the worked solution; a learner who answered goes on with their own answer, right
or wrong, so a wrong answer shows its consequences. With ``$FTLAB_SOLUTIONS=1`` (CI) every exercise
is answered by its worked solution, which must pass its own checker.

Example:
    >>> is_unanswered(...), is_unanswered(lambda x: x)
    (True, False)
"""

from __future__ import annotations

import dis
import inspect
import textwrap

from ftlab.exercises.checkers import (SOLUTIONS_ENV, Exercise, Function, _as_array, _get, _short, load_all,
                                      solutions_enabled)


def is_unanswered(answer) -> bool:
    """True for a placeholder still as the notebook left it: ``...``, None, or a function whose body
    is only ``...`` or ``pass`` (such a function does nothing but return None)."""
    if answer is Ellipsis or answer is None:
        return True
    code = getattr(answer, "__code__", None)
    if code is None:
        return False
    steps = [i for i in dis.get_instructions(code) if i.opname not in ("RESUME", "NOP", "CACHE")]
    # `...` alone compiles to "load the constant, drop it, return None"; anything else is an attempt
    return all(i.opname in ("LOAD_CONST", "POP_TOP", "RETURN_VALUE", "RETURN_CONST")
               and (i.opname not in ("LOAD_CONST", "RETURN_CONST") or i.argval in (None, Ellipsis)) for i in steps)


def _shape(value):
    """The array shape of a numeric result (None when it is not numeric, e.g. a string)."""
    try:
        return _as_array(value).shape
    except (TypeError, ValueError):
        return None


def _unusable(ex: Exercise, answer) -> str:
    """Why later cells could not run with this answer (empty if they can).

    Only a function answer can break later cells: one that is not a function, raises, returns None,
    or returns a result of another kind or shape than the worked solution's on the exercise's own
    test inputs (a string for a number, 5 labels for 6 tokens). Wrong *values* are a lesson; a crash is not.
    """
    if not isinstance(ex.checker, Function):
        return ""
    if not callable(answer):
        return f"is not a function ({type(answer).__name__})"
    cases = ex.checker.cases() if callable(ex.checker.cases) else ex.checker.cases
    reference = ex.solution()
    for args in cases:
        try:
            got = answer(*args)
        except Exception as error:  # the learner's code: report it, don't crash the lesson
            return f"raised {type(error).__name__}: {error}"
        if got is None:
            return "returned None (a missing `return`?)"
        want = _shape(reference(*args))
        if want is not None and _shape(got) != want:
            kind = "a non-number" if _shape(got) is None else f"shape {_shape(got)}"
            return f"returned {kind} ({_short(got)}) where the lesson needs shape {want}"
    return ""


def is_right(exercise_id: str, answer) -> bool:
    """Whether ``answer`` passes the exercise's checker, quietly (nothing printed).

    Later cells assert a claim that builds on an answer only when the answer is right, so a wrong
    answer shows its consequences instead of stopping Run All::

        assert ok or not is_right("lora.merge_weight", merge)   # a right merge() must reproduce peft's
    """
    if solutions_enabled():
        return True
    ex = _get(exercise_id)
    if is_unanswered(answer):
        return False
    try:
        return bool(ex.checker(answer, ex.solution, ex.mistakes)[0])
    except Exception:  # a checker meeting an odd answer: not right
        return False


def answer_or_solution(exercise_id: str, answer):
    """The answer later cells should build on, so that Run All carries the lesson to the end.

    * with ``$FTLAB_SOLUTIONS=1`` (CI): the worked solution's answer;
    * an unanswered exercise (``...``, or a function whose body is still ``...``): the worked
      solution's answer, and a line saying so;
    * a function that raises or returns None on the exercise's test inputs: the same, and why;
    * otherwise the learner's own answer, right or wrong (a wrong one shows its consequences).

    Use it where later cells build on an exercise's result::

        my_loss = answer_or_solution("loss.cross_entropy_fn", my_loss)
    """
    ex = _get(exercise_id)
    if solutions_enabled():
        return ex.solution()
    why = "not answered yet" if is_unanswered(answer) else _unusable(ex, answer)
    if why:
        if why != "not answered yet":
            why = f"your answer {why}"
        print(f"✏️ {exercise_id}: {why}; the reference answer is used below so that the lesson can go on.")
        return ex.solution()
    return answer


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
    if is_unanswered(answer):
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
    return sorted(e for e in load_all() if e.startswith(prefix))

