"""What a search may spend: trials (a total for the study, shared by every worker and every
run) and time (this run's seconds, and one trial's share of them), in one :class:`RunBudget`.

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
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from pipeline.study.report import standard_error, trial_choice
from pipeline.study.trial_attrs import STOPPED_FLAT_ATTR

logger = logging.getLogger(__name__)

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
    """What this run may spend, from the flags and the study file to every check that uses it.

    Built once (:func:`run_budget`) and handed down: the search stops starting trials when
    either limit is reached (:meth:`spent`, :func:`stop_at_total`), and the objective stops a
    running trial at the deadline or at its share of the time (:meth:`trial_cut`).
    """

    n_trials: int | None = None  # trials this run may start (None: no limit)
    total: int | None = None  # the study's total that stops every worker (None: none)
    timeout_s: float | None = None  # seconds for this run (--timeout, else budget.timeout_s)
    # The share of ``timeout_s`` one trial may use (search.trial_time_share).
    trial_time_share: float = 1.0
    epoch_cap: int | None = None  # every trial stops after this many epochs (--dry-run)
    started: float | None = None  # time.monotonic() when this run's clock started

    def start_clock(self, now: float | None = None) -> RunBudget:
        """This budget with its clock running from ``now`` (default: the present)."""
        return replace(self, started=time.monotonic() if now is None else now)

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` at which the time is spent (None: no time limit)."""
        if self.timeout_s is None or self.started is None:
            return None
        return self.started + self.timeout_s

    def spent(self, now: float | None = None) -> bool:
        """Whether the time is up (never without a time limit)."""
        deadline = self.deadline
        return deadline is not None and (time.monotonic() if now is None else now) >= deadline

    def seconds_left(self, now: float | None = None) -> float | None:
        deadline = self.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - (time.monotonic() if now is None else now))

    def trial_cut(self, *, now: float, trial_started: float, epochs: int) -> str | None:
        """Why a trial that has run ``epochs`` epochs since ``trial_started`` stops before
        another, or None to go on: ``"deadline"`` (the time is spent) or ``"trial_share"``
        (judged from its mean epoch time, the next epoch would end past its share)."""
        deadline = self.deadline
        if deadline is None or epochs < 1:
            return None
        if now >= deadline:
            return "deadline"
        assert self.timeout_s is not None
        share_end = trial_started + self.trial_time_share * self.timeout_s
        if share_end >= deadline:  # a share of 1: the deadline alone
            return None
        epoch_s = (now - trial_started) / epochs
        return "trial_share" if now + epoch_s > share_end else None

    def describe(self, done: int) -> str:
        if self.n_trials == 0:
            return "no new trials"
        if self.total is None:
            trials = ("no trial limit" if self.n_trials is None
                      else f"{self.n_trials} new trial(s)")
        else:
            trials = f"up to {self.n_trials} new trial(s): {done} of the study's {self.total} done"
        return trials + (f" within {self.timeout_s:g} s" if self.timeout_s is not None else "")


def run_budget(
    *, extra: int | None, total: int | None, done: int, timeout_s: float | None,
    trial_time_share: float, epoch_cap: int | None = None,
) -> RunBudget:
    """This run's budget: ``--n-trials`` (``extra``) trials, else up to the study's ``total``
    (``done`` counted so far); ``timeout_s`` seconds (None: no limit)."""
    if extra is not None:
        n_trials, total = extra, None
    elif total is None:
        n_trials = None
    else:
        n_trials = max(0, total - done)
    return RunBudget(n_trials=n_trials, total=total, timeout_s=timeout_s,
                     trial_time_share=trial_time_share, epoch_cap=epoch_cap)


CUT_SHORT = {
    "deadline": "the search's time budget is spent",
    "trial_share": "another epoch would pass its share of the time budget "
                   "(search.trial_time_share)",
    "budget": "its next rung would end past the time budget",
}


def stop_at_total(total: int) -> Any:
    """Optuna's callback that stops this worker once the study's counted trials reach ``total``."""

    return MaxTrialsCallback(total, states=tuple(TrialState[s] for s in COUNTED_STATES))


def flat_trials(trials: Sequence[Any], direction: str, *, warmup: int = 0) -> tuple[int, Any]:
    """How many finished trials in a row have not beaten the best by more than its standard
    error (:func:`pipeline.study.report.standard_error`: 0 on a holdout), and the trial that
    last did (None: no complete trial yet).

    Trials are taken in the order they finished; a pruned trial counts as one that did not.
    The first ``warmup`` finished trials never count as flat (they may set the best): trials a
    sampler draws at random before it models the space (TPE's start-up trials) failing to beat
    the first trial say nothing about what the modelled ones will find (bench_patience.py).
    """
    sign = -1.0 if direction == "maximize" else 1.0
    finished = sorted(
        (t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete),
        key=lambda t: (t.datetime_complete, t.number))
    best, flat = None, 0
    for i, t in enumerate(finished):
        counts = 1 if i >= warmup else 0
        value = t.value if t.state.name == "COMPLETE" else None
        if value is None or not math.isfinite(value):
            flat += counts if best is not None else 0
            continue
        if best is None or sign * value < sign * best.value - _standard_error(best):
            best, flat = t, 0
        else:
            flat += counts
            if sign * value < sign * best.value:  # better, but within the noise
                best = t
    return flat, best


def _standard_error(trial: Any) -> float:
    return standard_error(trial_choice(trial, trial.value))


@dataclass(frozen=True)
class PatienceRule:
    """``budget.patience``: the study is done once ``patience`` finished trials in a row (the
    sampler's first ``warmup`` not counted) have not beaten the best by more than its standard
    error (:func:`flat_trials`)."""

    patience: int
    direction: str
    warmup: int = 0

    def done(self, trials: Sequence[Any]) -> tuple[int, Any] | None:
        """(flat trials, the best) when the study is done, else None."""
        flat, best = flat_trials(trials, self.direction, warmup=self.warmup)
        return (flat, best) if best is not None and flat >= self.patience else None

    def callback(self) -> Callable[[Any, Any], None]:
        """Optuna callback: stop starting trials once the study is done, recording why."""

        def callback(optuna_study: Any, trial: Any) -> None:
            done = self.done(optuna_study.get_trials(deepcopy=False))
            if done is None:
                return
            flat, best = done
            logger.info(
                "stopping: the last %d trials did not beat the best (trial %d, %.4g) by more "
                "than its standard error (%.2g); the study is done (budget.patience)",
                flat, best.number, best.value, _standard_error(best))
            optuna_study.set_user_attr(STOPPED_FLAT_ATTR, {"after": flat, "best": best.number})
            optuna_study.stop()

        return callback


def stop_when_spent(budget: RunBudget) -> Callable[[Any, Any], None]:
    """Optuna callback: once ``budget``'s time is spent, start no new trial."""

    def callback(optuna_study: Any, trial: Any) -> None:
        if budget.spent():
            optuna_study.stop()

    return callback


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
