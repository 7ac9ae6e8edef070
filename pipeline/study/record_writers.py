"""Who writes a trial's end-of-run record, one at a time (``torch.export`` is not
thread-safe), and what became of each:

- ``process``: the recorder process (:mod:`pipeline.tracking.recorder`) writes it while the
  next trial trains; the trial only hands it over. A second *thread* of the training process
  would not do: a torch op there makes OpenMP put the training threads to sleep between
  parallel regions (training ran 40–55 % slower, BENCHMARKS.md).
- ``inline``: the trial's own thread writes it (one trial at a time).
- ``thread``: one logging thread writes it while the trial waits (trials in threads).

A record that cannot be written (a full disk, a lost server) is logged and remembered
(:attr:`RecordWriters.failed`); it does not turn a trial that trained to the end into a failed
one. Once the tracking server is taken for lost (:attr:`RecordWriters.lost`) nothing more is
sent: each request would wait through MLflow's retries again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.data.cache import CacheMeta
from pipeline.errors import TrackingUnreachable, first_line
from pipeline.study.instruments import RecordWriter, TrackingTimes
from pipeline.tracking import RunRecord

logger = logging.getLogger(__name__)

__all__ = ["RecordWriters"]

_MAX_PENDING = 2  # a trial waits when this many of its predecessors' records are queued


class RecordWriters:
    """Writes trial records as ``writer`` says (see the module docstring)."""

    def __init__(
        self, *, writer: RecordWriter, meta: CacheMeta, experiment_id: str, client: Any,
        times: TrackingTimes | None,
        shield: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.writer, self.meta, self.experiment_id, self.client = (
            writer, meta, experiment_id, client)
        self.example: np.ndarray | None = None  # the logged models' input example
        self.times = times
        self._shield = shield  # Ctrl-C waits while a record is written in the main thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._recorder: Any = None
        self._slots = threading.BoundedSemaphore(_MAX_PENDING)
        self._lock = threading.Lock()
        self._numbers: dict[str, int] = {}  # run id -> trial number, for the recorder's replies
        self.failed: dict[int, str] = {}  # trials whose record could not be written: why
        self.lost: str | None = None  # why the tracking server is taken for lost

    def start_recorder(self) -> None:
        """Start the recorder process now (it warms up while the first trial trains)."""
        from pipeline.tracking.recorder import Recorder

        if self.writer == "process" and self._recorder is None:
            self._recorder = Recorder(meta=self.meta, example=self.example,
                                      experiment_id=self.experiment_id, on_done=self._written)

    def count(self, number: int, seconds: float, *, work: bool = True,
              blocking: bool) -> None:
        if self.times is not None:
            self.times.add(number, seconds, work=work, blocking=blocking)

    def submit(self, number: int, record: RunRecord) -> None:
        """Write trial ``number``'s record (or hand it to the recorder); the trial waits only
        while ``_MAX_PENDING`` earlier records are queued, or for its own when not handed over."""
        t0 = time.perf_counter()
        self._slots.acquire()  # back-pressure
        try:
            if self.writer == "process" and self.lost is None:
                with self._lock:
                    self._numbers[record.run_id] = number
                self.start_recorder()
                self._recorder.submit(record)
                return
            with self._shield():
                if self.writer == "inline":
                    self._write(number, record)
                else:
                    self._executor.submit(self._write, number, record).result()
        finally:
            self.count(number, time.perf_counter() - t0, work=False, blocking=True)

    def flush(self) -> dict[int, str]:
        """Wait until every queued record is written; the trials whose record failed: why."""
        if self._recorder is not None:
            self._recorder.wait()
        with self._lock:
            return dict(self.failed)

    def close(self) -> None:
        self.flush()
        if self._recorder is not None:
            self._recorder.close()
        self._executor.shutdown(wait=True)

    @contextlib.contextmanager
    def reachable(self) -> Iterator[None]:
        """Turn a lost tracking server into :class:`TrackingUnreachable` (and remember it)."""
        if self.lost is not None:
            raise TrackingUnreachable(self.lost)
        try:
            yield
        except Exception as exc:
            if not tracking.is_unreachable(exc):
                raise
            self.lost = ("the MLflow tracking server is unreachable "
                         f"({tracking.unreachable_reason(exc)})")
            raise TrackingUnreachable(self.lost) from None

    def _written(self, outcome: tuple[str, str | None, bool]) -> None:
        """The recorder's word on one record (called from its reply thread)."""
        run_id, error, unreachable = outcome
        self._slots.release()
        if error is None:
            return
        with self._lock:
            number = self._numbers.get(run_id, -1)
            self.failed[number] = error
        if unreachable:
            self.lost = f"the MLflow tracking server is unreachable ({error})"
            logger.warning("trial %d: its MLflow run could not be completed: %s", number,
                           self.lost)
        else:
            logger.warning("could not record trial %d in MLflow run %s: %s", number, run_id,
                           error)

    def _write(self, number: int, record: RunRecord) -> None:
        """Write ``record`` in this thread; a failure is logged and remembered."""
        t0 = time.perf_counter()
        try:
            with self.reachable():
                tracking.write_record(record, meta=self.meta, example=self.example,
                                      experiment_id=self.experiment_id, client=self.client)
        except TrackingUnreachable as exc:
            # The run stays open for --reconcile to close.
            logger.warning("trial %d: its MLflow run could not be completed: %s", number, exc)
            with self._lock:
                self.failed[number] = str(exc)
        except Exception as exc:
            logger.exception("could not record trial %d in MLflow run %s", number,
                             record.run_id)
            with self._lock:
                self.failed[number] = first_line(exc)
        finally:
            self._slots.release()
            self.count(number, time.perf_counter() - t0, blocking=False)
