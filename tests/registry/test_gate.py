"""Registry library: the pure gate, metric functions, idempotent registration, aliases.

Also holds the helpers the promote/evaluate/predict tests share: train a tiny model with the
engine on a synthetic cache, log it with ``tracking.log_model``, write a study report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import Params
from pipeline.data.cache import Cache, load_cache
from pipeline.errors import UserError
from pipeline.registry import gate as registry
from pipeline.registry import metrics as M


# --------------------------------------------------------------------------------------------
# Shared helpers (plain functions, imported by the other registry-side test modules)
# --------------------------------------------------------------------------------------------
def train_and_log(
    params: Params,
    cache: Cache,
    *,
    experiment_id: str,
    lr: float,
    epochs: int,
    seed: int = 0,
) -> tuple[str, Any]:
    """Train a tiny model with the engine and log it in a new run; (run_id, packaged model)."""
    import mlflow
    import torch

    from pipeline import tracking
    from pipeline.training import engine, models, runtime

    p = params.with_overrides(
        {"train.lr": lr, "train.max_epochs": epochs, "train.lr_schedule.enabled": False}
    )
    runtime.set_seed(seed)
    net = models.build_model(p.model, cache.meta)
    n = cache.meta.n_train
    idx = np.arange(n)
    split = engine.make_split(cache, idx[: int(n * 0.8)], idx[int(n * 0.8) :])
    trainer = engine.Trainer(
        model=net, cfg=p.train, meta=cache.meta, split=split, device=torch.device("cpu"),
        seed=seed,
    )
    engine.fit(trainer)
    final = trainer.final_model()
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags(tracking.run_tags(cache.meta, params.root))
        tracking.log_history(trainer.history)
        tracking.log_model(final, cache.meta, example=np.array(cache.test_x[:2], np.float32))
    return run.info.run_id, models.package_model(final, cache.meta)


def write_study_report(
    params: Params, study: str, *, dataset: str, run_id: str | None, number: int = 0,
    value: float = 0.5,
) -> Path:
    """A minimal ``reports/studies/<study>.json`` as ``pipeline.search`` writes it."""
    from pipeline.study.report import StudyReport, report_path

    path = report_path(params, study, dataset, dataset)
    best = None
    if run_id is not None:
        best = {"number": number, "value": value, "params": {}, "run_id": run_id,
                "model_uri": f"runs:/{run_id}/model"}
    StudyReport(
        study=study, description="", optuna_study=f"{study}-{dataset}", dataset=dataset,
        fingerprint="", direction="minimize", metric="val/loss", storage="", best=best,
        counts={},
    ).write(path)
    return path


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error: ...`` line a failing stage prints; no traceback anywhere."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def setup_store(params: Params, name: str = "tests") -> str:
    """Point MLflow at the project's store and return an experiment id."""
    from pipeline import tracking

    tracking.configure(params)
    return tracking.experiment(name, params)


