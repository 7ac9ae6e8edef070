"""Batched folds: the K folds of one MLP trial trained as one stacked model.

A k-fold trial trains one configuration K times, on K splits. When the network is small for the
device, K separate :class:`~pipeline.training.Trainer` objects mostly pay per-operation overhead
(Python, dispatch, kernel launches, small matrix products). :class:`BatchedFolds` stacks the
folds' weights into ``[K, out, in]`` tensors and runs each layer for all folds in one batched
product. Every fold still trains exactly as its own Trainer would:

- its weights start as the module ``build_model`` made for it (under the fold's seed);
- its parameters stay the module's own ``nn.Parameter`` objects, now views into the stacks, and
  its own torch optimizer and ReduceLROnPlateau step them: per-fold optimizer state and lr;
- early stopping, kept weights and history are the Trainer's own (:class:`ModelRun`);
- it shuffles with its own generator (``derive_seed(seed, 1)``, flips after the permutation)
  and draws its dropout masks from its own stream (seeded with the fold's seed, drawn in the
  same order and shapes as its Trainer's ``nn.Dropout``), so a fold's numbers do not depend on
  which folds share the stack;
- batches are never padded: where the folds' batch sizes differ (training parts that differ by
  a few samples, so the last batches differ), folds run in groups of equal batch size, so batch
  norm statistics and the loss see exactly the fold's samples;
- a fold that is done leaves the stacks (its weights get their own storage) and costs nothing.

Activations are feature-major, ``[K, features, batch]``: a linear layer is ``W @ h`` batched
over the folds, and batch norm is one ``F.batch_norm`` over ``K * features`` channels without a
transpose. Per-batch losses stay on the device: one host sync per epoch for training, one for
validation, as in the Trainer.

:func:`fold_batching_wins` is the rule ``search.fold_batching: auto`` applies
(``benchmarks/bench_folds.py`` measures where batching wins).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.data.cache import CacheMeta
from pipeline.training.engine import (
    ModelRun,
    Split,
    _batch_bounds,
    _row_gatherer,
    check_split,
    make_optimizer,
    normalised,
    training_targets,
)
from pipeline.training.models import ACTIVATIONS, hidden_widths, input_affine
from pipeline.training.runtime import derive_seed

__all__ = ["BatchedFold", "BatchedFolds", "can_batch_folds", "fold_batching_wins"]

logger = logging.getLogger(__name__)

_DEVICE_TYPES = ("cpu", "cuda")


# --------------------------------------------------------------------------------------------
# When to batch
# --------------------------------------------------------------------------------------------
def can_batch_folds(model_cfg: ModelConfig, folds: int, device: torch.device) -> bool:
    """Whether :class:`BatchedFolds` can train these folds: an MLP, two folds or more, on the
    CPU or a CUDA device."""
    return model_cfg.arch == "mlp" and folds >= 2 and device.type in _DEVICE_TYPES


def fold_batching_wins(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    meta: CacheMeta,
    folds: int,
    device: torch.device,
) -> bool:
    """Whether batching the folds is expected to be faster than one Trainer per fold.

    Decided by the work of the network's largest layer in one fold's batch (its weights times
    the batch size, in multiply-adds). On the CPU the bound is where
    ``benchmarks/bench_folds.py`` (28x28 inputs, K=5, depth 2) stopped showing a gain: below
    it the per-operation overhead batching saves is a real part of each step; above it (wide
    layers at batches of 1024) the K products are large enough that stacking them gains
    nothing and ``torch.bmm`` can lose to the sequential path's oneDNN GEMMs (``_onednn.py``).
    On CUDA the sequential path's K sets of small kernels are launch-bound, so batching is on
    for every MLP up to layers a single fold's products would already fill the device with;
    that bound is set by reasoning, not measured on a GPU.
    """
    if not can_batch_folds(model_cfg, folds, device):
        return False
    n_in = math.prod(int(d) for d in meta.input_shape)
    largest = 0
    for width in hidden_widths(model_cfg):
        largest = max(largest, n_in * width)
        n_in = width
    largest = max(largest, n_in * (meta.num_classes if meta.task == "classification" else 1))
    if device.type == "cuda":
        return largest <= _CUDA_LARGEST_LAYER
    return largest * train_cfg.batch_size <= _CPU_LARGEST_LAYER_WORK


# The CPU bound lies between 1024x1024 weights at batch 256 (batching still won) and 784x512 at
# batch 1024 (it lost); the CUDA bound (a layer of 4096x4096) is not measured.
_CPU_LARGEST_LAYER_WORK = 3e8
_CUDA_LARGEST_LAYER = 4096 * 4096


# --------------------------------------------------------------------------------------------
# The MLP as a list of layers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    kind: str  # linear | batch_norm | activation | dropout
    name: str  # the module's name in the Sequential: its parameters are "<name>.weight", ...
    module: nn.Module


def _mlp_layers(model: nn.Module) -> list[_Layer]:
    """``build_mlp``'s Sequential as layers; anything else is refused (ValueError)."""
    children = list(model.named_children()) if isinstance(model, nn.Sequential) else []
    if not children or not isinstance(children[0][1], nn.Flatten):
        raise ValueError("BatchedFolds trains build_mlp's networks only (Flatten first)")
    layers = []
    for name, module in children[1:]:
        if isinstance(module, nn.Linear):
            kind = "linear"
        elif isinstance(module, nn.BatchNorm1d) and module.momentum is not None:
            kind = "batch_norm"
        elif isinstance(module, nn.Dropout):
            kind = "dropout"
        elif isinstance(module, tuple(ACTIVATIONS.values())):
            kind = "activation"
        else:
            raise ValueError(f"BatchedFolds: layer {name} ({module}) is not batched")
        layers.append(_Layer(kind=kind, name=name, module=module))
    return layers


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items()]


