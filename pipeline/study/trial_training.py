"""One trial's models in training: one per fold, advanced in lockstep, through its rungs.

:class:`TrialProgress` is what a trial has done so far (the tracker reads it however the trial
ends). :class:`FoldTraining` builds the folds' models (each under its fold's seed) and trains
them together: K :class:`~pipeline.training.Trainer` objects, or one
:class:`~pipeline.training.BatchedFolds` for an MLP's folds where ``search.fold_batching``
says so. Each lockstep epoch gives every fold's new history row, or its best row once it is
done (its kept weights), so the fold mean always averages K models. Under a rung schedule
(:mod:`pipeline.study.rungs`) the first rungs may train on a share of each fold's training
part (the first rows of one permutation per fold, seeded by the cache's split seed, so every
trial of a study sees the same rows at the same rung); when a rung trains on more data than
the one before, the trial's models start afresh on it (:class:`TrialTrainer`): the cheaper
rungs only decide whether it deserves more, and its model is what training on that data from
the first epoch gives, the same as a search without rungs would get for that configuration.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch

from pipeline.config import Params
from pipeline.data.cache import CacheMeta
from pipeline.study.budget import CUT_SHORT, RunBudget
from pipeline.study.folds import FoldPlan, combine, combine_rows
from pipeline.study.rungs import RungPlan
from pipeline.study.trial_attrs import FOLDS_NOW_ATTR
from pipeline.training.batched import BatchedFolds, can_batch_folds, fold_batching_wins
from pipeline.training.engine import ModelRun, Split, Trainer
from pipeline.training.memory import check_fits
from pipeline.training.models import build_model
from pipeline.training.runtime import derive_seed, set_seed

logger = logging.getLogger(__name__)

__all__ = ["AVERAGED_SKIP", "FoldTraining", "TrialInterrupted", "TrialProgress", "TrialTrainer",
           "averaged_row", "best_row", "cost_line"]

AVERAGED_SKIP = ("epoch", "time_s")  # history keys that are not averaged over folds
_MODEL_INIT_LOCK = threading.Lock()
_ROWS_STREAM = 7  # keeps the rung subsets' permutation apart from other split-seeded streams


@dataclass
class TrialProgress:
    """What a trial has done so far; the tracker reads it however the trial ends."""

    number: int
    seed: int
    values: dict[str, Any]  # the sampled values (dotted keys)
    folds: int = 1  # validation folds (1: a holdout), from the objective's FoldPlan
    params: Params | None = None  # the resolved params (None if the values were rejected)
    trainers: list[ModelRun] = field(default_factory=list)  # one per fold (Trainer or batched)
    history: list[dict[str, float]] = field(default_factory=list)  # fold-averaged rows
    state: str = "RUNNING"  # COMPLETE | PRUNED | FAIL once finished
    value: float | None = None  # trial value (mean over folds at each fold's best epoch)
    value_std: float | None = None
    error: str | None = None
    interrupted: bool = False
    cut_short: str | None = None  # "deadline", "trial_share" or "budget"
    train_s: float = 0.0
    run_id: str | None = None
    fold_batching: bool = False  # the folds trained as one batched model
    rung: int | None = None  # under a rung schedule: the rungs completed
    # Each epoch's value per fold, when a fold-aware pruner reads them (else empty).
    fold_curves: list[list[float | None]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        """Lockstep epochs run (the steps reported to the pruner)."""
        return len(self.history)

    @property
    def fold_epochs(self) -> int:
        """Epochs run summed over folds (the compute actually spent)."""
        return sum(t.epoch for t in self.trainers)

    def best_fold(self, direction: str, metric: str) -> int | None:
        """The fold whose best-epoch value is best (its model is the one logged)."""
        scored: list[tuple[float, int]] = []
        for i, t in enumerate(self.trainers):
            value = best_row(t).get(metric)
            if value is not None and math.isfinite(value):
                scored.append((value if direction == "minimize" else -value, i))
        return min(scored)[1] if scored else None


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def best_row(trainer: ModelRun) -> dict[str, float]:
    """The history row of the trainer's best epoch (the weights it keeps), or {}."""
    if trainer.best_epoch <= 0:
        return {}
    for row in trainer.history:
        if int(row["epoch"]) == trainer.best_epoch:
            return row
    return {}


def averaged_row(rows: Sequence[dict[str, float]], epoch: int, metric: str) -> dict[str, float]:
    """One lockstep epoch over the folds: each value combined (``<metric>_std`` beside it),
    the epoch number, and the time summed (the compute spent)."""
    out: dict[str, float] = {"epoch": epoch}
    out.update(combine_rows(rows, skip=AVERAGED_SKIP, spread=metric))
    out["time_s"] = sum(float(r.get("time_s", 0.0)) for r in rows)
    return out


