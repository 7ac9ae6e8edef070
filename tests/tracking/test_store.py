"""The tracking store's plumbing: the one place MLflow is quieted."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.tracking import quiet_mlflow


def test_quiet_mlflow_silences_info_and_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    for name in ("mlflow", "alembic"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    quiet_mlflow()
    assert logging.getLogger("mlflow").level == logging.WARNING
    assert logging.getLogger("alembic").level == logging.WARNING


    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_quiet_mlflow_keeps_a_stricter_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.ERROR)
    quiet_mlflow()
    assert logging.getLogger("mlflow").level == logging.ERROR
