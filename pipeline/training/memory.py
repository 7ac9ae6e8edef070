"""Will a model train in the memory at hand? Estimated before anything is allocated.

Bytes to train = parameters × 4 bytes × (weights + gradients + the optimizer's states per
weight) + activations at the batch size (kept for the backward pass, and their gradients), for
every model trained at once (the folds of a trial). On an accelerator the training data is
moved there too. Parameters and activations are counted on PyTorch's ``meta`` device: the
network is built and run on shapes alone, so every architecture is counted the same way and a
17 GB layer costs nothing to count.

The estimate is compared with the memory available now (the CPU: what the system and a cgroup
limit leave; CUDA: the device's free memory). It is meant to catch the configuration that
cannot fit at all (``--set model.width=65536``), not to budget the last megabyte.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.data.cache import CacheMeta
from pipeline.errors import UserError
from pipeline.training.models import build_model

logger = logging.getLogger(__name__)

_FLOAT_BYTES = 4  # float32 weights, gradients, optimizer states and activations
# Optimizer state tensors per weight, as PyTorch keeps them.
_ADAM_STATES = 2  # exp_avg, exp_avg_sq
_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryEstimate:
    """What training one configuration needs, in bytes, and the counts behind it."""

    parameters: int  # per model
    optimizer_states: int  # tensors of the parameters' size the optimizer keeps
    activations: int  # bytes per model at the batch size, forward and backward
    data: int  # bytes of training data moved to the device (0 on the CPU)
    models: int  # trained at once (folds)

    @property
    def total(self) -> int:
        weights = self.parameters * _FLOAT_BYTES * (2 + self.optimizer_states)
        return self.models * (weights + self.activations + self.data)


def optimizer_states(cfg: TrainConfig) -> int:
    """Per-weight state tensors of ``train.optimizer``: Adam's two moments, RMSprop's square
    average (and momentum buffer), SGD's momentum buffer."""
    if cfg.optimizer in ("adam", "adamw"):
        return _ADAM_STATES
    if cfg.optimizer == "rmsprop":
        return 1 + (cfg.momentum > 0)
    return int(cfg.momentum > 0)


def estimate(
    model: ModelConfig, train: TrainConfig, meta: CacheMeta, *, device: torch.device,
    models: int = 1,
) -> MemoryEstimate:
    """Count what training ``model`` with ``train`` on ``meta``'s data needs (nothing is
    allocated: the network is built and run on the meta device)."""
    # Weights files are read only for their values; shapes are the architecture's.
    shape_only = dataclasses.replace(model, weights=None)
    with torch.device("meta"):
        net = build_model(shape_only, meta)
        outputs = _activation_elements(net, [min(train.batch_size, max(1, meta.n_train)),
                                             *meta.input_shape])
    parameters = sum(p.numel() for p in net.parameters())
    data = 0
    if torch.device(device).type != "cpu":
        item = int(np.prod(meta.input_shape)) * (1 if meta.kind == "image" else _FLOAT_BYTES)
        data = meta.n_train * item
    return MemoryEstimate(
        parameters=parameters, optimizer_states=optimizer_states(train),
        activations=2 * outputs * _FLOAT_BYTES, data=data, models=models,
    )


def _activation_elements(net: nn.Module, input_shape: list[int]) -> int:
    """Elements of every leaf module's output for one batch (what autograd keeps)."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in net.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        net.train()
        net(torch.empty(input_shape, dtype=torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    return total + int(np.prod(input_shape))


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still use on ``device``; None where it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    free = int(psutil.virtual_memory().available)
    limit = _cgroup_room()
    return free if limit is None else min(free, limit)


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit (a container's) leaves, or None without one."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        used = int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_fits(
    model: ModelConfig, train: TrainConfig, meta: CacheMeta, *, device: torch.device,
    models: int = 1,
) -> MemoryEstimate:
    """Refuse a configuration whose training cannot fit in the memory available now.

    Raises:
        UserError: one line with the estimate, what it is made of and the settings to lower.
    """
    found = estimate(model, train, meta, device=device, models=models)
    room = available_bytes(device)
    logger.debug("memory: %s needed, %s available on %s", _gb(found.total),
                 "?" if room is None else _gb(room), device)
    if room is None or found.total <= room:
        return found
    folds = f" for each of {models} folds trained at once," if models > 1 else ""
    raise UserError(
        f"model: training needs about {_gb(found.total)} but {device} has {_gb(room)} "
        f"available ({found.parameters:,} parameters × {_FLOAT_BYTES} bytes × "
        f"{2 + found.optimizer_states} for weights, gradients and {train.optimizer}'s "
        f"{found.optimizer_states} state(s),{folds} plus {_gb(found.activations)} of "
        f"activations at train.batch_size {train.batch_size}); expected a smaller model "
        "(model.width, model.hidden_layers, model.conv_channels) or batch"
        + (f" (model.width is {model.width})" if model.arch == "mlp" else "")
    )

