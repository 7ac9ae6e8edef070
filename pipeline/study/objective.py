"""The Optuna objective: one trial = params.yaml defaults + sampled values, trained and scored.

A trial draws its values from the study's space, lays them over the dataset's params
(``params.for_dataset(d).with_overrides(values)``), and trains on the cache's *train* part only
(the test split is never touched):

- **holdout** (``cv.folds: 0``, or ``auto`` on a large training part): one train/validation split
  of ``cv.holdout`` (default ``train.val_fraction``);
- **k-fold** (``cv.folds: K``, or ``auto`` below ``search.cv_threshold`` samples): K stratified
  folds (classification), one :class:`~pipeline.training.Trainer` each, advanced in
  *lockstep*: every epoch, each fold that is still training runs one epoch.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from pipeline.config import Params
from pipeline.data.cache import Cache, CacheMeta
from pipeline.study.folds import combine, combine_rows, plan_folds
from pipeline.study.spec import StudySpec, check_metric_for_task, suggest
from pipeline.study.timing import TrackingTimes
from pipeline.training.engine import Split, Trainer, make_split
from pipeline.training.models import build_model
from pipeline.training.runtime import derive_seed, set_seed

logger = logging.getLogger(__name__)

__all__ = [
    "MlflowTrialTracker",
    "Objective",
    "TrialInterrupted",
    "TrialProgress",
    "TrialTracker",
]

# Optuna trial states as they appear on MLflow runs (tag `optuna.state`) and the run status each
# gets. MLflow's runs table draws KILLED and FAILED with the same red cross, so a pruned trial
# (a normal outcome of a search) ends FINISHED and says "pruned" in its run name instead.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def trial_run_name(number: int, state: str, *, interrupted: bool = False) -> str:
    """``trial-7``, ``trial-7 pruned``, ``trial-7 failed`` or ``trial-7 interrupted``."""
    if interrupted:
        return f"trial-{number} interrupted"
    return {"PRUNED": f"trial-{number} pruned", "FAIL": f"trial-{number} failed"}.get(
        state, f"trial-{number}"
    )
_AVERAGED_SKIP = ("epoch", "time_s")


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
    trainers: list[Trainer] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # fold-averaged rows
    state: str = "RUNNING"  # COMPLETE | PRUNED | FAIL once finished
    value: float | None = None  # trial value (mean over folds at each fold's best epoch)
    value_std: float | None = None
    error: str | None = None
    interrupted: bool = False
    cut_short: str | None = None  # "deadline": stopped at the search's time budget
    train_s: float = 0.0
    record_s: float = 0.0  # time spent writing the end-of-trial record
    run_id: str | None = None

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
            value = _best_row(t).get(metric)
            if value is not None and math.isfinite(value):
                scored.append((value if direction == "minimize" else -value, i))
        return min(scored)[1] if scored else None


def _best_row(trainer: Trainer) -> dict[str, float]:
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
    out.update(combine_rows(rows, skip=_AVERAGED_SKIP, spread=metric))
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
        if tracker is not None:
            progress.run_id = tracker.start(trial, progress)
            if progress.run_id is not None:
                trial.set_user_attr("mlflow_run_id", progress.run_id)
        try:
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
            for i, split in enumerate(self.splits):
                fold_seed = progress.seed if self.plan.n_models == 1 else derive_seed(
                    progress.seed, i
                )
                with _MODEL_INIT_LOCK:
                    torch.manual_seed(fold_seed)
                    model = build_model(cfg.model, self.meta, root=cfg.root)
                progress.trainers.append(
                    Trainer(model=model, cfg=cfg.train, meta=self.meta, split=split,
                            device=self.device, seed=fold_seed)
                )
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
                rows = []
                for t in progress.trainers:
                    rows.append(t.run_epoch() if not t.done else _best_row(t))
                row = _averaged_row(rows, epoch, metric)
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
                float(_best_row(t)[metric]) for t in progress.trainers
            )
        finally:
            progress.train_s = time.perf_counter() - t0

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
            "train_s": round(progress.train_s, 3),
        }
        if progress.value_std is not None:
            attrs["value_std"] = progress.value_std
        if best is not None:
            attrs["model_fold"] = best
        if progress.cut_short:
            attrs["pipeline.cut_short"] = progress.cut_short
        reached = [row for row in map(_best_row, progress.trainers) if row]
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
FOLD_TABLE = "folds.csv"  # per-fold, per-epoch detail of a k-fold trial, out of the charts
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


def _retry_tags(trial: Any) -> dict[str, str]:
    """For a retry of a trial whose worker died: the trial and MLflow run it replaces.

    Both our reaper and Optuna's heartbeat retry put the old number in the system attribute
    ``failed_trial``; Optuna's copies the old user attributes (its ``mlflow_run_id``), ours
    stores the old run as ``pipeline.retry_of_run``.
    """
    study = getattr(trial, "study", None)
    if study is None:
        return {}
    # Trial objects do not expose system attributes; the storage has them.
    frozen = study._storage.get_trial(trial._trial_id)
    replaced = frozen.system_attrs.get("failed_trial")
    if replaced is None:
        return {}
    attrs = frozen.user_attrs
    run = attrs.get("pipeline.retry_of_run") or attrs.get("mlflow_run_id")
    tags = {"pipeline.retry_of_trial": str(replaced)}
    if run:
        tags["pipeline.retry_of_run"] = str(run)
    return tags


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


# --------------------------------------------------------------------------------------------
# MLflow: one run per trial, nested under the search's parent run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunTarget:
    """Where a search's trial runs go and what they are for."""

    experiment_id: str  # the study's experiment
    parent_run_id: str  # the search invocation's run
    optuna_study: str  # the Optuna study name (``<study>-<dataset>``)
    base_tags: dict[str, str]  # tags every trial run carries (dataset, fingerprint, commit, ...)
    metric: str  # the study's metric (``best/<metric>`` is logged)
    direction: str  # the study's direction


