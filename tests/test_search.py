"""The search stage end to end: real Optuna journal storage and a real MLflow store in tmp_path."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import matplotlib
import mlflow
import numpy as np
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.errors import UserError
from pipeline.search import main
from pipeline.study.storage import ENV_STORAGE, StorageChoice, open_storage, resolve_storage
from pipeline.training import engine
from tests.conftest import make_image_cache

TINY = {
    "description": "A tiny test study.",
    "budget": {"n_trials": 3},
    "sampler": {"type": "random", "seed": 0},
    "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    "cv": {"folds": 0},
    "space": {
        "model.width": {"type": "int", "low": 4, "high": 16},
        "train.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 5.0, "log": True},
    },
}
DIVERGE_LR = 0.0123  # a trial with this learning rate "diverges" (see `diverging`)



@pytest.fixture
def proj(project: Path) -> Path:
    """The test project with a tiny digits cache and the tiny study."""
    make_image_cache(project / "data" / "cache" / "digits", n_train=120, n_test=30,
                     name="digits")
    (project / "studies").mkdir(exist_ok=True)
    (project / "studies" / "tiny.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    return project


def search(proj: Path, *args: str) -> int:
    return main(["--params", str(proj / "params.yaml"), "--study", "tiny", *args])


def journal(proj: Path) -> Any:
    return open_storage(StorageChoice("journal", str(proj / "studies" / "tiny-digits.journal"),
                                      "test"))


def load_study(proj: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny-digits", storage=journal(proj))


def mlflow_runs(proj: Path) -> tuple[Any, list[Any], list[Any]]:
    mlflow.set_tracking_uri(f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("tiny-digits")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def report(proj: Path) -> dict[str, Any]:
    return json.loads((proj / "reports" / "studies" / "tiny.json").read_text())


@pytest.fixture
def diverging(monkeypatch: pytest.MonkeyPatch) -> None:
    original = engine.Trainer.run_epoch

    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        if self.cfg.lr == DIVERGE_LR:
            raise engine.TrainingDiverged("training diverged in epoch 1: train/loss is nan")
        return original(self)

    monkeypatch.setattr(engine.Trainer, "run_epoch", run_epoch)


def test_complete_pruned_and_failed_trials_in_both_systems(
    proj: Path, diverging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.create_study(study_name="tiny-digits", storage=journal(proj))
    for params in (
        {"model.width": 8, "train.optimizer": "adam", "train.lr": 0.01},
        {"model.width": 16, "train.optimizer": "adam", "train.lr": 0.02},
        {"model.width": 8, "train.optimizer": "adam", "train.lr": DIVERGE_LR},  # fails
        {"model.width": 8, "train.optimizer": "sgd", "train.lr": 5.0},  # the study goes on: pruned
    ):
        study.enqueue_trial(params)

    facecolor = matplotlib.rcParams["axes.facecolor"]
    assert search(proj, "--n-trials", "4") == 0
    out = capsys.readouterr().out
    assert "trial" in out and "best: trial" in out and "make ui" in out
    # Every search writes the report page, says where, and attaches it to its parent run.
    page = proj / "reports" / "studies" / "tiny-page" / "index.html"
    assert f"page: {page}" in out and page.is_file()
    # Built from the real study and its real MLflow runs: every section has its picture (the
    # train-vs-validation one reads the curves the trial runs hold).
    assert {p.name for p in page.parent.glob("*.png")} == {
        "leaderboard.png", "capacity.png", "curves.png", "train_vs_val.png", "choices.png",
        "pruning.png", "importance.png"}
    html = page.read_text()
    assert "No train vs validation" not in html and "Best: trial" in html
    assert "viewStateShareKey=pipeline-" in out  # the runs table, sorted by the objective
    # Optuna's plots (ggplot style) must not restyle the process's later figures.
    assert matplotlib.rcParams["axes.facecolor"] == facecolor

    trials = load_study(proj).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]

    assert load_study(proj).metric_names == ["val/loss"]  # named for optuna-dashboard
    client, parents, children = mlflow_runs(proj)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pipeline.role"] == "search"
    assert parent.data.params["dataset"] == "digits"
    assert parent.data.params["fingerprint"] == "synthetic-images-0"
    by_run = {r.info.run_id: r for r in children}
    status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
    names = {"COMPLETE": "trial-{}", "PRUNED": "trial-{} pruned", "FAIL": "trial-{} failed"}
    example = np.random.default_rng(0).integers(0, 255, (2, 1, 8, 8)).astype(np.float32)
    for t in trials:
        run = by_run[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.run_name == names[t.state.name].format(t.number)
        assert float(run.data.metrics.get("best_epoch", 1.0)).is_integer()  # the model's epoch
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert run.data.tags["optuna.study"] == "tiny-digits"
        assert run.data.tags["optuna.state"] == t.state.name
        assert run.info.status == status[t.state.name]
        assert run.data.tags["fingerprint"] == "synthetic-images-0"
        assert run.data.params["train.lr"] == str(t.params["train.lr"])
        assert run.data.params["model.hidden_layers"] == "1"  # resolved, not only sampled
        history = client.get_metric_history(run.info.run_id, "loss/val")
        assert [m.step for m in history] == list(range(1, t.user_attrs["epochs"] + 1))
        assert sorted(history_value.step for history_value in history) == sorted(
            t.intermediate_values)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        if t.state.name == "FAIL":
            assert "TrainingDiverged" in run.data.tags["pipeline.error"]
            continue
        assert "curves.png" in artifacts
        # Each logged model is named after its trial (MLflow's model list tells them apart).
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/trial-{t.number}")
        served = model.predict(example)  # the label, then each class's probability
        probs = served[["0", "1", "2"]].to_numpy()
        assert list(served.columns) == ["label", "0", "1", "2"]
        assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        if t.state.name == "COMPLETE":
            assert run.data.metrics["best_val_loss"] == pytest.approx(t.value)
        # The model is filed in the study's experiment, with the trial's params and summary.
        (logged,) = [m for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id]) if m.source_run_id == run.info.run_id]
        assert logged.params["train.lr"] == str(t.params["train.lr"])
        assert {m.key: m.value for m in logged.metrics}["best_val_loss"] == pytest.approx(
            run.data.metrics["best_val_loss"])
    assert by_run[trials[3].user_attrs["mlflow_run_id"]].data.tags[
        "pipeline.stop_reason"] == "pruned"

    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report_page")}
    assert "report_page/index.html" in attached and "report_page/leaderboard.png" in attached
    view_key = next(w for w in out.split() if "viewStateShareKey" in w).split("=")[-1]
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[
        f"mlflow.sharedViewState.{view_key}"])
    assert view["orderByKey"] == "metrics.`best_val_loss`" and view["orderByAsc"] is True
    assert "params.`model.width`" in view["selectedColumns"]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png",
            "optuna/intermediate_values.png"} <= plots
    rep = report(proj)
    best = min((t for t in trials if t.value is not None), key=lambda t: t.value)
    assert rep["best"]["number"] == best.number
    assert rep["best"]["run_id"] == best.user_attrs["mlflow_run_id"]
    assert rep["best"]["model_uri"] == f"runs:/{rep['best']['run_id']}/trial-{best.number}"
    from pipeline.registry.gate import load_scorer
    from pipeline.tracking.plain import PlainModel

    assert isinstance(load_scorer(rep["best"]["model_uri"]), PlainModel)  # scored without pt2
    assert parent.data.tags["best.run_id"] == rep["best"]["run_id"]
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert rep["counts"] == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 0 + 1}
    # Counts are tags (no one-bar chart sections in MLflow's chart view), metrics keep no "/".
    from pipeline.study.parent import TRIALS_TAG, WALL_TAG

    tags = parent.data.tags
    assert tags[f"{TRIALS_TAG}complete"] == "2" and tags[f"{TRIALS_TAG}pruned"] == "1"
    assert float(tags[WALL_TAG]) > 0 and tags[f"{TRIALS_TAG}this_run"] == "4"
    assert not [k for k in parent.data.metrics if "/" in k], parent.data.metrics
    assert [t["run_id"] for t in rep["trials"]] == [
        t.user_attrs["mlflow_run_id"] for t in trials]
    assert rep["parent_run_id"] == parent.info.run_id
    assert rep["optuna_study"] == "tiny-digits" and rep["dataset"] == "digits"
    assert rep["storage"].endswith("studies/tiny-digits.journal")
    assert rep["fingerprint"] == "synthetic-images-0"


def test_interrupt_then_resume_adds_trials_without_duplicates(
    proj: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    original = engine.Trainer.run_epoch

    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 5:  # trial 1, epoch 2 (3 epochs per trial)
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(engine.Trainer, "run_epoch", run_epoch)
    assert search(proj, "--n-trials", "3") == 130
    trials = load_study(proj).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    _, parents, children = mlflow_runs(proj)
    assert [p.info.status for p in parents] == ["KILLED"]
    states = {r.data.tags["optuna.trial_number"]: (r.info.status, r.data.tags["optuna.state"])
              for r in children}
    assert states == {"0": ("FINISHED", "COMPLETE"), "1": ("FAILED", "FAIL")}
    assert {r.info.run_name for r in children} == {"trial-0", "trial-1 interrupted"}
    # What the interrupted trial learned is kept: its best epoch's model and value.
    stopped = {r.data.tags["optuna.trial_number"]: r for r in children}["1"]
    assert stopped.data.tags["pipeline.stop_reason"] == "interrupted"
    assert mlflow.models.get_model_info(f"runs:/{stopped.info.run_id}/trial-1").flavors
    assert "pipeline.interrupted_value" in trials[1].user_attrs
    rep = report(proj)
    assert rep["best"]["number"] == 0  # promote's default: finished trials only
    assert rep["best_with_interrupted"]["number"] in (0, 1)
    assert report(proj)["counts"]["COMPLETE"] == 1  # written on the way out
    captured = capsys.readouterr()
    assert "interrupted" in captured.out and "Traceback" not in captured.err

    monkeypatch.setattr(engine.Trainer, "run_epoch", original)
    assert search(proj, "--n-trials", "2") == 0
    trials = load_study(proj).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.state.name for t in trials[2:]] != ["FAIL", "FAIL"]
    _, parents, children = mlflow_runs(proj)
    assert len(parents) == 2 and len(children) == 4
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [0, 1, 2, 3]
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    assert report(proj)["n_trials"] == 4


def test_the_time_budget_holds_for_a_running_trial(proj: Path) -> None:
    """--timeout stops the trial still running at the deadline, which keeps what it reached."""
    import time

    from pipeline.study.runner import run_search
    from pipeline.study.setup import SearchOptions

    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["train"]["max_epochs"] = 100_000
    raw["train"]["early_stopping"]["patience"] = 100_000
    raw["search"]["trial_time_share"] = 1.0  # the whole budget: only the deadline stops it
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    t0 = time.monotonic()
    result = run_search(SearchOptions(study="tiny", params_path=proj / "params.yaml",
                                      timeout_s=3.0))
    wall = time.monotonic() - t0
    (trial,) = load_study(proj).trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs["pipeline.cut_short"] == "deadline"
    assert 3.0 <= trial.duration.total_seconds() < 30  # one epoch is milliseconds here
    assert wall < 60
    assert result.report.best is not None and result.report.best["number"] == 0
    _, _, children = mlflow_runs(proj)
    assert children[0].data.tags["pipeline.stop_reason"] == "deadline"
    assert mlflow.models.get_model_info(result.report.best["model_uri"]).flavors


def test_a_k_fold_trial_records_fold_means_as_curves_and_each_fold_in_a_table(
    proj: Path,
) -> None:
    study = {**TINY, "cv": {"folds": 2}, "pruner": {"type": "none"}}
    (proj / "studies" / "tiny.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    assert search(proj, "--n-trials", "1") == 0
    client, _, (run,) = mlflow_runs(proj)
    names = set(run.data.metrics)
    assert {"loss/train", "loss/val", "loss/val_std", "accuracy/train", "accuracy/val",
            "schedule/lr", "schedule/epoch_s", "best_val_loss", "best_val_loss_std",
            "best_epoch", "epochs", "train_s"} <= names
    assert not [n for n in names if n.startswith("fold")] or names >= {"fold_epochs"}
    assert len({n.rpartition("/")[0] for n in names}) == 4  # loss, accuracy, schedule, summary
    table = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                     artifact_path="folds.csv"))
    rows = table.read_text().splitlines()
    assert rows[0].startswith("fold,epoch,") and {r.split(",")[0] for r in rows[1:]} == {"0", "1"}


def test_one_slow_trial_cannot_spend_the_whole_time_budget(proj: Path) -> None:
    """search.trial_time_share: a trial stops once another epoch would pass its share."""
    from pipeline.study.runner import run_search
    from pipeline.study.setup import SearchOptions

    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["train"]["max_epochs"] = 100_000
    raw["train"]["early_stopping"]["patience"] = 100_000
    raw["search"]["trial_time_share"] = 0.25
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_search(SearchOptions(study="tiny", params_path=proj / "params.yaml", n_trials=2,
                             timeout_s=8.0))
    first, second = load_study(proj).trials
    assert first.user_attrs["pipeline.cut_short"] == "trial_share"
    assert first.duration.total_seconds() < 0.25 * 8.0 + 2.0  # far from the 8 s deadline
    assert second.state.name == "COMPLETE"  # the budget left room for the next trial
    _, _, children = mlflow_runs(proj)
    assert {r.data.tags["pipeline.stop_reason"] for r in children} >= {"trial_share"}


def test_the_share_rule_stops_before_an_epoch_that_would_pass_it() -> None:
    from pipeline.study.budget import RunBudget

    # the clock started at 0 with 40 s: the deadline is at 40; a share of 0.25 ends at 10
    budget = RunBudget(timeout_s=40.0, trial_time_share=0.25).start_clock(0.0)

    def cut(now: float, epochs: int, share: RunBudget = budget) -> str | None:
        return share.trial_cut(now=now, trial_started=0.0, epochs=epochs)

    assert cut(4.0, 2) is None  # 2 epochs in 4 s (2 s each): the next one ends at 6
    assert cut(9.0, 3) == "trial_share"  # it would end at 12
    assert cut(41.0, 3) == "deadline"
    whole = RunBudget(timeout_s=40.0, trial_time_share=1.0).start_clock(0.0)
    assert cut(39.0, 3, whole) is None  # a share of 1: only the deadline
    assert RunBudget(trial_time_share=0.25).trial_cut(now=1e9, trial_started=0.0,
                                                       epochs=3) is None  # no time limit


def test_the_search_says_what_an_epoch_costs(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(proj, "--n-trials", "2", "--timeout", "600") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "first epoch:" in line]
    assert len(said) == 1  # once per search, not per trial
    assert "holdout" in said[0] and "training samples" in said[0]
    assert "of the time budget are left" in said[0]


def test_a_trial_whose_record_fails_keeps_its_result(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow failing to store a model loses neither the trial nor the rest of its record."""
    from pipeline.study.instruments import Instruments
    from pipeline.study.runner import search as search_with
    from pipeline.study.setup import SearchOptions
    from pipeline.tracking import records

    original = records.log_model
    broken: list[str] = []

    def log_model(*args: Any, **kwargs: Any) -> Any:
        if not broken:  # the first trial's model
            broken.append(kwargs["run_id"])
            raise OSError("No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(records, "log_model", log_model)
    with pytest.raises(UserError, match=r"MLflow runs of trial\(s\) \[0\] could not"):
        # Written in this process, where the patch is (the recorder process is another).
        search_with(SearchOptions(study="tiny", params_path=proj / "params.yaml", n_trials=3),
                    Instruments(record_writer="inline"))

    trials = load_study(proj).trials
    assert len(trials) == 3 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert trials[0].user_attrs["mlflow_run_id"] == broken[0]
    assert "No space left" in load_study(proj).user_attrs["pipeline.record_lost.0"]
    assert report(proj)["best"]["number"] != 0  # promote cannot take a trial without a model
    client, _, children = mlflow_runs(proj)
    by_run = {r.info.run_id: r for r in children}
    run = by_run[broken[0]]
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == trials[0].state.name
    assert client.get_metric_history(broken[0], "loss/val")  # metrics written before the error
    assert "curves.png" in {a.path for a in client.list_artifacts(broken[0])}
    assert all(by_run[t.user_attrs["mlflow_run_id"]].info.status in ("FINISHED", "KILLED")
               for t in trials[1:])


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_parallel_threads_log_every_trial_once(proj: Path, writer: Any) -> None:
    from pipeline.study.instruments import Instruments, TrackingTimes
    from pipeline.study.runner import search as search_with
    from pipeline.study.setup import SearchOptions

    times = TrackingTimes()
    result = search_with(SearchOptions(study="tiny", params_path=proj / "params.yaml",
                                       n_trials=4, n_jobs=2),
                         Instruments(record_writer=writer, times=times))
    assert result.report.n_trials == 4
    assert 0 < times.blocking_s and set(times.blocking_by_trial) == {0, 1, 2, 3}
    assert times.work_s > 0 or writer == "process"  # the recorder's work is not ours
    trials = load_study(proj).trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    _, parents, children = mlflow_runs(proj)
    assert len(parents) == 1 and len(children) == 4
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.info.status in ("FINISHED", "KILLED")


def test_dry_run_writes_nothing_in_the_project(
    proj: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{proj / 'elsewhere.db'}")
    before = sorted(p.relative_to(proj) for p in proj.rglob("*"))
    assert search(proj, "--dry-run") == 0
    assert sorted(p.relative_to(proj) for p in proj.rglob("*")) == before
    out = capsys.readouterr().out
    assert "1 new trial(s)" in out and "dry run" in out


def test_list_help_and_unknown_study(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--params", str(proj / "params.yaml"), "--list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "A tiny test study." in out and "capacity" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "capacity" in out and "--n-jobs" in out and "--dry-run" in out
    assert search(proj, "--study", "nope") == 2  # the last --study wins
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "available studies:" in err and "tiny" in err
    assert main(["--params", str(proj / "params.yaml")]) == 2
    assert search(proj, "--n-trials", "-1") == 2
    assert "--n-trials" in capsys.readouterr().err


def test_storage_precedence_and_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = {"root": tmp_path, "studies_dir": "studies", "study_name": "s-d"}
    default = resolve_storage(None, params_value=None, **kw)
    assert default.kind == "journal" and default.origin == "default"
    assert default.target == str(tmp_path / "studies" / "s-d.journal")
    assert resolve_storage(None, params_value="x.journal", **kw).target == str(
        tmp_path / "x.journal")
    monkeypatch.setenv(ENV_STORAGE, "postgresql+psycopg://u:hunter2@db:5432/optuna")
    env = resolve_storage(None, params_value="x.journal", **kw)
    assert env.kind == "rdb" and env.origin == ENV_STORAGE
    assert env.display() == "postgresql+psycopg://u:***@db:5432/optuna"
    cli = resolve_storage("sqlite:///s.db", params_value="x.journal", **kw)
    assert cli.origin == "--storage" and cli.kind == "rdb"
    bad = StorageChoice("rdb", "postgresql+psycopg://u:hunter2@127.0.0.1:1/optuna", "--storage")
    with pytest.raises(UserError) as info:
        open_storage(bad)
    assert "hunter2" not in str(info.value) and "u:***@127.0.0.1:1" in str(info.value)


def test_continuing_a_study_with_other_settings_warns(
    proj: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.study.setup import check_settings

    study = optuna.create_study()
    check_settings(study, {"params.train.max_epochs": "3", "data.fingerprint": "a"}, where="x")
    with caplog.at_level(logging.WARNING, logger="pipeline.search"):
        check_settings(study, {"params.train.max_epochs": "3", "data.fingerprint": "a"},
                       where="x")
        assert not caplog.records
        check_settings(study, {"params.train.max_epochs": "2", "data.fingerprint": "a"},
                       where="x")
    (record,) = caplog.records
    assert "params.train.max_epochs (3 -> 2)" in record.getMessage()
    assert "not comparable" in record.getMessage()


def test_who_writes_the_records() -> None:
    import torch

    from pipeline.study.runner import record_writer

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert record_writer(None, device=cpu, n_jobs=1) == "inline"
    assert record_writer(None, device=cpu, n_jobs=2) == "thread"
    assert record_writer(None, device=cuda, n_jobs=1) == "process"  # the CPU is idle there
    assert record_writer("process", device=cpu, n_jobs=1) == "process"


def test_the_first_trial_is_the_configuration_trained_by_hand(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new study's first trial is params.yaml's configuration, trained exactly as
    `pipeline.train` trains it: searching is never worse than not searching."""
    from pipeline.train import main as train_main

    space = {"model.width": {"type": "int", "low": 4, "high": 64},  # holds params.yaml's 32
             "train.lr": {"type": "float", "low": 1.0e-4, "high": 5.0, "log": True}}
    study = {**TINY, "space": space}
    (proj / "studies" / "tiny.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    assert search(proj, "--n-trials", "3") == 0
    out = capsys.readouterr().out
    first, *others = load_study(proj).trials
    assert first.params == {"model.width": 32, "train.lr": 0.001}
    assert first.user_attrs["pipeline.baseline"] is True
    assert not any(t.user_attrs.get("pipeline.baseline") for t in others)
    assert report(proj)["baseline"] == {"number": 0, "state": "COMPLETE", "value": first.value}
    assert "the params.yaml configuration" in out and "first trial" in out
    # The same value as training params.yaml by hand.
    assert train_main(["--params", str(proj / "params.yaml")]) == 0
    client = MlflowClient()
    exp = client.get_experiment_by_name("train-digits")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["best_val_loss"] == pytest.approx(first.value, rel=1e-6)
    # A second search on the study does not queue it again.
    assert search(proj, "--n-trials", "1") == 0
    assert sum(bool(t.user_attrs.get("pipeline.baseline")) for t in load_study(proj).trials) == 1


def test_warm_start_queues_an_earlier_studys_best_once(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(proj, "--n-trials", "3") == 0
    earlier = load_study(proj)
    done = [t for t in earlier.trials if t.state.name == "COMPLETE"]
    top = sorted(done, key=lambda t: (t.value, t.number))[:3]
    other = {**TINY, "description": "Another study.", "sampler": {"type": "random", "seed": 5}}
    (proj / "studies" / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))

    def other_search(*args: str) -> int:
        return main(["--params", str(proj / "params.yaml"), "--study", "other", *args])

    assert other_search("--n-trials", "4", "--warm-start", "tiny") == 0
    trials = optuna.load_study(
        study_name="other-digits", storage=open_storage(StorageChoice(
            "journal", str(proj / "studies" / "other-digits.journal"), "test"))).trials
    warm = [t for t in trials if t.user_attrs.get("pipeline.warm_start")]
    assert trials[0].user_attrs.get("pipeline.baseline")
    # The earlier study's best configurations, except one this study already holds (both
    # studies start from the same params.yaml configuration).
    assert {t.user_attrs["pipeline.warm_start"] for t in warm} == {
        f"tiny-digits#{t.number}" for t in top if t.params != trials[0].params}
    by_number = {t.number: t for t in earlier.trials}
    for t in warm:
        source = by_number[int(t.user_attrs["pipeline.warm_start"].rpartition("#")[2])]
        assert t.params == source.params
    assert other_search("--n-trials", "1", "--warm-start", "tiny:digits") == 0
    again = optuna.load_study(
        study_name="other-digits", storage=open_storage(StorageChoice(
            "journal", str(proj / "studies" / "other-digits.journal"), "test"))).trials
    assert sum(bool(t.user_attrs.get("pipeline.warm_start")) for t in again) == len(warm)
    capsys.readouterr()
    assert other_search("--n-trials", "1", "--warm-start", "nothing") == 2
    assert "--warm-start: no study 'nothing-digits'" in capsys.readouterr().err
    assert other_search("--n-trials", "1", "--warm-start", "../x") == 2
    assert "--warm-start: expected STUDY or STUDY:DATASET" in capsys.readouterr().err


def test_patience_ends_a_study_that_is_done_not_counting_start_up_trials(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """budget.patience: trials that do not beat the best count towards it, except the sampler's
    start-up trials; the search stops, says so in its summary, and a rerun adds nothing."""
    spec = {**TINY, "budget": {"n_trials": 20, "patience": 2},
            "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2}}
    (proj / "studies" / "tiny.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert search(proj, "--n-trials", "1") == 0  # the first trial: params.yaml's own
    study = load_study(proj)
    first = study.trials[0]
    for _ in range(8):  # repeats take the first trial's value: none beats it
        study.enqueue_trial(dict(first.params))
    capsys.readouterr()
    assert search(proj) == 0
    out = capsys.readouterr().out
    done = [t for t in load_study(proj).trials if t.state.name == "COMPLETE"]
    # Finished in order: 0 (the best), 1 (a start-up trial: not counted), 2 and 3 (flat: 2).
    # Counting the start-up trial would have stopped after trial 2.
    assert [t.number for t in done] == [0, 1, 2, 3], [t.number for t in done]
    assert "done: the last 2 trials did not beat the best" in out, out
    assert report(proj)["stopped_flat"]["after"] == 2
    assert search(proj) == 0  # a rerun sees the study is done and trains nothing
    assert len(load_study(proj).get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 4
