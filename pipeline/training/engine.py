"""The training engine: one configuration, trained fast on an in-memory tensor split.

The whole split is moved to the device once. Each epoch shuffles with a seeded permutation and
slices batches with ``index_select``; ``uint8 → float`` and normalisation happen per batch on the
device. No JPEG decoding and no per-sample ``DataLoader`` in the loop, and only one host sync
per epoch for the training loss (the per-batch losses stay on the device).

After each epoch: validation, early stopping on ``val/loss`` (patience, min_delta, restore the
best weights), ReduceLROnPlateau, and a row appended to :attr:`Trainer.history`. :func:`fit`
is the loop of one training run (``pipeline.train``): it runs epochs until done, checkpointing
each one and calling an optional ``on_epoch`` hook (a progress bar). The study layer advances
its k-fold trainers itself, one :meth:`Trainer.run_epoch` at a time.

Each trainer owns its random state (shuffling, flips, dropout): it is swapped in for the epoch
and out again, so trainers advanced in lockstep (k-fold) do not disturb each other, the same
seed gives identical metrics on CPU, and a resumed run continues the exact same streams.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TrainConfig
from pipeline.data.cache import Cache, CacheMeta
from pipeline.errors import UserError
from pipeline.training._onednn import (
    onednn_linear_available,
    onednn_preferred,
    routed_linears,
)
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.models import input_affine
from pipeline.training.runtime import derive_seed

__all__ = [
    "STATE_VERSION",
    "ModelRun",
    "Split",
    "Trainer",
    "TrainingDiverged",
    "fit",
    "make_optimizer",
    "make_split",
    "onednn_linear_available",
]

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial should be marked failed."""


@dataclass(frozen=True)
class Split:
    """One train/validation split, as CPU tensors (images stay ``uint8``, targets raw units)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def make_split(cache: Cache, train_idx: np.ndarray, val_idx: np.ndarray) -> Split:
    """Copy the rows ``train_idx`` / ``val_idx`` of the cache's train part into tensors."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    val_idx = np.asarray(val_idx, dtype=np.int64)
    return Split(
        x_train=_as_tensor(cache.train_x[train_idx]),
        y_train=_as_tensor(cache.train_y[train_idx]),
        x_val=_as_tensor(cache.train_x[val_idx]),
        y_val=_as_tensor(cache.train_y[val_idx]),
    )


def make_optimizer(
    params: list[nn.Parameter], cfg: TrainConfig, *, fused: bool = False
) -> torch.optim.Optimizer:
    """The optimizer ``train.optimizer`` names, with lr, momentum and weight decay.

    ``fused``: use the single-kernel implementation (SGD, Adam, AdamW on CPU/CUDA); on CPU it
    makes Adam's step ~3x cheaper than the per-tensor loop, ~8 % of an MLP epoch.
    """
    if not params:
        raise UserError("model: no trainable parameters (is model.freeze_backbone hiding all?)")
    extra: dict[str, Any] = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **extra
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise UserError(
        f"train.optimizer: unknown optimizer {cfg.optimizer!r}; allowed: sgd, adam, adamw, rmsprop"
    )


