"""MLflow tracking: store location, experiments, tags, metrics, curves, and a logged model that
loads back and predicts like the in-memory one. Everything lives in the tmp project."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import ModelConfig, Params, TrainConfig
from pipeline.data.cache import CacheMeta, load_cache
from pipeline.tracking.plots import plot_history
from pipeline.training.engine import Trainer, fit, make_split
from pipeline.training.models import build_model, package_model

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def empty_store_template() -> Path:
    """An empty, migrated MLflow SQLite database, made once per session (creating one costs
    ~5 s of migrations); tests copy it into their project's ``mlruns/``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{path}", (folder / "artifacts").as_uri())
    return path


@pytest.fixture
def empty_store() -> Path:
    return empty_store_template()


@pytest.fixture(autouse=True)
def fast_store(empty_store: Path, project: Path) -> Iterator[None]:
    """Each test's project starts with a copy of the empty store; no run is left active."""
    shutil.copyfile(empty_store, project / "mlruns" / "mlflow.db")
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


HISTORY = [
    {"epoch": 1, "train/loss": 1.0, "val/loss": 0.9, "val/accuracy": 0.5, "lr": 0.01,
     "time_s": 0.1},
    {"epoch": 2, "train/loss": 0.5, "val/loss": 0.6, "val/accuracy": 0.7, "lr": 0.01,
     "time_s": 0.1},
    {"epoch": 3, "train/loss": 0.3, "val/loss": 0.7, "val/accuracy": 0.8, "lr": 0.005,
     "time_s": 0.1},
]


def test_configure_default_is_sqlite_in_project(params: Params, project: Path) -> None:
    uri = tracking.configure(params)
    assert uri == f"sqlite:///{project}/mlruns/mlflow.db"
    assert uri.startswith("sqlite:////")  # absolute
    assert mlflow.get_tracking_uri() == uri


def test_configure_env_wins(params: Params, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path}/elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert tracking.configure(params) == other


