"""Split helpers are deterministic and stratified; the cache round-trips without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.cache import load_cache, read_meta
from pipeline.data.splits import holdout_split, kfold_splits
from tests.conftest import make_image_cache


def test_holdout_is_seeded_disjoint_and_stratified() -> None:
    y = np.repeat(np.arange(4), 50)
    keep, held = holdout_split(y, fraction=0.2, seed=7, classification=True)
    again_keep, again_held = holdout_split(y, fraction=0.2, seed=7, classification=True)
    assert np.array_equal(held, again_held) and np.array_equal(keep, again_keep)
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == len(y)
    assert np.bincount(y[held]).tolist() == [10, 10, 10, 10]
    _, other = holdout_split(y, fraction=0.2, seed=8, classification=True)
    assert not np.array_equal(held, other)


def test_kfold_covers_every_sample_once() -> None:
    y = np.repeat(np.arange(3), 20)
    folds = kfold_splits(y, folds=5, seed=0, classification=True)
    assert len(folds) == 5
    val = np.concatenate([va for _, va in folds])
    assert sorted(val.tolist()) == list(range(len(y)))
    for tr, va in folds:
        assert set(tr).isdisjoint(va)
        assert np.bincount(y[va]).tolist() == [4, 4, 4]


def test_kfold_for_regression_is_plain() -> None:
    y = np.linspace(0, 1, 23).astype(np.float32)
    folds = kfold_splits(y, folds=4, seed=1, classification=False)
    assert sum(len(va) for _, va in folds) == 23


def test_cache_round_trip(tmp_path: Path) -> None:
    meta = make_image_cache(tmp_path / "c", n_train=30, n_test=9)
    cache = load_cache(tmp_path / "c")
    assert cache.meta == meta == read_meta(tmp_path / "c")
    assert cache.train_x.dtype == np.uint8 and cache.train_x.shape == (30, 1, 8, 8)
    assert cache.test_y.dtype == np.int64 and cache.test_y.shape == (9,)
    assert not list(tmp_path.glob(".c.tmp-*"))


def _labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """Imbalanced labels: class k drawn with weight k + 1, every class present twice."""
    weights = np.arange(1, classes + 1, dtype=float)
    y = rng.choice(classes, size=n - 2 * classes, p=weights / weights.sum())
    y = np.concatenate([y, np.repeat(np.arange(classes), 2)])
    rng.shuffle(y)
    return y.astype(np.int64)


def _sklearn_holdout(y: np.ndarray, fraction: float, seed: int, stratified: bool
                     ) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    keep, held = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed,
                                  stratify=y if stratified else None)
    return np.sort(keep), np.sort(held)


def test_holdouts_are_scikit_learns_partitions() -> None:
    """The same items held out as scikit-learn's train_test_split, which every cache, study and
    run made before this code used (stratified, and plain for regression)."""
    rng = np.random.default_rng(0)
    cases = 0
    for n in (7, 10, 31, 100, 357, 1797):
        for classes in (2, 3, 10):
            if n < 4 * classes:
                continue
            y = _labels(rng, n, classes)
            for fraction in (0.1, 0.2, 0.25, 1 / 3):
                for seed in (0, 7, 42):
                    for classification in (True, False):
                        stratified = classification  # every class has ≥ 2 items here
                        try:
                            want = _sklearn_holdout(y, fraction, seed, stratified)
                        except ValueError:  # too few items for the classes: refused alike
                            with pytest.raises(ValueError):
                                holdout_split(y, fraction=fraction, seed=seed,
                                              classification=classification)
                            continue
                        got = holdout_split(y, fraction=fraction, seed=seed,
                                            classification=classification)
                        assert np.array_equal(got[0], want[0]), (n, classes, fraction, seed)
                        assert np.array_equal(got[1], want[1])
                        cases += 1
    assert cases > 200


def test_folds_are_scikit_learns_folds() -> None:
    from sklearn.model_selection import KFold, StratifiedKFold

    rng = np.random.default_rng(1)
    for n in (10, 57, 240, 1437):
        for classes in (2, 3, 10):
            y = _labels(rng, max(n, 4 * classes), classes)
            for folds in (2, 3, 5, 10):
                for seed in (0, 42):
                    stratify = np.bincount(y).min() >= folds
                    splitter = (StratifiedKFold if stratify else KFold)(
                        n_splits=folds, shuffle=True, random_state=seed)
                    want = list(splitter.split(np.arange(len(y)), y))
                    got = kfold_splits(y, folds=folds, seed=seed, classification=True)
                    assert len(got) == len(want) == folds
                    for (gt, gv), (wt, wv) in zip(got, want, strict=True):
                        assert np.array_equal(gt, wt) and np.array_equal(gv, wv), (n, folds)
            plain = list(KFold(n_splits=5, shuffle=True, random_state=3).split(y))
            got = kfold_splits(y.astype(np.float32), folds=5, seed=3, classification=False)
            assert all(np.array_equal(g[1], w[1]) for g, w in zip(got, plain, strict=True))
