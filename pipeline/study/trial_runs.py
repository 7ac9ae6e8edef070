"""The MLflow run of each trial: created when the trial starts, completed however it ends.

:class:`MlflowTrialTracker` is the :class:`~pipeline.study.objective.TrialTracker` a search
uses: one run per trial, nested under the search's parent run, with the trial's params, its
fold-combined curves, per-fold detail (``folds.csv``), the curves PNG, the model and the final
status. How a run ends (its status, name and end tags) is :mod:`pipeline.tracking.endings`'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.cache import CacheMeta
from pipeline.study.instruments import RecordWriter, TrackingTimes
from pipeline.study.record_writers import RecordWriters
from pipeline.study.report import MODEL_NAME_ATTR, trial_model_name
from pipeline.study.trial_records import run_params, trial_record
from pipeline.study.trial_training import TrialProgress
from pipeline.tracking.endings import STATE_TAG

logger = logging.getLogger(__name__)

__all__ = ["MlflowTrialTracker", "RunTarget"]


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


class MlflowTrialTracker:
    """Creates, fills and closes the MLflow run of each trial.

    Child runs are created and written through ``MlflowClient`` with explicit run ids (tag
    ``mlflow.parentRunId`` nests them), so trials running in parallel threads never share an
    active run. Creating the run (and logging its params) happens in the trial's thread, so the
    Optuna trial knows its run id at once. The end-of-trial record (metrics, tags, curves PNG,
    model, final status: :func:`~pipeline.study.trial_records.trial_record`) is built in the
    trial's thread and written by :class:`~pipeline.study.record_writers.RecordWriters`
    (``writer``: the recorder process, the trial's thread or one logging thread);
    :meth:`flush` waits for queued records. A record that cannot be written is logged, its
    run ends FAILED and the search reports it when it ends; the trial keeps its Optuna state
    and value.

    Args:
        target: where the runs go and what they are for (:class:`RunTarget`).
        meta: the cache metadata (model packaging, tags).
        writer: who writes the end-of-trial records.
        times: where benchmarks collect the time spent on records (None: not measured).
        shield: holds a Ctrl-C while a record is written in the main thread.
    """

    def __init__(
        self,
        target: RunTarget,
        *,
        meta: CacheMeta,
        writer: RecordWriter = "inline",
        times: TrackingTimes | None = None,
        shield: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        self.target = target
        self._shield = shield or contextlib.nullcontext
        self.writers = RecordWriters(writer=writer, meta=meta, client=self.client,
                                     experiment_id=target.experiment_id, times=times,
                                     shield=self._shield)

    @property
    def example(self) -> np.ndarray | None:
        """Raw input samples for the logged models' signature and input example."""
        return self.writers.example

    @example.setter
    def example(self, value: np.ndarray | None) -> None:
        self.writers.example = value

    @property
    def lost(self) -> str | None:
        """Why the tracking server is taken for lost (None while it answers)."""
        return self.writers.lost

    def start_recorder(self) -> None:
        """Start the recorder process now, when it writes (it warms up while trial 0 trains)."""
        self.writers.start_recorder()

    def start(self, trial: Any, progress: TrialProgress) -> str:
        t0 = time.perf_counter()
        target = self.target
        tags = {
            **target.base_tags,
            "mlflow.parentRunId": target.parent_run_id,
            "optuna.study": target.optuna_study,
            "optuna.trial_number": str(progress.number),
            STATE_TAG: "RUNNING",
            "pipeline.trial_seed": str(progress.seed),
            "pipeline.searched": ", ".join(progress.values),
        }
        tags.update(_retry_tags(trial))
        with self._shield(), self.writers.reachable():  # a run created must reach the trial
            run = self.client.create_run(
                target.experiment_id, run_name=f"trial-{progress.number}", tags=tags
            )
        trial.set_user_attr(MODEL_NAME_ATTR, trial_model_name(progress.number))
        self.writers.count(progress.number, time.perf_counter() - t0, blocking=True)
        return str(run.info.run_id)

    def log_params(self, progress: TrialProgress) -> None:
        from mlflow.entities import Param

        assert progress.run_id is not None and progress.params is not None
        t0 = time.perf_counter()
        with self.writers.reachable():
            self.client.log_batch(
                progress.run_id,
                params=[Param(k, v) for k, v in run_params(progress.params).items()],
                synchronous=True,
            )
        self.writers.count(progress.number, time.perf_counter() - t0, blocking=True)

    def finish(self, progress: TrialProgress) -> None:
        """Record how the trial ended."""
        if progress.run_id is None:
            return
        # The kept weights are restored here, in the trial's thread, before anyone else looks.
        for t in progress.trainers:
            if t.best_epoch > 0:
                t.final_model()
        t0 = time.perf_counter()
        target = self.target
        record = trial_record(
            progress, metric=target.metric, direction=target.direction,
            title=f"{target.optuna_study} trial {progress.number} ({progress.state})",
            keep_net=self.writers.writer != "process",
        )
        self.writers.count(progress.number, time.perf_counter() - t0, work=False,
                           blocking=True)
        self.writers.submit(progress.number, record)

    def flush(self) -> dict[int, str]:
        """Wait until every queued record is written; returns the trials that failed to log."""
        return self.writers.flush()

    def close(self) -> None:
        self.writers.close()
