"""The Optuna objective: FixedTrial, lockstep k-fold reporting, pruning, failures, no test data."""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from pipeline.config import Params
from pipeline.data.cache import load_cache
from pipeline.study.folds import plan_folds
from pipeline.study.objective import Objective
from pipeline.study.spec import parse_study
from pipeline.study.trial_training import TrialProgress
from pipeline.training import engine
from tests.conftest import make_image_cache, make_tabular_cache


def study_spec(**changes: Any):
    raw: dict[str, Any] = {
        "description": "test",
        "budget": {"n_trials": 3},
        "sampler": {"type": "random", "seed": 0},
        "pruner": {"type": "none"},
        "cv": {"folds": 0},
        "space": {
            "model.width": {"type": "int", "low": 4, "high": 16},
            "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        },
    }
    raw.update(changes)
    return parse_study(raw, name="t", source="t.yaml")


class Recorder:
    """A tracker that keeps each trial's progress for inspection."""

    def __init__(self) -> None:
        self.finished: list[TrialProgress] = []

    def start(self, trial: Any, progress: TrialProgress) -> str:
        return f"run-{progress.number}"

    def log_params(self, progress: TrialProgress) -> None:
        assert progress.params is not None

    def finish(self, progress: TrialProgress) -> None:
        self.finished.append(progress)


@pytest.fixture
def images(tmp_path: Path):
    make_image_cache(tmp_path / "c" / "img", n_train=150, n_test=30)
    return load_cache(tmp_path / "c" / "img")


@pytest.fixture
def table(tmp_path: Path):
    make_tabular_cache(tmp_path / "c" / "tab", n_train=80, n_test=20)
    return load_cache(tmp_path / "c" / "tab")


def fixed(**values: Any) -> optuna.trial.FixedTrial:
    return optuna.trial.FixedTrial({"model.width": 8, "train.lr": 0.01, **values}, number=3)


def test_fixed_trial_holdout(params: Params, images) -> None:
    rec = Recorder()
    objective = Objective(params=params, study=study_spec(), cache=images, tracker=rec)
    assert objective.plan.holdout is not None and objective.plan.folds == 1
    seen: list[tuple[int, int, float]] = []
    objective.on_epoch = lambda number, epoch, value: seen.append((number, epoch, value))
    trial = fixed()
    value = objective(trial)
    (progress,) = rec.finished
    # The progress hook saw every epoch of the trial, with the value the pruner saw.
    assert [(n, e) for n, e, _ in seen] == [(3, e) for e in range(1, len(progress.history) + 1)]
    assert [v for _, _, v in seen] == [row["val/loss"] for row in progress.history]
    assert progress.state == "COMPLETE" and progress.number == 3
    assert progress.params is not None and progress.params.model.width == 8
    assert progress.params.train.lr == 0.01
    (trainer,) = progress.trainers
    assert value == pytest.approx(trainer.best_val_loss)
    assert trial.user_attrs["mlflow_run_id"] == "run-3"
    assert trial.user_attrs["epochs"] == trainer.epoch == params.train.max_epochs
    assert trial.user_attrs["folds"] == 1
    # Holdout: the fold-averaged history is the trainer's own.
    assert [r["val/loss"] for r in progress.history] == [r["val/loss"] for r in trainer.history]
    n_val = len(objective.splits[0].x_val)
    assert n_val == round(len(images.train_y) * params.train.val_fraction)


def test_same_trial_number_gives_the_same_value(params: Params, images) -> None:
    objective = Objective(params=params, study=study_spec(), cache=images)
    assert objective(fixed()) == objective(fixed())


@pytest.mark.parametrize("batched", [True, False])
def test_cv_reports_the_fold_mean_each_epoch(params: Params, images, batched: bool) -> None:
    # patience 1 makes folds stop at different epochs: a stopped fold contributes its best row.
    p = params.with_overrides({"train.max_epochs": 6, "train.early_stopping.patience": 1,
                               "train.lr": 0.05, "search.fold_batching": batched})
    rec = Recorder()
    spec = study_spec(cv={"folds": 3}, space={"train.lr": {"type": "float", "low": 0.05,
                                                            "high": 0.5, "log": True}})
    objective = Objective(params=p, study=spec, cache=images, tracker=rec)
    assert objective.plan.holdout is None and objective.plan.folds == 3
    study = optuna.create_study()
    trial = study.ask()
    value = objective(trial)
    study.tell(trial, value)
    (progress,) = rec.finished
    reported = study.trials[0].intermediate_values
    assert sorted(reported) == list(range(1, len(progress.history) + 1))
    for epoch, got in reported.items():
        per_fold = []
        for t in progress.trainers:
            if epoch <= t.epoch:
                per_fold.append(t.history[epoch - 1]["val/loss"])
            else:  # stopped early: its best epoch's value
                per_fold.append(t.best_val_loss)
        assert got == pytest.approx(sum(per_fold) / 3)
        assert progress.history[epoch - 1]["val/loss_std"] == pytest.approx(
            statistics.pstdev(per_fold))
    bests = [t.best_val_loss for t in progress.trainers]
    assert value == pytest.approx(sum(bests) / 3)
    assert study.trials[0].user_attrs["value_std"] == pytest.approx(statistics.pstdev(bests))
    assert study.trials[0].user_attrs["fold_epochs"] == sum(t.epoch for t in progress.trainers)
    assert study.trials[0].user_attrs["fold_batching"] is batched
    # Folds partition the training part; the validation parts are disjoint.
    val = np.concatenate([va for _, va in objective.plan.splits])
    assert sorted(val.tolist()) == list(range(len(images.train_y)))


def run_trial(objective: Objective, study: optuna.Study) -> tuple[Any, TrialProgress]:
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(0.005, 0.05)})
    value = objective(trial)
    study.tell(trial, value)
    assert isinstance(objective.tracker, Recorder)
    return study.trials[-1], objective.tracker.finished[-1]


