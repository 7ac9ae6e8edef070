"""The one rule for combining folds: mean, and the spread only when there is one."""

from __future__ import annotations

import statistics

import pytest

from pipeline.study.folds import combine, combine_rows


def test_combine() -> None:
    assert combine([0.5]) == (0.5, None)  # one fold: no spread, not a spread of 0
    mean, std = combine([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5) and std == pytest.approx(statistics.pstdev([0.2, 0.4, 0.9]))
    with pytest.raises(ValueError):
        combine([])


def test_combine_rows_ignores_empty_rows_and_missing_keys() -> None:
    rows = [{"val/loss": 1.0, "lr": 0.1, "epoch": 3}, {}, {"val/loss": 3.0, "epoch": 5}]
    out = combine_rows(rows, skip=("epoch",), spread="val/loss")
    assert out == {"val/loss": 2.0, "val/loss_std": 1.0, "lr": 0.1}
    assert combine_rows([{"val/loss": 1.0}], spread="val/loss") == {"val/loss": 1.0}
    assert combine_rows([{}, {}]) == {}
