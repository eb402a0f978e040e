"""The notebooks' exercises: the checker machinery (checkers), what a notebook calls (answers: ``check``,
``answer_or_solution``, ``solution``), plus one module per notebook (nbNN_topic).
"""

# The package's public names: imported from here by notebooks, tests and other packages.
from ftlab.exercises.answers import answer_or_solution, check, is_right, is_unanswered, solution, solution_source
from ftlab.exercises.checkers import SOLUTIONS_ENV, Number, exercise, load_all


def __getattr__(name):
    if name == "EXERCISES":  # the registry, with every notebook's exercises in it (nb*.py imported on first use)
        return load_all()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
