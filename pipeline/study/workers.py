"""Workers of a shared study: who runs which trial, who is alive, and cleaning up after the dead.

Optuna's heartbeat covers RDB storage only, and MLflow leaves a killed process's runs RUNNING
for ever. So every search process (a *worker*) keeps a lease in the study itself (a study user
attribute ``pipeline.worker.<id>``: host, pid and its start time, parent MLflow run, last
heartbeat), renewed by a background thread, and tags each trial it starts with its id. Any
worker, at its start, after each trial and at its end, reaps the workers that are gone:

- a worker on this host is gone when its process is (pid and start time: no pid reuse);
- a worker elsewhere when its heartbeat is older than the grace period;
- a worker that ended cleanly marked its lease ended and is left alone.

For a gone worker, its RUNNING trials are failed in Optuna and queued again with the same
params (at most ``max_retry`` times; the retry records which trial it replaces), the MLflow
runs of its trials that are still RUNNING end FAILED with ``optuna.state`` and
``pipeline.error`` saying what happened, and its parent run ends KILLED. Then its lease is
marked reaped, so this happens once.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from pipeline.study.report import lost_records
from pipeline.tracking.endings import (
    ERROR_TAG,
    RUN_STATUS,
    STATE_TAG,
    end_parent_run,
    end_trial_run,
    retag_state,
)

logger = logging.getLogger(__name__)

LEASE_PREFIX = "pipeline.worker."
WORKER_ATTR = "pipeline.worker"  # trial user attribute: the id of the worker that ran it
RETRY_OF_ATTR = "pipeline.retry_of"  # trial user attribute: the trial number it replaces
RETRY_RUN_ATTR = "pipeline.retry_of_run"  # ... and that trial's MLflow run
RUN_ATTR = "mlflow_run_id"


@dataclass(frozen=True)
class Lease:
    """A worker's claim on the study, as stored in the study's user attributes."""

    id: str
    host: str
    pid: int
    pid_start: str  # the process's start time on its host ("" when unknown)
    parent_run_id: str
    started: float  # epoch seconds
    seen: float  # the last heartbeat, epoch seconds
    state: str = "running"  # running | ended | reaped

    @property
    def key(self) -> str:
        return LEASE_PREFIX + self.id

    @classmethod
    def from_attr(cls, value: Any) -> Lease | None:
        try:
            return cls(**value)
        except TypeError:
            return None


def _proc_stat(pid: int) -> tuple[str, str]:
    """``(state, start time)`` of ``pid`` from ``/proc`` (start in clock ticks since boot);
    empty strings when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", ""
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat.rpartition(")")[2].split()
    return fields[0], fields[19]


def _process_start(pid: int) -> str:
    return _proc_stat(pid)[1]


def _alive_here(lease: Lease) -> bool:
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process, but alive
    state, start = _proc_stat(lease.pid)
    if state == "Z":  # a killed child its parent has not waited for yet: dead
        return False
    return not lease.pid_start or start in ("", lease.pid_start)


def is_gone(lease: Lease, *, now: float, grace_s: float, host: str | None = None) -> bool:
    """Whether the worker holding ``lease`` has stopped without ending its lease."""
    if lease.state != "running":
        return False
    if lease.host == (host or socket.gethostname()):
        return not _alive_here(lease)
    return now - lease.seen > grace_s


def new_lease(parent_run_id: str) -> Lease:
    now = time.time()
    pid = os.getpid()
    return Lease(
        id=uuid.uuid4().hex[:12], host=socket.gethostname(), pid=pid,
        pid_start=_process_start(pid), parent_run_id=parent_run_id, started=now, seen=now,
    )


