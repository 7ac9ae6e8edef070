"""MLflow: where runs go and what every run records. The only package that talks to MLflow's
tracking API for the training and study layers (``registry/`` talks to the Model Registry).

Modules by job: ``store`` (the store, experiments, quieting MLflow; ``store_template``: a new
SQLite store from an empty one kept per MLflow version), ``runs`` (tags and
metrics; history→metrics once), ``endings`` (how every run ends: status, end tags, trial run
names), ``models`` (logging a servable model), ``plots`` (curves),
``train_run`` (one tracked training run, the library side of ``pipeline.train``), ``records``
and ``recorder`` (a finished run's record, and the process that writes records).

The face is lazy: a name is imported from its module on first use, so a command that only
needs the store (``evaluate --summary``) does not load torch, MLflow's PyTorch flavor and
matplotlib on the way (BENCHMARKS.md, "Fixed costs"). Type checkers see the names as ``Any``
through the face; code that wants their types imports them from the module.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# Each public name, listed once, under the module of this package that defines it.
_FACE = {
    "endings": (
        "ERROR_TAG", "NAME_TAG", "RUN_STATUS", "STATE_TAG", "STOP_TAG", "end_parent_run",
        "end_run", "end_trial_run", "ended_run", "record_cut_short", "retag_state",
        "trial_end_tags", "trial_run_name",
    ),
    "models": (
        "example_input", "log_model", "pip_requirements", "skip_dependency_check_for_own_pins",
        "warm_up_export",
    ),
    "plots": ("plot_history",),
    "records": ("ModelPart", "RunRecord", "write_record"),
    "runs": (
        "BATCH_LIMIT", "curve_name", "fold_table", "git_commit", "history_metrics",
        "log_curves", "log_history", "log_metrics", "run_tags", "summary_name",
    ),
    "store": (
        "ENV_URI", "active_run_id", "artifact_root", "configure", "experiment",
        "is_local_store", "is_unreachable", "quiet_mlflow", "share_runs_view", "ui_base",
        "ui_url", "unreachable_reason",
    ),
    "train_run": ("TrainOptions", "TrainProgress", "TrainResult", "run_name", "run_train"),
}
_HOME = {name: module for module, names in _FACE.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
