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
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from pipeline.config import Params
from pipeline.data.cache import Cache, CacheMeta
from pipeline.study.folds import combine, combine_rows, plan_folds
from pipeline.study.report import N_PARAMS_ATTR
from pipeline.study.spec import StudySpec, check_metric_for_task, suggest
from pipeline.training.batched import BatchedFolds, can_batch_folds, fold_batching_wins
from pipeline.training.engine import ModelRun, Split, Trainer, make_split
from pipeline.training.models import build_model
from pipeline.training.runtime import derive_seed, set_seed

logger = logging.getLogger(__name__)

__all__ = [
    "Objective",
    "TrialInterrupted",
    "TrialProgress",
    "TrialTracker",
]

AVERAGED_SKIP = ("epoch", "time_s")  # history keys that are not averaged over folds


class TrialInterrupted(KeyboardInterrupt):
    """The search was asked to stop (Ctrl-C) while this trial ran; it is recorded as failed."""


# --------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# A trial in progress
# --------------------------------------------------------------------------------------------
@dataclass
class TrialProgress:
    """What a trial has done so far; the tracker reads it however the trial ends."""

    number: int
    seed: int
    values: dict[str, Any]  # the sampled values (dotted keys)
    params: Params | None = None  # the resolved params (None if the values were rejected)
    trainers: list[ModelRun] = field(default_factory=list)  # one per fold (Trainer or batched)
    history: list[dict[str, float]] = field(default_factory=list)  # fold-averaged rows
    state: str = "RUNNING"  # COMPLETE | PRUNED | FAIL once finished
    value: float | None = None  # trial value (mean over folds at each fold's best epoch)
    value_std: float | None = None
    error: str | None = None
    interrupted: bool = False
    cut_short: str | None = None  # "deadline": stopped at the search's time budget
    train_s: float = 0.0
    record_s: float = 0.0  # time spent writing the end-of-trial record
    record_error: str | None = None  # why the trial's MLflow record could not be completed
    run_id: str | None = None
    fold_batching: bool = False  # the folds trained as one batched model

    @property
    def epochs(self) -> int:
        """Lockstep epochs run (the steps reported to the pruner)."""
        return len(self.history)

    @property
    def fold_epochs(self) -> int:
        """Epochs run summed over folds (the compute actually spent)."""
        return sum(t.epoch for t in self.trainers)

    def best_fold(self, direction: str, metric: str) -> int | None:
        """The fold whose best-epoch value is best (its model is the one logged)."""
        scored: list[tuple[float, int]] = []
        for i, t in enumerate(self.trainers):
            value = best_row(t).get(metric)
            if value is not None and math.isfinite(value):
                scored.append((value if direction == "minimize" else -value, i))
        return min(scored)[1] if scored else None


def best_row(trainer: ModelRun) -> dict[str, float]:
    """The history row of the trainer's best epoch (the weights it keeps), or {}."""
    if trainer.best_epoch <= 0:
        return {}
    for row in trainer.history:
        if int(row["epoch"]) == trainer.best_epoch:
            return row
    return {}


def _averaged_row(rows: Sequence[dict[str, float]], epoch: int, metric: str) -> dict[str, float]:
    """One lockstep epoch over the folds: each value combined (``<metric>_std`` beside it),
    the epoch number, and the time summed (the compute spent)."""
    out: dict[str, float] = {"epoch": epoch}
    out.update(combine_rows(rows, skip=AVERAGED_SKIP, spread=metric))
    out["time_s"] = sum(float(r.get("time_s", 0.0)) for r in rows)
    return out


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
_MODEL_INIT_LOCK = threading.Lock()


