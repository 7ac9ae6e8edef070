"""How an MLflow run ends: the one owner of run statuses, end tags and trial run names.

Every run the project creates ends here, whoever ends it: a trial's record
(:mod:`pipeline.tracking.records`), the search's parent run, a training run, the reaper of a
dead worker, ``--reconcile``, a lost study database. So the same Optuna state always shows the
same way in MLflow:

- a trial run is named ``trial-N`` (complete), ``trial-N pruned``, ``trial-N failed`` or
  ``trial-N interrupted``; its tag :data:`STATE_TAG` (``optuna.state``) holds the Optuna state;
  pruned runs end FINISHED (MLflow draws KILLED and FAILED with the same red cross, and pruning
  is a normal outcome), failed ones FAILED (:data:`RUN_STATUS`);
- a run that failed says why in :data:`ERROR_TAG` (``pipeline.error``), and a run that stopped
  before its natural end says how in :data:`STOP_TAG` (``pipeline.stop_reason``);
- a search's parent run ends FINISHED, KILLED (Ctrl-C, or its worker died) or FAILED.

``tests/test_layout.py`` checks that no other module sets these tags or terminates a run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_TAG",
    "NAME_TAG",
    "RUN_STATUS",
    "STATE_TAG",
    "STOP_TAG",
    "end_parent_run",
    "end_run",
    "end_trial_run",
    "ended_run",
    "record_cut_short",
    "retag_state",
    "trial_end_tags",
    "trial_run_name",
]

STATE_TAG = "optuna.state"  # COMPLETE | PRUNED | FAIL (RUNNING while the trial runs)
ERROR_TAG = "pipeline.error"  # why a run failed
STOP_TAG = "pipeline.stop_reason"  # pruned, interrupted, deadline, early_stopping, ...
NAME_TAG = "mlflow.runName"
_MAX_TAG = 4000  # characters of a reason kept in a tag

# Optuna trial states as run statuses (see the module docstring).
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
ParentEnd = Literal["FINISHED", "KILLED", "FAILED"]


def trial_run_name(number: int, state: str, *, interrupted: bool = False) -> str:
    """``trial-7``, ``trial-7 pruned``, ``trial-7 failed`` or ``trial-7 interrupted``."""
    if interrupted:
        return f"trial-{number} interrupted"
    return {"PRUNED": f"trial-{number} pruned", "FAIL": f"trial-{number} failed"}.get(
        state, f"trial-{number}"
    )


def trial_end_tags(
    number: int, state: str, *, interrupted: bool = False, error: str | None = None,
    stop_reason: str | None = None,
) -> dict[str, str]:
    """The tags a trial's run ends with: its Optuna state, its name, why and how it stopped."""
    tags = {STATE_TAG: state, NAME_TAG: trial_run_name(number, state, interrupted=interrupted)}
    if error:
        tags[ERROR_TAG] = error[:_MAX_TAG]
    if stop_reason:
        tags[STOP_TAG] = stop_reason
    return tags


def end_run(client: Any, run_id: str, *, status: str, tags: Mapping[str, str] = {}) -> None:
    """Set ``tags`` and end ``run_id`` with ``status``: the one place a run is terminated."""
    from mlflow.entities import RunTag

    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()],
                         synchronous=True)
    client.set_terminated(run_id, status=status)


def end_trial_run(
    client: Any, run_id: str, *, number: int | None, state: str, reason: str,
    record_lost: bool = False,
) -> None:
    """End a trial run that is still RUNNING although its trial is over (its worker died, the
    study database went away, ``--reconcile``): the trial's state and name (when its number is
    known), the reason; FAILED when its record was lost (it has no model), else the state's
    status."""
    status = "FAILED" if record_lost else RUN_STATUS.get(state, "FAILED")
    tags = {STATE_TAG: state, ERROR_TAG: reason}
    if number is not None:
        tags = {**trial_end_tags(number, state), ERROR_TAG: reason}
    end_run(client, run_id, status=status, tags=tags)


def retag_state(client: Any, run_id: str, state: str) -> None:
    """Correct the Optuna state an ended trial run shows (``--reconcile``)."""
    client.set_tag(run_id, STATE_TAG, state)


def end_parent_run(client: Any, run_id: str, *, status: ParentEnd, reason: str = "") -> None:
    """End a search's parent run; a reason (why it did not finish) goes in ``pipeline.error``."""
    end_run(client, run_id, status=status, tags={ERROR_TAG: reason} if reason else {})


def record_cut_short(client: Any, run_id: str, *, tags: Mapping[str, str], why: str) -> None:
    """A run whose end-of-run record could not be written: FAILED, saying so."""
    end_run(client, run_id, status="FAILED",
            tags={**tags, ERROR_TAG: f"its record was not completed: {why}"})


@contextlib.contextmanager
def ended_run(**start_run: Any) -> Iterator[Any]:
    """``mlflow.start_run(**start_run)`` as a block whose run ends FINISHED, or FAILED with the
    error (or the Ctrl-C) in ``pipeline.error``: one training run (``pipeline.train``)."""
    import mlflow

    run = mlflow.start_run(**start_run)
    try:
        yield run
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        why = "interrupted (Ctrl-C)" if interrupted else (
            " ".join(str(exc).split()) or type(exc).__name__)
        with contextlib.suppress(Exception):  # the original error matters more
            mlflow.set_tag(ERROR_TAG, why[:_MAX_TAG])
        mlflow.end_run("FAILED")  # fluent: also pops the active run
        raise
    mlflow.end_run()
