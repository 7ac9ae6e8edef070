"""Train the ``params.yaml`` configuration on one dataset and record it as one MLflow run.

Reads ``params.yaml`` and the tensor cache ``data/cache/<dataset>/``; splits the cache's train
part into train/validation (``train.val_fraction``, seeded by the cache's ``split_seed``); trains
with early stopping, checkpointing every epoch to ``checkpoints/train-<dataset>/``; logs to the
MLflow experiment ``train-<dataset>``: all resolved params, per-epoch metrics with ``step``,
dataset fingerprint and git commit tags, the curves PNG and the model (PyTorch flavor, ``pt2``).

    python -m pipeline.train [--dataset digits] [--set train.lr=0.01 ...] [--resume]
    python -m pipeline.train --from-run RUN_ID      # retrain a recorded configuration
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import cli
from pipeline.atomic import write_bytes_atomic
from pipeline.config import PARAMS_FILE, Params, load_params, parse_set_option
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.data.cache import CacheMeta
    from pipeline.training.engine import Split, Trainer

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
RUN_ID_FILE = "mlflow_run_id"
FROM_RUN_SECTIONS = ("model.", "train.")
LONG_EPOCH_BATCHES = 50  # a batch progress bar from this many batches per epoch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=(
            "Train the params.yaml configuration on a dataset's tensor cache and log one "
            "MLflow run (params, per-epoch metrics, curves, model)."
        ),
    )
    parser.add_argument("--params", default=PARAMS_FILE,
                        help="params file; its folder is the project root (default: params.yaml)")
    parser.add_argument("--dataset", default=None,
                        help="dataset declared in params.yaml (default: its `dataset:`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a params key (value read as YAML), e.g. "
                             "--set train.lr=0.01; repeatable")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint of this dataset's training")
    parser.add_argument("--from-run", default=None, metavar="RUN_ID",
                        help="retrain the model.*/train.*/seed values recorded on an MLflow run")
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda, cuda:N or mps (default: params.yaml `device:`)")
    parser.add_argument("--checkpoint-dir", default=None, type=Path,
                        help="checkpoint folder (default: <root>/checkpoints/train-<dataset>)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# --------------------------------------------------------------------------------------------
# --from-run
# --------------------------------------------------------------------------------------------
def _param_value(text: str) -> Any:
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
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise UserError(f"--from-run {run_id}: no such MLflow run ({exc.message})") from None
    recorded = run.data.params
    overrides = {
        key: _param_value(value)
        for key, value in recorded.items()
        if key.startswith(FROM_RUN_SECTIONS) or key == "seed"
    }
    if not overrides:
        raise UserError(f"--from-run {run_id}: the run records no model.*/train.* params")
    dataset = recorded.get("dataset") or run.data.tags.get("dataset")
    return overrides, dataset, run.data.tags.get("fingerprint")


# --------------------------------------------------------------------------------------------
# The stage body
# --------------------------------------------------------------------------------------------
def resolve_params(args: argparse.Namespace) -> tuple[Params, dict[str, Any], str | None]:
    """Params for this run: file → dataset overrides → --from-run values → --set values.

    Returns the params, the --from-run overrides (empty without it) and that run's fingerprint.
    """
    from pipeline.tracking import runs as tracking

    base = load_params(args.params)
    dataset = args.dataset
    from_run: dict[str, Any] = {}
    fingerprint = None
    if args.from_run:
        tracking.configure(base)
        from_run, run_dataset, fingerprint = run_overrides(args.from_run)
        if dataset is not None and run_dataset is not None and dataset != run_dataset:
            raise UserError(
                f"--from-run {args.from_run} trained on dataset {run_dataset!r}, "
                f"not {dataset!r}; drop --dataset"
            )
        dataset = dataset or run_dataset
    params = base.for_dataset(dataset)
    if from_run:
        params = params.with_overrides(from_run, origin=f"--from-run {args.from_run}")
    sets = dict(parse_set_option(item) for item in args.overrides)
    if sets:
        try:
            params = params.with_overrides(sets, origin="--set")
        except UserError as exc:
            raise UserError(f"--set {' '.join(args.overrides)}: {exc}") from None
    return params, from_run, fingerprint


def train(args: argparse.Namespace) -> int:
    import mlflow
    from tqdm.auto import tqdm

    from pipeline.data.cache import load_cache
    from pipeline.data.splits import holdout_split
    from pipeline.tracking import runs as tracking
    from pipeline.training.checkpoint import load_checkpoint
    from pipeline.training.engine import Trainer, TrainingDiverged, fit, make_split
    from pipeline.training.models import build_model
    from pipeline.training.runtime import resolve_device, set_seed

    params, from_run, run_fingerprint = resolve_params(args)
    name = params.dataset
    device = resolve_device(args.device or params.device)
    cache = load_cache(params.cache_dir(name))
    meta = cache.meta
    if args.from_run and run_fingerprint is not None and run_fingerprint != meta.fingerprint:
        raise UserError(
            f"--from-run {args.from_run}: that run saw data with fingerprint "
            f"{run_fingerprint[:12]}…, but the cache {params.cache_dir(name)} now has "
            f"{meta.fingerprint[:12]}…; re-create the old data (e.g. `dvc checkout`) first"
        )

    train_idx, val_idx = holdout_split(
        np.asarray(cache.train_y),
        fraction=params.train.val_fraction,
        seed=meta.split_seed,
        classification=meta.task == "classification",
    )
    split = make_split(cache, train_idx, val_idx)
    set_seed(params.seed)
    model = build_model(params.model, meta, root=params.root)
    trainer = Trainer(
        model=model, cfg=params.train, meta=meta, split=split, device=device, seed=params.seed
    )

    flat = {**params.flat(), "dataset": name}
    ckpt_dir = args.checkpoint_dir or params.root / "checkpoints" / f"train-{name}"
    ckpt_dir = ckpt_dir if ckpt_dir.is_absolute() else Path.cwd() / ckpt_dir
    checkpoint = ckpt_dir / CHECKPOINT_FILE
    ckpt_meta = {**flat, "fingerprint": meta.fingerprint}

    if args.resume:
        if checkpoint.is_file():
            # Checked before any MLflow run starts: another configuration is refused here.
            trainer.load_state_dict(load_checkpoint(checkpoint, meta=ckpt_meta))
            logger.info("resuming after epoch %d from %s", trainer.epoch, checkpoint)
        else:
            logger.warning("--resume: no checkpoint at %s; starting from scratch", checkpoint)

    uri = tracking.configure(params)
    exp_id = tracking.experiment(f"train-{name}", params)
    run_id = _resumable_run(ckpt_dir, exp_id) if args.resume else None
    tags = tracking.run_tags(meta, params.root)
    tags["device"] = str(device)
    if args.from_run:
        tags["retrained_from"] = args.from_run

    quiet = not sys.stderr.isatty()
    bar = tqdm(total=params.train.max_epochs, initial=trainer.epoch, desc=f"train {name}",
               unit="epoch", disable=quiet, leave=False)
    batches = tqdm(desc="batches", unit="batch", position=1, leave=False, disable=quiet)

    def on_batch(done: int, total: int) -> None:
        if total < LONG_EPOCH_BATCHES:  # short epochs: the epoch bar says enough
            return
        if done == 1:
            batches.reset(total=total)
        batches.update(1)

    if not quiet:
        trainer.on_batch = on_batch

    def on_epoch(row: dict[str, float]) -> None:
        bar.n = int(row["epoch"])  # also right after a resume
        shown = {k.split("/")[-1]: f"{v:.4g}" for k, v in row.items()
                 if k.startswith("val/") or k == "train/loss"}
        bar.set_postfix(shown)

    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                          tags=tags) as run:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(ckpt_dir / RUN_ID_FILE, (run.info.run_id + "\n").encode())
        if run_id is None:
            mlflow.log_params(flat)
        try:
            history = fit(trainer, on_epoch=on_epoch, checkpoint=checkpoint,
                          checkpoint_meta=ckpt_meta)
        except TrainingDiverged as exc:
            raise UserError(str(exc)) from None  # the run is marked FAILED on the way out
        finally:
            batches.close()
            bar.close()
        net = trainer.final_model()
        tracking.log_history(history)
        best = history[trainer.best_epoch - 1] if trainer.best_epoch else history[-1]
        summary = {f"best/{k}": float(v) for k, v in best.items() if k.startswith("val/")}
        summary.update(mean_baseline(split, meta))
        summary["best_epoch"] = float(trainer.best_epoch)
        summary["epochs"] = float(trainer.epoch)
        summary["train_time_s"] = float(sum(row["time_s"] for row in history))
        mlflow.log_metrics(summary)
        mlflow.set_tag("stop_reason", str(trainer.stop_reason))
        tracking.log_curves(history, title=f"{name}: {params.model.arch}")
        example = np.asarray(cache.train_x[val_idx[:2]], dtype=np.float32)
        info = tracking.log_model(net, meta, example=example)

    print(_summary(name, trainer, best, run.info.run_id, exp_id, uri, info.model_uri,
                   baseline=mean_baseline(split, meta)))
    return 0


def mean_baseline(split: Split, meta: CacheMeta) -> dict[str, float]:
    """Regression: the validation MAE/RMSE of always predicting the training mean."""
    if meta.task != "regression":
        return {}
    y_train = split.y_train.double()
    err = split.y_val.double() - y_train.mean()
    return {
        "baseline/val/mae": float(err.abs().mean()),
        "baseline/val/rmse": float(err.square().mean().sqrt()),
    }


def _resumable_run(ckpt_dir: Path, exp_id: str) -> str | None:
    """The MLflow run an interrupted training was logging to, if it still exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

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


