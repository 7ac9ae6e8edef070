"""What every run records: tags (data and code version), per-epoch metrics, the curves PNG.

The metric names are designed for MLflow's charts, which group a run's charts into sections by
the name before its last ``/`` and sort the sections by name:

- curves (``step`` = epoch): a history key ``<part>/<name>`` becomes ``<name>/<part>``, so
  ``loss/train`` and ``loss/val`` share the ``loss`` section, ``accuracy/train`` and
  ``accuracy/val`` the ``accuracy`` one (``<name>/<part>_std`` beside them: the spread over
  folds); ``lr`` and the epoch's seconds go to ``schedule/``.
- summaries (step 0): ``best_<part>_<name>`` and plain names (``best_epoch``, ``epochs``) without
  a ``/``: MLflow shows them in the runs table's columns and the run's overview.

:func:`curve_name`, :func:`summary_name` and :func:`history_metrics` are the one home of that
rule; README's "What a run records" lists the names.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


_SCHEDULE = {"lr": "schedule/lr", "time_s": "schedule/epoch_s"}


def curve_name(key: str) -> str:
    """The MLflow name of a per-epoch history key: ``val/loss`` → ``loss/val``."""
    if key in _SCHEDULE:
        return _SCHEDULE[key]
    part, slash, name = key.partition("/")
    if not slash:
        return key
    base, std, _ = name.partition("_std")
    return f"{base}/{part}_std" if std else f"{name}/{part}"


def summary_name(key: str) -> str:
    """The MLflow name of a best-epoch value: ``val/loss`` → ``best_val_loss``."""
    return "best_" + key.replace("/", "_")


def history_metrics(history: Sequence[dict[str, Any]], *, timestamp_ms: int) -> list[Metric]:
    """Every per-epoch value (all keys but ``epoch``) as a metric (:func:`curve_name`) with
    ``step=epoch``.

    Non-finite values (a diverged epoch's NaN) are left out, since MLflow's charts cannot draw
    them.
    """
    return [
        Metric(curve_name(key), float(value), timestamp_ms, int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key != "epoch" and isinstance(value, int | float) and math.isfinite(value)
    ]


def fold_table(histories: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Each fold's history as CSV text: a ``fold`` column, then ``epoch`` and the history keys."""
    keys = sorted({key for history in histories for row in history for key in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["fold", "epoch", *keys])
    for fold, history in enumerate(histories):
        for row in history:
            writer.writerow([fold, row["epoch"], *(row.get(key, "") for key in keys)])
    return out.getvalue()


def log_metrics(run_id: str, metrics: Sequence[Metric]) -> None:
    """``metrics`` on the run, in as few ``log_batch`` calls as MLflow allows."""
    client = MlflowClient()
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=list(metrics[start : start + BATCH_LIMIT]),
                         synchronous=True)


def log_history(history: Sequence[dict[str, Any]], *, run_id: str | None = None) -> None:
    """The history's metrics (:func:`history_metrics`) on the run."""
    now = int(time.time() * 1000)
    log_metrics(active_run_id(run_id), history_metrics(history, timestamp_ms=now))


def log_curves(history: Sequence[dict[str, Any]], name: str = "curves.png", *,
               run_id: str | None = None, title: str = "") -> str:
    """Draw the history and attach it to the run; returns the artifact path."""
    run_id = active_run_id(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_history(history, Path(tmp) / name, title=title)
        MlflowClient().log_artifact(run_id, str(path))
    return name


NOTE_TAG = "mlflow.note.content"  # the run's description: markdown on its Overview tab


def chart_link(run_id: str, experiment_id: str, keys: Sequence[str], *, log: bool = True,
               base: str = "") -> str:
    """MLflow's metric page for one run with ``keys`` drawn in one chart (one y axis).

    A run's own charts draw each metric alone, with its own y axis, so train and validation
    loss cannot be read against each other there; this page (the UI's route for a metric's
    chart, ``#/metric``) draws them together. ``base`` empty: a link relative to the UI.
    """
    def enc(value: Any) -> str:
        return quote(json.dumps(value, separators=(",", ":")), safe="")

    return (f"{base.rstrip('/')}/#/metric?runs={enc([run_id])}&metric={enc(keys[0])}"
            f"&experiments={enc([experiment_id])}&plot_metric_keys={enc(list(keys))}"
            f"&plot_layout={{}}&x_axis=step&y_axis_scale={'log' if log else 'linear'}"
            "&line_smoothness=1&show_point=true&deselected_curves=[]&last_linear_y_axis_range=[]")


def curves_note(run_id: str, experiment_id: str) -> str:
    """The run's description: a link to its train and validation loss in one chart."""
    keys = [curve_name("train/loss"), curve_name("val/loss")]
    return (f"**Train and validation loss in one chart** (log scale): "
            f"[{' vs '.join(keys)}]({chart_link(run_id, experiment_id, keys)}). "
            "A gap that widens is overfitting; two high curves, underfitting.")
