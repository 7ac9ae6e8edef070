"""What every run records: tags (data and code version), per-epoch metrics, the curves PNG.

:func:`history_metrics` is the one rule for turning a training history into MLflow metrics.
"""

from __future__ import annotations

import functools
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.data.cache import CacheMeta
from pipeline.tracking.plots import plot_history
from pipeline.tracking.store import active_run_id

logger = logging.getLogger(__name__)

BATCH_LIMIT = 1000  # MLflow's log_batch limit on metrics per call


@functools.lru_cache(maxsize=8)
def _git(root: str, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(root: Path) -> str | None:
    """The commit checked out at ``root``, or None outside a git repository."""
    return _git(str(root), "rev-parse", "HEAD") or None


def run_tags(meta: CacheMeta, root: Path) -> dict[str, str]:
    """Tags every run carries: the data it saw and the code version that saw it."""
    tags = {
        "dataset": meta.name,
        "fingerprint": meta.fingerprint,
        "task": meta.task,
        "cache.version": str(meta.version),
    }
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        status = _git(str(root), "status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["git.dirty"] = "true" if status else "false"
    return tags


def history_metrics(
    history: Sequence[dict[str, Any]], *, timestamp_ms: int, prefix: str = ""
) -> list[Metric]:
    """Every per-epoch value (all keys but ``epoch``) as a metric with ``step=epoch``.

    The one rule for turning a history into MLflow metrics: non-finite values (a diverged
    epoch's NaN) are left out, since MLflow's charts cannot draw them.
    """
    return [
        Metric(f"{prefix}{key}", float(value), timestamp_ms, int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, int | float) and math.isfinite(value)
    ]


def log_metrics(run_id: str, metrics: Sequence[Metric]) -> None:
    """``metrics`` on the run, in as few ``log_batch`` calls as MLflow allows."""
    client = MlflowClient()
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=list(metrics[start : start + BATCH_LIMIT]),
                         synchronous=True)


def log_history(history: Sequence[dict[str, Any]], *, run_id: str | None = None,
                prefix: str = "") -> None:
    """The history's metrics (:func:`history_metrics`) on the run."""
    now = int(time.time() * 1000)
    log_metrics(active_run_id(run_id),
                history_metrics(history, timestamp_ms=now, prefix=prefix))


def log_curves(history: Sequence[dict[str, Any]], name: str = "curves.png", *,
               run_id: str | None = None, title: str = "") -> str:
    """Draw the history and attach it to the run; returns the artifact path."""
    run_id = active_run_id(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_history(history, Path(tmp) / name, title=title)
        MlflowClient().log_artifact(run_id, str(path))
    return name