class Objective:
    """``study.optimize(Objective(...))``: trains one sampled configuration per call.

    Args:
        params: the dataset's params (``load_params(...).for_dataset(d)``); sampled values are
            laid over them.
        study: the checked study file.
        cache: the dataset's tensor cache; only its train part is read.
        device: where to train.
        tracker: records each trial (an MLflow run); None records nothing.
        epoch_cap: stop every trial after this many epochs (``--dry-run``).
        stop: when set (Ctrl-C), the running trials stop after their current epoch and are
            recorded as failed.
        trial_attrs: user attributes set on every trial when it starts (the worker's id).

    :meth:`set_time_budget` (the runner's ``--timeout``) sets a deadline: a trial still training
    then stops after its current epoch and completes with what it reached
    (``pipeline.cut_short=deadline``). Before that, a trial may use at most
    ``search.trial_time_share`` of the whole budget: once its measured epoch time says the next
    epoch would end past that share, it completes with what it reached
    (``pipeline.cut_short=trial_share``), so one slow configuration cannot spend the budget that
    the cheaper ones after it need.

    A trial whose sampled configuration equals an earlier complete or pruned trial's is not
    trained again: it takes that trial's result (Optuna's FAQ recipe) and records which trial
    it repeats (``pipeline.duplicate_of``).
    """

    def __init__(
        self,
        *,
        params: Params,
        study: StudySpec,
        cache: Cache,
        device: torch.device | str = "cpu",
        tracker: TrialTracker | None = None,
        epoch_cap: int | None = None,
        stop: threading.Event | None = None,
        trial_attrs: dict[str, Any] | None = None,
    ) -> None:
        check_metric_for_task(study, cache.meta.task)
        self.trial_attrs = dict(trial_attrs or {})
        self.deadline: float | None = None  # time.monotonic() at the end of the time budget
        self.budget_s: float | None = None
        # Called after every lockstep epoch with (trial number, epoch, value): the search's
        # progress bar shows where a long trial is, not only how many trials are done.
        self.on_epoch: Callable[[int, int, float], None] | None = None
        self._cost_said = False
        self.params = params
        self.study = study
        self.meta: CacheMeta = cache.meta
        self.device = torch.device(device)
        self.tracker = tracker
        self.epoch_cap = epoch_cap
        self.stop = stop
        self.plan = plan_folds(cache, study, params)
        # Built once; trainers copy them to the device and never write into them.
        self.splits: list[Split] = [make_split(cache, tr, va) for tr, va in self.plan.folds]
        # Two real validation samples (raw values) as the logged model's input example.
        first_val = self.plan.folds[0][1][:2]
        self.example = np.asarray(cache.train_x[first_val], dtype=np.float32)

    def set_time_budget(self, seconds: float) -> None:
        """From now on, ``seconds`` in all for the trials this objective runs."""
        self.budget_s = seconds
        self.deadline = time.monotonic() + seconds

    # ----------------------------------------------------------------------------------------
    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        for key, attr in self.trial_attrs.items():
            trial.set_user_attr(key, attr)
        values = suggest(trial, self.study.space)
        number = int(getattr(trial, "number", 0))
        earlier = _same_configuration(trial)
        if earlier is not None:
            return _reuse(trial, earlier)
        progress = TrialProgress(
            number=number, seed=derive_seed(self.params.seed, number), values=values
        )
        tracker = self.tracker
        try:  # from the run's creation on, however the trial ends, its run is completed
            if tracker is not None:
                progress.run_id = tracker.start(trial, progress)
                if progress.run_id is not None:
                    trial.set_user_attr("mlflow_run_id", progress.run_id)
            progress.params = self.params.with_overrides(
                values, origin=f"{self.study.source} trial {number}"
            )
            if tracker is not None:
                tracker.log_params(progress)
            self._train(trial, progress)
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

    # ----------------------------------------------------------------------------------------
    def _train(self, trial: optuna.trial.BaseTrial, progress: TrialProgress) -> None:
        cfg = progress.params
        assert cfg is not None
        metric = self.study.metric
        t0 = time.perf_counter()
        started = time.monotonic()
        share_end = None if self.budget_s is None else (
            started + cfg.search.trial_time_share * self.budget_s
        )
        try:
            set_seed(progress.seed)
            lockstep_epoch = self._start_folds(cfg, progress)
            epoch = 0
            while not all(t.done for t in progress.trainers):
                if self.epoch_cap is not None and epoch >= self.epoch_cap:
                    break
                if self.stop is not None and self.stop.is_set():
                    raise TrialInterrupted(f"trial {progress.number} interrupted")
                if epoch and share_end is not None:
                    reason = _cut_short(time.monotonic(), started, epoch, share_end,
                                        self.deadline)
                    if reason is not None:
                        progress.cut_short = reason
                        logger.info("trial %d ends at epoch %d with what it reached: %s",
                                    progress.number, epoch, CUT_SHORT[reason])
                        break
                epoch += 1
                row = _averaged_row(lockstep_epoch(), epoch, metric)
                progress.history.append(row)
                if not self._cost_said:
                    self._say_cost(float(row["time_s"]), cfg.train.max_epochs)
                value = float(row[metric])
                if self.on_epoch is not None:
                    self.on_epoch(progress.number, epoch, value)
                trial.report(value, step=epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(
                        f"pruned after epoch {epoch}: {metric} {value:.4g}"
                    )
            progress.value, progress.value_std = combine(
                float(best_row(t)[metric]) for t in progress.trainers
            )
        finally:
            progress.train_s = time.perf_counter() - t0

    def _start_folds(
        self, cfg: Params, progress: TrialProgress
    ) -> Callable[[], list[dict[str, float]]]:
        """Build the folds' models (each under its fold's seed) and their trainers, K Trainers
        or one BatchedFolds, into ``progress.trainers``; returns the lockstep epoch: each fold's
        new history row, or its best row once it is done."""
        n = self.plan.n_models
        seeds = [progress.seed if n == 1 else derive_seed(progress.seed, i) for i in range(n)]
        models = []
        for seed in seeds:
            with _MODEL_INIT_LOCK:
                torch.manual_seed(seed)
                models.append(build_model(cfg.model, self.meta, root=cfg.root))
        progress.fold_batching = self._batch_folds(cfg)
        logger.debug("trial %d: %d fold(s) trained %s", progress.number, n,
                     "as one batched model" if progress.fold_batching else "one by one")
        if progress.fold_batching:
            group = BatchedFolds(models=models, cfg=cfg.train, meta=self.meta,
                                 splits=self.splits, device=self.device, seeds=seeds)
            progress.trainers.extend(group.folds)

            def batched_epoch() -> list[dict[str, float]]:
                rows = group.run_epoch()
                return [r if r is not None else best_row(f) for r, f in zip(rows, group.folds,
                                                                             strict=True)]

            return batched_epoch
        trainers = [Trainer(model=m, cfg=cfg.train, meta=self.meta, split=split,
                            device=self.device, seed=seed)
                    for m, split, seed in zip(models, self.splits, seeds, strict=True)]
        progress.trainers.extend(trainers)
        return lambda: [t.run_epoch() if not t.done else best_row(t) for t in trainers]

    def _batch_folds(self, cfg: Params) -> bool:
        """``search.fold_batching``: true batches wherever BatchedFolds can (an MLP, K ≥ 2, CPU
        or CUDA), auto where :func:`fold_batching_wins` says it is faster, false never."""
        setting, k = cfg.search.fold_batching, self.plan.n_models
        if not can_batch_folds(cfg.model, k, self.device):
            return False
        if setting == "auto":
            return fold_batching_wins(cfg.model, cfg.train, self.meta, k, self.device)
        return bool(setting)

    def _say_cost(self, epoch_s: float, max_epochs: int) -> None:
        """Once per search: what one epoch cost and what that means for the time budget."""
        self._cost_said = True
        trial_s = epoch_s * max_epochs
        line = (f"first epoch: {epoch_s:.1f} s over {self.plan.n_models} model(s) "
                f"({self.plan.describe()}, {len(self.plan.folds[0][1])} validation "
                f"and {len(self.splits[0].y_train)} training samples per model); a trial of "
                f"{max_epochs} epochs would take about {trial_s:.0f} s")
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            line += (f"; {left:.0f} s of the time budget are left: about "
                     f"{left / max(trial_s, 1e-9):.1f} such trial(s), fewer epochs when pruned "
                     "or stopped early")
        logger.info(line)

    def _finish(self, trial: optuna.trial.BaseTrial, progress: TrialProgress) -> None:
        # An interrupted trial keeps what it learned too: its best weights become its model
        # and the value it reached is kept (it stays FAIL in Optuna: it did not finish).
        best = progress.best_fold(self.study.direction, self.study.metric)
        attrs: dict[str, Any] = {
            "epochs": progress.epochs,
            "fold_epochs": progress.fold_epochs,
            "folds": self.plan.n_models,
            "fold_batching": progress.fold_batching,
            "train_s": round(progress.train_s, 3),
        }
        if progress.value_std is not None:
            attrs["value_std"] = progress.value_std
        if progress.trainers:  # how big: the report page and registry.select read it
            attrs[N_PARAMS_ATTR] = sum(p.numel() for p in progress.trainers[0].model.parameters())
        if best is not None:
            attrs["model_fold"] = best
        if progress.cut_short:
            attrs["pipeline.cut_short"] = progress.cut_short
        reached = [row for row in map(best_row, progress.trainers) if row]
        if progress.interrupted and reached:
            value, _ = combine(float(row[self.study.metric]) for row in reached)
            attrs["pipeline.interrupted_value"] = value
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if self.tracker is not None:
            self.tracker.finish(progress)


# Trial user attribute: a digest of the settings the trial ran with (data, base params, space),
# so that a repeated configuration reuses only a result obtained under the same settings.
SETTINGS_ATTR = "pipeline.settings"
CUT_SHORT = {
    "deadline": "the search's time budget is spent",
    "trial_share": "another epoch would pass its share of the time budget "
                   "(search.trial_time_share)",
}


def _cut_short(now: float, started: float, epochs: int, share_end: float,
               deadline: float | None) -> str | None:
    """Why a trial with a time budget stops before another epoch, or None to go on."""
    if deadline is not None and now >= deadline:
        return "deadline"
    if deadline is not None and share_end >= deadline:  # a share of 1: the deadline alone
        return None
    epoch_s = (now - started) / epochs
    return "trial_share" if now + epoch_s > share_end else None


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
