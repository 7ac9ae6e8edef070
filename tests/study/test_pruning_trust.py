"""Pruning one can trust: the audit, fold-aware pruning, and stopping when the study is done."""

from __future__ import annotations

import datetime
import math
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.study.audit import AuditedPruner, describe, pruning_summary
from pipeline.study.budget import flat_trials
from pipeline.study.fold_pruning import FoldPruner
from pipeline.study.trial_attrs import (
    AUDIT_ATTR,
    BASELINE_ATTR,
    EPOCH_SECONDS_ATTR,
    FOLD_CURVES_ATTR,
    FOLDS_NOW_ATTR,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Always(optuna.pruners.BasePruner):
    """A pruner that would stop every trial after its first report."""

    def prune(self, study: Any, trial: Any) -> bool:
        return trial.last_step is not None


# --------------------------------------------------------------------------------------------
# The audit
# --------------------------------------------------------------------------------------------
def run_trial(study: optuna.Study, curve: list[float]) -> optuna.trial.FrozenTrial:
    """A trial reporting ``curve`` epoch by epoch, pruned when the pruner says so."""
    trial = study.ask()
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
        if trial.should_prune():
            trial.set_user_attr(EPOCH_SECONDS_ATTR, [1.0] * epoch)
            trial.set_user_attr("train_s", float(epoch))
            trial.set_user_attr("epochs", epoch)
            study.tell(trial, state=TrialState.PRUNED)
            return study.trials[-1]
    trial.set_user_attr(EPOCH_SECONDS_ATTR, [1.0] * len(curve))
    trial.set_user_attr("train_s", float(len(curve)))
    trial.set_user_attr("epochs", len(curve))
    study.tell(trial, min(curve))
    return study.trials[-1]


def test_the_audit_lets_its_share_finish_and_records_where_and_against_what() -> None:
    study = optuna.create_study(pruner=AuditedPruner(Always(), share=0.3, seed=1))
    run_trial(study, [0.5, 0.4, 0.3])
    trials = [run_trial(study, [0.9, 0.8, 0.2 + 0.01 * i]) for i in range(30)]
    audited = [t for t in trials if t.user_attrs.get(AUDIT_ATTR)]
    assert 3 <= len(audited) <= 20  # about 30 % of 30, drawn per trial
    # The pruner's word stands for the others.
    assert all(t.state == TrialState.PRUNED for t in trials if t not in audited)
    assert all(t.state == TrialState.COMPLETE for t in audited)  # let finish...
    assert all(t.user_attrs[AUDIT_ATTR]["step"] == 1 for t in audited)  # ...recorded where
    # The same trial numbers are drawn again by a second search (seeded by trial number).
    again = optuna.create_study(pruner=AuditedPruner(Always(), share=0.3, seed=1))
    run_trial(again, [0.5, 0.4, 0.3])
    redo = [run_trial(again, [0.9, 0.8, 0.2 + 0.01 * i]) for i in range(30)]
    assert [bool(t.user_attrs.get(AUDIT_ATTR)) for t in redo] == [
        bool(t.user_attrs.get(AUDIT_ATTR)) for t in trials]
    never = optuna.create_study(pruner=AuditedPruner(Always(), share=0.0, seed=1))
    assert all(run_trial(never, [0.9, 0.1]).state == TrialState.PRUNED for _ in range(5))


def audited_study() -> optuna.Study:
    """The baseline stopped at once (never audited), then two trials let finish."""
    study = optuna.create_study(pruner=AuditedPruner(Always(), share=1.0, seed=0))
    study.enqueue_trial({}, user_attrs={BASELINE_ATTR: True})
    run_trial(study, [0.5, 0.4, 0.3])
    run_trial(study, [0.9, 0.5, 0.2])  # ends better than anything before
    run_trial(study, [0.9, 0.8, 0.7])  # ends worse than the best (0.2)
    return study


def test_the_audit_estimates_false_prunes_and_the_time_saved() -> None:
    study = audited_study()
    good, bad = study.trials[1:]
    assert good.user_attrs[AUDIT_ATTR]["best"] is None  # no complete trial yet to beat
    assert bad.user_attrs[AUDIT_ATTR]["best"] == pytest.approx(0.2)
    summary = pruning_summary(study.trials, "minimize")
    assert summary["audited"] == 2 and summary["judged"] == 1
    assert summary["false_prunes"] == 0 and summary["false_prune_rate"] == 0.0
    # 1 pruned trial; the audited ones ran 2 s after the point they would have stopped.
    assert summary["pruned"] == 1 and summary["seconds_saved_estimate"] == pytest.approx(2.0)
    assert "audit: 2 let finish, 0 of 1 would have beaten the best" in describe(summary)


# --------------------------------------------------------------------------------------------
# Fold-aware pruning
# --------------------------------------------------------------------------------------------
def fold_trial(study: optuna.Study, curves: list[list[float]]) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    for epoch, folds in enumerate(curves, start=1):
        trial.set_user_attr(FOLDS_NOW_ATTR, folds)
        trial.report(sum(folds) / len(folds), epoch)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return study.trials[-1]
    trial.set_user_attr(FOLD_CURVES_ATTR, curves)
    study.tell(trial, sum(curves[-1]) / len(curves[-1]))
    return study.trials[-1]


def test_a_clearly_worse_trial_is_stopped_early_and_a_possible_winner_never() -> None:
    study = optuna.create_study(pruner=FoldPruner(n_warmup_steps=1))
    incumbent = [[0.50, 0.60, 0.70], [0.30, 0.40, 0.50], [0.20, 0.30, 0.35]]
    assert fold_trial(study, incumbent).state == TrialState.COMPLETE
    # Even its best fold is worse than the incumbent's worst at epoch 2: stopped there.
    hopeless = fold_trial(study, [[0.9, 1.0, 1.1], [0.8, 0.9, 1.0], [0.7, 0.8, 0.9]])
    assert hopeless.state == TrialState.PRUNED and hopeless.last_step == 2
    # Worse on average early on, but one fold beats the incumbent's worst: it goes on, and
    # ends as the best (a mean-against-mean rule would have stopped it at epoch 2).
    late = fold_trial(study, [[0.8, 0.9, 1.0], [0.45, 0.6, 0.7], [0.1, 0.15, 0.2]])
    assert late.state == TrialState.COMPLETE and late.value < study.trials[0].value
    median = optuna.create_study(pruner=optuna.pruners.MedianPruner(0, 1))
    fold_trial(median, incumbent)
    assert fold_trial(median, [[0.8, 0.9, 1.0], [0.45, 0.6, 0.7], [0.1, 0.15, 0.2]]).state \
        == TrialState.PRUNED


def test_nothing_is_stopped_without_an_incumbent_or_inside_the_warmup() -> None:
    study = optuna.create_study(pruner=FoldPruner(n_warmup_steps=2))
    assert fold_trial(study, [[9.0, 9.0]] * 3).state == TrialState.COMPLETE  # no incumbent
    assert fold_trial(study, [[1.0, 1.0]] * 3).state == TrialState.COMPLETE  # better
    worse = fold_trial(study, [[5.0, 5.0]] * 3)
    assert worse.state == TrialState.PRUNED and worse.last_step == 3  # not inside the warmup


# --------------------------------------------------------------------------------------------
# Stop when the study is done
# --------------------------------------------------------------------------------------------
def finished(number: int, value: float | None, std: float | None = None) -> Any:
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE if value is not None else TrialState.PRUNED,
        value=value, intermediate_values={1: value if value is not None else 1.0},
        user_attrs={"value_std": std, "folds": 4} if std is not None else {},
    )


