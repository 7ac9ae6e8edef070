"""Ctrl-C during a search: stop soon, but never in the middle of writing a record.

A record (a trial's MLflow run being completed, the parent run being finished) is a few
requests that must land together: cut in the middle, Optuna would say one thing and MLflow
another (a run FAILED but tagged ``optuna.state=RUNNING``, a trial without its model). So a
Ctrl-C that arrives while the main thread writes a record is held until the record is
complete; one that arrives while training raises ``KeyboardInterrupt`` at once, as usual. Either
way ``stop`` is set, so trials in worker threads end after their epoch and the search starts no
new trial. A second Ctrl-C while a record is held stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

from pipeline.errors import TrackingUnreachable

logger = logging.getLogger(__name__)

__all__ = ["Interrupts", "quiet_interrupted_trials"]


class Interrupts:
    """The search's SIGINT handler (see the module docstring).

    Attributes:
        stop: set by the first Ctrl-C.
        held: a Ctrl-C arrived inside :meth:`shield` and waits for the record.
    """

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self.held = False
        self._depth = 0  # nesting of shield() in the main thread

    @property
    def requested(self) -> bool:
        """Whether Ctrl-C was pressed (held or not)."""
        return self.stop.is_set()

    def _handle(self, signum: int, frame: Any) -> None:
        self.stop.set()
        if self._depth and not self.held:
            self.held = True
            logger.warning("Ctrl-C: stopping once this record is written (Ctrl-C again to stop "
                           "at once)")
            return
        signal.default_int_handler(signum, frame)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Handle SIGINT for the duration of the block (only the main thread can)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def shield(self) -> Iterator[None]:
        """Hold a Ctrl-C until the block ends (in the main thread; elsewhere no signal lands)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1


class _InterruptedTrialFilter(logging.Filter):
    """Optuna logs a trial ended by Ctrl-C as a failure with a traceback, then "failed with
    value None"; the search records and reports the interruption itself, and a traceback
    would read like a crash. A lost tracking server's one line says it all too. Other
    failures keep Optuna's lines."""

    def __init__(self) -> None:
        super().__init__()
        self._dropped = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrackingUnreachable):
            record.exc_info = None
            return True
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self._dropped = True
            return False
        if self._dropped and "failed with value" in record.getMessage():
            self._dropped = False
            return False
        return True


def quiet_interrupted_trials() -> None:
    """Install :class:`_InterruptedTrialFilter` on Optuna's trial log (once per process)."""
    optuna_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _InterruptedTrialFilter) for f in optuna_log.filters):
        optuna_log.addFilter(_InterruptedTrialFilter())