# --------------------------------------------------------------------------------------------
# Random streams: a fold's dropout draws come from its own state, swapped into the device's
# default generator around each draw (nn.Dropout cannot take a generator), so they are the
# draws its Trainer makes: the Trainer swaps the same seeded state in for its epoch.
# --------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _forked_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The global random state as it was, once the block ends."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.random.fork_rng(devices=[index], device_type="cuda")


def _seeded_state(seed: int, device: torch.device) -> torch.Tensor:
    return torch.Generator(device=device).manual_seed(seed).get_state()


# --------------------------------------------------------------------------------------------
# One fold
# --------------------------------------------------------------------------------------------
class BatchedFold(ModelRun):
    """One fold of a :class:`BatchedFolds`: what a Trainer keeps (``history``, ``epoch``,
    ``done``, ``stop_reason``, ``best_epoch``, ``best_val_loss``, ``model``, ``final_model()``),
    trained by the group. ``model`` is the fold's own module; while the fold trains, its
    parameters are views into the group's stacked tensors."""

    def __init__(
        self, *, index: int, model: nn.Module, cfg: TrainConfig, split: Split,
        device: torch.device, seed: int,
    ) -> None:
        super().__init__(model=model, cfg=cfg, device=device)
        self.index = index
        self.seed = int(seed)
        self.n_train = len(split.x_train)
        self.n_val = len(split.x_val)
        self.params = dict(self.model.named_parameters())
        self.buffers = dict(self.model.named_buffers())
        # The fold's streams, seeded as its Trainer seeds them.
        self.shuffle = torch.Generator().manual_seed(derive_seed(self.seed, 1))
        self.dropout_state = _seeded_state(self.seed, self.device)

    def dropout_noise(self, rows: int, width: int, p: float) -> torch.Tensor:
        """The ``[rows, width]`` factors ``nn.Dropout(p)`` multiplies this fold's activations by
        (0 or ``1/(1-p)``), drawn from the fold's own stream."""
        _set_rng_state(self.device, self.dropout_state)
        noise = F.dropout(torch.ones(rows, width, device=self.device), p, training=True)
        self.dropout_state = _rng_state(self.device)
        return noise


