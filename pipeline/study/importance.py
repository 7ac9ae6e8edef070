"""Optuna's parameter importances without scikit-learn.

Importing ``optuna.importance`` imports scikit-learn's random forest (and so SciPy) for its
fANOVA evaluator, although the default evaluator, PED-ANOVA, which the report page and Optuna's
importance plot use, needs neither: 1.4 s at the end of every search (BENCHMARKS.md, "Fixed
costs of every command"). Importing this module imports ``optuna.importance`` with that one
optional import turned away (as if scikit-learn were not installed, which Optuna allows), and
puts it back at once: a later ``import sklearn.ensemble`` works as usual, and only Optuna's
fANOVA and mean-decrease-impurity evaluators, which nothing here uses, report scikit-learn
missing. PED-ANOVA is named explicitly (:func:`evaluator`): it is Optuna 5's default, not 4's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    import optuna.importance as _importance  # noqa: E402


def evaluator() -> Any:
    """PED-ANOVA, named rather than left to Optuna's default: before Optuna 5 the default was
    fANOVA, which needs the scikit-learn this module turned away."""
    return _importance.PedAnovaImportanceEvaluator()


def get_param_importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances of ``study`` by :func:`evaluator`."""
    return dict(_importance.get_param_importances(study, evaluator=evaluator()))


__all__ = ["evaluator", "get_param_importances"]
