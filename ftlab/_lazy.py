"""Lazy exports: how the top-level ``ftlab`` offers its public names without importing torch up front.

``ftlab/__init__.py`` lists ``{public name: submodule}``. The first time a name is used, its submodule
is imported and the value cached on the package, so ``import ftlab`` stays instant in a notebook, the
workshop hub can ``import ftlab.workshop`` without torch, and ``from ftlab import train`` still works
like any import. The subpackages import their few public names plainly.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """Return ``(__getattr__, __dir__, __all__)`` for a package whose names live in ``exports``."""

    def __getattr__(name):
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f"{package}.{module}"), name)
        else:
            try:  # a submodule: ``ftlab.evaluate.metrics`` before anyone imported it
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        importlib.import_module(package).__dict__[name] = value
        return value

    def __dir__():
        return sorted(set(exports) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__, sorted(exports)
