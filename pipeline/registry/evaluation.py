"""Evaluating a model on a dataset's held-out test split: ``reports/metrics.json`` (numbers
only, for ``dvc metrics``), ``reports/evaluation.json`` (which model and data), and the plots
under ``reports/plots/`` (for ``dvc plots``); the library side of ``pipeline.evaluate``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.atomic import check_writable, write_set
from pipeline.config import Params
from pipeline.data.cache import Cache, CacheMeta, load_cache
from pipeline.errors import UserError
from pipeline.registry import gate as registry
from pipeline.registry import metrics as M
from pipeline.secrets import redact

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
EVALUATION_FILE = "evaluation.json"  # which model and data metrics.json is for
PLOTS_DIR = "plots"
CURVES_FILE = "curves.csv"  # the evaluated model's training curves, from the run that made it
CLASSIFICATION_PLOTS = ("confusion.csv", "confusion.png")
REGRESSION_PLOTS = ("predictions.csv", "predictions.png")


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` computed, and where it wrote it."""

    model_uri: str
    model_version: str | None
    metrics: dict[str, float]
    files: list[Path]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def metrics_json(values: dict[str, Any]) -> bytes:
    return (json.dumps(values, indent=2, sort_keys=True) + "\n").encode()


def pairs_csv(actual: list[Any], predicted: list[Any]) -> bytes:
    """``actual,predicted`` rows, the layout DVC's confusion and scatter templates read."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows(zip(actual, predicted, strict=True))
    return buf.getvalue().encode()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float) -> Any:
    # The object-oriented API: no pyplot, so no GUI backend and no global figure state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """The confusion matrix as an annotated heatmap (rows: true class, columns: predicted)."""
    k = len(class_names)
    side = max(3.5, 0.45 * k + 2)
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=class_names, rotation=45 if k > 10 else 0)
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    if k <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    return _png(fig)


def scatter_png(actual: np.ndarray, predicted: np.ndarray, *, target: str, title: str) -> bytes:
    """Predicted against true values, with the identity line."""
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(actual, predicted, s=12, alpha=0.7)
    both = np.concatenate([actual, predicted])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--")
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.set_title(title)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def check_compatible(model_meta: dict[str, Any], meta: CacheMeta, uri: str) -> None:
    """The model must take this dataset's inputs; a different fingerprint is only a warning."""
    shape = model_meta.get("input_shape")
    if shape is not None and list(shape) != list(meta.input_shape):
        raise UserError(
            f"{uri} takes inputs of shape {shape}, but dataset {meta.name!r} has "
            f"{meta.input_shape}; pass --dataset for the dataset it was trained on"
        )
    if meta.task == "classification":
        names = model_meta.get("class_names")
        if names is not None and list(names) != list(meta.class_names):
            raise UserError(
                f"{uri} predicts classes {names}, but dataset {meta.name!r} has "
                f"{meta.class_names}"
            )
    fp = model_meta.get("fingerprint")
    if fp and fp != meta.fingerprint:
        logger.warning(
            "%s was trained on other data (fingerprint %s…, cache %s…): its test items may have "
            "been in its training data, so these metrics can be optimistic",
            uri, str(fp)[:12], meta.fingerprint[:12],
        )


