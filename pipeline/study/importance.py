"""Optuna's parameter importances without scikit-learn.

Importing ``optuna.importance`` imports scikit-learn's random forest (and so SciPy) for its
fANOVA evaluator, although the default evaluator, PED-ANOVA, which the report page and Optuna's
importance plot use, needs neither: 1.4 s at the end of every search (BENCHMARKS.md, "Fixed
costs of every command"). Importing this module imports ``optuna.importance`` with that one
optional import turned away (as if scikit-learn were not installed, which Optuna allows), and
puts it back at once: a later ``import sklearn.ensemble`` works as usual, and only Optuna's
fANOVA evaluator, which nothing here uses, reports scikit-learn missing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

_OPTIONAL = "sklearn.ensemble"  # fANOVA's random forest, imported by optuna.importance


@contextmanager
def _turned_away(name: str) -> Iterator[None]:
    """``import name`` fails (ModuleNotFoundError) inside the block, unless already imported."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        yield
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


with _turned_away(_OPTIONAL):
    from optuna.importance import get_param_importances  # noqa: E402

__all__ = ["get_param_importances"]