class FoldTraining:
    """A trial's fold models in training on ``fraction`` of each fold's training part (see
    the module docstring).

    Args:
        cfg: the trial's resolved params.
        meta: the cache metadata.
        splits: one train/validation split per fold.
        device: where to train.
        seeds: one seed per fold.
        fraction: the share of each fold's training rows to train on (a rung's).
    """

    def __init__(self, *, cfg: Params, meta: CacheMeta, splits: Sequence[Split],
                 device: torch.device, seeds: Sequence[int], fraction: float = 1.0) -> None:
        self.fraction = fraction
        check_fits(cfg.model, cfg.train, meta, device=device, models=len(seeds))
        models = []
        for seed in seeds:
            with _MODEL_INIT_LOCK:
                torch.manual_seed(seed)
                models.append(build_model(cfg.model, meta, root=cfg.root))
        self.batched = fraction >= 1.0 and _batch_folds(cfg, meta, len(splits), device)
        self._group: BatchedFolds | None = None
        self._trainers: list[Trainer] = []
        if self.batched:
            self._group = BatchedFolds(models=models, cfg=cfg.train, meta=meta, splits=splits,
                                       device=device, seeds=list(seeds))
            self.trainers: list[ModelRun] = list(self._group.folds)
            return
        self._trainers = [Trainer(model=m, cfg=cfg.train, meta=meta, split=split,
                                  device=device, seed=seed)
                          for m, split, seed in zip(models, splits, seeds, strict=True)]
        self.trainers = list(self._trainers)
        if fraction < 1.0:
            for i, (trainer, split) in enumerate(zip(self._trainers, splits, strict=True)):
                order = np.random.default_rng(derive_seed(meta.split_seed, _ROWS_STREAM, i))
                rows = order.permutation(len(split.y_train))
                trainer.use_rows(np.sort(rows[:max(1, math.ceil(fraction * len(rows)))]))

    @property
    def done(self) -> bool:
        return all(t.done for t in self.trainers)

    @property
    def val_s(self) -> float:
        """Seconds the last epoch's validation took, over the folds."""
        return sum(getattr(t, "last_val_s", 0.0) for t in self.trainers)

    def epoch(self) -> list[dict[str, float]]:
        """Run one lockstep epoch: each fold's new row, or its best row once it is done."""
        if self._group is not None:
            rows = self._group.run_epoch()
            return [r if r is not None else best_row(f)
                    for r, f in zip(rows, self._group.folds, strict=True)]
        return [t.run_epoch() if not t.done else best_row(t) for t in self._trainers]


def _batch_folds(cfg: Params, meta: CacheMeta, folds: int, device: torch.device) -> bool:
    """``search.fold_batching``: true batches wherever BatchedFolds can (an MLP, K ≥ 2, CPU
    or CUDA), auto where :func:`fold_batching_wins` says it is faster, false never."""
    setting = cfg.search.fold_batching
    if not can_batch_folds(cfg.model, folds, device):
        return False
    if setting == "auto":
        return fold_batching_wins(cfg.model, cfg.train, meta, folds, device)
    return bool(setting)


class TrialInterrupted(KeyboardInterrupt):
    """The search was asked to stop (Ctrl-C) while this trial ran; it is recorded as failed."""


