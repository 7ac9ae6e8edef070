"""Split helpers are deterministic and stratified; the cache round-trips without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
