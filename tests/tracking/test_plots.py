"""Training curves: train vs validation, for the loss and for the accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.tracking.plots import _canvas, plot_history

ROWS = [
    {"epoch": 1, "train/loss": 1.0, "train/accuracy": 0.5, "val/loss": 1.1, "val/accuracy": 0.4},
    {"epoch": 2, "train/loss": 0.6, "train/accuracy": 0.8, "val/loss": 0.9, "val/accuracy": 0.6},
]


def test_accuracy_panel_draws_train_against_validation(tmp_path: Path) -> None:
    path = plot_history(ROWS, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    canvas = _canvas(classification=True, titled=False)
    lines = canvas.lines
    assert lines["train/accuracy"].axes is lines["val/accuracy"].axes
    assert lines["train/accuracy"].axes is not lines["train/loss"].axes
    np.testing.assert_array_equal(lines["train/accuracy"].get_ydata(), [0.5, 0.8])
    np.testing.assert_array_equal(lines["val/accuracy"].get_ydata(), [0.4, 0.6])
    legend = canvas.axes[1].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["train/accuracy", "val/accuracy"]


def test_a_history_without_train_accuracy_still_draws(tmp_path: Path) -> None:
    old = [{k: v for k, v in row.items() if k != "train/accuracy"} for row in ROWS]
    plot_history(old, tmp_path / "old.png")
    line = _canvas(classification=True, titled=False).lines["train/accuracy"]
    assert np.isnan(np.asarray(line.get_ydata(), dtype=float)).all()
