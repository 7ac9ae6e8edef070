"""``python -m pipeline.train`` end to end on a tiny cache inside the tmp project."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.tracking.train_run import param_value as _param_value
from pipeline.train import BarProgress, build_parser, epoch_postfix, main, wants_batch_bar
from pipeline.training.engine import Trainer
from tests.conftest import make_image_cache, make_tabular_cache
from tests.tracking.test_runs import empty_store_template


@pytest.fixture
def empty_store() -> Path:
    return empty_store_template()


@pytest.fixture
def digits(project: Path, empty_store: Path) -> Iterator[Path]:
    """The tmp project with a tiny synthetic 'digits' cache and an empty MLflow store."""
    make_image_cache(project / "data" / "cache" / "digits", name="digits", n_train=160)
    shutil.copyfile(empty_store, project / "mlruns" / "mlflow.db")
    yield project / "params.yaml"
    while mlflow.active_run() is not None:
        mlflow.end_run()


def runs(experiment: str) -> list[mlflow.entities.Run]:
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def val_losses(run_id: str) -> list[float]:
    points = MlflowClient().get_metric_history(run_id, "loss/val")
    return [p.value for p in sorted(points, key=lambda p: p.step)]


def test_train_logs_one_complete_run(digits: Path, project: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(digits)]) == 0
    out = capsys.readouterr().out
    assert "digits: best epoch" in out and "val/accuracy" in out and "make ui" in out
    (run,) = runs("train-digits")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.width"] == "32" and run.data.params["dataset"] == "digits"
    assert run.data.params["train.max_epochs"] == "3"
    assert run.data.tags["fingerprint"] == "synthetic-images-0"
    assert run.data.tags["dataset"] == "digits"
    steps = MlflowClient().get_metric_history(run.info.run_id, "accuracy/val")
    assert sorted(p.step for p in steps) == [1, 2, 3]
    assert "best_val_loss" in run.data.metrics and "loss/train" in run.data.metrics
    artifacts = [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]
    assert "curves.png" in artifacts
    assert (project / "mlruns" / "artifacts" / "train-digits").is_dir()
    assert (project / "checkpoints" / "train-digits" / "last.pt").is_file()
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    served = model.predict(np.full((5, 1, 8, 8), 100, dtype=np.float32))
    assert list(served.columns) == ["label", "0", "1", "2"]  # the label, then probabilities
    probs = served[["0", "1", "2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # promote, evaluate and predict score this model through its plain network, not the program
    from pipeline.registry.gate import load_scorer, predict
    from pipeline.tracking.plain import PlainModel

    scorer = load_scorer(f"runs:/{run.info.run_id}/model")
    assert isinstance(scorer, PlainModel)
    np.testing.assert_allclose(predict(scorer, np.full((5, 1, 8, 8), 100, dtype=np.float32)),
                               probs, rtol=1e-4, atol=1e-6)


def test_regression_summary_reports_mean_baseline(project: Path, empty_store: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    make_tabular_cache(project / "data" / "cache" / "diabetes", name="diabetes")
    shutil.copyfile(empty_store, project / "mlruns" / "mlflow.db")
    assert main(["--params", str(project / "params.yaml"), "--dataset", "diabetes",
                 "--set", "train.max_epochs=2"]) == 0
    assert "baseline (predict the training mean): val/mae" in capsys.readouterr().out
    (run,) = runs("train-diabetes")
    assert run.data.params["train.batch_size"] == "32"  # the dataset's own override
    assert run.data.metrics["baseline_val_mae"] > 0


@pytest.mark.parametrize(("setting", "expected"), [
    ("model.dropout=-1", r"model\.dropout: expected a value in \[0, 1\), got -1"),
    # Issue 27: 1.0 zeroes every hidden activation; it was accepted.
    ("model.dropout=1.0", r"model\.dropout: expected a value in \[0, 1\), got 1\.0"),
    ("train.optimizer=nadam", r"train\.optimizer: expected one of 'sgd', 'adam', 'adamw'"),
    ("model.width=0", r"model\.width: expected a value in \[1, 65536\], got 0"),
    ("train.lerning_rate=1", r"'train.lerning_rate' is not a key"),
])
def test_bad_set_values_exit_2_naming_key_and_allowed(
    digits: Path, capsys: pytest.CaptureFixture[str], setting: str, expected: str
) -> None:
    assert main(["--params", str(digits), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set ")
    assert re.search(expected, err), err


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("model.dropout", -0.5, r"model\.dropout.*\[0, 1\)"),
    ("model.dropout", 1.0, r"model\.dropout.*\[0, 1\), got 1\.0"),
    ("train.optimizer", "nadam", r"train\.optimizer.*'sgd', 'adam', 'adamw', 'rmsprop'"),
    ("model.width", 0, r"model\.width.*\[1, 65536\]"),
])
def test_bad_values_through_with_overrides(params: Params, key: str, value: object,
                                           expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        params.with_overrides({key: value})


def test_missing_cache_is_a_clear_error(project: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(project / "params.yaml")]) == 2
    assert "no tensor cache" in capsys.readouterr().err


def test_from_run_retrains_the_recorded_configuration(
    digits: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--params", str(digits), "--set", "train.lr=0.01",
                 "--set", "model.dropout=0.2"]) == 0
    (first,) = runs("train-digits")
    assert main(["--params", str(digits), "--from-run", first.info.run_id]) == 0
    second = runs("train-digits")[1]
    assert second.data.params["train.lr"] == "0.01"
    assert second.data.params["model.dropout"] == "0.2"
    assert second.data.tags["retrained_from"] == first.info.run_id
    assert val_losses(second.info.run_id) == val_losses(first.info.run_id)  # deterministic
    # The data changed since: refused, naming the fingerprints.
    make_image_cache(project / "data" / "cache" / "digits", name="digits", seed=1)
    capsys.readouterr()
    assert main(["--params", str(digits), "--from-run", first.info.run_id]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert main(["--params", str(digits), "--from-run", "0" * 32]) == 2
    assert "no such MLflow run" in capsys.readouterr().err


def test_resume_continues_the_interrupted_run(
    digits: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--params", str(digits), "--set", "train.max_epochs=4", "--set", "model.dropout=0.3"]
    assert main(args) == 0
    (straight,) = runs("train-digits")

    real = Trainer.run_epoch

    def interrupted(self: Trainer) -> dict[str, float]:
        if self.epoch == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    assert main(args) == 130
    monkeypatch.setattr(Trainer, "run_epoch", real)
    killed = runs("train-digits")[1]
    assert killed.info.status in ("KILLED", "FAILED")

    # Another configuration is refused before any run starts.
    assert main([*args, "--set", "train.lr=0.5", "--resume"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert len(runs("train-digits")) == 2

    assert main([*args, "--resume"]) == 0
    after = runs("train-digits")
    assert len(after) == 2  # the interrupted run was continued, not a new one
    resumed = MlflowClient().get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert val_losses(resumed.info.run_id) == val_losses(straight.info.run_id)


def test_param_value_round_trip() -> None:
    for value in (None, True, False, 3, 0.001, 1e-06, "relu", "weights/r18.pth"):
        assert _param_value(str(value)) == value


def test_runs_are_named_for_dataset_and_model_and_differ(digits: Path) -> None:
    assert main(["--params", str(digits)]) == 0
    assert main(["--params", str(digits)]) == 0  # the same seed: MLflow's names repeated
    names = [run.info.run_name for run in runs("train-digits")]
    assert all(re.fullmatch(r"digits-mlp-[0-9a-f]{6}", name) for name in names), names
    assert names[0] != names[1]


def test_resume_from_a_refused_checkpoint_is_one_safe_line(
    digits: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = project / "checkpoints" / "train-digits" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"format": "pipeline-checkpoint-1", "trainer": Path("x")}, checkpoint)
    assert main(["--params", str(digits), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {checkpoint}: refused")
    assert "weights_only" not in err and len(err) < 250
    assert not (checkpoint.parent / "mlflow_run_id").exists()  # refused before any run


def test_epoch_postfix_labels_like_keras() -> None:
    row = {"epoch": 3, "train/loss": 0.51234, "train/accuracy": 0.8, "val/loss": 0.4,
           "val/accuracy": 0.875, "lr": 0.001, "time_s": 1.5}
    assert epoch_postfix(row) == "loss 0.5123  acc 0.8  val_loss 0.4  val_acc 0.875"
    regression = {"epoch": 1, "train/loss": 1.0, "val/loss": 2.0, "val/mae": 3.0,
                  "val/rmse": 4.0}
    assert epoch_postfix(regression) == "loss 1  val_loss 2  val_mae 3  val_rmse 4"


def test_no_batch_bar_for_short_epochs() -> None:
    assert not wants_batch_bar(0) and not wants_batch_bar(49) and wants_batch_bar(50)
    progress = BarProgress()
    progress.start(label="train digits", total_epochs=3, done_epochs=0)
    progress.batch(1, 3)
    assert progress._batches is None  # no `batches: 0batch` line
    progress.batch(1, 60)
    assert progress._batches is not None and progress._batches.total == 60
    progress.close()


def test_help_states_each_default_once() -> None:
    text = build_parser().format_help()
    assert "(default: None)" not in text
    for option in " ".join(text.split()).split(" --")[1:]:
        assert option.count("(default:") <= 1, option
