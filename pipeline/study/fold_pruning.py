"""Fold-aware pruning for k-fold studies: stop a trial only when it cannot win on any fold.

A k-fold trial trains its folds in lockstep and reports their mean each epoch. A pruner that
compares means (median, percentile) stops a trial whose mean is slightly worse early on, and
on small data the fold spread is as large as the differences it judges: the pruned ``capacity``
search discarded the configuration the unpruned one found best. Bergman, Purucker & Hutter
("Don't Waste Your Time: Early Stopping Cross-Validation", AutoML 2024) found a *forgiving*
rule reliable where aggressive mean-against-mean rules were not: stop a trial's folds once it
cannot beat the incumbent's worst fold.

:class:`FoldPruner` applies that rule fold by fold at each lockstep epoch: after
``n_warmup_steps`` epochs, a trial stops when even its best fold is worse than the incumbent's
(the best complete trial's) worst fold at the same epoch (its last, once it stopped earlier).
The fold values come from the trial user attributes :data:`FOLDS_NOW_ATTR` (this epoch's,
written by the trial each epoch) and :data:`FOLD_CURVES_ATTR` (every epoch's, written when a
trial ends). On a holdout (one fold) it falls back to Optuna's median rule. A pruned trial's
curve stays in the study, so TPE learns from it as from any pruned trial (it ranks below every
complete one).
"""

from __future__ import annotations

import math
from typing import Any

from optuna.pruners import BasePruner, MedianPruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from pipeline.study.trial_attrs import FOLD_CURVES_ATTR, FOLDS_NOW_ATTR

__all__ = ["FoldPruner"]


class FoldPruner(BasePruner):
    """The forgiving fold-by-fold rule (see the module docstring).

    Args:
        n_warmup_steps: epochs every trial runs before it can be stopped.
        n_startup_trials: on a holdout, the median rule's trials before it stops any.
    """

    def __init__(self, n_warmup_steps: int = 1, n_startup_trials: int = 5) -> None:
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps cannot be negative, but got {n_warmup_steps=}.")
        self.n_warmup_steps = n_warmup_steps
        self._holdout = MedianPruner(n_startup_trials=n_startup_trials,
                                     n_warmup_steps=n_warmup_steps)

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None or step <= self.n_warmup_steps:
            return False
        mine = trial.user_attrs.get(FOLDS_NOW_ATTR)
        if not mine or len(mine) < 2:
            return bool(self._holdout.prune(study, trial))
        curves = _incumbent_curves(study, trial.number)
        if not curves:
            return False
        theirs = _finite(curves[min(step, len(curves)) - 1])
        ours = _finite(mine)
        if not theirs:
            return False
        if not ours:
            return True
        if study.direction == StudyDirection.MAXIMIZE:
            return max(ours) < min(theirs)
        return min(ours) > max(theirs)


def _incumbent_curves(study: Any, number: int) -> list[list[float]] | None:
    """The best complete trial's fold values per epoch (None: no complete trial has them)."""
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.number != number and t.value is not None and math.isfinite(t.value)
            and t.user_attrs.get(FOLD_CURVES_ATTR)]
    if not done:
        return None
    best = min(done, key=lambda t: (sign * float(t.value), t.number))
    return list(best.user_attrs[FOLD_CURVES_ATTR])


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]
