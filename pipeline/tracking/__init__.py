"""MLflow: where runs go and what every run records. The only package that talks to MLflow's
tracking API for the training and study layers (``registry/`` talks to the Model Registry)."""

from pipeline.tracking.plots import plot_history
from pipeline.tracking.runs import (
    BATCH_LIMIT,
    ENV_URI,
    artifact_root,
    configure,
    example_input,
    experiment,
    git_commit,
    history_metrics,
    is_local_store,
    log_curves,
    log_history,
    log_metrics,
    log_model,
    pip_requirements,
    run_tags,
    warm_up_export,
)

__all__ = [
    "BATCH_LIMIT",
    "ENV_URI",
    "artifact_root",
    "configure",
    "example_input",
    "experiment",
    "git_commit",
    "history_metrics",
    "is_local_store",
    "log_curves",
    "log_history",
    "log_metrics",
    "log_model",
    "pip_requirements",
    "plot_history",
    "run_tags",
    "warm_up_export",
]