def _row_gatherer(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``idx -> x[idx]`` by ``index_select``; uint8 rows are gathered as wider words (faster)."""
    if x.dtype == torch.uint8 and x.dim() > 1 and x.is_contiguous():
        row = x[0].numel()
        for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
            if row % size == 0:
                packed = x.view(len(x), row).view(dtype)
                shape = x.shape[1:]
                return lambda idx: packed.index_select(0, idx).view(torch.uint8).view(-1, *shape)
    return lambda idx: x.index_select(0, idx)


def _batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch slices over ``n`` samples; a trailing batch of one is dropped (BatchNorm fails)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


def check_split(split: Split, meta: CacheMeta) -> None:
    """Refuse a split without training or validation samples (a UserError naming the fix)."""
    if len(split.x_train) == 0 or len(split.x_val) == 0:
        raise UserError(
            f"dataset {meta.name!r}: the train/validation split has "
            f"{len(split.x_train)} training and {len(split.x_val)} validation samples; "
            "both must be non-empty (check train.val_fraction)"
        )


def normalised(xb: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Raw rows as normalised float32: a fresh copy (a float batch may be a view of the stored
    data), then in place; the same arithmetic as PackagedModel's ``x.mul(scale).add(shift)``."""
    return xb.to(torch.float32, copy=True).mul_(scale).add_(shift)


def training_targets(y: torch.Tensor, meta: CacheMeta, device: torch.device) -> torch.Tensor:
    """Targets as the loss takes them: class ids, or regression targets standardised once."""
    if meta.task == "classification":
        return y.to(device, torch.int64)
    std = float(meta.target_std) or 1.0
    return ((y.to(torch.float64) - float(meta.target_mean)) / std).to(device, torch.float32)


class ModelRun:
    """One model's record of training: history, early stopping, LR schedule, kept weights.

    :class:`Trainer` is one; so is each fold of a
    :class:`~pipeline.training.batched.BatchedFolds`. It is what the study layer reads from a
    fold, however it was trained.

    Attributes:
        model: the network (on ``device``); :meth:`final_model` restores the kept weights.
        optimizer, scheduler: this model's own (``train.optimizer``, ReduceLROnPlateau).
        history: one row per completed epoch (see :meth:`Trainer.run_epoch`).
        epoch: the number of completed epochs.
        done: early stopping fired or ``max_epochs`` was reached.
        stop_reason: ``"early_stopping"``, ``"max_epochs"`` or None while running.
        best_epoch: the epoch (1-based) with the lowest ``val/loss`` so far; 0 before any.
        best_val_loss: that loss (``inf`` before any epoch).
    """

    def __init__(self, *, model: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(
            [p for p in self.model.parameters() if p.requires_grad],
            cfg,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if cfg.lr_schedule.enabled:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=cfg.lr_schedule.factor,
                patience=cfg.lr_schedule.patience,
                min_lr=cfg.lr_schedule.min_lr,
            )
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.done = False
        self.stop_reason: str | None = None
        self.best_epoch = 0
        self.best_val_loss = math.inf
        self._bad_epochs = 0
        self._best_state: dict[str, torch.Tensor] | None = None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def check_finite(self, train_loss: float) -> None:
        """Raise :class:`TrainingDiverged` for a NaN or infinite training loss (the epoch is not
        counted)."""
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training diverged in epoch {self.epoch + 1}: train/loss is {train_loss} "
                f"(train.lr={self.cfg.lr:g}, train.optimizer={self.cfg.optimizer}); "
                "try a lower learning rate"
            )

    def end_epoch(
        self, train: dict[str, float], val: dict[str, float], lr: float
    ) -> dict[str, float]:
        """Count the epoch, apply early stopping and the schedule; the row without ``time_s``.

        Called by the trainer that ran the epoch, with its metrics and the lr it used.
        """
        self.epoch += 1
        self._after_validation(val["val/loss"])
        return {"epoch": self.epoch, **train, **val, "lr": lr}

    def _after_validation(self, val_loss: float) -> None:
        es = self.cfg.early_stopping
        if val_loss < self.best_val_loss - es.min_delta:
            self.best_val_loss = val_loss
            self.best_epoch = self.epoch
            self._bad_epochs = 0
            if es.restore_best:
                self._best_state = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
        else:
            self._bad_epochs += 1
        if self.scheduler is not None:
            self.scheduler.step(val_loss)
        if self._bad_epochs >= es.patience:
            self.done, self.stop_reason = True, "early_stopping"
            logger.debug(
                "early stopping after epoch %d (best epoch %d)", self.epoch, self.best_epoch
            )
        elif self.epoch >= self.cfg.max_epochs:
            self.done, self.stop_reason = True, "max_epochs"

    def final_model(self) -> nn.Module:
        """The trained network in eval mode, with the best epoch's weights when configured.

        The weights are restored into :attr:`model` itself (as Keras does), not into a copy.
        """
        if self._best_state is not None and self.best_epoch != self.epoch:
            self.model.load_state_dict(self._best_state)
            # Loaded weights now equal the best; later calls are no-ops.
        return self.model.eval()


class Trainer(ModelRun):
    """Trains one model on one split; call :meth:`run_epoch` until :attr:`done`.

    Attributes: those of :class:`ModelRun`, and ``on_batch`` (a per-batch hook).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        cfg: TrainConfig,
        meta: CacheMeta,
        split: Split,
        device: torch.device,
        seed: int,
        fast_linear: bool | None = None,
    ) -> None:
        """Args: as the attributes; ``fast_linear`` routes nn.Linear through oneDNN (default:
        on a CPU where oneDNN is the faster GEMM, when available)."""
        check_split(split, meta)
        super().__init__(model=model, cfg=cfg, device=device)
        self.meta = meta
        self.seed = int(seed)
        self.classification = meta.task == "classification"

        # Data: moved to the device once; regression targets standardised once.
        self._x_train = split.x_train.to(self.device)
        self._x_val = split.x_val.to(self.device)
        self._y_train = self._targets(split.y_train)
        self._y_val = self._targets(split.y_val)
        scale, shift = input_affine(meta)
        self._scale = scale.to(self.device)
        self._shift = shift.to(self.device)
        self._rows: torch.Tensor | None = None  # the training rows in use (None: all)
        self.last_val_s = 0.0  # the seconds the last epoch's validation took
        self._flip = bool(cfg.hflip)
        if self._flip and not (meta.kind == "image" and int(meta.input_shape[0]) == 3):
            logger.warning("train.hflip is for colour images only; ignored for %s", meta.name)
            self._flip = False

        if fast_linear is None:
            fast_linear = self.device.type == "cpu" and onednn_preferred()
        self.fast_linear = bool(fast_linear) and onednn_linear_available()
        self._gather_x = _row_gatherer(self._x_train)

        # Called as on_batch(done, total) after each training batch (a progress bar for long
        # epochs); it must not read tensors, or it would add a host sync per batch.
        self.on_batch: Callable[[int, int], None] | None = None

        # This trainer's own random streams, seeded from `seed` (see the module docstring):
        # a generator for shuffling and flips, and the global state (dropout) swapped per epoch.
        self._gen = torch.Generator().manual_seed(derive_seed(self.seed, 1))
        self._cuda = self.device.type == "cuda"
        with self._forked_rng():
            torch.manual_seed(self.seed)
            self._rng_cpu, self._rng_dev = self._capture_rng()

    # ----------------------------------------------------------------------------------------
    # Random state
    # ----------------------------------------------------------------------------------------
    def _forked_rng(self) -> contextlib.AbstractContextManager[None]:
        devices = [self.device.index or 0] if self._cuda else []
        return torch.random.fork_rng(devices=devices, device_type="cuda")

    def _capture_rng(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        dev = torch.cuda.get_rng_state(self.device) if self._cuda else None
        return torch.get_rng_state(), dev

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        with self._forked_rng():
            torch.set_rng_state(self._rng_cpu)
            if self._cuda and self._rng_dev is not None:
                torch.cuda.set_rng_state(self._rng_dev, self.device)
            try:
                yield
            finally:
                self._rng_cpu, self._rng_dev = self._capture_rng()

    # ----------------------------------------------------------------------------------------
    # Data
    # ----------------------------------------------------------------------------------------
    def use_rows(self, rows: np.ndarray) -> None:
        """Train on these rows of the training part only: a rung of a search that screens
        configurations on a share of the data."""
        self._rows = torch.as_tensor(np.asarray(rows, dtype=np.int64)).to(self.device)

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        return training_targets(y, self.meta, self.device)

    def _normalise(self, xb: torch.Tensor) -> torch.Tensor:
        return normalised(xb, self._scale, self._shift)

    def _loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.classification:
            return F.cross_entropy(out, y, reduction=reduction)
        return F.mse_loss(out[:, 0], y, reduction=reduction)

    # ----------------------------------------------------------------------------------------
    # Epochs
    # ----------------------------------------------------------------------------------------
    def _train_epoch(self) -> dict[str, float]:
        """One pass over the training part: ``train/loss`` and, classifying, ``train/accuracy``.

        The accuracy counts the predictions the training batches already made (in training
        mode, as Keras reports it), so it costs no second pass over the data.
        """
        model, opt, device = self.model, self.optimizer, self.device
        model.train()
        rows = self._rows
        n = len(self._x_train) if rows is None else len(rows)
        bounds = _batch_bounds(n, self.cfg.batch_size)
        perm = torch.randperm(n, generator=self._gen).to(device)
        if rows is not None:
            perm = rows.index_select(0, perm)
        flips = (torch.rand(n, generator=self._gen) < 0.5).to(device) if self._flip else None
        gather, y_all = self._gather_x, self._y_train
        losses: list[torch.Tensor] = []
        correct = torch.zeros((), dtype=torch.int64, device=device)
        on_batch = self.on_batch
        for i, (start, stop) in enumerate(bounds):
            idx = perm[start:stop]
            xb = self._normalise(gather(idx))
            if flips is not None:
                mask = flips[start:stop].view(-1, 1, 1, 1)
                xb = torch.where(mask, xb.flip(-1), xb)
            yb = y_all.index_select(0, idx)
            out = model(xb)
            loss = self._loss(out, yb)
            if self.classification:
                correct += (out.detach().argmax(dim=1) == yb).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            if on_batch is not None:
                on_batch(i + 1, len(bounds))
        sizes = torch.tensor([b - a for a, b in bounds], dtype=torch.float32, device=device)
        seen = sizes.sum()
        mean_loss = (torch.stack(losses) * sizes).sum() / seen
        # The one host sync of the training pass.
        loss_value, accuracy = torch.stack([mean_loss, correct.to(seen.dtype) / seen]).tolist()
        if self.classification:
            return {"train/loss": loss_value, "train/accuracy": accuracy}
        return {"train/loss": loss_value}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics for the current weights (``val/loss`` and accuracy or MAE/RMSE)."""
        model = self.model
        model.eval()
        n = len(self._x_val)
        chunk = max(2 * self.cfg.batch_size, 256)
        loss_sum = torch.zeros((), device=self.device)
        stat_a = torch.zeros((), device=self.device)  # correct | absolute error sum
        stat_b = torch.zeros((), device=self.device)  # squared error sum (regression)
        std = float(self.meta.target_std) or 1.0
        for start in range(0, n, chunk):
            xb = self._normalise(self._x_val[start : start + chunk])
            yb = self._y_val[start : start + chunk]
            out = model(xb)
            loss_sum += self._loss(out, yb, reduction="sum")
            if self.classification:
                stat_a += (out.argmax(dim=1) == yb).sum()
            else:
                err = (out[:, 0] - yb) * std  # target units
                stat_a += err.abs().sum()
                stat_b += err.square().sum()
        loss, a, b = torch.stack([loss_sum, stat_a, stat_b]).tolist()
        if self.classification:
            return {"val/loss": loss / n, "val/accuracy": a / n}
        return {"val/loss": loss / n, "val/mae": a / n, "val/rmse": math.sqrt(b / n)}

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, validate, apply early stopping and the LR schedule.

        Returns the history row: ``epoch`` (1-based), ``train/loss``, ``train/accuracy``
        (classification), ``val/loss``, ``val/accuracy`` or ``val/mae`` + ``val/rmse``, ``lr``
        (used for this epoch), ``time_s``.

        Raises:
            TrainingDiverged: the training loss is NaN or infinite.
        """
        if self.done:
            raise RuntimeError("Trainer.run_epoch: training is already done")
        t0 = time.perf_counter()
        lr = self.lr
        with self._own_rng(), routed_linears(self.model, self.fast_linear):
            train = self._train_epoch()
            self.check_finite(train["train/loss"])
            t_val = time.perf_counter()
            val = self.evaluate()
            self.last_val_s = time.perf_counter() - t_val
        row = self.end_epoch(train, val, lr)
        row["time_s"] = time.perf_counter() - t0
        self.history.append(row)
        return row

    # ----------------------------------------------------------------------------------------
    # Checkpoint state (tensors and plain containers only: loads with weights_only=True)
    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this trainer is."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "done": self.done,
            "stop_reason": self.stop_reason,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early_stopping": {
                "best_epoch": self.best_epoch,
                "best_val_loss": self.best_val_loss,
                "bad_epochs": self._bad_epochs,
            },
            "best_model": self._best_state,
            "rng": {
                "shuffle": self._gen.get_state(),
                "cpu": self._rng_cpu.clone(),
                "device": self._rng_dev,
            },
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (tensors may come back on the CPU)."""
        if state.get("version") != STATE_VERSION:
            raise UserError(
                f"checkpoint state version {state.get('version')!r} is not {STATE_VERSION}; "
                "start without --resume"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        es = state["early_stopping"]
        self.best_epoch = int(es["best_epoch"])
        self.best_val_loss = float(es["best_val_loss"])
        self._bad_epochs = int(es["bad_epochs"])
        best = state["best_model"]
        self._best_state = (
            {k: v.to(self.device) for k, v in best.items()} if best is not None else None
        )
        self._gen.set_state(state["rng"]["shuffle"])
        self._rng_cpu = state["rng"]["cpu"].clone()
        dev = state["rng"]["device"]
        self._rng_dev = dev.clone() if (dev is not None and self._cuda) else self._rng_dev
        self.history = copy.deepcopy(list(state["history"]))
        self.epoch = int(state["epoch"])
        self.done = bool(state["done"])
        self.stop_reason = state["stop_reason"]
        self.seed = int(state["seed"])


def fit(
    trainer: Trainer,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Run epochs until the trainer is done and return its history (one training run).

    Args:
        trainer: the trainer to advance.
        on_epoch: called with each epoch's row after the checkpoint is written (e.g. to draw
            progress); an exception raised there stops training and propagates, leaving the
            trainer consistent (``final_model()`` still works).
        checkpoint: a file written atomically after every epoch.
        resume: continue from ``checkpoint`` if it exists (a fresh start otherwise).
        checkpoint_meta: plain values stored with the checkpoint (e.g. the resolved params and
            data fingerprint); resuming from a checkpoint with different values is refused.
    """
    if resume and checkpoint is not None:
        if Path(checkpoint).is_file():
            saved = load_checkpoint(checkpoint, meta=checkpoint_meta)
            trainer.load_state_dict(saved)
            logger.info("resumed from %s after epoch %d", checkpoint, trainer.epoch)
        else:
            logger.info("no checkpoint at %s; starting from scratch", checkpoint)
    while not trainer.done:
        row = trainer.run_epoch()
        if checkpoint is not None:
            save_checkpoint(trainer.state_dict(), checkpoint, meta=checkpoint_meta)
        if on_epoch is not None:
            on_epoch(row)
    return trainer.history