class MlflowTrialTracker:
    """Creates, fills and closes the MLflow run of each trial.

    Child runs are created and written through ``MlflowClient`` with explicit run ids (tag
    ``mlflow.parentRunId`` nests them), so trials running in parallel threads never share an
    active run. Creating the run (and logging its params) happens in the trial's thread, so the
    Optuna trial knows its run id at once. The end-of-trial record (metrics, tags, curves PNG,
    model, final status) is written by **one** thread at a time — ``torch.export`` is not
    thread-safe — the logging thread, either while the trial waits or, with ``background``,
    while the next trial trains (worth it when training runs on an
    accelerator and leaves CPU cores free). With ``inline`` (one trial at a time on the CPU)
    the trial's own thread writes it instead: a second thread that runs torch ops gives the
    OpenMP runtime more threads than cores, and it then puts the training threads to sleep
    between parallel regions instead of letting them spin — measured here, training took 40 %
    longer for the whole search. :meth:`flush` waits for queued records. Pruned runs end
    FINISHED named ``trial-N pruned``, failed ones FAILED; every run carries the tag
    ``optuna.state`` (COMPLETE / PRUNED /
    FAIL). A record that cannot be written (a full disk, a lost server) is logged, its run ends
    FAILED and the search reports it when it ends; the trial keeps its Optuna state and value.

    Args:
        target: where the runs go and what they are for (:class:`RunTarget`).
        meta: the cache metadata (model packaging, tags).
        log_models: log each trial's model (complete and pruned trials).
        example: raw input samples for the model's signature and input example.
        background: write end-of-trial records in the background (else the trial waits for
            its record, as a CPU-bound search should).
        max_pending: with ``background``, a trial waits when this many records are queued.
        inline: write each record in the trial's thread (only for one trial at a time).
        times: where benchmarks collect the time spent on records (None: not measured).
    """

    def __init__(
        self,
        target: RunTarget,
        *,
        meta: CacheMeta,
        log_models: bool = True,
        example: np.ndarray | None = None,
        background: bool = True,
        max_pending: int = 2,
        inline: bool = False,
        times: TrackingTimes | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.experiment_id = target.experiment_id
        self.parent_run_id = target.parent_run_id
        self.optuna_study = target.optuna_study
        self.meta = meta
        self.base_tags = dict(target.base_tags)
        self.metric = target.metric
        self.direction = target.direction
        self.log_models = log_models
        self.example = example
        if inline and background:
            raise ValueError("MlflowTrialTracker: inline and background exclude each other")
        self.background = background
        self.inline = inline
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        if log_models and not inline:
            from pipeline.tracking import warm_up_export

            # torch.export's first call costs ~1.4 s; take it while the first trial trains.
            self._executor.submit(warm_up_export)
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        self._stats_lock = threading.Lock()
        self._pending: list[Any] = []
        self.times = times
        self.failed: list[int] = []  # trials whose record could not be written

    def _add(self, progress: TrialProgress, dt: float, *, blocking: bool) -> None:
        if self.times is not None:
            self.times.add(progress.number, dt, blocking=blocking)

    def _waited(self, progress: TrialProgress, dt: float) -> None:
        """Count ``dt`` as time the trial waited for its record (written in another thread)."""
        if self.times is not None:
            self.times.add(progress.number, dt, work=False, blocking=True)

    def start(self, trial: Any, progress: TrialProgress) -> str:
        t0 = time.perf_counter()
        tags = {
            **self.base_tags,
            "mlflow.parentRunId": self.parent_run_id,
            "optuna.study": self.optuna_study,
            "optuna.trial_number": str(progress.number),
            "optuna.state": "RUNNING",
            "pipeline.trial_seed": str(progress.seed),
            "pipeline.searched": ", ".join(progress.values),
        }
        tags.update(_retry_tags(trial))
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{progress.number}", tags=tags
        )
        run_id = run.info.run_id
        self._add(progress, time.perf_counter() - t0, blocking=True)
        return run_id

    def log_params(self, progress: TrialProgress) -> None:
        from mlflow.entities import Param

        assert progress.run_id is not None and progress.params is not None
        t0 = time.perf_counter()
        self.client.log_batch(
            progress.run_id,
            params=[Param(k, v) for k, v in _run_params(progress.params).items()],
            synchronous=True,
        )
        self._add(progress, time.perf_counter() - t0, blocking=True)

    def finish(self, progress: TrialProgress) -> None:
        """Record how the trial ended (in the background unless it was interrupted)."""
        if progress.run_id is None:
            return
        # The kept weights are restored here, in the trial's thread, before anyone else looks.
        for t in progress.trainers:
            if t.best_epoch > 0:
                t.final_model()
        t0 = time.perf_counter()
        self._slots.acquire()  # back-pressure: at most max_pending records queued
        if not self.background or progress.interrupted:
            # A record that cannot be written is logged and reported when the search ends; it
            # does not turn a trial that trained to the end into a failed one.
            try:
                if self.inline:
                    self._record_logged(progress)
                else:
                    self._executor.submit(self._record_logged, progress).result()
            finally:
                self._waited(progress, time.perf_counter() - t0)
            return
        self._waited(progress, time.perf_counter() - t0)
        with self._stats_lock:
            self._pending.append(self._executor.submit(self._record_logged, progress))

    def flush(self) -> list[int]:
        """Wait until every queued record is written; returns the trials that failed to log."""
        with self._stats_lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        return list(self.failed)

    def close(self) -> None:
        self.flush()
        self._executor.shutdown(wait=True)

    # ----------------------------------------------------------------------------------------
    def _record_logged(self, progress: TrialProgress) -> None:
        try:
            self._record(progress)
        except Exception:
            logger.exception(
                "could not record trial %d in MLflow run %s", progress.number, progress.run_id
            )
            with self._stats_lock:
                self.failed.append(progress.number)

    def _record(self, progress: TrialProgress) -> None:
        """Metrics, tags, curves, model and final status of one trial's run (logging thread)."""
        from mlflow.entities import Metric, Param, RunTag

        from pipeline import tracking

        run_id = progress.run_id
        assert run_id is not None
        status = RUN_STATUS.get(progress.state, "FAILED")
        best = progress.best_fold(self.direction, self.metric)
        t0 = time.perf_counter()
        try:
            now = int(time.time() * 1000)
            metrics = _curve_metrics(progress, now)
            params = []
            if progress.params is None:  # the sampled values were rejected: record them
                params = [Param(k, _param_str(v)) for k, v in progress.values.items()]
            run_tags = [RunTag(k, v) for k, v in _end_tags(progress, best).items()]
            # The model goes first: logging it copies the run's step-0 metrics to the model by
            # reading back the history of every metric already logged (about 100 ms with CV's
            # per-fold metrics). Logged afterwards with the model's id, the summary metrics
            # reach the model in the same request that writes them to the run.
            model_id, model_error = None, None
            if self.log_models and best is not None and (
                progress.state in ("COMPLETE", "PRUNED") or progress.interrupted
            ):
                try:
                    model_id = self._log_model(run_id, progress, best)
                except Exception as exc:  # still write the metrics, then report it
                    model_error = exc
            metrics += [
                Metric(k, v, now, 0, model_id=model_id) for k, v in self._summary(progress).items()
            ]
            # One request for tags, params and the first 1000 metrics (MLflow's batch limit).
            for i in range(0, max(1, len(metrics)), tracking.BATCH_LIMIT):
                self.client.log_batch(
                    run_id, metrics=metrics[i : i + tracking.BATCH_LIMIT],
                    params=params if i == 0 else [],
                    tags=run_tags if i == 0 else [], synchronous=True,
                )
            if len(progress.trainers) > 1:
                self.client.log_text(run_id, tracking.fold_table(
                    [t.history for t in progress.trainers]), FOLD_TABLE)
            if progress.history:
                tracking.log_curves(
                    progress.history, run_id=run_id,
                    title=f"{self.optuna_study} trial {progress.number} ({progress.state})",
                )
            if model_error is not None:
                raise model_error
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, status="FAILED")
            raise
        finally:
            self._slots.release()
            progress.record_s = time.perf_counter() - t0
            self._add(progress, progress.record_s, blocking=False)
        self.client.set_terminated(run_id, status=status)

    def _log_model(self, run_id: str, progress: TrialProgress, fold: int) -> str | None:
        """Log fold ``fold``'s model to the trial's run; returns MLflow's model id."""
        from pipeline import tracking

        info = tracking.log_model(
            progress.trainers[fold].model, self.meta, example=self.example, validate=False,
            run_id=run_id, experiment_id=self.experiment_id,
            params=_run_params(progress.params) if progress.params is not None else {},
        )
        return info.model_id

    def _summary(self, progress: TrialProgress) -> dict[str, float]:
        """``best_*``: each fold's best epoch, combined (the spread over folds beside it)."""
        from pipeline import tracking

        rows = [_best_row(t) for t in progress.trainers]
        out = {tracking.summary_name(k): v for k, v in combine_rows(
            rows, skip=(*_AVERAGED_SKIP, "lr"), spread=self.metric).items()}
        # The epoch of the weights logged as the model (an integer, not a mean over folds).
        best = progress.best_fold(self.direction, self.metric)
        if best is not None and rows[best]:
            out["best_epoch"] = float(rows[best]["epoch"])
        out["epochs"] = float(progress.epochs)
        out["fold_epochs"] = float(progress.fold_epochs)
        out["train_s"] = float(progress.train_s)
        return {k: v for k, v in out.items() if math.isfinite(v)}


