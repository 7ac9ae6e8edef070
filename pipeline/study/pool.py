"""Several search workers on one machine: ``python -m pipeline.search --workers N``.

Optuna's own pattern for one machine: N processes on one storage (the journal file by default),
each an ordinary search worker with its lease (:mod:`pipeline.study.workers`), so a killed one is
cleaned up like any other. Each gets an equal share of the cores (``OMP_NUM_THREADS``), which is
what torch sizes its thread pool from, and its options as data: the same
:class:`~pipeline.study.setup.SearchOptions` as JSON on its standard input (one process, its
share of ``--n-trials``). Without ``--n-trials`` every worker runs until the study's total is
met. When they have all ended, one last search with no new trials cleans up after any that
died and writes the report. Ctrl-C reaches every worker (they share the terminal's process
group); each records its running trial and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import UserError
from pipeline.study.setup import SearchOptions

logger = logging.getLogger(__name__)

__all__ = ["OPTIONS_ON_STDIN", "run_workers", "shares", "worker_options"]

# The search command's (hidden) flag that reads its SearchOptions as JSON from stdin.
OPTIONS_ON_STDIN = "--options-json"


def shares(total: int | None, n: int) -> list[int | None]:
    """``total`` trials split as evenly as possible over ``n`` workers (None: no split)."""
    if total is None:
        return [None] * n
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def worker_options(options: SearchOptions) -> list[SearchOptions]:
    """Each worker's options: one process, its share of the trials (none with no share)."""
    return [dataclasses.replace(options, workers=1, n_trials=share)
            for share in shares(options.n_trials, options.workers) if share != 0]


def _start(options: SearchOptions, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", OPTIONS_ON_STDIN], env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    proc.stdin.write(options.to_json())
    proc.stdin.close()
    return proc


def run_workers(options: SearchOptions, *, finish: Callable[[SearchOptions], Any]) -> Any:
    """Run ``options.workers`` worker processes to the end, then ``finish`` with a search of no
    new trials in this process (it cleans up and reports; see the module doc).

    Raises:
        UserError: a worker that failed (its exit code; its messages are on stderr).
        KeyboardInterrupt: Ctrl-C, after every worker has stopped.
    """
    n = options.workers
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    logger.info("starting %d search workers (%d thread(s) each)", n, threads)
    procs = [_start(child, env) for child in worker_options(options)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        # The terminal sent every worker the same SIGINT; a second one would land inside the
        # record of the trial it interrupted. Wait for them to finish recording.
        with contextlib.suppress(KeyboardInterrupt):
            for p in procs:
                p.wait()
        raise
    failed = [c for c in codes if c != 0]
    final = finish(dataclasses.replace(options, workers=1, n_trials=0))
    if failed:
        raise UserError(
            f"--workers: {len(failed)} of {len(procs)} worker(s) failed (exit code "
            f"{', '.join(map(str, failed))}; their messages are above); the study and its "
            "report are written"
        )
    return final
