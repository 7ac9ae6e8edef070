"""Benchmarks' and tests' hooks into a search: who writes the trial records, and their timing.

A user's search has none: ``run_search(options)`` calls :func:`pipeline.study.runner.search`
with the default :class:`Instruments`. A benchmark passes its own to that lower-level entry, e.g.
``search(options, Instruments(times=TrackingTimes()))`` to add up the seconds the MLflow trial
tracker spends writing each trial's run, and how many of them the trial itself waited for.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Instruments", "RecordWriter", "TrackingTimes"]

# Who writes a trial's end-of-run record (see MlflowTrialTracker): the recorder process, the
# trial's own thread, or one logging thread.
RecordWriter = Literal["inline", "thread", "process"]


@dataclass
class TrackingTimes:
    """Seconds spent writing trial runs to MLflow during one search (any thread)."""

    work_s: float = 0.0  # all of it
    blocking_s: float = 0.0  # of which trials waited for
    blocking_by_trial: dict[int, float] = field(default_factory=dict)  # trial number -> wait
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, number: int, seconds: float, *, work: bool = True, blocking: bool) -> None:
        """Count ``seconds`` of writing (``work``) that trial ``number`` waited for or not."""
        with self._lock:
            if work:
                self.work_s += seconds
            if blocking:
                self.blocking_s += seconds
                self.blocking_by_trial[number] = self.blocking_by_trial.get(number, 0.0) + seconds


@dataclass(frozen=True)
class Instruments:
    """What a benchmark or test sets on one search (None: the search decides / measures none)."""

    record_writer: RecordWriter | None = None  # None: runner.record_writer's rule
    times: TrackingTimes | None = None
