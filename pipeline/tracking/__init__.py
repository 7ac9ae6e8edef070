"""MLflow: where runs go and what every run records. The only package that talks to MLflow's
tracking API for the training and study layers (``registry/`` talks to the Model Registry).

Modules by job: ``store`` (the store, experiments, quieting MLflow), ``runs`` (tags and
metrics; history→metrics once), ``models`` (logging a servable model), ``plots`` (curves),
``train_run`` (one tracked training run, the library side of ``pipeline.train``), ``records``
and ``recorder`` (a finished run's record, and the process that writes records).

The face is lazy: a name is imported from its module on first use, so a command that only
needs the store (``evaluate --summary``) does not load torch, MLflow's PyTorch flavor and
matplotlib on the way (BENCHMARKS.md, "Fixed costs").
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.tracking.models import (
        example_input,
        log_model,
        pip_requirements,
        skip_dependency_check_for_own_pins,
        warm_up_export,
    )
    from pipeline.tracking.plots import plot_history
    from pipeline.tracking.records import ModelPart, RunRecord, write_record
    from pipeline.tracking.runs import (
        BATCH_LIMIT,
        curve_name,
        fold_table,
        git_commit,
        history_metrics,
        log_curves,
        log_history,
        log_metrics,
        run_tags,
        summary_name,
    )
    from pipeline.tracking.store import (
        ENV_URI,
        active_run_id,
        artifact_root,
        configure,
        experiment,
        is_local_store,
        is_unreachable,
        quiet_mlflow,
        share_runs_view,
        ui_base,
        ui_url,
        unreachable_reason,
    )
    from pipeline.tracking.train_run import (
        TrainOptions,
        TrainProgress,
        TrainResult,
        run_name,
        run_train,
    )

# name -> the module of this package that defines it
_HOME = {
    "active_run_id": "store",
    "artifact_root": "store",
    "BATCH_LIMIT": "runs",
    "configure": "store",
    "curve_name": "runs",
    "ENV_URI": "store",
    "example_input": "models",
    "experiment": "store",
    "fold_table": "runs",
    "git_commit": "runs",
    "history_metrics": "runs",
    "is_local_store": "store",
    "is_unreachable": "store",
    "log_curves": "runs",
    "log_history": "runs",
    "log_metrics": "runs",
    "log_model": "models",
    "ModelPart": "records",
    "pip_requirements": "models",
    "plot_history": "plots",
    "quiet_mlflow": "store",
    "run_name": "train_run",
    "run_tags": "runs",
    "run_train": "train_run",
    "RunRecord": "records",
    "skip_dependency_check_for_own_pins": "models",
    "summary_name": "runs",
    "TrainOptions": "train_run",
    "TrainProgress": "train_run",
    "TrainResult": "train_run",
    "share_runs_view": "store",
    "ui_base": "store",
    "ui_url": "store",
    "unreachable_reason": "store",
    "warm_up_export": "models",
    "write_record": "records",
}
__all__ = [
    "BATCH_LIMIT",
    "ENV_URI",
    "ModelPart",
    "RunRecord",
    "TrainOptions",
    "TrainProgress",
    "TrainResult",
    "active_run_id",
    "artifact_root",
    "configure",
    "curve_name",
    "example_input",
    "experiment",
    "fold_table",
    "git_commit",
    "history_metrics",
    "is_local_store",
    "is_unreachable",
    "log_curves",
    "log_history",
    "log_metrics",
    "log_model",
    "pip_requirements",
    "plot_history",
    "quiet_mlflow",
    "run_name",
    "run_tags",
    "run_train",
    "share_runs_view",
    "skip_dependency_check_for_own_pins",
    "summary_name",
    "ui_base",
    "ui_url",
    "unreachable_reason",
    "warm_up_export",
    "write_record",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
