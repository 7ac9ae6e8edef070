"""Budget-aware fidelity: successive halving over epochs and over fractions of the data.

A study with ``pruner: {type: rungs, ...}`` trains every trial through the same rungs, e.g.
2 epochs on 1/3 of its training part, 2 on all of it, 6 more, and then on to its end (early
stopping or ``train.max_epochs``). At the end of each rung a trial continues only while it is
among the best ``1/reduction_factor`` of the trials that reached that rung, or, while fewer
than ``reduction_factor`` have, only if it is the best of them (:class:`RungPruner`).

The study's first trial, the baseline (the params.yaml configuration,
:mod:`pipeline.study.starts`), climbs the same rungs and is never stopped: it is the bar every
trial meets at each rung, at the same fidelity. So a random start-up trial spends more than
the cheapest rung only once it has beaten the user's own configuration there, and nothing
spends a large part of the budget before it has beaten cheaper trials. It is asynchronous, like
ASHA (Li et al., 2020): a trial compares itself with every trial that reached the rung before
it, on any worker, and never waits for others, so ``--workers`` and many machines stay busy.

When a rung trains on more data than the one before, the trial's models start afresh on it:
the cheaper rungs only decide whether a configuration deserves more, and the model it ends
with is what training on that data from the first epoch gives (a search without rungs would
get the same for that configuration). Rungs on the same data continue the same models. A
fraction that would leave fewer than ``min_samples`` training items is raised to the whole
training part (small data: rungs over epochs only).

The budget's part (:meth:`RungPlan.fits`): before a trial starts its next rung, that rung's
time is estimated from the trial's own measured epochs (training time scales with the data,
validation does not). A rung that would end past the deadline is not started: the trial stops
with what it reached (``pipeline.cut_short=budget``) and completes, a real model evaluated on
the whole validation set. A trial that the budget stops before the end of its first rung (at
the deadline, or past its ``search.trial_time_share``) is recorded as pruned instead: it has
not shown anything that the others can be compared with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from pipeline.config import bounds
from pipeline.study.trial_attrs import BASELINE_ATTR

__all__ = ["Rung", "RungPlan", "RungPruner", "RungsSpec", "describe_rungs", "plan_rungs",
           "rung_ends"]


@dataclass(frozen=True)
class Rung:
    """One rung: ``epochs`` epochs on ``data`` (a fraction) of the training part."""

    data: float = field(default=1.0, metadata=bounds(0.0, 1.0, lo_open=True,
                                                     what="a fraction of the training data"))
    epochs: int = field(default=3, metadata=bounds(1))


@dataclass(frozen=True)
class RungsSpec:
    """``pruner: {type: rungs, ...}`` in a study file."""

    rungs: list[Rung] = field(default_factory=lambda: [
        Rung(1 / 3, 2), Rung(1.0, 2), Rung(1.0, 6)])
    reduction_factor: int = field(default=3, metadata=bounds(2))
    min_samples: int = field(default=2000, metadata=bounds(1))


@dataclass(frozen=True)
class RungPlan:
    """The rungs for one training part's size (fractions below ``min_samples`` raised to 1)."""

    rungs: tuple[Rung, ...]
    reduction_factor: int

    @property
    def ends(self) -> tuple[int, ...]:
        """The epoch (1-based, cumulative) at which each rung ends."""
        return rung_ends(self.rungs)

    def rung_of(self, epoch: int) -> int | None:
        """The rung that ``epoch`` (1-based) belongs to; None past the last one."""
        for i, end in enumerate(self.ends):
            if epoch <= end:
                return i
        return None

    def fraction(self, epoch: int) -> float:
        """The share of the training part that ``epoch`` trains on."""
        rung = self.rung_of(epoch)
        return 1.0 if rung is None else self.rungs[rung].data

    def reached(self, epochs: int) -> int:
        """How many rungs a trial that ran ``epochs`` epochs completed."""
        return sum(end <= epochs for end in self.ends)

    def fits(self, *, epoch: int, train_s: float, val_s: float, now: float,
             deadline: float | None) -> bool:
        """Whether the rung that starts after ``epoch`` ends before ``deadline``, judged from
        that epoch's training and validation seconds (training scales with the data)."""
        nxt = self.rung_of(epoch + 1)
        if deadline is None or nxt is None or self.rung_of(epoch) == nxt:
            return True
        scale = self.rungs[nxt].data / self.fraction(epoch)
        cost = self.rungs[nxt].epochs * (train_s * scale + val_s)
        return now + cost <= deadline


def rung_ends(rungs: Sequence[Rung]) -> tuple[int, ...]:
    """The epoch (1-based, cumulative) at which each of ``rungs`` ends."""
    out, total = [], 0
    for rung in rungs:
        total += rung.epochs
        out.append(total)
    return tuple(out)


def describe_rungs(rungs: Sequence[Rung]) -> str:
    """``1/9 x3, 1/3 x3, all x3, all x9``: each rung's data and epochs."""
    def share(f: float) -> str:
        if f >= 1.0:
            return "all"
        inverse = 1.0 / f
        return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 0.02 else f"{f:g}"
    return ", ".join(f"{share(r.data)} x{r.epochs}" for r in rungs)


def plan_rungs(spec: RungsSpec, n_train: int) -> RungPlan:
    """The rungs for a training part of ``n_train`` items."""
    rungs = tuple(r if r.data * n_train >= spec.min_samples else Rung(1.0, r.epochs)
                  for r in spec.rungs)
    return RungPlan(rungs=rungs, reduction_factor=spec.reduction_factor)


class RungPruner(BasePruner):
    """Asynchronous successive halving at fixed rung ends (see the module docstring).

    Args:
        ends: the epochs (steps) at which rungs end.
        reduction_factor: a trial continues while in the best ``1/reduction_factor`` of the
            trials that reached the rung (the best one while fewer than that many have).
    """

    def __init__(self, ends: Sequence[int], reduction_factor: int = 3) -> None:
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be ≥ 2, got {reduction_factor=}.")
        self.ends = tuple(int(e) for e in ends)
        self.reduction_factor = reduction_factor

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        if step is None or step not in self.ends or trial.user_attrs.get(BASELINE_ATTR):
            return False  # the baseline is the bar, never stopped
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        others = [
            sign * t.intermediate_values[step]
            for t in study.get_trials(
                deepcopy=False,
                states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
            if t.number != trial.number and step in t.intermediate_values
            and math.isfinite(t.intermediate_values[step])
        ]
        better = sum(v < sign * value for v in others)
        # The best 1/reduction_factor go on; with fewer than that many there, only the best.
        return better >= max(1, (len(others) + 1) // self.reduction_factor)
