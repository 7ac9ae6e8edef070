"""The recorder: a child process that writes finished runs' records while training goes on.

A run's record (its model exported and saved, the metrics, the curves PNG) is CPU work of a few
hundred milliseconds that does not need the trainer's cores at the trainer's moment. Written in
the trainer's thread it delays the next trial; written from a second thread of the training
process it makes OpenMP put the training threads to sleep (BENCHMARKS.md). So a search hands
each record to this process (:class:`Recorder`) and goes on; the recorder writes records in
the order they come, one at a time, with one torch thread.

It also takes the one-off costs off the training process: importing MLflow's PyTorch flavor,
``torch.export``'s first use and matplotlib happen here, while the first trial trains.

Protocol: ``python -m pipeline.tracking.recorder`` reads JSON lines on stdin (first the setup:
experiment, cache metadata, input example; then one :func:`~pipeline.tracking.records.to_wire`
record per line) and answers one JSON line per record on stdout. It runs in its own session,
so a Ctrl-C in the terminal reaches the search, which decides; when its stdin closes (the
search ended, or died) it writes what it was given and exits.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import mlflow
import numpy as np
import torch

from pipeline.data.cache import CacheMeta
from pipeline.errors import first_line
from pipeline.tracking.models import warm_up_export
from pipeline.tracking.records import RunRecord, from_wire, to_wire, write_record
from pipeline.tracking.store import is_unreachable, quiet_mlflow, unreachable_reason

logger = logging.getLogger(__name__)

__all__ = ["Outcome", "Recorder"]

# (run id, error or None, whether the error is a lost tracking server)
Outcome = tuple[str, str | None, bool]


class Recorder:
    """Hands records to the recorder process; ``on_done(outcome)`` runs as each is written.

    Args:
        meta: the cache metadata the models are packaged with.
        example: raw input samples for the models' signatures.
        experiment_id: where the runs' models are filed.
        on_done: called from a reader thread (never touches torch) with each :data:`Outcome`.
    """

    def __init__(self, *, meta: CacheMeta, example: np.ndarray | None, experiment_id: str,
                 on_done: Callable[[Outcome], None]) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="pipeline-recorder-")
        self._on_done = on_done
        self._pending = 0
        self._idle = threading.Condition()
        self._send_lock = threading.Lock()  # trials in threads hand records over at once
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
               "OMP_NUM_THREADS": "1"}  # a recorder thread per core would fight the trainer
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking.recorder"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin: IO[str] = self._proc.stdin
        setup = {"experiment_id": experiment_id, "meta": json.loads(meta.to_json()),
                 "example": None if example is None else np.asarray(example).tolist()}
        self._send(json.dumps(setup))
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,),
                                        name="recorder-replies", daemon=True)
        self._reader.start()

    def _send(self, line: str) -> None:
        with self._send_lock:
            self._stdin.write(line + "\n")
            self._stdin.flush()

    def submit(self, record: RunRecord) -> None:
        """Queue ``record`` (its weights are written to a temporary file first)."""
        with self._idle:
            self._pending += 1
        try:
            self._send(to_wire(record, Path(self._folder.name)))
        except (BrokenPipeError, OSError) as exc:  # the recorder died: say so for this run
            self._done((record.run_id, f"the recorder process stopped ({exc})", False))

    def _done(self, outcome: Outcome) -> None:
        try:
            self._on_done(outcome)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            try:
                reply = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("recorder: %s", line.rstrip())
                continue
            self._done((reply["run_id"], reply.get("error"), bool(reply.get("unreachable"))))
        with self._idle:  # the process ended: nothing more will come back
            lost = self._pending
        for _ in range(lost):
            self._done(("?", "the recorder process stopped before writing it", False))

    def wait(self) -> None:
        """Until every submitted record has been written (or failed)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending <= 0)

    def close(self) -> None:
        """Wait for the queued records, then let the process end."""
        self.wait()
        try:
            self._stdin.close()
        except OSError:
            pass
        self._proc.wait()
        self._reader.join(timeout=5)
        self._folder.cleanup()


# --------------------------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------------------------
def _serve(lines: IO[str], replies: IO[str]) -> None:
    torch.set_num_threads(1)
    quiet_mlflow()
    setup = json.loads(lines.readline())
    meta = CacheMeta.from_dict(setup["meta"])
    example = None if setup["example"] is None else np.asarray(setup["example"], np.float32)
    warm_up_export()  # while the first trial trains
    for line in lines:
        reply: dict[str, Any] = {"run_id": "?"}
        try:
            record = from_wire(line)
            reply["run_id"] = record.run_id
            write_record(record, meta=meta, example=example,
                         experiment_id=setup["experiment_id"])
        except Exception as exc:  # noqa: BLE001 - reported to the search, which decides
            reply["unreachable"] = is_unreachable(exc)
            reply["error"] = (unreachable_reason(exc) if reply["unreachable"]
                              else first_line(exc))
            logger.debug("record of run %s failed", reply["run_id"], exc_info=True)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="recorder %(levelname)s %(name)s: "
                        "%(message)s")
    _serve(sys.stdin, sys.stdout)
