"""The tracking store's plumbing: the one place MLflow is quieted."""

from __future__ import annotations

import logging
import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params
from pipeline.tracking import quiet_mlflow
from pipeline.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG


def test_quiet_mlflow_silences_info_and_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    for name in ("mlflow", "alembic"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    quiet_mlflow()
    assert logging.getLogger("mlflow").level == logging.WARNING
    assert logging.getLogger("alembic").level == logging.WARNING
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


def test_quiet_mlflow_keeps_a_stricter_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.ERROR)
    quiet_mlflow()
    assert logging.getLogger("mlflow").level == logging.ERROR


def test_experiments_open_on_the_model_training_view(params: Params) -> None:
    """MLflow 3's UI reads the experiment-kind tag; without it, it opens the GenAI view."""
    tracking.configure(params)
    exp_id = tracking.experiment("kind-new", params)
    assert MlflowClient().get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    old = mlflow.create_experiment("kind-old")  # made before the tag existed
    assert tracking.experiment("kind-old", params) == old
    assert MlflowClient().get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