def test_env_sqlite_store_keeps_artifacts_beside_it(params: Params, project: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    store = tmp_path / "elsewhere"
    store.mkdir()
    shutil.copyfile(empty_store_template(), store / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    tracking.configure(params)
    exp_id = tracking.experiment("elsewhere", params)
    location = MlflowClient().get_experiment(exp_id).artifact_location
    assert location == (store / "artifacts" / "elsewhere").as_uri()
    assert not (project / "mlruns" / "artifacts" / "elsewhere").exists()


def test_configure_relative_paths_from_any_cwd(params: Params, project: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path / "mlruns")  # not the project root
    custom = params.with_overrides({})
    uri = tracking.configure(custom)
    assert Path(uri[len("sqlite:///"):]).parent == project / "mlruns"


def test_experiment_get_or_create_with_local_artifacts(params: Params, project: Path) -> None:
    tracking.configure(params)
    exp_id = tracking.experiment("train-digits", params)
    assert tracking.experiment("train-digits", params) == exp_id
    location = MlflowClient().get_experiment(exp_id).artifact_location
    assert location == (project / "mlruns" / "artifacts" / "train-digits").as_uri()
    MlflowClient().delete_experiment(exp_id)
    assert tracking.experiment("train-digits", params) == exp_id  # restored


def test_git_commit_and_run_tags(tmp_path: Path) -> None:
    commit = tracking.git_commit(REPO)
    assert commit is None or len(commit) == 40
    assert tracking.git_commit(tmp_path) is None
    meta = CacheMeta(
        name="digits", task="classification", kind="image", input_shape=[1, 8, 8],
        class_names=["a", "b"], feature_names=[], target_name="label", n_train=1, n_test=0,
        counts={}, mean=[0.0], std=[1.0], target_mean=0.0, target_std=1.0, split_seed=0,
        fingerprint="f" * 64, source_format="synthetic",
    )
    tags = tracking.run_tags(meta, tmp_path)
    assert tags["dataset"] == "digits" and tags["fingerprint"] == "f" * 64
    assert "mlflow.source.git.commit" not in tags
    if commit:
        assert tracking.run_tags(meta, REPO)["mlflow.source.git.commit"] == commit


def test_log_history_with_steps_and_curves(params: Params) -> None:
    tracking.configure(params)
    exp_id = tracking.experiment("hist", params)
    with mlflow.start_run(experiment_id=exp_id) as run:
        tracking.log_history(HISTORY)
        assert tracking.log_curves(HISTORY) == "curves.png"
    client = MlflowClient()
    points = client.get_metric_history(run.info.run_id, "loss/val")
    assert sorted((p.step, p.value) for p in points) == [(1, 0.9), (2, 0.6), (3, 0.7)]
    assert "curves.png" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_metric_names_put_train_and_validation_in_one_chart_section() -> None:
    """MLflow groups charts by the name before the last '/': one section per quantity."""
    history = [{"epoch": 1, "train/loss": 1.0, "val/loss": 0.9, "val/loss_std": 0.1,
                "train/accuracy": 0.5, "val/accuracy": 0.6, "lr": 0.01, "time_s": 0.2}]
    names = {m.key for m in tracking.history_metrics(history, timestamp_ms=0)}
    assert names == {"loss/train", "loss/val", "loss/val_std", "accuracy/train",
                     "accuracy/val", "schedule/lr", "schedule/epoch_s"}
    sections = {name.rpartition("/")[0] for name in names}
    assert sections == {"loss", "accuracy", "schedule"}
    assert tracking.summary_name("val/loss_std") == "best_val_loss_std"
    assert "/" not in tracking.summary_name("val/accuracy")  # summaries: no chart section


def test_fold_table_holds_every_fold_and_epoch() -> None:
    table = tracking.fold_table([
        [{"epoch": 1, "val/loss": 0.9}, {"epoch": 2, "val/loss": 0.8}],
        [{"epoch": 1, "val/loss": 0.7, "train/loss": 1.0}],
    ])
    assert table.splitlines() == [
        "fold,epoch,train/loss,val/loss", "0,1,,0.9", "0,2,,0.8", "1,1,1.0,0.7"]


def test_plot_history_regression(tmp_path: Path) -> None:
    rows = [{"epoch": 1, "train/loss": 1.0, "val/loss": 1.1, "val/mae": 30.0, "val/rmse": 40.0}]
    path = plot_history(rows, tmp_path / "plots" / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_plot_history_reused_canvas_draws_like_a_fresh_one(tmp_path: Path) -> None:
    """The per-thread canvas is refilled: nothing of the previous history may remain."""
    long = [{"epoch": e, "train/loss": 5.0 / e, "val/loss": 6.0 / e, "val/accuracy": e / 40}
            for e in range(1, 41)]
    short = [{"epoch": e, "train/loss": 0.5 - e / 10, "val/loss": 0.6 - e / 20,
              "val/accuracy": 0.9 + e / 100} for e in range(1, 4)]
    plot_history(long, tmp_path / "long.png", title="long")
    reused = plot_history(short, tmp_path / "reused.png", title="short")

    fresh: list[Path] = []
    thread = threading.Thread(  # a new thread draws on a new canvas
        target=lambda: fresh.append(plot_history(short, tmp_path / "fresh.png", title="short"))
    )
    thread.start()
    thread.join()
    assert np.array_equal(_pixels(reused), _pixels(fresh[0]))
    assert not np.array_equal(_pixels(reused), _pixels(tmp_path / "long.png"))


def _trained(folder: Path) -> tuple[torch.nn.Module, CacheMeta, np.ndarray]:
    cache = load_cache(folder)
    meta = cache.meta
    n = meta.n_train
    split = make_split(cache, np.arange(n - 40), np.arange(n - 40, n))
    torch.manual_seed(0)
    net = build_model(ModelConfig(hidden_layers=1, width=16, batch_norm=True), meta)
    trainer = Trainer(model=net, cfg=TrainConfig(batch_size=32, max_epochs=2), meta=meta,
                      split=split, device=torch.device("cpu"), seed=0)
    fit(trainer)
    return trainer.final_model(), meta, np.array(cache.test_x, dtype=np.float32)  # a copy


@pytest.mark.parametrize("kind", ["image", "tabular"])
def test_logged_model_loads_and_predicts_the_same(
    kind: str, params: Params,
    image_cache: Callable[..., tuple[Path, CacheMeta]],
    tabular_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    folder, _ = image_cache() if kind == "image" else tabular_cache()
    net, meta, test_x = _trained(folder)
    tracking.configure(params)
    exp_id = tracking.experiment("models", params)
    with mlflow.start_run(experiment_id=exp_id):
        info = tracking.log_model(net, meta, example=test_x[:2])
    assert next(net.parameters()).device.type == "cpu" and not net.training  # untouched
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    served = loaded.predict(test_x)  # another batch size than the example
    names = list(meta.class_names)
    # A classifier answers with the label and its probabilities by class name; a regressor
    # with the bare predictions.
    got = served[names].to_numpy() if kind == "image" else np.asarray(served)
    with torch.no_grad():
        expected = package_model(net, meta)(torch.from_numpy(test_x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if kind == "image":
        assert got.shape == (len(test_x), meta.num_classes)
        assert list(served["label"]) == [names[k] for k in expected.argmax(axis=1)]
    else:
        assert got.shape == (len(test_x),)
    stored = loaded.metadata.metadata
    assert stored["fingerprint"] == meta.fingerprint and stored["task"] == meta.task
    outputs = loaded.metadata.signature.outputs.input_names()
    assert outputs == (["label", *names] if kind == "image" else [meta.target_name])


def test_the_run_description_links_train_and_validation_loss_in_one_chart() -> None:
    from urllib.parse import unquote

    from pipeline.tracking.runs import chart_link, curves_note

    link = chart_link("abc", "7", [tracking.curve_name("train/loss"),
                                   tracking.curve_name("val/loss")])
    assert link.startswith("/#/metric?runs=")  # the UI's route for a metric's chart
    assert unquote(link).count('"loss/train"') == 2 and '["loss/train","loss/val"]' in unquote(
        link)
    assert "y_axis_scale=log" in link and '["7"]' in unquote(link)
    assert f"]({link})" in curves_note("abc", "7")  # markdown: the Overview tab renders it
