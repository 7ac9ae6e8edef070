"""Several search workers on one machine: ``python -m pipeline.search --workers N``.

Optuna's own pattern for one machine: N processes on one storage (the journal file by default),
each an ordinary search worker with its lease (:mod:`pipeline.study.workers`), so a killed one is
cleaned up like any other. Each gets an equal share of the cores (``OMP_NUM_THREADS``), which is
what torch sizes its thread pool from. ``--n-trials N`` is shared out among them; without it
every worker runs until the study's total is met. When they have all ended, one last search with
no new trials cleans up after any that died and writes the report. Ctrl-C reaches every worker
(they share the terminal's process group); each records its running trial and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import sys

from pipeline.errors import UserError
from pipeline.study.runner import SearchOptions, SearchResult, run_search

logger = logging.getLogger(__name__)


def shares(total: int | None, n: int) -> list[int | None]:
    """``total`` trials split as evenly as possible over ``n`` workers (None: no split)."""
    if total is None:
        return [None] * n
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def worker_command(options: SearchOptions, n_trials: int | None) -> list[str]:
    """The command line of one worker: the same search, one process, its share of trials."""
    cmd = [sys.executable, "-m", "pipeline.search", "--study", options.study,
           "--params", str(options.params_path)]
    for flag, value in (("--dataset", options.dataset), ("--n-trials", n_trials),
                        ("--timeout", options.timeout_s), ("--storage", options.storage),
                        ("--device", options.device)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def run_workers(options: SearchOptions, n: int) -> SearchResult:
    """Run ``n`` worker processes to the end, then clean up and report (see the module doc).

    Raises:
        UserError: a bad option, or a worker that failed (its exit code and what it said).
        KeyboardInterrupt: Ctrl-C, after every worker has stopped.
    """
    if n < 2:
        raise UserError(f"--workers: expected 2 or more worker processes, got {n}")
    if options.dry_run or options.n_jobs != 1:
        raise UserError("--workers: runs whole processes; leave out --dry-run and --n-jobs")
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    counts = shares(options.n_trials, n)
    logger.info("starting %d search workers (%d thread(s) each)", n, threads)
    procs = [
        subprocess.Popen(worker_command(options, c), env=env, stdout=subprocess.DEVNULL)
        for c in counts if c != 0
    ]
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
    final = run_search(dataclasses.replace(options, n_trials=0))
    if failed:
        raise UserError(
            f"--workers: {len(failed)} of {len(procs)} worker(s) failed (exit code "
            f"{', '.join(map(str, failed))}; their messages are above); the study and its "
            "report are written"
        )
    return final