# --------------------------------------------------------------------------------------------
# Metrics (pure)
# --------------------------------------------------------------------------------------------
def test_classification_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    proba = np.array([
        [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
        [0.1, 0.1, 0.8], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0],
    ])
    out = M.classification_metrics(y, proba, ["a", "b", "c"])
    assert out["accuracy"] == pytest.approx(4 / 6)
    picked = np.clip([0.8, 0.2, 0.8, 0.8, 0.3, 1.0], 1e-7, 1 - 1e-7)
    assert out["loss"] == pytest.approx(float(-np.mean(np.log(picked))))
    assert out["per_class_accuracy/a"] == pytest.approx(0.5)
    assert out["per_class_accuracy/b"] == pytest.approx(1.0)
    assert out["per_class_accuracy/c"] == pytest.approx(2 / 3)
    cm = M.confusion_matrix(y, proba.argmax(1), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_regression_metrics_match_sklearn() -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    pred = y + rng.normal(scale=0.3, size=50)
    out = M.regression_metrics(y, pred)
    assert out["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert out["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)))
    assert out["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_is_better_direction_and_ties() -> None:
    assert M.is_better("accuracy", 0.9, 0.8) and not M.is_better("accuracy", 0.8, 0.9)
    assert M.is_better("rmse", 1.0, 2.0) and not M.is_better("rmse", 2.0, 1.0)
    assert not M.is_better("loss", 0.5, 0.5)  # a tie keeps the champion
    assert not M.is_better("accuracy", math.nan, 0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        M.is_better("f1", 1.0, 0.0)


# --------------------------------------------------------------------------------------------
# The gate (pure)
# --------------------------------------------------------------------------------------------
def _decide(cand: float, champ: float | None, *, metric: str = "accuracy", same_data: bool = True,
            force: bool = False) -> registry.Verdict:
    return registry.decide(
        metric=metric,
        candidate={metric: cand},
        champion_version=None if champ is None and same_data else "3",
        champion=None if champ is None else {metric: champ},
        same_data=same_data,
        force=force,
    )


def test_gate_rules() -> None:
    assert _decide(0.5, None).take_champion  # no champion yet
    better = _decide(0.95, 0.90)
    assert better.take_champion and "0.95 > 0.9" in better.reason
    worse = _decide(0.85, 0.90)
    assert not worse.take_champion and "does not beat 0.9 of champion v3" in worse.reason
    assert not _decide(0.90, 0.90).take_champion  # a tie is not a win
    assert _decide(1.0, 2.0, metric="rmse").take_champion  # lower is better
    assert not _decide(2.0, 1.0, metric="mae").take_champion
    forced = _decide(0.85, 0.90, force=True)
    assert forced.take_champion and forced.forced and "--force" in forced.reason
    assert not _decide(0.95, 0.90, force=True).forced  # a win needs no force
    stale = _decide(0.1, None, same_data=False)
    assert stale.take_champion and "other data" in stale.reason


def test_model_name_template(params: Params) -> None:
    assert registry.registered_model_name(params, "digits") == "pipeline-digits"
    bad = params.with_overrides({"registry.model_name": "m-{data}"})
    with pytest.raises(UserError, match="registry.model_name"):
        registry.registered_model_name(bad, "digits")
    assert registry.gate_metric(params, "classification") == "accuracy"
    assert registry.gate_metric(params, "regression") == "rmse"


# --------------------------------------------------------------------------------------------
# Registry operations against a real SQLite store
# --------------------------------------------------------------------------------------------
def test_register_is_idempotent_and_aliases(project: Path, params: Params) -> None:
    from mlflow import MlflowClient

    from tests.conftest import make_image_cache

    make_image_cache(params.cache_dir("digits"), name="digits")
    cache = load_cache(params.cache_dir("digits"))
    exp = setup_store(params)
    run_id, _ = train_and_log(params, cache, experiment_id=exp, lr=0.01, epochs=1)
    client = MlflowClient()
    name = "reg-test"
    assert registry.get_alias(client, name, registry.CHAMPION) is None  # no model at all
    registry.ensure_registered_model(client, name, dataset="digits")
    registry.ensure_registered_model(client, name, dataset="digits")  # exists: no error
    assert registry.get_alias(client, name, registry.CHAMPION) is None  # model, no alias
    v1, created = registry.register(
        client, name=name, source_uri=f"runs:/{run_id}/model", run_id=run_id, tags={"a": "1"}
    )
    v1b, created_again = registry.register(
        client, name=name, source_uri=f"runs:/{run_id}/model", run_id=run_id, tags={"a": "1"}
    )
    assert created and not created_again and v1b.version == v1.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert registry.find_version(client, name, run_id).run_id == run_id
    # The registered version loads and predicts what the run's model predicts.
    by_version = registry.load_model(registry.model_uri(name, v1.version))
    by_run = registry.load_model(f"runs:/{run_id}/model")
    x = np.array(cache.test_x[:5], np.float32)
    np.testing.assert_allclose(registry.predict(by_version, x), registry.predict(by_run, x),
                               rtol=1e-6)
    assert list(by_version.predict(x)["label"]) == list(by_run.predict(x)["label"])
    with pytest.raises(UserError, match="cannot load model"):
        registry.load_model(registry.alias_uri(name, "nope"))
