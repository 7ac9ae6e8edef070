"""Budget-aware fidelity: the rung plan, the asynchronous rung pruner, trials through rungs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from pipeline.config import Params
from pipeline.data.cache import load_cache
from pipeline.errors import UserError
from pipeline.study.budget import RunBudget
from pipeline.study.objective import Objective
from pipeline.study.rungs import Rung, RungPlan, RungPruner, RungsSpec, plan_rungs
from pipeline.study.spec import make_pruner, parse_study
from pipeline.study.trial_attrs import BASELINE_ATTR, RUNG_ATTR
from tests.conftest import make_image_cache

optuna.logging.set_verbosity(optuna.logging.WARNING)

RUNGS = {"type": "rungs", "reduction_factor": 3, "min_samples": 10,
         "rungs": [{"data": 0.25, "epochs": 2}, {"data": 0.5, "epochs": 2},
                   {"data": 1.0, "epochs": 2}]}


def spec(pruner: dict[str, Any] = RUNGS, **changes: Any) -> Any:
    raw = {"description": "rungs", "sampler": {"type": "random", "seed": 0}, "pruner": pruner,
           "cv": {"folds": 0},
           "space": {"model.width": {"type": "int", "low": 4, "high": 16},
                     "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
           **changes}
    return parse_study(raw, name="r", source="r.yaml")


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def test_the_plan_says_each_epochs_data_and_raises_small_fractions() -> None:
    plan = plan_rungs(RungsSpec(rungs=[Rung(1 / 9, 3), Rung(1 / 3, 3), Rung(1.0, 3),
                                       Rung(1.0, 9)]), n_train=48_000)
    assert plan.ends == (3, 6, 9, 18)
    assert [plan.fraction(e) for e in (1, 3, 4, 6, 7, 18, 19, 30)] == [
        1 / 9, 1 / 9, 1 / 3, 1 / 3, 1.0, 1.0, 1.0, 1.0]
    assert [plan.reached(e) for e in (2, 3, 8, 9, 30)] == [0, 1, 2, 3, 4]
    small = plan_rungs(RungsSpec(), n_train=1_150)  # digits' folds: a third is too few
    assert [r.data for r in small.rungs] == [1.0, 1.0, 1.0] and small.ends == (2, 4, 10)


def test_a_rung_that_would_end_past_the_deadline_does_not_fit() -> None:
    plan = RungPlan(rungs=(Rung(0.25, 2), Rung(1.0, 4)), reduction_factor=3)
    # After epoch 2 (on a quarter): 1 s of training and 0.5 s of validation per epoch; the
    # next rung trains on four times the data for 4 epochs: 4 x (4 + 0.5) = 18 s.
    fits = dict(epoch=2, train_s=1.0, val_s=0.5, now=100.0)
    assert plan.fits(**fits, deadline=118.5)
    assert not plan.fits(**fits, deadline=117.0)
    assert plan.fits(**fits, deadline=None)
    assert plan.fits(**{**fits, "epoch": 1}, deadline=100.0)  # inside a rung: its next epoch


@pytest.mark.parametrize(
    ("pruner", "message"),
    [
        ({**RUNGS, "rungs": []}, r"r\.yaml: pruner\.rungs: expected at least one rung"),
        ({**RUNGS, "rungs": [{"data": 0.5, "epochs": 2}, {"data": 0.25, "epochs": 2}]},
         r"pruner\.rungs\[1\]\.data: 0\.25 is less than the rung before"),
        ({**RUNGS, "rungs": [{"data": 1.5, "epochs": 2}]},
         r"pruner\.rungs\[0\]\.data: expected a fraction of the training data"),
        ({**RUNGS, "reduction_factor": 1}, r"pruner\.reduction_factor: expected an integer ≥ 2"),
        ({**RUNGS, "rungs": [{"data": 0.5, "epoch": 2}]},
         r"r\.yaml: pruner\.rungs\[0\]\.epoch: unknown key \(did you mean 'epochs'\?\)"),
    ],
)
def test_bad_rung_settings_name_the_key(pruner: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        spec(pruner)


# --------------------------------------------------------------------------------------------
# The pruner: asynchronous successive halving
# --------------------------------------------------------------------------------------------
def at_rung(study: optuna.Study, value: float, *, step: int = 2, baseline: bool = False) -> bool:
    """A new trial reports ``value`` at ``step``: does the pruner stop it?"""
    trial = study.ask()
    if baseline:
        trial.set_user_attr(BASELINE_ATTR, True)
    trial.report(value, step)
    pruned = trial.should_prune()
    study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else None,
               values=None if pruned else [value])
    return pruned


def test_a_trial_goes_on_only_while_among_the_best_third_of_those_at_the_rung() -> None:
    study = optuna.create_study(pruner=RungPruner([2, 4], reduction_factor=3))
    assert not at_rung(study, 0.5, baseline=True)  # the baseline: the bar, never stopped
    assert at_rung(study, 0.6)  # fewer than 3 there: only the best goes on
    assert not at_rung(study, 0.4)  # it beats the baseline
    assert at_rung(study, 0.45)  # 4 there: the best one (4 // 3) goes on
    assert not at_rung(study, 0.2)
    for _ in range(3):
        at_rung(study, 1.0)
    assert not at_rung(study, 0.35)  # 9 there: the best 3 go on; it is second
    assert at_rung(study, 0.44)  # 10 there: fifth
    trial = study.ask()
    trial.report(5.0, 3)  # not a rung's end: never stopped there
    assert not trial.should_prune()
    # Each rung on its own: the first at the second rung goes on, then only the best.
    assert not at_rung(study, 0.3, step=4)
    assert at_rung(study, 0.31, step=4) and not at_rung(study, 0.29, step=4)


def test_a_maximised_metric_keeps_the_highest() -> None:
    study = optuna.create_study(direction="maximize", pruner=RungPruner([2]))
    assert not at_rung(study, 0.5, baseline=True)
    assert not at_rung(study, 0.9) and at_rung(study, 0.1)


def test_the_study_file_builds_it() -> None:
    pruner = make_pruner(spec())
    assert isinstance(pruner, RungPruner) and pruner.ends == (2, 4, 6)
    assert spec().summary()["study.pruner.rungs"] == "1/4 x2, 1/2 x2, all x2"


# --------------------------------------------------------------------------------------------
# Trials through the rungs
# --------------------------------------------------------------------------------------------
@pytest.fixture
def images(tmp_path: Path) -> Any:
    make_image_cache(tmp_path / "c" / "img", n_train=200, n_test=20)
    return load_cache(tmp_path / "c" / "img")


def test_every_trial_climbs_the_rungs_and_the_baseline_is_the_bar(
    params: Params, images: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.training import engine

    seen: list[tuple[int, int]] = []  # (trial seed, training rows) per epoch
    original = engine.Trainer.run_epoch

    def run_epoch(self: engine.Trainer) -> dict[str, float]:
        rows = self._rows
        seen.append((self.seed, len(self._x_train) if rows is None else len(rows)))
        return original(self)

    monkeypatch.setattr(engine.Trainer, "run_epoch", run_epoch)
    cfg = params.with_overrides({"train.max_epochs": 8, "train.early_stopping.patience": 50},
                                origin="test")
    objective = Objective(params=cfg, study=spec(), cache=images)
    study = optuna.create_study(pruner=make_pruner(spec()))
    study.enqueue_trial({"model.width": 8, "train.lr": 0.005}, user_attrs={BASELINE_ATTR: True})
    study.optimize(objective, n_trials=5)
    n = len(objective.splits[0].y_train)
    quarter, half = int(np.ceil(n / 4)), int(np.ceil(n / 2))
    first, *others = study.trials
    # The baseline (params.yaml's seed) climbs every rung: 2 epochs on a quarter, 2 on half,
    # then all of it, and is never stopped; each time the data grows its model starts afresh
    # (so the full-data model is trained for its own 8 epochs, as pipeline.train would).
    assert [r for s, r in seen if s == cfg.seed] == [quarter] * 2 + [half] * 2 + [n] * 8
    assert first.state.name == "COMPLETE" and first.user_attrs[RUNG_ATTR] == 3
    assert {r for s, r in seen if s != cfg.seed} <= {quarter, half, n}
    # A trial stopped at the first rung did worse there than a trial that reached it before.
    for t in others:
        if t.state.name == "PRUNED" and max(t.intermediate_values) == 2:
            earlier = [u.intermediate_values[2] for u in study.trials[:t.number]]
            assert t.intermediate_values[2] > min(earlier)
            assert t.user_attrs[RUNG_ATTR] == 1


@pytest.fixture
def slow_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every epoch takes 0.3 s more, on any share of the data."""
    from pipeline.training import engine

    original = engine.Trainer.run_epoch

    def slow_epoch(self: engine.Trainer) -> dict[str, float]:
        time.sleep(0.3)
        row = original(self)
        row["time_s"] += 0.3
        return row

    monkeypatch.setattr(engine.Trainer, "run_epoch", slow_epoch)