def _summary(name: str, trainer: Trainer, best: dict[str, float], run_id: str, exp_id: str,
             uri: str, model_uri: str, baseline: dict[str, float]) -> str:
    from pipeline.secrets import redact

    metrics = "  ".join(f"{k} {v:.4f}" for k, v in best.items() if k.startswith("val/"))
    reason = {"early_stopping": "early stopping", "max_epochs": "max epochs"}.get(
        str(trainer.stop_reason), str(trainer.stop_reason)
    )
    seconds = sum(row["time_s"] for row in trainer.history)
    lines = [
        f"{name}: best epoch {trainer.best_epoch} of {trainer.epoch} ({reason}; "
        f"{seconds:.1f} s of training on {trainer.device})",
        f"  {metrics}",
        *(
            [f"  baseline (predict the training mean): val/mae {baseline['baseline/val/mae']:.4f}"
             f"  val/rmse {baseline['baseline/val/rmse']:.4f}"]
            if baseline else []
        ),
        f"  MLflow run {run_id} (experiment train-{name}, id {exp_id}) in {redact(uri)}",
        f"  model: {model_uri}",
        (
            f"  browse: {redact(uri)}"
            if uri.startswith(("http://", "https://"))
            else "  browse: make ui  (MLflow UI on http://127.0.0.1:5000)"
        ),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    return cli.run(lambda: train(args))


if __name__ == "__main__":
    sys.exit(main())
