"""The Optuna objective: one trial = params.yaml defaults + sampled values, trained and scored.

A trial draws its values from the study's space, lays them over the dataset's params
(``params.for_dataset(d).with_overrides(values)``), and trains on the cache's *train* part only
(the test split is never touched):

- **holdout** (``cv.folds: 0``, or ``auto`` on a large training part): one train/validation split
  of ``cv.holdout`` (default ``train.val_fraction``);
- **k-fold** (``cv.folds: K``, or ``auto`` below ``search.cv_threshold`` samples): K stratified
  folds (classification), one :class:`~pipeline.training.Trainer` each, advanced in
  *lockstep*: every epoch, each fold that is still training runs one epoch. An MLP's folds may
  instead train as one batched model (:class:`~pipeline.training.BatchedFolds`, same per-fold
  results): ``search.fold_batching`` (``auto``: where it was measured faster on this kind of
  device); the trial's user attribute ``fold_batching`` says which path ran.

After every epoch the trial reports ``metric`` averaged over the folds and asks the pruner.
A fold that has already early-stopped contributes the value at its best epoch (the weights it
keeps), so the reported curve always averages K models and a pruner compares like with like.
The trial's value is the mean over folds of each fold's value at its best epoch; the spread
(std over folds) is recorded beside it.

Every trial is also an MLflow run (:class:`MlflowTrialTracker`), created when the trial starts
and finished — with its history, per-fold metrics, curves, model and state — however it ends.

The study's first trial, the baseline (:mod:`pipeline.study.starts`), trains with
params.yaml's seed, as ``pipeline.train`` would (without a rung schedule, it is exactly
``pipeline.train``'s run). Other trials draw their seed from the study seed and their number.
Under a rung schedule (``pruner: {type: rungs}``, :mod:`pipeline.study.rungs`) every trial,
the baseline included, trains on a growing share of the data.

Time: with a time limit, a trial still training at the budget's deadline stops after its
current epoch and completes with what it reached (``pipeline.cut_short=deadline``). Before
that, a trial may use at most ``search.trial_time_share`` of the whole budget: once its
measured epoch time says the next epoch would end past that share, it completes with what it
reached (``trial_share``), so one slow configuration cannot spend the budget that the cheaper
ones after it need (:meth:`RunBudget.trial_cut`); and it does not start a rung that would end
past the deadline (``budget``, :meth:`RungPlan.fits`).

A trial whose sampled configuration equals an earlier complete or pruned trial's is not
trained again: it takes that trial's result (Optuna's FAQ recipe) and records which trial it
repeats (``pipeline.duplicate_of``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from pipeline.config import Params
from pipeline.data.cache import Cache, CacheMeta
from pipeline.study.budget import RunBudget
from pipeline.study.folds import combine, plan_folds
from pipeline.study.report import N_PARAMS_ATTR
from pipeline.study.rungs import RungPlan, plan_rungs
from pipeline.study.spec import StudySpec, check_metric_for_task, suggest
from pipeline.study.trial_attrs import (
    BASELINE_ATTR,
    EPOCH_SECONDS_ATTR,
    FOLD_CURVES_ATTR,
    RUNG_ATTR,
)
from pipeline.study.trial_training import (
    TrialInterrupted,
    TrialProgress,
    TrialTrainer,
    best_row,
)
from pipeline.training.engine import Split, make_split
from pipeline.training.runtime import derive_seed

logger = logging.getLogger(__name__)

__all__ = [
    "Objective",
    "TrialInterrupted",
    "TrialProgress",
    "TrialTracker",
]


# --------------------------------------------------------------------------------------------
# Tracking hooks
# --------------------------------------------------------------------------------------------
class TrialTracker(Protocol):
    """What the objective tells the tracking side; see :class:`MlflowTrialTracker`."""

    def start(self, trial: Any, progress: TrialProgress) -> str | None: ...

    def log_params(self, progress: TrialProgress) -> None: ...

    def finish(self, progress: TrialProgress) -> None: ...


# --------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------
class Objective:
    """``study.optimize(Objective(...))``: trains one sampled configuration per call.

    Args:
        params: the dataset's params (``load_params(...).for_dataset(d)``); sampled values are
            laid over them.
        study: the checked study file.
        cache: the dataset's tensor cache; only its train part is read.
        device: where to train.
        tracker: records each trial (an MLflow run); None records nothing.
        stop: when set (Ctrl-C), the running trials stop after their current epoch and are
            recorded as failed.
        trial_attrs: user attributes set on every trial when it starts (the worker's id).
        budget: this run's budget, its clock running (None: no limit); its ``epoch_cap``
            stops every trial after that many epochs (``--dry-run``).

    How a trial is seeded, validated, stopped and reused: see the module docstring.
    """

    def __init__(
        self,
        *,
        params: Params,
        study: StudySpec,
        cache: Cache,
        device: torch.device | str = "cpu",
        tracker: TrialTracker | None = None,
        stop: threading.Event | None = None,
        trial_attrs: dict[str, Any] | None = None,
        budget: RunBudget | None = None,
    ) -> None:
        check_metric_for_task(study, cache.meta.task)
        self.trial_attrs = dict(trial_attrs or {})
        self.budget = budget if budget is not None else RunBudget()
        self.params = params
        self.study = study
        self.meta: CacheMeta = cache.meta
        self.device = torch.device(device)
        self.tracker = tracker
        self.stop = stop
        self.plan = plan_folds(cache, study, params)
        # Built once; trainers copy them to the device and never write into them.
        self.splits: list[Split] = [make_split(cache, tr, va) for tr, va in self.plan.splits]
        self.rungs: RungPlan | None = None
        if study.pruner.rungs is not None:
            self.rungs = plan_rungs(study.pruner.rungs, min(len(s.y_train) for s in self.splits))
        # Two real validation samples (raw values) as the logged model's input example.
        first_val = self.plan.splits[0][1][:2]
        self.example = np.asarray(cache.train_x[first_val], dtype=np.float32)
        self.trainer = TrialTrainer(plan=self.plan, splits=self.splits, meta=self.meta,
                                    device=self.device, metric=study.metric, budget=self.budget,
                                    stop=stop, fold_values=study.pruner.type == "folds")

    @property
    def on_epoch(self) -> Callable[[int, int, float], None] | None:
        """Called after every lockstep epoch with (trial number, epoch, value)."""
        return self.trainer.on_epoch

    @on_epoch.setter
    def on_epoch(self, hook: Callable[[int, int, float], None] | None) -> None:
        self.trainer.on_epoch = hook

    # ----------------------------------------------------------------------------------------
    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        for key, attr in self.trial_attrs.items():
            trial.set_user_attr(key, attr)
        values = suggest(trial, self.study.space)
        number = int(getattr(trial, "number", 0))
        earlier = _same_configuration(trial)
        if earlier is not None:
            return _reuse(trial, earlier)
        # The baseline trains with params.yaml's seed, as pipeline.train would.
        baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        progress = TrialProgress(
            number=number, values=values, folds=self.plan.folds,
            seed=self.params.seed if baseline else derive_seed(self.params.seed, number),
        )
        try:  # from the run's creation on, however the trial ends, its run is completed
            self._start_run(trial, progress)
            self.trainer.train(trial, progress, rungs=self.rungs)
        except optuna.TrialPruned:
            progress.state = "PRUNED"
            self._finish(trial, progress)
            raise
        except BaseException as exc:
            progress.state = "FAIL"
            progress.interrupted = isinstance(exc, KeyboardInterrupt)
            progress.error = (
                "interrupted (Ctrl-C)" if progress.interrupted
                else "".join(traceback.format_exception_only(exc)).strip()
            )
            with contextlib.suppress(Exception):  # the original error matters more
                self._finish(trial, progress)
            raise
        progress.state = "COMPLETE"
        self._finish(trial, progress)
        assert progress.value is not None
        return progress.value

    def _start_run(self, trial: optuna.trial.BaseTrial, progress: TrialProgress) -> None:
        """The trial's MLflow run and its resolved params (rejected values raise here)."""
        if self.tracker is not None:
            progress.run_id = self.tracker.start(trial, progress)
            if progress.run_id is not None:
                trial.set_user_attr("mlflow_run_id", progress.run_id)
        progress.params = self.params.with_overrides(
            progress.values, origin=f"{self.study.source} trial {progress.number}"
        )
        if self.tracker is not None:
            self.tracker.log_params(progress)

    def _finish(self, trial: optuna.trial.BaseTrial, progress: TrialProgress) -> None:
        for key, value in finished_attrs(progress, self.study).items():
            trial.set_user_attr(key, value)
        if self.tracker is not None:
            self.tracker.finish(progress)


def finished_attrs(progress: TrialProgress, study: StudySpec) -> dict[str, Any]:
    """The user attributes a trial ends with: what it ran, its spread, how it stopped."""
    # An interrupted trial keeps what it learned too: its best weights become its model
    # and the value it reached is kept (it stays FAIL in Optuna: it did not finish).
    best = progress.best_fold(study.direction, study.metric)
    attrs: dict[str, Any] = {
        "epochs": progress.epochs,
        "fold_epochs": progress.fold_epochs,
        "folds": progress.folds,
        "fold_batching": progress.fold_batching,
        "train_s": round(progress.train_s, 3),
        EPOCH_SECONDS_ATTR: [round(float(r["time_s"]), 3) for r in progress.history],
    }
    if progress.value_std is not None:
        attrs["value_std"] = progress.value_std
    if progress.trainers:  # how big: the report page and registry.select read it
        attrs[N_PARAMS_ATTR] = sum(p.numel() for p in progress.trainers[0].model.parameters())
    if best is not None:
        attrs["model_fold"] = best
    if progress.cut_short:
        attrs["pipeline.cut_short"] = progress.cut_short
    if progress.rung is not None:
        attrs[RUNG_ATTR] = progress.rung
    if progress.fold_curves:
        attrs[FOLD_CURVES_ATTR] = progress.fold_curves
    reached = [row for row in map(best_row, progress.trainers) if row]
    if progress.interrupted and reached:
        value, _ = combine(float(row[study.metric]) for row in reached)
        attrs["pipeline.interrupted_value"] = value
    return attrs


# Trial user attribute: a digest of the settings the trial ran with (data, base params, space),
# so that a repeated configuration reuses only a result obtained under the same settings.
SETTINGS_ATTR = "pipeline.settings"
def _same_configuration(trial: Any) -> Any:
    """An earlier complete or pruned trial with exactly this trial's params and settings (data,
    base params, space: ``pipeline.settings``), or None."""
    study = getattr(trial, "study", None)
    if study is None:  # a FixedTrial (dry runs, tests)
        return None

    settings = trial.user_attrs.get(SETTINGS_ATTR)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    for earlier in done:
        # A trial cut short by the time budget did not show what its configuration can do.
        if earlier.number != trial.number and earlier.params == trial.params \
                and earlier.user_attrs.get(SETTINGS_ATTR) == settings \
                and "pipeline.cut_short" not in earlier.user_attrs:
            return earlier
    return None


def _reuse(trial: Any, earlier: Any) -> float:
    """Take ``earlier``'s result instead of training the same configuration again."""
    trial.set_user_attr("pipeline.duplicate_of", earlier.number)
    for key in ("mlflow_run_id", "epochs", "value_std", "folds"):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    logger.info("trial %d: same configuration as trial %d; its result is reused, no training",
                trial.number, earlier.number)
    if earlier.state.name == "PRUNED" or earlier.value is None:
        raise optuna.TrialPruned(f"same configuration as trial {earlier.number}, pruned")
    return float(earlier.value)