def test_flat_trials_count_what_did_not_beat_the_best_beyond_its_noise() -> None:
    study = optuna.create_study()
    for value, std in ((0.5, 0.1), (0.45, 0.1), (None, None), (0.44, 0.02), (0.30, 0.02),
                       (0.29, None), (None, None)):
        study.add_trial(finished(0, value, std))
    trials = study.trials
    base = datetime.datetime(2026, 1, 1)
    for i, t in enumerate(trials):  # finished in the order added
        t.datetime_complete = base + datetime.timedelta(seconds=i)
    flat, best = flat_trials(trials, "minimize")
    # 0.45 and 0.44 are within 0.5's standard error (0.1 / sqrt(4) = 0.05); 0.30 beats 0.44
    # by more than 0.02 / 2: the count starts again; 0.29 is within 0.30's noise.
    assert best.value == 0.29 and flat == 2
    assert flat_trials([], "minimize") == (0, None)
    assert math.isclose(trials[4].value, 0.30)


def test_the_samplers_start_up_trials_never_count_as_flat() -> None:
    """Random start-up trials that do not beat the first trial say nothing about what the
    modelled trials will find: with warmup=W they may set the best but are never counted."""
    study = optuna.create_study()
    for value in (0.30, 0.50, 0.40, 0.35, 0.45, 0.33, 0.31):
        study.add_trial(finished(0, value))
    trials = study.trials
    base = datetime.datetime(2026, 1, 1)
    for i, t in enumerate(trials):
        t.datetime_complete = base + datetime.timedelta(seconds=i)
    assert flat_trials(trials, "minimize")[0] == 6
    assert flat_trials(trials, "minimize", warmup=5)[0] == 2
    assert flat_trials(trials, "minimize", warmup=7) == (0, trials[0])
    study.add_trial(finished(0, 0.20))  # a modelled trial that beats the best starts afresh
    later = study.trials
    later[-1].datetime_complete = base + datetime.timedelta(seconds=10)
    for i, t in enumerate(later[:-1]):
        t.datetime_complete = base + datetime.timedelta(seconds=i)
    flat, best = flat_trials(later, "minimize", warmup=5)
    assert flat == 0 and best.value == 0.20


def test_a_tpe_study_counts_its_start_up_trials_as_warmup() -> None:
    from pipeline.study.spec import SamplerSpec

    assert SamplerSpec("tpe", 1, {"n_startup_trials": 6}).startup_trials == 6
    assert SamplerSpec("tpe", 1, {}).startup_trials == 10  # Optuna's default
    assert SamplerSpec("random", 1, {}).startup_trials == 0
