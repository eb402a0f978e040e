"""The notebooks' exercises: the checker machinery (checkers), what a notebook calls (answers: ``check``,
``answer_or_solution``, ``solution``), plus one module per notebook (nbNN_topic).
"""

from ftlab._lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS = {
    "SOLUTIONS_ENV": "checkers", "Number": "checkers", "Function": "checkers", "Choice": "checkers",
    "Text": "checkers", "Exercise": "checkers", "EXERCISES": "checkers", "exercise": "checkers",
    "load_all": "checkers", "solutions_enabled": "checkers", "Mapping": "checkers",
    "answer_or_solution": "answers", "is_unanswered": "answers", "is_right": "answers", "check": "answers",
    "solution_source": "answers", "solution": "answers", "list_exercises": "answers",
}

_getattr, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name):
    if name == "EXERCISES":  # the registry, with every notebook's exercises in it (nb*.py imported on first use)
        from ftlab.exercises.checkers import load_all

        return load_all()
    return _getattr(name)
