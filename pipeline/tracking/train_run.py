"""One tracked training run: the params configuration trained on a dataset, recorded in MLflow.

:func:`run_train` is the library side of ``python -m pipeline.train``. It reads the tensor cache
``data/cache/<dataset>/``; splits the cache's train part into train/validation
(``train.val_fraction``, seeded by the cache's ``split_seed``); trains with early stopping,
checkpointing every epoch to ``checkpoints/train-<dataset>/``; logs to the MLflow experiment
``train-<dataset>``: all resolved params, per-epoch metrics with ``step``, dataset fingerprint and
git commit tags, the curves PNG and the model (PyTorch flavor, ``pt2``). It never prints: the
caller draws progress through :class:`TrainProgress` and prints the :class:`TrainResult`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import gc_policy
from pipeline.atomic import check_writable, write_bytes_atomic
from pipeline.config import Params, parse_set_option
from pipeline.data.cache import Cache, CacheMeta, load_cache
from pipeline.data.splits import holdout_split
from pipeline.errors import UserError
from pipeline.tracking.endings import ended_run
from pipeline.tracking.models import log_model
from pipeline.tracking.runs import log_curves, log_history, run_tags, summary_name
from pipeline.tracking.store import configure, experiment
from pipeline.training import (
    Split,
    Trainer,
    TrainingDiverged,
    build_model,
    check_fits,
    fit,
    load_checkpoint,
    make_split,
    resolve_device,
    set_seed,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
RUN_ID_FILE = "mlflow_run_id"
FROM_RUN_SECTIONS = ("model.", "train.")


class TrainProgress(Protocol):
    """What a caller may show while a run trains (a progress bar); every call is cheap."""

    def start(self, *, label: str, total_epochs: int, done_epochs: int) -> None: ...

    def batch(self, done: int, total: int) -> None: ...

    def epoch(self, row: dict[str, float]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrainOptions:
    """What to train: the params file's configuration, adjusted as the command line says."""

    params: Params  # the loaded params file (not yet specialised for a dataset)
    dataset: str | None = None  # a dataset declared in params; None: its `dataset:`
    overrides: tuple[str, ...] = ()  # `KEY=VALUE` items (values read as YAML), applied last
    from_run: str | None = None  # an MLflow run whose model.*/train.*/seed values to retrain
    resume: bool = False  # continue from the last checkpoint (and its MLflow run)
    device: str | None = None  # None: params' `device:`
    checkpoint_dir: Path | None = None  # None: <root>/checkpoints/train-<dataset>
    progress: TrainProgress | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TrainResult:
    """What one run reached and where it was recorded."""

    dataset: str
    arch: str
    best: dict[str, float]  # the best epoch's history row
    best_epoch: int
    epochs: int
    stop_reason: str
    train_time_s: float  # summed epoch times
    device: str
    baseline: dict[str, float]  # regression: the predict-the-training-mean figures
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str
    model_uri: str