# --------------------------------------------------------------------------------------------
# The group
# --------------------------------------------------------------------------------------------
class BatchedFolds:
    """Trains the K folds of one MLP configuration as one stacked model; call
    :meth:`run_epoch` until :attr:`done`.

    Args:
        models: one module per fold, as ``build_model`` made them (same configuration).
        cfg: the ``train`` section (shared by the folds).
        meta: the cache metadata.
        splits: one split per fold.
        device: a CPU or CUDA device.
        seeds: one seed per fold: the seed its Trainer would get.

    Attributes:
        folds: one :class:`BatchedFold` per fold, in order.
    """

    def __init__(
        self,
        *,
        models: Sequence[nn.Module],
        cfg: TrainConfig,
        meta: CacheMeta,
        splits: Sequence[Split],
        device: torch.device | str,
        seeds: Sequence[int],
    ) -> None:
        self.device = torch.device(device)
        if self.device.type not in _DEVICE_TYPES:
            raise ValueError(f"BatchedFolds: device {self.device} is not a CPU or CUDA device")
        if not models or not len(models) == len(splits) == len(seeds):
            raise ValueError(
                f"BatchedFolds: {len(models)} models, {len(splits)} splits, {len(seeds)} seeds"
            )
        for split in splits:
            check_split(split, meta)
        self.cfg, self.meta = cfg, meta
        self.classification = meta.task == "classification"
        self._layers = _mlp_layers(models[0])
        if any(_shapes(m) != _shapes(models[0]) for m in models):
            raise ValueError("BatchedFolds: the folds' models differ in shape")
        self.folds = [
            BatchedFold(index=i, model=m, cfg=cfg, split=sp, device=self.device, seed=s)
            for i, (m, sp, s) in enumerate(zip(models, splits, seeds, strict=True))
        ]
        scale, shift = input_affine(meta)
        self._scale, self._shift = scale.to(self.device), shift.to(self.device)
        self._flip = bool(cfg.hflip) and meta.kind == "image" and int(meta.input_shape[0]) == 3
        if cfg.hflip and not self._flip:
            logger.warning("train.hflip is for colour images only; ignored for %s", meta.name)
        self._init_data(splits)
        self._active: list[int] = []
        self._joint: dict[tuple[int, ...], torch.optim.Optimizer] = {}
        self._params: dict[str, torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._restack()

    def _init_data(self, splits: Sequence[Split]) -> None:
        dev, meta = self.device, self.meta
        # Every fold's training rows in one tensor: one gather serves a batch of all folds.
        self._x = torch.cat([s.x_train for s in splits]).to(dev)
        self._y = torch.cat([training_targets(s.y_train, meta, dev) for s in splits])
        sizes = [len(s.x_train) for s in splits]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self._gather = _row_gatherer(self._x)
        # Validation rows padded to the longest fold's: evaluation has no batch statistics and
        # the padded rows are left out of every sum, so padding changes nothing there.
        longest = max(len(s.x_val) for s in splits)
        k = len(splits)
        x0, y0 = splits[0].x_val, training_targets(splits[0].y_val, meta, dev)
        self._val_x_all = torch.zeros((k, longest, *x0.shape[1:]), dtype=x0.dtype, device=dev)
        self._val_y_all = torch.zeros((k, longest), dtype=y0.dtype, device=dev)
        self._val_ok_all = torch.zeros((k, longest), dtype=torch.bool, device=dev)
        for i, s in enumerate(splits):
            n = len(s.x_val)
            self._val_x_all[i, :n] = s.x_val.to(dev)
            self._val_y_all[i, :n] = training_targets(s.y_val, meta, dev)
            self._val_ok_all[i, :n] = True

    @property
    def done(self) -> bool:
        """Every fold is done."""
        return all(f.done for f in self.folds)

    # ----------------------------------------------------------------------------------------
    def _restack(self) -> None:
        """Stack the running folds' weights and batch-norm buffers; a fold that is done gets
        its own copy of its tensors and leaves the stacks."""
        running = [f.index for f in self.folds if not f.done]
        with torch.no_grad():
            for i in set(self._active) - set(running):
                fold = self.folds[i]
                for t in (*fold.params.values(), *fold.buffers.values()):
                    t.data = t.data.clone()
                    t.grad = None  # a view into the last step's stacked gradients
            self._active = running
            self._params = self._stack("params")
            self._buffers = self._stack("buffers")
        idx = torch.tensor(running, dtype=torch.int64, device=self.device)
        self._val_x = self._val_x_all.index_select(0, idx)
        self._val_y = self._val_y_all.index_select(0, idx)
        self._val_ok = self._val_ok_all.index_select(0, idx)

    def _stack(self, what: str) -> dict[str, torch.Tensor]:
        folds = [self.folds[i] for i in self._active]
        if not folds:
            return {}
        out = {}
        for name in getattr(folds[0], what):
            tensors = [getattr(f, what)[name] for f in folds]
            stack = torch.stack([t.detach() for t in tensors])
            for j, t in enumerate(tensors):
                t.data = stack[j]
            out[name] = stack
        return out

    # ----------------------------------------------------------------------------------------
    def run_epoch(self) -> list[dict[str, float] | None]:
        """One epoch of every fold not yet done, with validation, early stopping and the LR
        schedule per fold.

        Returns one entry per fold: the row appended to its history (as
        :meth:`Trainer.run_epoch` returns it), or None for a fold that was already done.
        ``time_s``: the epoch's wall time split evenly over the folds that ran it (they share
        every kernel, so no fold's own part can be timed; their sum stays the wall time).

        Raises:
            TrainingDiverged: a fold's training loss is NaN or infinite: the first such fold,
                in order; the folds before it have counted the epoch, as in sequential lockstep.
        """
        if self.done:
            raise RuntimeError("BatchedFolds.run_epoch: every fold is done")
        t0 = time.perf_counter()
        folds = [self.folds[i] for i in self._active]
        lrs = [f.lr for f in folds]
        with _forked_rng(self.device):
            train = self._train_epoch(folds)
        val = self._evaluate(folds)
        share = (time.perf_counter() - t0) / len(folds)
        rows: list[dict[str, float] | None] = [None] * len(self.folds)
        for fold, tr, va, lr in zip(folds, train, val, lrs, strict=True):
            fold.check_finite(tr["train/loss"])
            row = fold.end_epoch(tr, va, lr)
            row["time_s"] = share
            fold.history.append(row)
            rows[fold.index] = row
        if any(f.done for f in folds):
            self._restack()
        return rows

    def _epoch_order(self, folds: list[BatchedFold]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row ids (into the joint training tensor) in each fold's shuffled order, ``[K, n]``
        (shorter folds padded), and each fold's flips; drawn as its Trainer draws them."""
        longest = max(f.n_train for f in folds)
        order = torch.zeros((len(folds), longest), dtype=torch.int64)
        flips = torch.zeros((len(folds), longest), dtype=torch.bool) if self._flip else None
        for j, f in enumerate(folds):
            order[j, : f.n_train] = torch.randperm(f.n_train, generator=f.shuffle)
            order[j] += self._offsets[f.index]
            if flips is not None:
                flips[j, : f.n_train] = torch.rand(f.n_train, generator=f.shuffle) < 0.5
        return order.to(self.device), None if flips is None else flips.to(self.device)

    def _train_epoch(self, folds: list[BatchedFold]) -> list[dict[str, float]]:
        """One pass over each fold's training part: its ``train/loss`` (and accuracy)."""
        k, dev, size = len(folds), self.device, self.cfg.batch_size
        order, flips = self._epoch_order(folds)
        bounds = [_batch_bounds(f.n_train, size) for f in folds]
        loss_sum = torch.zeros(k, device=dev)
        correct = torch.zeros(k, dtype=torch.int64, device=dev)
        for step in range(max(len(b) for b in bounds)):
            start = step * size
            sizes = [b[step][1] - b[step][0] if step < len(b) else 0 for b in bounds]
            for a, z, n in _equal_runs(sizes):
                idx = order[a:z, start : start + n].reshape(-1)
                flip = None if flips is None else flips[a:z, start : start + n].reshape(-1)
                loss, hits = self._train_step(folds[a:z], a, z, idx, flip)
                loss_sum[a:z] += loss * n
                if hits is not None:
                    correct[a:z] += hits
        seen = torch.tensor([sum(b - a for a, b in bd) for bd in bounds], device=dev)
        values = torch.cat([loss_sum / seen, correct / seen]).tolist()  # the one host sync
        rows = []
        for j in range(k):
            row = {"train/loss": values[j]}
            if self.classification:
                row["train/accuracy"] = values[k + j]
            rows.append(row)
        return rows

    def _train_step(
        self, folds: list[BatchedFold], a: int, z: int, idx: torch.Tensor,
        flip: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch of the stack's folds ``a:z`` (equal batch sizes): forward, backward and
        each fold's optimizer step. Returns the folds' mean losses and correct counts."""
        k = z - a
        # Fresh leaves over this run of the stacks: their gradients are the folds' gradients.
        leaves = {n: s[a:z].detach().requires_grad_() for n, s in self._params.items()}
        buffers = {n: s[a:z] for n, s in self._buffers.items()}
        xb = normalised(self._gather(idx), self._scale, self._shift)
        if flip is not None:
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
        yb = self._y.index_select(0, idx).view(k, -1)
        out = self._forward(leaves, buffers, xb.view(k, yb.shape[1], -1), folds)
        losses = self._losses(out, yb).mean(dim=1)
        losses.sum().backward()  # the folds share no weights: each gets its own gradient
        for j, fold in enumerate(folds):
            for name, p in fold.params.items():
                grad = leaves[name].grad
                assert grad is not None
                p.grad = grad[j]
        self._step(folds)
        hits = (out.detach().argmax(dim=1) == yb).sum(dim=1) if self.classification else None
        return losses.detach(), hits

    def _step(self, folds: list[BatchedFold]) -> None:
        """Each fold's optimizer step; folds at the same lr step in one call."""
        same_lr: dict[float, list[BatchedFold]] = {}
        for fold in folds:
            same_lr.setdefault(fold.lr, []).append(fold)
        for lr, group in same_lr.items():
            optimizer = self._joint_optimizer(tuple(f.index for f in group))
            optimizer.param_groups[0]["lr"] = lr
            optimizer.step()

    def _joint_optimizer(self, key: tuple[int, ...]) -> torch.optim.Optimizer:
        """One optimizer over the parameters of the folds ``key``, holding each fold
        optimizer's own state (the same dict objects): its step does, tensor by tensor, what
        the folds' steps do, in one fused call instead of one per fold (each torch optimizer
        step has a fixed cost that dominated small batches: benchmarks/bench_folds.py)."""
        if len(key) == 1:
            return self.folds[key[0]].optimizer
        if key not in self._joint:
            owners = {p: self.folds[i].optimizer for i in key
                      for p in self.folds[i].optimizer.param_groups[0]["params"]}
            joint = make_optimizer(list(owners), self.cfg,
                                   fused=self.device.type in _DEVICE_TYPES)
            for p, owner in owners.items():
                joint.state[p] = owner.state[p]
            self._joint[key] = joint
        return self._joint[key]

    def _forward(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
        x: torch.Tensor, folds: list[BatchedFold] | None,
    ) -> torch.Tensor:
        """``x [K, batch, in]`` → outputs ``[K, out, batch]``; training when ``folds`` (whose
        streams draw the dropout masks) are given, else evaluation."""
        h = x.transpose(1, 2)
        for layer in self._layers:
            if layer.kind == "linear":
                w, b = params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias")
                h = torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)
            elif layer.kind == "batch_norm":
                h = self._batch_norm(layer, params, buffers, h, training=folds is not None)
            elif layer.kind == "activation":
                h = layer.module(h)
            elif folds is not None:  # dropout, in training only
                p = float(layer.module.p)  # type: ignore[arg-type]
                noise = [f.dropout_noise(h.shape[2], h.shape[1], p) for f in folds]
                h = h * torch.stack(noise).transpose(1, 2)
        return h

    @staticmethod
    def _batch_norm(
        layer: _Layer, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
        h: torch.Tensor, *, training: bool,
    ) -> torch.Tensor:
        k, width, n = h.shape
        bn = layer.module
        assert isinstance(bn, nn.BatchNorm1d)
        w, b = params.get(f"{layer.name}.weight"), params.get(f"{layer.name}.bias")
        mean, var = buffers.get(f"{layer.name}.running_mean"), buffers.get(
            f"{layer.name}.running_var")
        out = F.batch_norm(
            h.reshape(1, k * width, n),
            None if mean is None else mean.view(-1),
            None if var is None else var.view(-1),
            None if w is None else w.reshape(-1),
            None if b is None else b.reshape(-1),
            training=training or mean is None,
            momentum=float(bn.momentum or 0.0),
            eps=bn.eps,
        )
        tracked = buffers.get(f"{layer.name}.num_batches_tracked")
        if training and tracked is not None:
            tracked.add_(1)
        return out.view(k, width, n)

    def _losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses ``[K, batch]`` of outputs ``[K, out, batch]``."""
        if self.classification:
            return F.cross_entropy(out, y, reduction="none")
        return F.mse_loss(out[:, 0], y, reduction="none")

    @torch.no_grad()
    def _evaluate(self, folds: list[BatchedFold]) -> list[dict[str, float]]:
        """Each fold's validation metrics, as :meth:`Trainer.evaluate` computes them."""
        k, dev = len(folds), self.device
        sums = torch.zeros((3, k), device=dev)  # loss | correct or |error| | squared error
        std = float(self.meta.target_std) or 1.0
        chunk = max(2 * self.cfg.batch_size, 256)
        for start in range(0, self._val_x.shape[1], chunk):
            xv = self._val_x[:, start : start + chunk]
            yv, ok = self._val_y[:, start : start + chunk], self._val_ok[:, start : start + chunk]
            xb = normalised(xv.reshape(-1, *xv.shape[2:]), self._scale, self._shift)
            out = self._forward(self._params, self._buffers, xb.view(k, yv.shape[1], -1), None)
            zero = out.new_zeros(())
            sums[0] += torch.where(ok, self._losses(out, yv), zero).sum(dim=1)
            if self.classification:
                sums[1] += ((out.argmax(dim=1) == yv) & ok).sum(dim=1)
            else:
                err = torch.where(ok, (out[:, 0] - yv) * std, zero)  # target units
                sums[1] += err.abs().sum(dim=1)
                sums[2] += err.square().sum(dim=1)
        loss, a, b = sums.tolist()  # the one host sync
        rows = []
        for j, fold in enumerate(folds):
            n = fold.n_val
            if self.classification:
                rows.append({"val/loss": loss[j] / n, "val/accuracy": a[j] / n})
            else:
                rows.append(
                    {"val/loss": loss[j] / n, "val/mae": a[j] / n, "val/rmse": math.sqrt(b[j] / n)}
                )
        return rows


def _equal_runs(sizes: list[int]) -> list[tuple[int, int, int]]:
    """``(a, z, n)``: runs ``a:z`` of neighbouring folds with the same batch size ``n > 0``."""
    runs = []
    a = 0
    while a < len(sizes):
        z = a + 1
        while z < len(sizes) and sizes[z] == sizes[a]:
            z += 1
        if sizes[a]:
            runs.append((a, z, sizes[a]))
        a = z
    return runs
