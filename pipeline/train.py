"""Train the ``params.yaml`` configuration on one dataset and record it as one MLflow run.

Reads ``params.yaml`` and the tensor cache ``data/cache/<dataset>/``; writes checkpoints to
``checkpoints/train-<dataset>/`` and one run to the MLflow experiment ``train-<dataset>`` (params,
per-epoch metrics, tags, curves, model). The work is :func:`pipeline.tracking.run_train`.

    python -m pipeline.train [--dataset digits] [--set train.lr=0.01 ...] [--resume]
    python -m pipeline.train --from-run RUN_ID      # retrain a recorded configuration
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from pipeline import (
    cli,
    tracking,  # a lazy face: torch and MLflow load when training starts
)
from pipeline.config import PARAMS_FILE, load_params
from pipeline.secrets import redact

LONG_EPOCH_BATCHES = 50  # a batch progress bar from this many batches per epoch
# History keys as the progress bar shows them (Keras' names: loss, acc, val_loss, ...).
_SHOWN = {
    "train/loss": "loss",
    "train/accuracy": "acc",
    "val/loss": "val_loss",
    "val/accuracy": "val_acc",
    "val/mae": "val_mae",
    "val/rmse": "val_rmse",
}


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
# Progress
# --------------------------------------------------------------------------------------------
def epoch_postfix(row: dict[str, float]) -> str:
    """One epoch's figures as the bar shows them: ``loss 0.5 acc 0.8 val_loss 0.6 val_acc 0.7``."""
    return "  ".join(f"{_SHOWN[k]} {row[k]:.4g}" for k in _SHOWN if k in row)


def wants_batch_bar(batches: int) -> bool:
    """Short epochs: the epoch bar says enough (and no empty batch bar is ever drawn)."""
    return batches >= LONG_EPOCH_BATCHES


class BarProgress:
    """tqdm bars on stderr: one per run (epochs), one per long epoch (batches)."""

    def __init__(self) -> None:
        self._epochs: tqdm | None = None
        self._batches: tqdm | None = None

    def start(self, *, label: str, total_epochs: int, done_epochs: int) -> None:
        self._epochs = tqdm(total=total_epochs, initial=done_epochs, desc=label, unit="epoch",
                            leave=False)

    def batch(self, done: int, total: int) -> None:
        # Called per training batch: no tensor reads here (that would sync the device).
        if not wants_batch_bar(total):
            return
        if self._batches is None:
            self._batches = tqdm(total=total, desc="batches", unit="batch", position=1,
                                 leave=False)
        elif done == 1:
            self._batches.reset(total=total)
        self._batches.update(1)

    def epoch(self, row: dict[str, float]) -> None:
        if self._epochs is not None:
            self._epochs.n = int(row["epoch"])  # also right after a resume
            self._epochs.set_postfix_str(epoch_postfix(row))

    def close(self) -> None:
        for bar in (self._batches, self._epochs):
            if bar is not None:
                bar.close()


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def summary(result: tracking.TrainResult) -> str:
    """What the command prints: the best epoch's figures and where the run was recorded."""
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.best.items() if k.startswith("val/"))
    reason = {"early_stopping": "early stopping", "max_epochs": "max epochs"}.get(
        result.stop_reason, result.stop_reason
    )
    uri = redact(result.tracking_uri)
    lines = [
        f"{result.dataset}: best epoch {result.best_epoch} of {result.epochs} ({reason}; "
        f"{result.train_time_s:.1f} s of training on {result.device})",
        f"  {metrics}",
    ]
    if result.baseline:
        lines.append(
            "  baseline (predict the training mean): "
            f"val/mae {result.baseline['baseline_val_mae']:.4f}"
            f"  val/rmse {result.baseline['baseline_val_rmse']:.4f}"
        )
    lines += [
        f"  MLflow run {result.run_id} ({result.run_name}; experiment {result.experiment_name}, "
        f"id {result.experiment_id}) in {uri}",
        f"  model: {result.model_uri}",
        f"  browse: {tracking.ui_url(result.experiment_id, uri)}" if uri.startswith(("http://", "https://"))
        else f"  browse: make ui, then {tracking.ui_url(result.experiment_id)}",
    ]
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> int:
    options = tracking.TrainOptions(
        params=load_params(args.params),
        dataset=args.dataset,
        overrides=tuple(args.overrides),
        from_run=args.from_run,
        resume=args.resume,
        device=args.device,
        checkpoint_dir=args.checkpoint_dir,
        progress=BarProgress() if sys.stderr.isatty() else None,
    )
    print(summary(tracking.run_train(options)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    return cli.run(lambda: _train(args))


if __name__ == "__main__":
    raise SystemExit(main())