# --------------------------------------------------------------------------------------------
# Params: file → dataset overrides → --from-run values → --set values
# --------------------------------------------------------------------------------------------
def param_value(text: str) -> Any:
    """An MLflow param string (``str(value)``) back to the value it was."""
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run_overrides(run_id: str) -> tuple[dict[str, Any], str | None, str | None]:
    """The (model.*, train.*, seed) values, dataset and data fingerprint of an MLflow run."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise UserError(f"--from-run {run_id}: no such MLflow run ({exc.message})") from None
    recorded = run.data.params
    overrides = {
        key: param_value(value)
        for key, value in recorded.items()
        if key.startswith(FROM_RUN_SECTIONS) or key == "seed"
    }
    if not overrides:
        raise UserError(f"--from-run {run_id}: the run records no model.*/train.* params")
    dataset = recorded.get("dataset") or run.data.tags.get("dataset")
    return overrides, dataset, run.data.tags.get("fingerprint")


def resolve_params(options: TrainOptions) -> tuple[Params, str | None]:
    """The params of this run, and the fingerprint of the data the --from-run run saw."""
    dataset, fingerprint = options.dataset, None
    from_run: dict[str, Any] = {}
    if options.from_run:
        configure(options.params)
        from_run, run_dataset, fingerprint = run_overrides(options.from_run)
        if dataset is not None and run_dataset is not None and dataset != run_dataset:
            raise UserError(
                f"--from-run {options.from_run} trained on dataset {run_dataset!r}, "
                f"not {dataset!r}; drop --dataset"
            )
        dataset = dataset or run_dataset
    params = options.params.for_dataset(dataset)
    if from_run:
        params = params.with_overrides(from_run, origin=f"--from-run {options.from_run}")
    sets = dict(parse_set_option(item) for item in options.overrides)
    if sets:
        params = params.with_overrides(sets, origin=f"--set {' '.join(options.overrides)}")
    return params, fingerprint


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def run_name(dataset: str, arch: str) -> str:
    """``<dataset>-<arch>-<6 hex digits>``: says what the run is, and differs between runs.

    The suffix comes from the OS, not from a seeded generator: MLflow's own names come from
    ``random``, which ``set_seed`` makes repeat, so every run of a seed got the same name.
    """
    return f"{dataset}-{arch}-{os.urandom(3).hex()}"


def mean_baseline(split: Split, meta: CacheMeta) -> dict[str, float]:
    """Regression: the validation MAE/RMSE of always predicting the training mean."""
    if meta.task != "regression":
        return {}
    y_train = split.y_train.double()
    err = split.y_val.double() - y_train.mean()
    return {
        "baseline_val_mae": float(err.abs().mean()),
        "baseline_val_rmse": float(err.square().mean().sqrt()),
    }


def _checked_cache(params: Params, from_run: str | None, fingerprint: str | None) -> Cache:
    cache = load_cache(params.cache_dir(params.dataset))
    now = cache.meta.fingerprint
    if from_run and fingerprint is not None and fingerprint != now:
        raise UserError(
            f"--from-run {from_run}: that run saw data with fingerprint {fingerprint[:12]}…, "
            f"but the cache {params.cache_dir(params.dataset)} now has {now[:12]}…; "
            "re-create the old data (e.g. `dvc checkout`) first"
        )
    return cache


def _resumable_run(ckpt_dir: Path, exp_id: str) -> str | None:
    """The MLflow run an interrupted training was logging to, if it still exists."""
    path = ckpt_dir / RUN_ID_FILE
    if not (ckpt_dir / CHECKPOINT_FILE).is_file() or not path.is_file():
        return None
    run_id = path.read_text().strip()
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    if (
        run.info.experiment_id != exp_id
        or run.info.lifecycle_stage != "active"
        or run.info.status == "FINISHED"  # its metrics and model are complete: start anew
    ):
        return None
    logger.info("continuing MLflow run %s", run_id)
    return run_id


def _summary_metrics(trainer: Trainer, best: dict[str, float],
                     baseline: dict[str, float]) -> dict[str, float]:
    summary = {summary_name(k): float(v) for k, v in best.items()
               if k not in ("epoch", "lr", "time_s")}
    summary.update(baseline)
    summary["best_epoch"] = float(trainer.best_epoch)
    summary["epochs"] = float(trainer.epoch)
    summary["train_s"] = _train_time(trainer.history)
    return summary


def _fit(trainer: Trainer, options: TrainOptions, checkpoint: Path,
         ckpt_meta: dict[str, Any]) -> list[dict[str, float]]:
    progress = options.progress
    if progress is not None:
        progress.start(label=f"train {trainer.meta.name}", total_epochs=trainer.cfg.max_epochs,
                       done_epochs=trainer.epoch)
        trainer.on_batch = progress.batch
    try:
        return fit(trainer, on_epoch=progress.epoch if progress is not None else None,
                   checkpoint=checkpoint, checkpoint_meta=ckpt_meta)
    except TrainingDiverged as exc:
        raise UserError(str(exc)) from None  # the run is marked FAILED on the way out
    finally:
        if progress is not None:
            progress.close()


@dataclass(frozen=True)
class _Prepared:
    params: Params
    cache: Cache
    split: Split
    val_idx: np.ndarray
    trainer: Trainer
    ckpt_dir: Path
    ckpt_meta: dict[str, Any]


def _prepare(options: TrainOptions) -> _Prepared:
    """Params, data and a trainer (resumed from its checkpoint when asked); no MLflow run yet."""
    params, fingerprint = resolve_params(options)
    device = resolve_device(options.device or params.device)
    cache = _checked_cache(params, options.from_run, fingerprint)
    meta = cache.meta
    train_idx, val_idx = holdout_split(
        np.asarray(cache.train_y),
        fraction=params.train.val_fraction,
        seed=meta.split_seed,
        classification=meta.task == "classification",
    )
    ckpt_dir = options.checkpoint_dir or params.root / "checkpoints" / f"train-{meta.name}"
    ckpt_dir = ckpt_dir if ckpt_dir.is_absolute() else Path.cwd() / ckpt_dir
    check_writable({ckpt_dir: "the training checkpoints (--checkpoint-dir)"})
    split = make_split(cache, train_idx, val_idx)
    set_seed(params.seed)
    check_fits(params.model, params.train, meta, device=device)  # before any allocation
    model = build_model(params.model, meta, root=params.root)
    trainer = Trainer(model=model, cfg=params.train, meta=meta, split=split, device=device,
                      seed=params.seed)
    ckpt_meta = {**params.flat(), "dataset": meta.name, "fingerprint": meta.fingerprint}
    checkpoint = ckpt_dir / CHECKPOINT_FILE
    if options.resume:
        if checkpoint.is_file():
            # Checked before any MLflow run starts: another configuration is refused here.
            trainer.load_state_dict(load_checkpoint(checkpoint, meta=ckpt_meta))
            logger.info("resuming after epoch %d from %s", trainer.epoch, checkpoint)
        else:
            logger.warning("--resume: no checkpoint at %s; starting from scratch", checkpoint)
    return _Prepared(params, cache, split, val_idx, trainer, ckpt_dir, ckpt_meta)


def run_train(options: TrainOptions) -> TrainResult:
    """Train the configuration ``options`` describe and record it as one MLflow run.

    Raises:
        UserError: bad params or overrides, a missing cache, data other than a --from-run
            run saw, a checkpoint of another configuration, or a diverged training.
    """
    prep = _prepare(options)
    params, trainer, meta = prep.params, prep.trainer, prep.cache.meta
    uri = configure(params)
    exp_name = f"train-{meta.name}"
    exp_id = experiment(exp_name, params)
    run_id = _resumable_run(prep.ckpt_dir, exp_id) if options.resume else None
    tags = {**run_tags(meta, params.root), "device": str(trainer.device)}
    if options.from_run:
        tags["retrained_from"] = options.from_run
    name = None if run_id else run_name(meta.name, params.model.arch)
    with ended_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                   run_name=name, tags=tags) as run:
        prep.ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(prep.ckpt_dir / RUN_ID_FILE, (run.info.run_id + "\n").encode())
        if run_id is None:
            mlflow.log_params({k: v for k, v in prep.ckpt_meta.items() if k != "fingerprint"})
        gc_policy.settle()  # start-up done: the libraries stay out of later collections
        history = _fit(trainer, options, prep.ckpt_dir / CHECKPOINT_FILE, prep.ckpt_meta)
        net = trainer.final_model()
        log_history(history)
        best = history[trainer.best_epoch - 1] if trainer.best_epoch else history[-1]
        baseline = mean_baseline(prep.split, meta)
        mlflow.log_metrics(_summary_metrics(trainer, best, baseline))
        mlflow.set_tag("stop_reason", str(trainer.stop_reason))
        log_curves(history, title=f"{meta.name}: {params.model.arch}")
        example = np.asarray(prep.cache.train_x[prep.val_idx[:2]], dtype=np.float32)
        info = log_model(net, meta, example=example, config=params.model)
    return TrainResult(
        dataset=meta.name, arch=params.model.arch, best=dict(best),
        best_epoch=trainer.best_epoch, epochs=trainer.epoch,
        stop_reason=str(trainer.stop_reason), train_time_s=_train_time(history),
        device=str(trainer.device), baseline=baseline, run_id=run.info.run_id,
        run_name=run.info.run_name or "", experiment_id=exp_id, experiment_name=exp_name,
        tracking_uri=uri, model_uri=info.model_uri,
    )


def _train_time(history: Sequence[dict[str, float]]) -> float:
    return float(sum(row["time_s"] for row in history))
