"""Small helpers for the notebooks' sliders.

Every slider in the course drives a plain function that *returns* its numbers, so that a normal
cell can call the same function and assert the result (nbval checks those cells; nobody has to
move a slider in CI). ``ipywidgets.interact`` would print that return value under the plot;
:func:`quiet` keeps the widget's output to what the function draws or prints.

Example:
    >>> from ftlab.ui.widgets import quiet
    >>> def area(w=2, h=3):
    ...     return w * h
    >>> quiet(area)(4, 5) is None, quiet(area).__wrapped__ is area
    (True, True)
"""

from __future__ import annotations

import functools


def quiet(fn):
    """Wrap ``fn`` for ``interact``: same signature (so sliders map to its arguments), returns None."""

    @functools.wraps(fn)  # interact reads the signature through __wrapped__
    def wrapper(*args, **kwargs):
        fn(*args, **kwargs)

    return wrapper