class TrialTrainer:
    """Trains one trial's folds epoch by epoch: each epoch's fold mean is reported to the
    pruner, and the trial stops at the budget's limits or a Ctrl-C (``stop`` set).

    Args:
        plan, splits: how trials validate, and the fold splits as tensors.
        meta: the cache metadata.
        device: where to train.
        metric: the study's metric (the value reported and kept).
        budget: this run's budget, its clock running.
        stop: set by a Ctrl-C.
    """

    def __init__(self, *, plan: FoldPlan, splits: Sequence[Split], meta: CacheMeta,
                 device: torch.device, metric: str, budget: RunBudget,
                 stop: threading.Event | None, fold_values: bool = False) -> None:
        self.plan, self.splits, self.meta, self.device = plan, splits, meta, device
        self.metric, self.budget, self.stop = metric, budget, stop
        # Each epoch's value per fold on the trial, for a fold-aware pruner (FoldPruner).
        self.fold_values = fold_values and plan.folds > 1
        # Called after every lockstep epoch with (trial number, epoch, value): the search's
        # progress bar shows where a long trial is, not only how many trials are done.
        self.on_epoch: Callable[[int, int, float], None] | None = None
        self._cost_said = False

    def train(self, trial: Any, progress: TrialProgress, rungs: RungPlan | None) -> None:
        """Train ``progress``'s configuration (its params and seed) to its end, a pruner's
        stop (``optuna.TrialPruned``), a Ctrl-C (:class:`TrialInterrupted`) or a limit of the
        budget; its value is the fold mean of each fold's best epoch."""
        cfg = progress.params
        assert cfg is not None
        t0 = time.perf_counter()
        started = time.monotonic()
        try:
            set_seed(progress.seed)
            training = self._fresh(progress, 1.0 if rungs is None else rungs.fraction(1))
            epoch = 0
            while not training.done or _grows(rungs, epoch, training):
                if self.budget.epoch_cap is not None and epoch >= self.budget.epoch_cap:
                    break  # a dry run's few epochs
                if self.stop is not None and self.stop.is_set():
                    raise TrialInterrupted(f"trial {progress.number} interrupted")
                progress.cut_short = _cut_short(self.budget, progress, training, rungs, started,
                                                epoch)
                if progress.cut_short is not None:
                    why = CUT_SHORT[progress.cut_short]
                    if rungs is not None and epoch < rungs.ends[0]:
                        # Not even its cheapest rung: it showed nothing to compare.
                        raise optuna.TrialPruned(f"stopped at epoch {epoch}, before its first "
                                                 f"rung's end: {why}")
                    logger.info("trial %d ends at epoch %d with what it reached: %s",
                                progress.number, epoch, why)
                    break
                epoch += 1
                if _grows(rungs, epoch - 1, training):
                    # More data: the trial starts afresh on it, so that its model is what
                    # training on that data from the first epoch gives.
                    assert rungs is not None
                    training = self._fresh(progress, rungs.fraction(epoch))
                rows = training.epoch()
                row = averaged_row(rows, epoch, self.metric)
                progress.history.append(row)
                if self.fold_values:
                    values = [_finite_or_none(r.get(self.metric)) for r in rows]
                    progress.fold_curves.append(values)
                    trial.set_user_attr(FOLDS_NOW_ATTR, values)
                self._epoch_done(trial, progress, row)
            progress.value, progress.value_std = combine(
                float(best_row(t)[self.metric]) for t in progress.trainers
            )
        finally:
            progress.train_s = time.perf_counter() - t0
            if rungs is not None:
                progress.rung = rungs.reached(progress.epochs)

    def _fresh(self, progress: TrialProgress, fraction: float) -> FoldTraining:
        """The trial's fold models, built anew under their seeds, on ``fraction`` of the data
        (``progress.trainers`` now names them)."""
        assert progress.params is not None
        n = self.plan.folds
        seeds = [progress.seed if n == 1 else derive_seed(progress.seed, i) for i in range(n)]
        training = FoldTraining(cfg=progress.params, meta=self.meta, splits=self.splits,
                                device=self.device, seeds=seeds, fraction=fraction)
        progress.trainers[:] = training.trainers
        progress.fold_batching = training.batched
        return training

    def _epoch_done(self, trial: Any, progress: TrialProgress,
                    row: dict[str, float]) -> None:
        """An epoch's fold-mean row: shown, reported to the pruner, which may stop the trial."""
        metric, epoch = self.metric, int(row["epoch"])
        if not self._cost_said:
            self._cost_said = True
            assert progress.params is not None
            logger.info(cost_line(self.plan, self.splits, float(row["time_s"]),
                                  progress.params.train.max_epochs, self.budget))
        value = float(row[metric])
        if self.on_epoch is not None:
            self.on_epoch(progress.number, epoch, value)
        trial.report(value, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric} {value:.4g}")


def _grows(rungs: RungPlan | None, epoch: int, training: FoldTraining) -> bool:
    """Whether the epoch after ``epoch`` trains on more data than ``training`` holds."""
    return rungs is not None and rungs.fraction(epoch + 1) > training.fraction


def _cut_short(budget: RunBudget, progress: TrialProgress, training: FoldTraining,
               rungs: RungPlan | None, started: float, epoch: int) -> str | None:
    """Why a trial that is not done stops before epoch ``epoch + 1``, or None to go on."""
    now = time.monotonic()
    reason = budget.trial_cut(now=now, trial_started=started, epochs=epoch)
    if reason is None and epoch and rungs is not None and not rungs.fits(
            epoch=epoch, train_s=progress.history[-1]["time_s"] - training.val_s,
            val_s=training.val_s, now=now, deadline=budget.deadline):
        reason = "budget"
    return reason


def cost_line(plan: FoldPlan, splits: Sequence[Split], epoch_s: float, max_epochs: int,
              budget: RunBudget) -> str:
    """What one epoch cost and what that means for the time budget (said once per search)."""
    trial_s = epoch_s * max_epochs
    line = (f"first epoch: {epoch_s:.1f} s over {plan.folds} model(s) "
            f"({plan.describe()}, {len(plan.splits[0][1])} validation "
            f"and {len(splits[0].y_train)} training samples per model); a trial of "
            f"{max_epochs} epochs would take about {trial_s:.0f} s")
    left = budget.seconds_left()
    if left is not None:
        line += (f"; {left:.0f} s of the time budget are left: about "
                 f"{left / max(trial_s, 1e-9):.1f} such trial(s), fewer epochs when pruned "
                 "or stopped early")
    return line
