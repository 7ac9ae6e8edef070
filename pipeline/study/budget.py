"""The study's trial budget: a total for the study, shared by every worker and every run.

``budget.n_trials`` in a study file is the study's total. A trial counts once it is complete,
pruned or running; a failed trial does not count, because its retry or a new trial takes its
place (a search whose trials keep failing stops on its own), and a queued (waiting) one counts
once it runs: Optuna runs queued trials first, so a retry of a dead worker's trial is always
run. A run without ``--n-trials`` adds trials until the total is reached; ``--n-trials N``
adds N more whatever the total (``0``: create or check the study and clean up after gone
workers, train nothing).
The total is exact however many workers start trials at the same moment: a new trial is
created only under a lock that every worker of the study takes (:func:`admitting`), and only
while fewer than the total count or wait in the queue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

COUNTED_STATES = ("COMPLETE", "PRUNED", "RUNNING")
# What a new trial must fit beside: a queued trial (a dead worker's retry) will run, so it
# takes its place in the total before it does.
ADMITTED_STATES = (*COUNTED_STATES, "WAITING")


class BudgetReached(Exception):
    """The study holds its total: no new trial is created (raised by ``study.ask``)."""



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


@contextlib.contextmanager
def admitting(
    optuna_study: Any, total: int, lock: Callable[[], contextlib.AbstractContextManager[Any]]
) -> Iterator[None]:
    """While the block runs, ``optuna_study`` creates a new trial only while fewer than
    ``total`` of its trials count or wait (:data:`ADMITTED_STATES`), checked and created under
    ``lock``; otherwise ``study.ask`` raises :class:`BudgetReached`.

    Optuna's ``MaxTrialsCallback`` looks after a trial has ended, so workers starting at the
    same moment each create one more. The only place between "how many are there" and "one
    more" is the storage's ``create_new_trial``, so this wraps that method of this study's
    storage object for the block. Queued trials are popped without it (they already count),
    and a queued trial being added (``add_trial`` passes a template) is not refused.
    """
    storage = optuna_study._storage
    create = storage.create_new_trial
    states = tuple(TrialState[s] for s in ADMITTED_STATES)

    def create_within_budget(study_id: int, template_trial: Any = None) -> int:
        if template_trial is not None:
            return int(create(study_id, template_trial=template_trial))
        with lock():
            held = storage.get_n_trials(study_id, state=states)
            if held >= total:
                raise BudgetReached(f"the study holds its total of {total} trial(s)")
            return int(create(study_id))

    storage.create_new_trial = create_within_budget
    try:
        yield
    finally:
        del storage.create_new_trial  # the class's own method again
