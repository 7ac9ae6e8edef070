"""Folds: how a trial validates (K folds or one holdout), and the one rule for combining folds.

:func:`combine` is how fold values become one number everywhere (the per-epoch value the pruner
sees, the trial's value, the ``best/*`` summary): the mean over the folds that have the value,
and the population standard deviation beside it when two or more folds do (one fold has no
spread: no ``_std``, rather than a misleading 0).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import Params
from pipeline.data.cache import Cache
from pipeline.data.splits import holdout_split, kfold_splits
from pipeline.errors import UserError
from pipeline.study.spec import StudySpec


def combine(values: Iterable[float]) -> tuple[float, float | None]:
    """``(mean, std)`` over the fold values; std None with fewer than two values.

    Raises:
        ValueError: no values.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("combine: no fold values")
    mean = math.fsum(vals) / len(vals)
    return mean, (statistics.pstdev(vals) if len(vals) > 1 else None)


def combine_rows(
    rows: Sequence[dict[str, float]], *, skip: tuple[str, ...] = (), spread: str | None = None
) -> dict[str, float]:
    """Each key's :func:`combine` mean over the rows that have it (empty rows are ignored);
    ``<spread>_std`` too when ``spread`` is given and two or more rows have it."""
    rows = [r for r in rows if r]
    out: dict[str, float] = {}
    if not rows:
        return out
    for key in rows[0]:
        if key in skip:
            continue
        mean, std = combine(r[key] for r in rows if key in r)
        out[key] = mean
        if key == spread and std is not None:
            out[f"{key}_std"] = std
    return out


@dataclass(frozen=True)
class FoldPlan:
    """How a trial validates: ``folds`` validation splits, each a model trained on the rest of
    the training part (1: one holdout split of ``holdout``)."""

    folds: int  # K ≥ 2 for K-fold cross-validation; 1 for a holdout
    holdout: float | None  # the holdout's validation fraction (None for K-fold)
    splits: tuple[tuple[np.ndarray, np.ndarray], ...]  # (train_idx, val_idx) into the train part

    def describe(self) -> str:
        if self.holdout is None:
            return f"{self.folds}-fold cross-validation"
        return f"holdout ({self.holdout:g} of the training part for validation)"


def plan_folds(cache: Cache, study: StudySpec, params: Params) -> FoldPlan:
    """Resolve ``cv`` for this cache: K folds or a holdout, seeded by the cache's split seed."""
    meta = cache.meta
    y = np.asarray(cache.train_y)
    folds, holdout = study.cv.resolve(len(y), params)
    classification = meta.task == "classification"
    if holdout is None:
        if folds > len(y):
            raise UserError(
                f"{study.source}: cv.folds: {folds} folds but the training part of "
                f"{meta.name!r} has only {len(y)} samples"
            )
        splits = kfold_splits(y, folds=folds, seed=meta.split_seed,
                              classification=classification)
    else:
        splits = [holdout_split(y, fraction=holdout, seed=meta.split_seed,
                                classification=classification)]
    return FoldPlan(folds=folds, holdout=holdout, splits=tuple((tr, va) for tr, va in splits))