def report_metrics(
    values: dict[str, float], meta: CacheMeta, version: str | None
) -> dict[str, float | int]:
    """The flat ``metrics.json``: numbers only, as ``dvc metrics diff`` compares them.

    The test metrics, ``n_test`` and (for a registry model) ``model_version``; which model and
    dataset they are for, as text, goes to ``evaluation.json`` beside it.
    """
    out: dict[str, float | int] = dict(values)
    out["n_test"] = int(meta.n_test)
    if version is not None:
        out["model_version"] = int(version)
    return out


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``python -m pipeline.evaluate`` can set."""

    params: Params
    dataset: str | None = None  # default: params.yaml's dataset
    model_uri: str | None = None  # default: the dataset's registered champion


def run_evaluate(options: EvaluateOptions) -> Evaluation:
    """Score the model on the dataset's test split and write metrics and plots."""
    params, dataset, model_uri = options.params, options.dataset, options.model_uri
    entry = params.dataset_entry(dataset)
    out_dir = params.path(params.evaluate.reports_dir)
    plots = out_dir / PLOTS_DIR
    check_writable({out_dir: "the evaluation reports (evaluate.reports_dir)",
                    plots: "the evaluation plots (evaluate.reports_dir)"})
    cache: Cache = load_cache(params.cache_dir(entry.name))
    meta = cache.meta
    tracking.configure(params)
    name = registry.registered_model_name(params, entry.name)
    uri = model_uri or registry.alias_uri(name, registry.CHAMPION)
    version = _registry_version(name, uri)
    if model_uri is None and version is None:
        raise UserError(
            f"registered model {name!r} has no '{registry.CHAMPION}' alias yet; run "
            "`dvc repro` or `python -m pipeline.promote --study STUDY` first"
        )
    model = registry.load_scorer(uri)
    check_compatible(registry.model_metadata(model), meta, uri)
    scored = registry.score(model, cache)

    title = f"{meta.name}: {name} v{version}" if version else f"{meta.name}: {uri}"
    files: dict[Path, bytes] = {
        out_dir / METRICS_FILE: metrics_json(report_metrics(scored.metrics, meta, version)),
        out_dir / EVALUATION_FILE: metrics_json({
            "dataset": meta.name,
            "model": registry.model_uri(name, version) if version else uri,
            "fingerprint": meta.fingerprint,
        }),
    }
    plot_files, stale = _plots(meta, scored, np.asarray(cache.test_y), plots, title)
    files.update(plot_files)
    curves = training_curves(_source_run(name, version, uri))
    if curves is not None:
        files[plots / CURVES_FILE] = curves
    else:
        stale += (CURVES_FILE,)
    # One unit: metrics.json never describes another model than the plots beside it. The
    # other task's plots (an earlier evaluation of another dataset) go in the same step.
    write_set(out_dir, files, remove=[plots / leftover for leftover in stale])
    logger.info("wrote %s", ", ".join(str(p) for p in files))
    return Evaluation(uri, version, scored.metrics, list(files))


def _plots(
    meta: CacheMeta, scored: Any, y: np.ndarray, plots: Path, title: str
) -> tuple[dict[Path, bytes], tuple[str, ...]]:
    """The plot files for the task, and the other task's file names (to remove)."""
    files: dict[Path, bytes] = {}
    if meta.task == "classification":
        pred = scored.outputs.argmax(axis=1)
        names = meta.class_names
        files[plots / "confusion.csv"] = pairs_csv(
            [names[int(i)] for i in y], [names[int(i)] for i in pred]
        )
        matrix = M.confusion_matrix(y, pred, len(names))
        files[plots / "confusion.png"] = confusion_png(matrix, names, title)
        stale = REGRESSION_PLOTS
    else:
        pred = scored.outputs.astype(np.float64)
        files[plots / "predictions.csv"] = pairs_csv(
            [f"{v:.6g}" for v in y.astype(np.float64)], [f"{v:.6g}" for v in pred]
        )
        fit = ", ".join(f"{k} {v:.3g}" for k, v in scored.metrics.items())
        files[plots / "predictions.png"] = scatter_png(
            y.astype(np.float64), pred, target=meta.target_name, title=f"{title}\n{fit}"
        )
        stale = CLASSIFICATION_PLOTS
    return files, stale


def _source_run(name: str, version: str | None, uri: str) -> str | None:
    """The run that trained the model behind ``uri``, when MLflow knows it."""
    import mlflow
    from mlflow import MlflowClient

    if version is not None:
        return MlflowClient().get_model_version(name, version).run_id or None
    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].split("/", 1)[0]
    if uri.startswith("models:/m-"):
        return mlflow.get_logged_model(uri[len("models:/"):].split("/", 1)[0]).source_run_id
    return None


