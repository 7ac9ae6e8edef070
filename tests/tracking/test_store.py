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


def test_the_runs_link_carries_a_saved_view_sorted_by_the_objective(params: Params) -> None:
    import json

    tracking.configure(params)
    exp = tracking.experiment("viewed", params)
    share_runs_view, ui_url = tracking.share_runs_view, tracking.ui_url
    key = share_runs_view(exp, order_by="best_val_loss", ascending=True,
                          params=["model.width"], metrics=["best_val_loss", "epochs"])
    again = share_runs_view(exp, order_by="best_val_loss", ascending=True,
                            params=["model.width"], metrics=["best_val_loss", "epochs"])
    assert key == again and key.startswith("pipeline-")  # the same view, one tag
    view = json.loads(MlflowClient().get_experiment(exp).tags[f"mlflow.sharedViewState.{key}"])
    assert view == {"orderByAsc": True, "orderByKey": "metrics.`best_val_loss`",
                    "selectedColumns": ["params.`model.width`", "metrics.`best_val_loss`",
                                        "metrics.`epochs`"]}
    url = ui_url(exp, view=key)
    # The UI ignores a shared view when the URL sorts by itself: the link holds only the key.
    assert url.endswith(f"runs?workflowType=machine_learning&viewStateShareKey={key}")
    assert "orderByKey" not in url