class Heartbeat:
    """Writes the lease now and every ``interval_s`` seconds from a daemon thread."""

    def __init__(self, optuna_study: Any, lease: Lease, *, interval_s: float) -> None:
        self.study = optuna_study
        self.lease = lease
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._write(lease)
        self._thread = threading.Thread(target=self._beat, name="study-heartbeat", daemon=True)
        self._thread.start()

    def _write(self, lease: Lease) -> None:
        self.study.set_user_attr(lease.key, asdict(lease))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                stored = Lease.from_attr(self.study.user_attrs.get(self.lease.key))
                if stored is not None and stored.state == "reaped":
                    # Taken for dead (a long pause, a clock far off): never bring it back.
                    logger.warning("this worker's lease was reaped by another worker")
                    return
                self._write(replace(self.lease, seen=time.time()))
            except Exception as exc:  # noqa: BLE001 - a storage hiccup; the next beat retries
                logger.warning("heartbeat not written (the next one retries): %s", exc)

    def stop(self) -> None:
        """Stop beating without writing (the storage is gone)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def end(self) -> None:
        """Stop beating and mark the lease ended (a clean exit is never reaped)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._write(replace(self.lease, seen=time.time(), state="ended"))
        except Exception as exc:  # noqa: BLE001 - then others reap it after the grace period
            logger.warning("could not mark this worker's lease ended: %s", exc)


# --------------------------------------------------------------------------------------------
# Reaping
# --------------------------------------------------------------------------------------------
def _leases(optuna_study: Any) -> Iterator[Lease]:
    for key, value in optuna_study.user_attrs.items():
        if key.startswith(LEASE_PREFIX):
            lease = Lease.from_attr(value)
            if lease is not None:
                yield lease


def _started(trial: Any) -> float:
    start = trial.datetime_start
    return start.timestamp() if isinstance(start, datetime.datetime) else 0.0


def reap(
    optuna_study: Any, client: Any, *, me: str, grace_s: float, interval_s: float,
    max_retry: int,
) -> list[int]:
    """Clean up after every gone worker (see the module docstring); the trials failed."""
    now = time.time()
    failed: list[int] = []
    for lease in _leases(optuna_study):
        if lease.id == me or not is_gone(lease, now=now, grace_s=grace_s):
            continue
        logger.warning(
            "worker %s (pid %d on %s, last seen %s) stopped without finishing; cleaning up "
            "its trials and runs", lease.id, lease.pid, lease.host,
            datetime.datetime.fromtimestamp(lease.seen).isoformat(timespec="seconds"),
        )
        reason = (
            f"the worker running this trial (pid {lease.pid} on {lease.host}) stopped without "
            f"finishing it (killed or crashed); found by worker {me}"
        )
        trials = [
            t for t in optuna_study.get_trials(deepcopy=False)
            if t.user_attrs.get(WORKER_ATTR) == lease.id
            # A retry copies its user attributes; it is not the dead worker's if it started
            # after that worker's last heartbeat.
            and _started(t) <= lease.seen + interval_s
        ]
        for trial in trials:
            if trial.state.name == "RUNNING" and _fail(optuna_study, trial, reason, max_retry):
                failed.append(trial.number)
        for trial in trials:
            # Read again: another worker may have failed it meanwhile (our copy says RUNNING).
            state = optuna_study._storage.get_trial(trial._trial_id).state.name
            _end_run(client, trial.user_attrs.get(RUN_ATTR), state=state, reason=reason)
        _end_run(client, lease.parent_run_id, state=None, reason=reason)
        optuna_study.set_user_attr(lease.key, asdict(replace(lease, state="reaped")))
    return failed


def _fail(optuna_study: Any, trial: Any, reason: str, max_retry: int) -> bool:
    """Fail a stale trial (False if another worker already did) and queue its retry."""

    storage = optuna_study._storage
    try:  # the reason first: a finished trial takes no more attributes
        storage.set_trial_user_attr(trial._trial_id, ERROR_TAG, reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except (UpdateFinishedTrialError, RuntimeError):
        return False  # another worker got there first
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if len(history) > max_retry:
        logger.warning("trial %d: not retried (already retried %d times)", trial.number,
                       max_retry)
        return True
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("pipeline.searched",)}
    attrs[RETRY_OF_ATTR] = trial.number
    if trial.user_attrs.get(RUN_ATTR):
        attrs[RETRY_RUN_ATTR] = trial.user_attrs[RUN_ATTR]
    optuna_study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=attrs,
        system_attrs={"failed_trial": trial.number, "retry_history": history},
    ))
    logger.warning("trial %d failed (its worker is gone) and queued again", trial.number)
    return True


