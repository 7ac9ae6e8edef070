"""The MLflow run of each trial: created when the trial starts, completed however it ends.

:class:`MlflowTrialTracker` is the :class:`~pipeline.study.objective.TrialTracker` a search
uses: one run per trial, nested under the search's parent run, with the trial's params, its
fold-combined curves, per-fold detail (``folds.csv``), the curves PNG, the model and the final
status. :data:`RUN_STATUS` and :func:`trial_run_name` are the one rule for how an Optuna state
shows in MLflow (the reaper and ``--reconcile`` use them too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.cache import CacheMeta
from pipeline.errors import TrackingUnreachable, first_line
from pipeline.study.folds import combine_rows
from pipeline.study.objective import AVERAGED_SKIP, TrialProgress, best_row
from pipeline.study.report import MODEL_NAME_ATTR, trial_model_name
from pipeline.study.timing import TrackingTimes
from pipeline.tracking import ModelPart, RunRecord, fold_table

logger = logging.getLogger(__name__)

__all__ = ["FOLD_TABLE", "RUN_STATUS", "MlflowTrialTracker", "RunTarget", "trial_run_name"]

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


FOLD_TABLE = "folds.csv"  # per-fold, per-epoch detail of a k-fold trial, out of the charts


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


_MAX_PENDING = 2  # a trial waits when this many of its predecessors' records are queued
RecordWriter = Literal["inline", "thread", "process"]


class MlflowTrialTracker:
    """Creates, fills and closes the MLflow run of each trial.

    Child runs are created and written through ``MlflowClient`` with explicit run ids (tag
    ``mlflow.parentRunId`` nests them), so trials running in parallel threads never share an
    active run. Creating the run (and logging its params) happens in the trial's thread, so the
    Optuna trial knows its run id at once. The end-of-trial record (metrics, tags, curves PNG,
    model, final status) is built in the trial's thread as a
    :class:`~pipeline.tracking.records.RunRecord` and written by one writer at a time
    (``torch.export`` is not thread-safe):

    - ``process``: the recorder process (:mod:`pipeline.tracking.recorder`) writes it while the
      next trial trains; the trial only hands it over. A second *thread* of the training
      process would not do: a torch op there makes OpenMP put the training threads to sleep
      between parallel regions (training ran 40–55 % slower, BENCHMARKS.md).
    - ``inline``: the trial's own thread writes it (one trial at a time).
    - ``thread``: one logging thread writes it while the trial waits (trials in threads).

    :meth:`flush` waits for queued records. Pruned runs end FINISHED named ``trial-N pruned``,
    failed ones FAILED; every run carries the tag ``optuna.state`` (COMPLETE / PRUNED / FAIL).
    A record that cannot be written (a full disk, a lost server) is logged, its run ends FAILED
    and the search reports it when it ends; the trial keeps its Optuna state and value.

    Args:
        target: where the runs go and what they are for (:class:`RunTarget`).
        meta: the cache metadata (model packaging, tags).
        log_models: log each trial's model (complete and pruned trials).
        example: raw input samples for the model's signature and input example.
        writer: who writes the end-of-trial records (above).
        times: where benchmarks collect the time spent on records (None: not measured).
        shield: holds a Ctrl-C while a record is written in the main thread.
    """

    def __init__(
        self,
        target: RunTarget,
        *,
        meta: CacheMeta,
        log_models: bool = True,
        example: np.ndarray | None = None,
        writer: RecordWriter = "inline",
        times: TrackingTimes | None = None,
        shield: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
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
        self.writer = writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._recorder: Any = None  # started with the first record (needs the example)
        self._slots = threading.BoundedSemaphore(_MAX_PENDING)
        self._stats_lock = threading.Lock()
        self._numbers: dict[str, int] = {}  # run id -> trial number, for the recorder's replies
        self.times = times
        # Ctrl-C waits while a record is written in the main thread (pipeline.study.interrupts).
        self._shield = shield or contextlib.nullcontext
        self.failed: dict[int, str] = {}  # trials whose record could not be written: why
        self.lost: str | None = None  # why the tracking server is taken for lost

    def start_recorder(self) -> None:
        """Start the recorder process now (it warms up while the first trial trains)."""
        from pipeline.tracking.recorder import Recorder

        if self.writer == "process" and self._recorder is None:
            self._recorder = Recorder(meta=self.meta, example=self.example,
                                      experiment_id=self.experiment_id, on_done=self._written)

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
        with self._shield(), self._reachable():  # a run created must reach the trial
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{progress.number}", tags=tags
            )
        run_id = run.info.run_id
        trial.set_user_attr(MODEL_NAME_ATTR, trial_model_name(progress.number))
        self._add(progress, time.perf_counter() - t0, blocking=True)
        return run_id

    def log_params(self, progress: TrialProgress) -> None:
        from mlflow.entities import Param

        assert progress.run_id is not None and progress.params is not None
        t0 = time.perf_counter()
        with self._reachable():
            self.client.log_batch(
                progress.run_id,
                params=[Param(k, v) for k, v in _run_params(progress.params).items()],
                synchronous=True,
            )
        self._add(progress, time.perf_counter() - t0, blocking=True)

    def finish(self, progress: TrialProgress) -> None:
        """Record how the trial ended (see the class docstring for who writes it)."""
        if progress.run_id is None:
            return
        # The kept weights are restored here, in the trial's thread, before anyone else looks.
        for t in progress.trainers:
            if t.best_epoch > 0:
                t.final_model()
        t0 = time.perf_counter()
        record = self._run_record(progress)
        self._slots.acquire()  # back-pressure: at most _MAX_PENDING records queued
        if self.writer == "process" and self.lost is None:
            with self._stats_lock:
                self._numbers[record.run_id] = progress.number
            self.start_recorder()
            self._recorder.submit(record)
            self._waited(progress, time.perf_counter() - t0)
            return
        # A record that cannot be written is logged and reported when the search ends; it does
        # not turn a trial that trained to the end into a failed one.
        try:
            with self._shield():
                if self.writer == "inline":
                    self._write_logged(progress, record)
                else:
                    self._executor.submit(self._write_logged, progress, record).result()
        finally:
            self._waited(progress, time.perf_counter() - t0)

    def flush(self) -> dict[int, str]:
        """Wait until every queued record is written; returns the trials that failed to log."""
        if self._recorder is not None:
            self._recorder.wait()
        with self._stats_lock:
            return dict(self.failed)

    def close(self) -> None:
        self.flush()
        if self._recorder is not None:
            self._recorder.close()
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turn a lost tracking server into :class:`TrackingUnreachable` (and remember it)."""
        if self.lost is not None:
            raise TrackingUnreachable(self.lost)
        try:
            yield
        except Exception as exc:
            if not tracking.is_unreachable(exc):
                raise
            self.lost = ("the MLflow tracking server is unreachable "
                         f"({tracking.unreachable_reason(exc)})")
            raise TrackingUnreachable(self.lost) from None

    def _written(self, outcome: tuple[str, str | None, bool]) -> None:
        """The recorder's word on one record (called from its reply thread)."""
        run_id, error, unreachable = outcome
        self._slots.release()
        if error is None:
            return
        with self._stats_lock:
            number = self._numbers.get(run_id, -1)
            self.failed[number] = error
        if unreachable:
            self.lost = f"the MLflow tracking server is unreachable ({error})"
            logger.warning("trial %d: its MLflow run could not be completed: %s", number,
                           self.lost)
        else:
            logger.warning("could not record trial %d in MLflow run %s: %s", number, run_id,
                           error)

    def _write_logged(self, progress: TrialProgress, record: RunRecord) -> None:
        """Write ``record`` here (this thread); a failure is logged and remembered."""
        t0 = time.perf_counter()
        try:
            with self._reachable():
                tracking.write_record(record, meta=self.meta, example=self.example,
                                      experiment_id=self.experiment_id, client=self.client)
        except TrackingUnreachable as exc:
            # Once the server is gone nothing more is sent: each request would wait through
            # MLflow's retries again. The run stays open for --reconcile to close.
            progress.record_error = str(exc)
            logger.warning("trial %d: its MLflow run could not be completed: %s",
                           progress.number, exc)
            with self._stats_lock:
                self.failed[progress.number] = str(exc)
        except Exception as exc:
            progress.record_error = first_line(exc)
            logger.exception(
                "could not record trial %d in MLflow run %s", progress.number, progress.run_id
            )
            with self._stats_lock:
                self.failed[progress.number] = progress.record_error
        finally:
            self._slots.release()
            progress.record_s = time.perf_counter() - t0
            self._add(progress, progress.record_s, blocking=False)

    def _run_record(self, progress: TrialProgress) -> RunRecord:
        """The trial's end-of-run record, built in the trial's thread (plain data + weights)."""
        assert progress.run_id is not None
        best = progress.best_fold(self.direction, self.metric)
        model = None
        if self.log_models and best is not None and (
            progress.state in ("COMPLETE", "PRUNED") or progress.interrupted
        ):
            net = progress.trainers[best].model
            model = ModelPart(
                weights={k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()},
                model=dataclasses.asdict(progress.params.model) if progress.params else {},
                root=str(progress.params.root) if progress.params else "",
                params=_run_params(progress.params) if progress.params is not None else {},
                net=net if self.writer != "process" else None,
                name=trial_model_name(progress.number),
            )
        interrupted = progress.interrupted
        return RunRecord(
            run_id=progress.run_id, status=RUN_STATUS.get(progress.state, "FAILED"),
            history=list(progress.history), summary=self._summary(progress),
            # The sampled values were rejected: record them (else they are in the params).
            params={} if progress.params is not None else {
                k: _param_str(v) for k, v in progress.values.items()},
            tags=_end_tags(progress, best),
            texts={FOLD_TABLE: fold_table([t.history for t in progress.trainers])}
            if len(progress.trainers) > 1 else {},
            title=f"{self.optuna_study} trial {progress.number} ({progress.state})",
            model=model,
            failure_tags={
                "optuna.state": progress.state,
                "mlflow.runName": trial_run_name(progress.number, progress.state,
                                                 interrupted=interrupted),
            },
            interrupt_tags={  # a Ctrl-C inside the record fails the trial in Optuna too
                "optuna.state": "FAIL",
                "mlflow.runName": trial_run_name(progress.number, "FAIL", interrupted=True),
            },
        )

    def _summary(self, progress: TrialProgress) -> dict[str, float]:
        """``best_*``: each fold's best epoch, combined (the spread over folds beside it)."""
        rows = [best_row(t) for t in progress.trainers]
        out = {tracking.summary_name(k): v for k, v in combine_rows(
            rows, skip=(*AVERAGED_SKIP, "lr"), spread=self.metric).items()}
        # The epoch of the weights logged as the model (an integer, not a mean over folds).
        best = progress.best_fold(self.direction, self.metric)
        if best is not None and rows[best]:
            out["best_epoch"] = float(rows[best]["epoch"])
        out["epochs"] = float(progress.epochs)
        out["fold_epochs"] = float(progress.fold_epochs)
        out["train_s"] = float(progress.train_s)
        return {k: v for k, v in out.items() if math.isfinite(v)}


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
