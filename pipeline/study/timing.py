"""Timing of the trial records, for benchmarks only: an optional recorder they pass in.

A search without one measures nothing. With one (``SearchOptions(times=TrackingTimes())``), the
MLflow trial tracker adds the seconds it spends writing each trial's run, and how many of them
the trial itself waited for, from whichever thread writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


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
