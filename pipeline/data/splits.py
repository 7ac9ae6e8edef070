"""Seeded, stratified index splits built on scikit-learn's splitters.

Every split is a pure function of (targets, fraction or K, seed), so the same cache always gives
the same test split, holdout and folds on every machine and in every trial.
"""

from __future__ import annotations

import numpy as np


def _can_stratify(y: np.ndarray, n_splits_or_fraction: float, classification: bool) -> bool:
    if not classification:
        return False
    _, counts = np.unique(y, return_counts=True)
    if isinstance(n_splits_or_fraction, int):
        return bool(counts.min() >= n_splits_or_fraction)
    return bool(counts.min() >= 2)


def holdout_split(
    y: np.ndarray, *, fraction: float, seed: int, classification: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out), stratified by class when every class has ≥ 2 samples."""
    # scikit-learn costs about as much to import as torch: only the commands that split pay.
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    stratify = y if _can_stratify(y, fraction, classification) else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)


def kfold_splits(
    y: np.ndarray, *, folds: int, seed: int, classification: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train, val) index pairs; stratified for classification when every class has
    at least ``folds`` items."""
    from sklearn.model_selection import KFold, StratifiedKFold

    idx = np.arange(len(y))
    if _can_stratify(y, folds, classification):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(idx, y)]
    splitter_plain = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in splitter_plain.split(idx)]
