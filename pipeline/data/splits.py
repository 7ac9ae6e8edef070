"""Seeded, stratified index splits: the same partitions scikit-learn's splitters draw.

Every split is a pure function of (targets, fraction or K, seed), so the same cache always gives
the same test split, holdout and folds on every machine and in every trial. The partitions are
exactly those of scikit-learn's ``train_test_split`` (``StratifiedShuffleSplit`` /
``ShuffleSplit``) and ``StratifiedKFold`` / ``KFold`` with ``shuffle=True`` for the same seed,
drawn here with NumPy's ``RandomState`` in the same order: importing scikit-learn costs every
command that splits about as much as importing torch (BENCHMARKS.md, "Fixed costs of every
command"). ``tests/data/test_splits_and_cache.py`` checks them equal to scikit-learn's.
"""

from __future__ import annotations

import math

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
    """Indices (keep, held_out), stratified by class when every class has ≥ 2 samples.

    Raises:
        ValueError: ``fraction`` leaves no item on one side, or (stratified) fewer items on one
            side than there are classes.
    """
    n = len(y)
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction {fraction} is not in (0, 1)")
    n_held = math.ceil(fraction * n)
    n_keep = n - n_held
    if n_held >= n or n_keep <= 0:
        raise ValueError(f"a holdout of {fraction} of {n} items leaves no item to train on")
    rng = np.random.RandomState(seed)
    if _can_stratify(y, fraction, classification):
        keep, held = _stratified_shuffle_split(np.asarray(y), n_keep, n_held, rng)
    else:
        permutation = rng.permutation(n)
        held, keep = permutation[:n_held], permutation[n_held:]
    return np.sort(keep), np.sort(held)


def _stratified_shuffle_split(
    y: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """One (train, test) draw of scikit-learn's ``StratifiedShuffleSplit``."""
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(f"{n_train} training and {n_test} held-out items cannot both hold "
                         f"each of {len(classes)} classes")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Items per class in a draw of ``n_draws`` (scikit-learn's rule: floors, then the largest
    remainders, ties broken by ``rng``)."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def kfold_splits(
    y: np.ndarray, *, folds: int, seed: int, classification: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train, val) index pairs; stratified for classification when every class has
    at least ``folds`` items."""
    n = len(y)
    if not 2 <= folds <= n:
        raise ValueError(f"{folds} folds of {n} items: expected 2 to {n} folds")
    rng = np.random.RandomState(seed)
    if _can_stratify(y, folds, classification):
        assignment = _stratified_folds(np.asarray(y), folds, rng)
    else:
        order = np.arange(n)
        rng.shuffle(order)
        sizes = np.full(folds, n // folds, dtype=int)
        sizes[: n % folds] += 1
        assignment = np.empty(n, dtype=int)
        assignment[order] = np.repeat(np.arange(folds), sizes)
    idx = np.arange(n)
    return [(idx[assignment != k], idx[assignment == k]) for k in range(folds)]


def _stratified_folds(y: np.ndarray, folds: int, rng: np.random.RandomState) -> np.ndarray:
    """Each item's fold, as scikit-learn's ``StratifiedKFold(shuffle=True)`` assigns it."""
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, class_perm = np.unique(first, return_inverse=True)  # classes by first appearance
    encoded = class_perm[inverse]
    n_classes = len(first)
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::folds], minlength=n_classes)
                             for i in range(folds)])
    assignment = np.empty(len(y), dtype=int)
    for k in range(n_classes):
        folds_for_class = np.arange(folds).repeat(allocation[:, k])
        rng.shuffle(folds_for_class)
        assignment[encoded == k] = folds_for_class
    return assignment
