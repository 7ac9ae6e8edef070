"""``python -m pipeline.evaluate``: metrics.json and plot files for a known model."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from pipeline import evaluate
from pipeline.config import Params, load_params
from pipeline.data.cache import Cache, load_cache
from pipeline.registry import gate as registry
from tests.conftest import REPO, SMALL, _deep_update, make_image_cache, make_tabular_cache
from tests.registry.test_gate import error_line, setup_store, train_and_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class World:
    root: Path
    params: Params
    digits: Cache
    table: Cache
    image_run: str
    image_model: Any  # the packaged model, in memory
    table_run: str
    table_model: Any


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("evaluate")
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        _deep_update(raw, SMALL)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        params = load_params(root / "params.yaml")
        make_image_cache(params.cache_dir("digits"), name="digits")
        make_tabular_cache(params.cache_dir("diabetes"), name="diabetes")
        digits = load_cache(params.cache_dir("digits"))
        table = load_cache(params.cache_dir("diabetes"))
        exp = setup_store(params)
        image_run, image_model = train_and_log(params, digits, experiment_id=exp, lr=3e-3,
                                               epochs=2)
        table_run, table_model = train_and_log(params, table, experiment_id=exp, lr=1e-2,
                                               epochs=5)
        yield World(root, params, digits, table, image_run, image_model, table_run, table_model)


def _register_champion(w: World) -> str:
    from mlflow import MlflowClient

    from pipeline import tracking

    tracking.configure(w.params)
    client = MlflowClient()
    name = registry.registered_model_name(w.params, "digits")
    registry.ensure_registered_model(client, name, dataset="digits")
    version, _ = registry.register(
        client, name=name, source_uri=f"runs:/{w.image_run}/model", run_id=w.image_run, tags={}
    )
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    return str(version.version)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_pyfunc_equals_in_memory(world: World) -> None:
    for run_id, packaged, cache in (
        (world.image_run, world.image_model, world.digits),
        (world.table_run, world.table_model, world.table),
    ):
        x = np.array(cache.test_x, dtype=np.float32)  # a writable copy for torch
        loaded = registry.load_model(f"runs:/{run_id}/model")
        with torch.no_grad():
            expected = packaged(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(registry.predict(loaded, x, batch_size=7), expected,
                                   rtol=1e-5, atol=1e-6)


def test_classification_champion(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    args = ["--params", str(w.root / "params.yaml")]
    # No champion yet: a one-line error that says what to run.
    assert evaluate.main(args) == 2
    assert "no 'champion' alias" in error_line(capsys)

    version = _register_champion(w)
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert "accuracy=" in out and f"(v{version})" in out

    reports = w.root / "reports"
    values = json.loads((reports / "metrics.json").read_text())
    # By hand, from the model's own predictions on the cache's test split.
    model = registry.load_model(f"runs:/{w.image_run}/model")
    served = model.predict(np.array(w.digits.test_x, dtype=np.float32))
    proba = served[list(w.digits.meta.class_names)].to_numpy()
    y = np.asarray(w.digits.test_y)
    pred = proba.argmax(axis=1)
    assert list(served["label"]) == [w.digits.meta.class_names[k] for k in pred]
    assert values["accuracy"] == pytest.approx(float(np.mean(pred == y)))
    loss = -np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, 1 - 1e-7)))
    assert values["loss"] == pytest.approx(float(loss), rel=1e-5)
    for k, name in enumerate(w.digits.meta.class_names):
        assert values[f"per_class_accuracy/{name}"] == pytest.approx(
            float(np.mean(pred[y == k] == k))
        )
    assert values["n_test"] == w.digits.meta.n_test
    assert values["model_version"] == int(version)
    assert all(isinstance(v, int | float) for v in values.values())  # dvc metrics diff
    about = json.loads((reports / "evaluation.json").read_text())
    assert about["model"] == f"models:/pipeline-digits/{version}"
    assert about["dataset"] == "digits" and about["fingerprint"] == w.digits.meta.fingerprint

    rows = _rows(reports / "plots" / "confusion.csv")
    assert len(rows) == w.digits.meta.n_test
    names = w.digits.meta.class_names
    assert [r["actual"] for r in rows] == [names[int(k)] for k in y]
    assert [r["predicted"] for r in rows] == [names[int(k)] for k in pred]
    assert (reports / "plots" / "confusion.png").read_bytes().startswith(PNG_MAGIC)
    assert not (reports / "plots" / "predictions.csv").exists()
    # The champion's training curves, read back from the run that trained it (dvc plots).
    curves = _rows(reports / "plots" / "curves.csv")
    assert list(curves[0]) == ["epoch", "accuracy/train", "accuracy/val", "loss/train",
                               "loss/val"]
    assert [int(r["epoch"]) for r in curves] == [1, 2]
    assert not list(reports.rglob("*.tmp"))  # atomic writes leave no temp files

    # What `make run` ends with: where the champion is, its metrics, serve and UI commands.
    assert evaluate.main([*args, "--summary"]) == 0
    out = capsys.readouterr().out
    assert f"champion: models:/pipeline-digits@champion = pipeline-digits v{version}" in out
    assert f"accuracy={values['accuracy']:.4f}" in out
    assert "mlflow models serve -m models:/pipeline-digits@champion --env-manager local" in out
    assert "make ui" in out


def test_regression_by_uri(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    reports = w.root / "reports"
    (reports / "plots").mkdir(parents=True, exist_ok=True)
    (reports / "plots" / "confusion.csv").write_text("stale")  # from another dataset
    code = evaluate.main([
        "--params", str(w.root / "params.yaml"), "--dataset", "diabetes",
        "--model", f"runs:/{w.table_run}/model",
    ])
    assert code == 0, capsys.readouterr().err
    values = json.loads((reports / "metrics.json").read_text())
    model = registry.load_model(f"runs:/{w.table_run}/model")
    pred = model.predict(np.array(w.table.test_x, dtype=np.float32)).astype(np.float64)
    y = np.asarray(w.table.test_y, dtype=np.float64)
    assert values["mae"] == pytest.approx(float(np.mean(np.abs(pred - y))), rel=1e-6)
    assert values["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - y) ** 2))), rel=1e-6)
    r2 = 1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert values["r2"] == pytest.approx(float(r2), rel=1e-6)
    assert set(values) == {"mae", "rmse", "r2", "n_test"}
    about = json.loads((reports / "evaluation.json").read_text())
    assert about["model"] == f"runs:/{w.table_run}/model" and about["dataset"] == "diabetes"
    rows = _rows(reports / "plots" / "predictions.csv")
    assert len(rows) == w.table.meta.n_test
    assert float(rows[0]["actual"]) == pytest.approx(y[0], rel=1e-5)
    assert float(rows[0]["predicted"]) == pytest.approx(pred[0], rel=1e-5)
    assert (reports / "plots" / "predictions.png").read_bytes().startswith(PNG_MAGIC)
    assert not (reports / "plots" / "confusion.csv").exists()
    curves = _rows(reports / "plots" / "curves.csv")
    assert {"loss/train", "loss/val", "mae/val", "rmse/val"} <= set(curves[0])
    assert len(curves) == 5 and "accuracy/val" not in curves[0]


def test_wrong_dataset_for_model(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code = evaluate.main([
        "--params", str(world.root / "params.yaml"), "--dataset", "diabetes",
        "--model", f"runs:/{world.image_run}/model",
    ])
    assert code == 2
    assert "takes inputs of shape" in error_line(capsys)


# A real evaluate process, killed with SIGKILL at its third os.fsync: in the middle of writing
# its files (issue 27: the old writer left metrics.json new, the plots old and .tmp files that
# no rerun removed).
_KILLED_MID_WRITE = """
import os, signal, sys
calls = [0]
real = os.fsync
def fsync(fd):
    real(fd)
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
os.fsync = fsync
from pipeline import evaluate
evaluate.main(["--params", sys.argv[1]])
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_evaluate_leaves_the_whole_old_set_and_the_rerun_cleans_up(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    params = str(w.root / "params.yaml")
    assert evaluate.main(["--params", params, "--model", f"runs:/{w.image_run}/model"]) == 0
    reports = w.root / "reports"
    before = _files(reports)
    version = _register_champion(w)  # a new champion: evaluate has everything to rewrite
    killed = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, params], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = _files(reports)
    assert any(".tmp" in k for k in left)  # killed mid-write: it left its temporary files
    assert {k: v for k, v in left.items() if ".tmp" not in k} == before  # all old, none new

    assert evaluate.main(["--params", params]) == 0
    after = _files(reports)
    assert [k for k in after if ".tmp" in k] == []  # what the killed run left is gone
    assert json.loads(after["metrics.json"])["model_version"] == int(version)
    assert json.loads(after["evaluation.json"])["model"] == f"models:/pipeline-digits/{version}"
    assert after["plots/confusion.png"] != before["plots/confusion.png"]  # the new title