def test_a_rung_that_cannot_fit_the_budget_is_not_started(
    params: Params, images: Any, slow_epochs: None
) -> None:
    cfg = params.with_overrides({"train.max_epochs": 8, "train.early_stopping.patience": 50},
                                origin="test")
    # 1.2 s in all: the first rung (2 epochs, 0.6 s) fits; the second would train on twice
    # the data for 2 epochs (about 1.2 s more) and end past the deadline: not started.
    budget = RunBudget(timeout_s=1.2, trial_time_share=1.0).start_clock()
    objective = Objective(params=cfg, study=spec(), cache=images, budget=budget)
    trial = optuna.trial.FixedTrial({"model.width": 8, "train.lr": 0.005}, number=1)
    value = objective(trial)
    assert np.isfinite(value)
    assert trial.user_attrs["pipeline.cut_short"] == "budget"
    assert trial.user_attrs["epochs"] == 2 and trial.user_attrs[RUNG_ATTR] == 1


def test_a_trial_stopped_before_its_first_rung_ends_is_pruned(
    params: Params, images: Any, slow_epochs: None
) -> None:
    cfg = params.with_overrides({"train.max_epochs": 8}, origin="test")
    # A share of 0.1 s: after its first epoch (0.3 s) the trial may not go on, and it has
    # not reached the end of its first rung (2 epochs).
    budget = RunBudget(timeout_s=1.0, trial_time_share=0.1).start_clock()
    objective = Objective(params=cfg, study=spec(), cache=images, budget=budget)
    trial = optuna.trial.FixedTrial({"model.width": 8, "train.lr": 0.005}, number=1)
    with pytest.raises(optuna.TrialPruned, match="before its first rung's end"):
        objective(trial)
    assert trial.user_attrs["pipeline.cut_short"] == "trial_share"
    assert trial.user_attrs["epochs"] == 1


def test_a_trial_that_reaches_all_the_data_trains_as_it_would_without_rungs(
    params: Params, images: Any
) -> None:
    """The cheap rungs only decide: the full-data model is the one training on all the data
    from its first epoch gives (the same value as a study without rungs)."""
    cfg = params.with_overrides({"train.max_epochs": 5, "train.early_stopping.patience": 50},
                                origin="test")
    values = {"model.width": 8, "train.lr": 0.005}
    with_rungs = Objective(params=cfg, study=spec(), cache=images)
    without = Objective(params=cfg, study=spec({"type": "none"}), cache=images)
    climbed = optuna.trial.FixedTrial(values, number=4)
    plain = optuna.trial.FixedTrial(values, number=4)
    assert with_rungs(climbed) == pytest.approx(without(plain), rel=1e-6)
    assert climbed.user_attrs["epochs"] == 2 + 2 + 5 and plain.user_attrs["epochs"] == 5
