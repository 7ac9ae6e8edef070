"""Run records: across the process boundary intact, written by the recorder process, and a lost
server reported as such. A real MLflow SQLite store in the tmp project."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import ModelConfig, Params
from pipeline.data.cache import load_cache
from pipeline.tracking.recorder import Outcome, Recorder
from pipeline.tracking.records import ModelPart, RunRecord, from_wire, to_wire
from pipeline.training.models import build_model, package_model
from tests.conftest import make_image_cache
from tests.tracking.test_runs import (  # noqa: F401 - the store fixtures
    HISTORY,
    empty_store,
    fast_store,
)

CONFIG = ModelConfig(hidden_layers=1, width=8)


@pytest.fixture
def cache(tmp_path: Path):
    make_image_cache(tmp_path / "cache", n_train=40, n_test=10)
    return load_cache(tmp_path / "cache")


def _record(run_id: str, cache, root: Path) -> RunRecord:
    torch.manual_seed(0)
    net = build_model(CONFIG, cache.meta)
    history = [*HISTORY, {"epoch": 4, "train/loss": math.nan, "val/loss": 0.5}]
    return RunRecord(
        run_id=run_id, status="FINISHED", history=history, summary={"best_val_loss": 0.5},
        tags={"optuna.state": "COMPLETE"}, texts={"folds.csv": "fold,epoch\n0,1\n"},
        title="t", model=ModelPart(weights=net.state_dict(), model=vars(CONFIG).copy(),
                                   root=str(root), params={"model.width": "8"}),
    )


def test_a_record_crosses_the_wire_intact(cache, tmp_path: Path) -> None:
    record = _record("r1", cache, tmp_path)
    line = to_wire(record, tmp_path)
    (weights_file,) = tmp_path.glob("r1.pt")
    back = from_wire(line)
    assert not weights_file.exists()  # read once, then removed
    assert back.model is not None and record.model is not None
    for key, value in record.model.weights.items():
        assert torch.equal(back.model.weights[key], value)
    net = back.model.network(cache.meta)
    assert type(net) is type(build_model(CONFIG, cache.meta))
    assert back.history[3] == {"epoch": 4, "val/loss": 0.5}  # NaN left out (JSON has none)
    assert (back.summary, back.tags, back.texts) == (record.summary, record.tags, record.texts)


def test_the_recorder_process_writes_the_record(params: Params, cache, project: Path) -> None:
    tracking.configure(params)
    client = MlflowClient()
    exp = tracking.experiment("rec", params)
    run_id = client.create_run(exp).info.run_id
    outcomes: list[Outcome] = []
    recorder = Recorder(meta=cache.meta, example=np.asarray(cache.train_x[:2], np.float32),
                        experiment_id=exp, on_done=outcomes.append)
    record = _record(run_id, cache, project)
    recorder.submit(record)
    recorder.close()
    assert outcomes == [(run_id, None, False)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
    assert [m.value for m in client.get_metric_history(run_id, "loss/val")] == [0.9, 0.6, 0.7,
                                                                                   0.5]
    assert {a.path for a in client.list_artifacts(run_id)} == {"curves.png", "folds.csv"}
    # The model it logged serves the same outputs as the network it was given.
    (model,) = client.search_logged_models([exp])
    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    x = np.asarray(cache.test_x, np.float32)
    assert record.model is not None
    expected = package_model(record.model.network(cache.meta), cache.meta)(torch.from_numpy(x))
    served = loaded.predict(x)
    names = list(cache.meta.class_names)
    np.testing.assert_allclose(served[names].to_numpy(), expected.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    assert list(served["label"]) == [names[k] for k in expected.argmax(dim=1).tolist()]
    assert model.metrics and {m.key for m in model.metrics} == {"best_val_loss"}


def test_a_lost_server_is_reported_as_such(cache, project: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.pgserver import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    done = threading.Event()
    outcomes: list[Outcome] = []

    def on_done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        done.set()

    recorder = Recorder(meta=cache.meta, example=None, experiment_id="0", on_done=on_done)
    recorder.submit(_record("lost", cache, project))
    recorder.close()
    ((run_id, error, unreachable),) = outcomes
    assert run_id == "lost" and unreachable and error == "Connection refused"
