"""MLflow: where runs go and what every run records. The only package that talks to MLflow's
tracking API for the training and study layers (``registry/`` talks to the Model Registry).

Modules by job: ``store`` (the store, experiments, quieting MLflow), ``runs`` (tags and
metrics; history→metrics once), ``models`` (logging a servable model), ``plots`` (curves),
``train_run`` (one tracked training run, the library side of ``pipeline.train``).
"""

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

__all__ = [
    "ModelPart",
    "RunRecord",
    "write_record",
    "BATCH_LIMIT",
    "ENV_URI",
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
    "unreachable_reason",
    "log_curves",
    "log_history",
    "log_metrics",
    "log_model",
    "ui_url",
    "pip_requirements",
    "plot_history",
    "quiet_mlflow",
    "run_name",
    "run_tags",
    "run_train",
    "summary_name",
    "skip_dependency_check_for_own_pins",
    "warm_up_export",
]