def test_batched_folds_give_the_sequential_trial(params: Params, images) -> None:
    """search.fold_batching true vs false: the same trial value, the same value reported to the
    pruner after every epoch (so pruning decides alike), the same per-fold histories."""
    p = params.with_overrides({"train.max_epochs": 4, "train.early_stopping.patience": 2,
                               "model.dropout": 0.2, "model.batch_norm": True,
                               "model.hidden_layers": 2, "train.batch_size": 32})
    spec = study_spec(cv={"folds": 3}, space={"train.lr": {"type": "float", "low": 0.005,
                                                            "high": 0.05}})
    runs = {}
    for batched in (True, False):
        objective = Objective(params=p.with_overrides({"search.fold_batching": batched}),
                              study=spec, cache=images, tracker=Recorder())
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        runs[batched] = run_trial(objective, study)
    (fast, fast_progress), (slow, slow_progress) = runs[True], runs[False]
    assert fast.user_attrs["fold_batching"] is True and slow.user_attrs["fold_batching"] is False
    assert fast.params == slow.params
    assert fast.value == pytest.approx(slow.value, rel=1e-4)
    assert sorted(fast.intermediate_values) == sorted(slow.intermediate_values)
    for step, value in slow.intermediate_values.items():
        assert fast.intermediate_values[step] == pytest.approx(value, rel=1e-4)
    assert fast.user_attrs["fold_epochs"] == slow.user_attrs["fold_epochs"]
    assert fast.user_attrs["model_fold"] == slow.user_attrs["model_fold"]
    for f, t in zip(fast_progress.trainers, slow_progress.trainers, strict=True):
        assert type(f).__name__ == "BatchedFold" and type(t).__name__ == "Trainer"
        assert [r["val/loss"] for r in f.history] == pytest.approx(
            [r["val/loss"] for r in t.history], rel=1e-4)
        assert type(f.final_model()) is type(t.final_model())


def test_auto_batches_small_mlp_folds_only(params: Params, images) -> None:
    auto = params.with_overrides({"search.fold_batching": "auto"})
    for cv, width, batched in (({"folds": 2}, 8, True), ({"folds": 0}, 8, False)):
        objective = Objective(params=auto, study=study_spec(cv=cv), cache=images)
        trial = fixed(**{"model.width": width})
        objective(trial)
        assert trial.user_attrs["fold_batching"] is batched
    cnn = auto.with_overrides({"model.arch": "cnn", "search.fold_batching": True})
    objective = Objective(params=cnn, study=study_spec(cv={"folds": 2}), cache=images)
    trial = fixed()
    objective(trial)
    assert trial.user_attrs["fold_batching"] is False  # true batches only what can be


def test_auto_cv_uses_k_folds_below_the_threshold(params: Params, images) -> None:
    spec = study_spec(cv={"folds": "auto"})
    small = plan_folds(images, spec, params)
    assert small.folds == params.search.cv_folds and small.holdout is None
    big = plan_folds(images, spec, params.with_overrides({"search.cv_threshold": 100}))
    assert big.holdout is not None and big.folds == 1 and len(big.splits) == 1


