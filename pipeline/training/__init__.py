"""Training: models, the epoch engine, checkpoints, seeds and devices. No MLflow, no Optuna."""

from pipeline.training._onednn import onednn_linear_available
from pipeline.training.batched import (
    BatchedFold,
    BatchedFolds,
    can_batch_folds,
    fold_batching_wins,
)
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.engine import (
    ModelRun,
    Split,
    Trainer,
    TrainingDiverged,
    fit,
    make_optimizer,
    make_split,
)
from pipeline.training.memory import MemoryEstimate, check_fits, estimate
from pipeline.training.models import (
    IMAGE_ARCHS,
    arch_fits,
    build_model,
    input_affine,
    model_metadata,
    package_model,
)
from pipeline.training.runtime import derive_seed, resolve_device, set_seed

__all__ = [
    "IMAGE_ARCHS",
    "arch_fits",
    "BatchedFold",
    "BatchedFolds",
    "MemoryEstimate",
    "ModelRun",
    "Split",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "can_batch_folds",
    "check_fits",
    "derive_seed",
    "estimate",
    "fit",
    "fold_batching_wins",
    "input_affine",
    "load_checkpoint",
    "make_optimizer",
    "make_split",
    "model_metadata",
    "onednn_linear_available",
    "package_model",
    "resolve_device",
    "save_checkpoint",
    "set_seed",
]