def training_curves(run_id: str | None) -> bytes | None:
    """The run's per-epoch curves (every ``<quantity>/<part>`` metric but ``schedule/``) as
    ``epoch,<curve>,...`` CSV for ``dvc plots``; None when there is no run or no curve."""
    from mlflow import MlflowClient

    if run_id is None:
        return None
    client = MlflowClient()
    names = sorted(k for k in client.get_run(run_id).data.metrics
                   if "/" in k and not k.startswith("schedule/"))
    table: dict[int, dict[str, float]] = {}
    for key in names:
        for point in client.get_metric_history(run_id, key):
            table.setdefault(int(point.step), {})[key] = float(point.value)
    if not table:
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *names])
    for epoch in sorted(table):
        writer.writerow([epoch, *(f"{table[epoch][k]:.6g}" if k in table[epoch] else ""
                                  for k in names)])
    return buf.getvalue().encode()


def _registry_version(name: str, uri: str) -> str | None:
    """The registry version behind ``uri`` (an alias or a version of ``name``), if any."""
    from mlflow import MlflowClient

    prefix = f"models:/{name}"
    if uri.startswith(prefix + "@"):
        found = registry.get_alias(MlflowClient(), name, uri[len(prefix) + 1 :])
        return None if found is None else str(found.version)
    if uri.startswith(prefix + "/"):
        return uri[len(prefix) + 1 :]
    return None


def summary(result: Evaluation, meta_name: str) -> str:
    head = f"{result.model_uri}" + (f" (v{result.model_version})" if result.model_version else "")
    main = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items() if "/" not in k)
    lines = [f"{meta_name} test split, {head}: {main}"]
    lines += [f"wrote {p}" for p in result.files]
    return "\n".join(lines)


def champion_summary(params: Params, dataset: str | None = None) -> str:
    """Where the champion is, its test metrics and how to serve it and open the MLflow UI.

    Reads the registry and ``reports/metrics.json``; evaluates nothing (``make run`` prints
    this after ``dvc repro``, which may have had nothing to rerun).
    """
    from mlflow import MlflowClient

    entry = params.dataset_entry(dataset)
    uri = tracking.configure(params)
    name = registry.registered_model_name(params, entry.name)
    alias = registry.alias_uri(name, registry.CHAMPION)
    found = registry.get_alias(MlflowClient(), name, registry.CHAMPION)
    if found is None:
        return (f"no champion for dataset {entry.name!r} yet ({alias} does not exist); run "
                "`dvc repro` or `python -m pipeline.promote --study STUDY`")
    tags = found.tags or {}
    origin = ", ".join(
        f"{k} {tags[k]}" for k in ("study", "trial") if tags.get(k)
    ) + f", run {found.run_id}"
    lines = [f"champion: {alias} = {name} v{found.version} ({origin})"]
    path = params.path(params.evaluate.reports_dir) / METRICS_FILE
    values = json.loads(path.read_text()) if path.is_file() else {}
    about = path.with_name(EVALUATION_FILE)
    evaluated = json.loads(about.read_text()) if about.is_file() else {}
    main = ", ".join(
        f"{k}={v:.4f}" for k, v in values.items()
        if "/" not in k and isinstance(v, float)
    )
    if evaluated.get("model") == registry.model_uri(name, found.version):
        lines.append(f"test metrics ({path.relative_to(params.root)}): {main}")
    else:
        flag = "" if entry.name == params.dataset else f" --dataset {entry.name}"
        lines.append(f"test metrics: {path.name} is not for v{found.version}; run "
                     f"`python -m pipeline.evaluate{flag}`")
    shown = redact(uri).replace(f"{params.root.resolve()}/", "")
    lines.append(f"serve it: MLFLOW_TRACKING_URI={shown} mlflow models serve -m {alias} "
                 "--env-manager local --host 127.0.0.1 -p 5001")
    lines.append("MLflow UI: make ui, then open http://127.0.0.1:5000 (Model registry: "
                 f"{name}; experiments: one per study, <study>-{entry.name}, links printed by "
                 "pipeline.search)")
    return "\n".join(lines)