@pytest.mark.parametrize("hopeless_lr", [5.0, 1e-7])  # explodes / learns nothing
def test_a_hopeless_trial_is_pruned_after_warmup(
    params: Params, images, hopeless_lr: float
) -> None:
    p = params.with_overrides({"train.max_epochs": 5, "train.early_stopping.patience": 5})
    spec = study_spec(space={
        "train.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "train.lr": {"type": "float", "low": 1e-7, "high": 5.0, "log": True},
    })
    objective = Objective(params=p, study=spec, cache=images)
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    )
    for lr in (0.01, 0.02):
        study.enqueue_trial({"train.optimizer": "adam", "train.lr": lr})
    study.enqueue_trial({"train.optimizer": "sgd", "train.lr": hopeless_lr})
    study.optimize(objective, n_trials=3)
    good1, good2, hopeless = study.trials
    assert good1.state == good2.state == optuna.trial.TrialState.COMPLETE
    assert hopeless.state == optuna.trial.TrialState.PRUNED
    # Steps are epochs (1-based): n_warmup_steps=2 means the first two epochs always run, and
    # the first pruning decision comes after the second.
    assert sorted(hopeless.intermediate_values) == [1, 2]
    assert hopeless.user_attrs["epochs"] == 2


def test_divergence_fails_the_trial_and_records_it(
    params: Params, images, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = engine.Trainer.run_epoch

    def diverge(self: engine.Trainer) -> dict[str, float]:
        if self.epoch == 1:
            raise engine.TrainingDiverged("training diverged in epoch 2: train/loss is nan")
        return original(self)

    monkeypatch.setattr(engine.Trainer, "run_epoch", diverge)
    rec = Recorder()
    objective = Objective(params=params, study=study_spec(), cache=images, tracker=rec)
    study = optuna.create_study()
    study.optimize(objective, n_trials=2, catch=(Exception,))
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert [p.state for p in rec.finished] == ["FAIL", "FAIL"]
    assert "TrainingDiverged: training diverged in epoch 2" in (rec.finished[0].error or "")
    assert len(rec.finished[0].history) == 1  # the epoch before is kept


def test_rejected_values_fail_the_trial(params: Params, images) -> None:
    rec = Recorder()
    spec = study_spec(space={"model.width": {"type": "int", "low": 0, "high": 4}})
    objective = Objective(params=params, study=spec, cache=images, tracker=rec)
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="model.width"):
        objective(optuna.trial.FixedTrial({"model.width": 0}))
    assert rec.finished[0].state == "FAIL" and rec.finished[0].params is None


def test_the_test_split_is_never_read(params: Params, images) -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("the search touched the test split")

        def __getitem__(self, key: Any) -> Any:
            raise AssertionError("the search touched the test split")

        def __len__(self) -> int:
            raise AssertionError("the search touched the test split")

    sealed = dataclasses.replace(images, test_x=Untouchable(), test_y=Untouchable())
    for cv in ({"folds": 0}, {"folds": 2}):
        objective = Objective(params=params, study=study_spec(cv=cv), cache=sealed)
        assert math.isfinite(objective(fixed()))


def test_regression_with_folds_and_another_metric(params: Params, table) -> None:
    spec = study_spec(cv={"folds": 2}, metric="val/rmse")
    rec = Recorder()
    objective = Objective(params=params, study=spec, cache=table, tracker=rec)
    value = objective(fixed())
    (progress,) = rec.finished
    rows = [next(r for r in t.history if r["epoch"] == t.best_epoch) for t in progress.trainers]
    assert value == pytest.approx(sum(r["val/rmse"] for r in rows) / 2)
    assert "val/rmse_std" in progress.history[-1] and "val/mae" in progress.history[-1]
    with pytest.raises(Exception, match="val/accuracy is not computed for regression"):
        Objective(params=params, study=study_spec(metric="val/accuracy"), cache=table)


def test_stop_event_interrupts_the_running_trial(params: Params, images) -> None:
    import threading

    from pipeline.study.objective import TrialInterrupted

    stop = threading.Event()
    stop.set()
    rec = Recorder()
    objective = Objective(params=params, study=study_spec(), cache=images, tracker=rec,
                          stop=stop)
    study = optuna.create_study()
    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=3)
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert rec.finished[0].interrupted and rec.finished[0].state == "FAIL"
    assert issubclass(TrialInterrupted, KeyboardInterrupt)