def _end_parents_left_open(optuna_study: Any, client: Any, *, me: str) -> list[str]:
    """Parent runs of workers that are no longer running (their lease ended or was reaped)
    but are still RUNNING in MLflow (the tracking server was gone when they ended)."""
    lines = []
    for lease in _leases(optuna_study):
        if lease.state == "running" or not lease.parent_run_id or lease.id == me:
            continue
        try:
            status = client.get_run(lease.parent_run_id).info.status
        except Exception:  # noqa: BLE001 - a deleted run: nothing to close
            continue
        if status == "RUNNING":
            end_parent_run(client, lease.parent_run_id, status="FAILED",
                           reason=f"ended by --reconcile: its search (worker {lease.id}) had "
                                  "ended")
            lines.append(f"parent run {lease.parent_run_id} of worker {lease.id} was RUNNING: "
                         "ended")
    return lines


def _end_run(client: Any, run_id: str | None, *, state: str | None, reason: str,
             record_lost: bool = False) -> None:
    """End a RUNNING MLflow run: a trial's with its Optuna state, a parent's KILLED."""
    if not run_id or state == "RUNNING":
        return
    try:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            return
        number = run.data.tags.get("optuna.trial_number")
        if state is None:  # the parent run
            end_parent_run(client, run_id, status="KILLED", reason=reason)
        else:
            end_trial_run(client, run_id, number=None if number is None else int(number),
                          state=state, reason=reason, record_lost=record_lost)
    except Exception as exc:  # noqa: BLE001 - a deleted run, an unreachable server
        logger.warning("could not end MLflow run %s (reconcile later): %s", run_id, exc)


# --------------------------------------------------------------------------------------------
# Reconciling Optuna and MLflow
# --------------------------------------------------------------------------------------------
def reconcile(optuna_study: Any, client: Any, experiment_id: str, *, me: str) -> list[str]:
    """Make every trial's MLflow run agree with its Optuna state; one line per fix or finding.

    A finished trial whose run is still RUNNING is ended with the matching status (FAILED,
    saying why, when the trial's record was lost with the tracking server); a run whose
    ``optuna.state`` tag disagrees with the trial gets the trial's. The parent run of a worker
    that ended (or was reaped) but could not close it is ended too. Trial runs of this study
    that no trial points to are reported, not changed (they hold what they hold).
    """
    lines: list[str] = []
    trials = optuna_study.get_trials(deepcopy=False)
    records_lost = lost_records(optuna_study)
    owned: dict[str, Any] = {}
    for t in trials:  # the first trial with a run owns it (an RDB retry copies the old one's)
        if t.user_attrs.get(RUN_ATTR) and "pipeline.duplicate_of" not in t.user_attrs \
                and t.state.name != "WAITING":
            owned.setdefault(t.user_attrs[RUN_ATTR], t)
    runs = client.search_runs(
        [experiment_id], f"tags.`optuna.study` = '{optuna_study.study_name}' and "
        "tags.`pipeline.role` = 'trial'", max_results=50_000,
    )
    for run in runs:
        trial = owned.get(run.info.run_id)
        if trial is None:
            lines.append(f"run {run.info.run_id} ({run.info.run_name}) belongs to no trial")
            continue
        state = trial.state.name
        lost = records_lost.get(trial.number)
        if state in RUN_STATUS and run.info.status == "RUNNING":
            _end_run(client, run.info.run_id, state=state, record_lost=lost is not None,
                     reason=f"ended by --reconcile: its trial had finished ({state})"
                            + (f"; its record was not completed: {lost}" if lost else ""))
            lines.append(f"trial {trial.number}: {state}, its run was RUNNING: ended"
                         + (" (its record was lost: no model)" if lost else ""))
        elif state in RUN_STATUS and run.data.tags.get(STATE_TAG) != state:
            retag_state(client, run.info.run_id, state)
            lines.append(f"trial {trial.number}: tag {STATE_TAG} was "
                         f"{run.data.tags.get(STATE_TAG)!r}, set to {state}")
    lines += _end_parents_left_open(optuna_study, client, me=me)
    found = {r.info.run_id for r in runs}
    for run_id, trial in owned.items():
        if run_id not in found:
            lines.append(f"trial {trial.number}: its run {run_id} is not in the experiment")
    return lines
