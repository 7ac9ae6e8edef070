"""MLflow: where runs go, and what every run records (params, metrics, tags, curves, model).

The default store is a SQLite database inside the project's ``mlruns/`` folder with artifacts
beside it (MLflow ≥ 3.13 refuses the old plain-file store); ``MLFLOW_TRACKING_URI`` overrides it
(e.g. ``http://host:5000`` for a shared ``mlflow server``). Models are logged in the PyTorch
flavor's ``pt2`` format (torch.export): it loads without our code and without unpickling.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from pipeline.data.cache import CacheMeta
from pipeline.secrets import redact

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from torch import nn

    from pipeline.config import Params

logger = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
_LOCAL_SCHEMES = ("sqlite", "file", "")
BATCH_LIMIT = 1000  # MLflow's log_batch limit on metrics per call


# --------------------------------------------------------------------------------------------
# Store location
# --------------------------------------------------------------------------------------------
def _absolute_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///`` or ``file:`` URI absolute against the project root."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_absolute():
            path = root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if uri.startswith("file:"):
        path = Path(urlsplit(uri).path)
        if not path.is_absolute():
            path = root / path
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()
    if "://" not in uri:  # a bare path
        path = Path(uri)
        path = path if path.is_absolute() else root / path
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()
    return uri


def configure(params: Params, *, ignore_env: bool = False) -> str:
    """Point MLflow at the tracking store and return its URI.

    ``MLFLOW_TRACKING_URI`` wins (unless ``ignore_env``: a dry run must never write to the
    user's store); otherwise ``params.mlflow.tracking_uri`` with relative paths resolved
    against the project root (folders are created).
    """
    import mlflow

    _quiet_mlflow()
    env = "" if ignore_env else os.environ.get(ENV_URI, "").strip()
    uri = env or _absolute_uri(params.mlflow.tracking_uri, params.root)
    mlflow.set_tracking_uri(uri)
    logger.debug("MLflow tracking URI: %s", redact(uri))
    return uri


def is_local_store(uri: str | None = None) -> bool:
    """Whether the store is a local database/folder (we then choose artifact locations)."""
    import mlflow

    scheme = urlsplit(uri or mlflow.get_tracking_uri()).scheme
    return scheme in _LOCAL_SCHEMES


def artifact_root(params: Params, uri: str | None = None) -> Path | None:
    """Where new experiments keep artifacts, or None when a tracking server decides.

    The configured store: ``<root>/<mlflow.artifacts_dir>``. A SQLite store named by
    ``MLFLOW_TRACKING_URI`` overrides that too: ``artifacts/`` beside its database file.
    """
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https", "databricks", "uc"):
        return None
    env = os.environ.get(ENV_URI, "").strip()
    if env and uri == env and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / "artifacts"
    return params.path(params.mlflow.artifacts_dir)


def experiment(name: str, params: Params) -> str:
    """The id of experiment ``name``, created (or restored, if deleted) when needed.

    A new experiment keeps its artifacts under :func:`artifact_root` ``/<name>`` (by default
    ``<root>/mlruns/artifacts/<name>``); a tracking server decides for itself.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
            logger.info("restored deleted MLflow experiment %r", name)
        return str(found.experiment_id)
    location = None
    root = artifact_root(params)
    if root is not None:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.resolve().as_uri()
    try:
        exp_id = client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another process created it between our lookup and create.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)
    logger.info("created MLflow experiment %r", name)
    return str(exp_id)


# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Logging a run's content
# --------------------------------------------------------------------------------------------
def _active_run_id(run_id: str | None) -> str:
    import mlflow

    if run_id is not None:
        return run_id
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: start one or pass run_id")
    return run.info.run_id


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
    log_metrics(_active_run_id(run_id), history_metrics(history, timestamp_ms=now, prefix=prefix))