def _curve_metrics(progress: TrialProgress, now_ms: int) -> list[Any]:
    """The per-epoch metrics of the fold-combined history (each fold's are in ``folds.csv``)."""
    from pipeline import tracking

    return list(tracking.history_metrics(progress.history, timestamp_ms=now_ms))


def _end_tags(progress: TrialProgress, best: int | None) -> dict[str, str]:
    """The tags a trial's run ends with: its state and name, how and why it stopped."""
    tags = {
        "optuna.state": progress.state,
        "mlflow.runName": trial_run_name(
            progress.number, progress.state, interrupted=progress.interrupted
        ),
        "pipeline.epochs": str(progress.epochs),
        "pipeline.folds": str(max(1, len(progress.trainers))),
    }
    if progress.error:
        tags["pipeline.error"] = progress.error[:4000]
    stops = sorted({t.stop_reason for t in progress.trainers if t.stop_reason})
    if progress.state == "PRUNED":
        tags["pipeline.stop_reason"] = "pruned"
    elif progress.interrupted:
        tags["pipeline.stop_reason"] = "interrupted"
    elif progress.cut_short:
        tags["pipeline.stop_reason"] = progress.cut_short
    elif stops:
        tags["pipeline.stop_reason"] = ",".join(stops)
    if best is not None and len(progress.trainers) > 1:
        tags["pipeline.model_fold"] = str(best)
    return tags


def _run_params(params: Params) -> dict[str, str]:
    """Every resolved param as MLflow stores it (on the trial's run and on its model)."""
    return {k: _param_str(v) for k, v in params.flat().items()}


def _param_str(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)
