"""Test-set metrics: pure functions of targets and model outputs (numpy in, floats out).

Used by ``promote`` (the gate compares these on the held-out test split) and ``evaluate``
(``reports/metrics.json``). Classification models output class probabilities ``[N, K]``;
regression models output predictions ``[N]`` in target units.
"""

from __future__ import annotations

import math

import numpy as np

# Whether a larger value is better, for every metric the registry gate may compare.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "r2": True,
    "loss": False,
    "mae": False,
    "rmse": False,
}

_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the log, as scikit-learn does


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of items whose predicted class id equals the true one."""
    y_true, y_pred = _pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[float]:
    """Accuracy within each true class (recall); NaN for a class absent from ``y_true``."""
    y_true, y_pred = _pair(y_true, y_pred)
    out = []
    for k in range(num_classes):
        mask = y_true == k
        out.append(float(np.mean(y_pred[mask] == k)) if mask.any() else math.nan)
    return out


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean cross-entropy of the true class under ``proba`` ``[N, K]`` (natural log)."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    if proba.ndim != 2 or proba.shape[0] != y_true.shape[0]:
        raise ValueError(f"log_loss: expected probabilities [N, K] for N={len(y_true)}, got "
                         f"{proba.shape}")
    picked = proba[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, _EPS, 1.0 - _EPS))))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    y_true, y_pred = _pair(y_true, y_pred)
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return out


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = _pair(y_true, y_pred, float)
    return float(np.mean(np.abs(y_true - y_pred)))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = _pair(y_true, y_pred, float)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination; 0 for predicting the mean, NaN when ``y_true`` is constant."""
    y_true, y_pred = _pair(y_true, y_pred, float)
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    if total == 0.0:
        return math.nan
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / total


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, class_names: list[str]
) -> dict[str, float]:
    """``accuracy``, ``loss`` and ``per_class_accuracy/<class>`` (classes present in y_true)."""
    proba = np.asarray(proba)
    y_pred = proba.argmax(axis=1)
    out = {"accuracy": accuracy(y_true, y_pred), "loss": log_loss(y_true, proba)}
    for name, value in zip(
        class_names, per_class_accuracy(y_true, y_pred, len(class_names)), strict=True
    ):
        if not math.isnan(value):
            out[f"per_class_accuracy/{name}"] = value
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``mae``, ``rmse`` and ``r2`` in target units."""
    out = {"mae": mae(y_true, y_pred), "rmse": rmse(y_true, y_pred)}
    value = r2(y_true, y_pred)
    if not math.isnan(value):
        out["r2"] = value
    return out


def is_better(metric: str, candidate: float, incumbent: float) -> bool:
    """Whether ``candidate`` strictly beats ``incumbent`` on ``metric`` (a tie does not)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(HIGHER_IS_BETTER)}")
    if math.isnan(candidate):
        return False
    if math.isnan(incumbent):
        return True
    return candidate > incumbent if HIGHER_IS_BETTER[metric] else candidate < incumbent


def _pair(a: np.ndarray, b: np.ndarray, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"expected equal lengths, got {a.shape[0]} and {b.shape[0]}")
    if dtype is float:
        return a.astype(np.float64), b.astype(np.float64)
    return a, b