def log_curves(history: Sequence[dict[str, Any]], name: str = "curves.png", *,
               run_id: str | None = None, title: str = "") -> str:
    """Draw the history and attach it to the run; returns the artifact path."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.plots import plot_history

    run_id = _active_run_id(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_history(history, Path(tmp) / name, title=title)
        MlflowClient().log_artifact(run_id, str(path))
    return name


def example_input(meta: CacheMeta, n: int = 2) -> np.ndarray:
    """Raw-valued float32 samples shaped like the real input, built from the cache statistics.

    Prefer real samples from the cache (``log_model(example=...)``); this is the fallback.
    """
    shape = [int(d) for d in meta.input_shape]
    scale = 255.0 if meta.kind == "image" else 1.0
    mean = np.asarray(meta.mean, dtype=np.float64) * scale
    std = np.asarray(meta.std, dtype=np.float64) * scale
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(size=(n, *shape))
    bshape = [1, -1] + [1] * (len(shape) - 1)
    x = noise * std.reshape(bshape) + mean.reshape(bshape)
    if meta.kind == "image":
        x = np.clip(np.round(x), 0, 255)
    return x.astype(np.float32)


def pip_requirements() -> list[str]:
    """Fixed requirements, so MLflow does not spend seconds inferring them on every log."""
    import mlflow
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence known-harmless warnings MLflow and torch.export print while logging a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.export")
        yield


def _quiet_mlflow() -> None:
    # MLflow logs each created run's URL and emoji lines at INFO; the stage summary says enough.
    for name in ("mlflow", "alembic"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)


def log_model(
    net: nn.Module,
    meta: CacheMeta,
    *,
    name: str = "model",
    example: np.ndarray | None = None,
    validate: bool = True,
    run_id: str | None = None,
    experiment_id: str | None = None,
    params: dict[str, str] | None = None,
) -> ModelInfo:
    """Log the servable :func:`package_model` of ``net`` to the active run (``pt2`` format).

    Args:
        net: the trained network (it is copied to the CPU; the original is not touched).
        meta: the cache metadata (normalisation statistics, names, shape) packaged with it.
        name: the model's name in the run.
        example: raw-valued float32 input ``[n, *input_shape]``; real samples are best.
            Defaults to two samples built from the cache statistics.
        validate: let MLflow load the saved model back and run the example through it (about
            40 ms). A failure there is only a warning, so searches, whose logged models the
            tests load and compare, turn it off.
        run_id: the run to log to; default the active run. Naming the run spares a search the
            fluent ``start_run``/``end_run`` round trips for each trial.
        experiment_id: the run's experiment, when ``run_id`` is given (looked up if omitted).
        params: the model's params in MLflow's model list, when ``run_id`` is given (MLflow
            copies the active run's params otherwise).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` loads it with ``mlflow.pyfunc.load_model``).
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from pipeline.training.models import model_metadata, package_model

    named_run = run_id is not None
    run_id = _active_run_id(run_id)
    packaged = package_model(copy.deepcopy(net).cpu(), meta)
    if example is None:
        example = example_input(meta)
    example = np.array(example, dtype=np.float32, copy=True, order="C")  # writable, owned
    if list(example.shape[1:]) != [int(d) for d in meta.input_shape] or len(example) < 1:
        raise ValueError(
            f"log_model: example shape {example.shape} does not match input {meta.input_shape}"
        )
    with torch.no_grad():
        output = packaged(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    model_id = None
    if named_run:
        # MLflow files a model logged to a named (not active) run under the process's current
        # experiment, where `runs:/<run>/model` does not find it: create it in the run's own.
        # (From here on MLflow marks the model FAILED if logging it fails.)
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        if experiment_id is None:
            experiment_id = client.get_run(run_id).info.experiment_id
        model_id = client.create_logged_model(
            experiment_id, name=name, source_run_id=run_id, params=params
        ).model_id
    with _quiet():
        info = mlflow.pytorch.log_model(
            packaged,
            name=name,
            serialization_format="pt2",
            input_example=example,
            signature=signature,
            pip_requirements=pip_requirements(),
            metadata=model_metadata(meta),
            validate_serving_input=validate,
            run_id=run_id,
            model_id=model_id,
        )
    return info


def warm_up_export() -> None:
    """Pay torch.export's one-off start-up (about 1.4 s of lazy imports) on a toy module.

    Called on the logging thread when a search starts, so it overlaps the first trial's
    training instead of delaying that trial's record.
    """
    import torch
    from torch import nn

    try:
        with _quiet():
            torch.export.export(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (torch.zeros(2, 2),))
    except Exception:  # only a warm-up: the real export reports real problems
        logger.debug("torch.export warm-up failed", exc_info=True)
