"""The study's trial budget: a total for the study, shared by every worker and every run.

``budget.n_trials`` in a study file is the study's total. A trial counts once it is complete,
pruned or running; a failed trial does not count, because its retry or a new trial takes its
place (a search whose trials keep failing stops on its own), and a queued (waiting) one counts
once it runs: Optuna runs queued trials first, so a retry of a dead worker's trial is always
run. A run without ``--n-trials`` adds trials until the total is reached; ``--n-trials N``
adds N more whatever the total (``0``: create or check the study and clean up after gone
workers, train nothing).
Workers that share a study stop when the total is reached, so it is overshot by at most one
trial per worker that was starting one at that moment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

COUNTED_STATES = ("COMPLETE", "PRUNED", "RUNNING")


def counted(states: Iterable[str]) -> int:
    """How many of these trial states count toward the budget."""
    return sum(state in COUNTED_STATES for state in states)


@dataclass(frozen=True)
class RunBudget:
    """How many trials this run may start (None: no limit) and the total that stops it."""

    n_trials: int | None
    total: int | None  # stop when this many trials count (None: only n_trials limits)

    def describe(self, done: int) -> str:
        if self.n_trials == 0:
            return "no new trials"
        if self.total is None:
            return "no trial limit" if self.n_trials is None else f"{self.n_trials} new trial(s)"
        return f"up to {self.n_trials} new trial(s): {done} of the study's {self.total} done"


def plan(*, extra: int | None, total: int | None, done: int) -> RunBudget:
    """This run's budget from ``--n-trials`` (``extra``) or the study's ``total``."""
    if extra is not None:
        return RunBudget(n_trials=extra, total=None)
    if total is None:
        return RunBudget(n_trials=None, total=None)
    return RunBudget(n_trials=max(0, total - done), total=total)


def stop_at_total(total: int) -> Any:
    """Optuna's callback that stops this worker once the study's counted trials reach ``total``."""

    return MaxTrialsCallback(total, states=tuple(TrialState[s] for s in COUNTED_STATES))
