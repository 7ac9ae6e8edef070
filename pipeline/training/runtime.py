"""Seeds and devices: one ``set_seed``, one place that resolves ``device: auto``."""

from __future__ import annotations

import hashlib
import logging
import random

import numpy as np
import torch

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

_SEED_MODULUS = 2**31 - 1  # fits numpy's legacy seed range and every torch generator


def set_seed(seed: int) -> None:
    """Seed ``random``, numpy, torch and every CUDA device with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA (and MPS) generators


def derive_seed(base: int, *parts: int) -> int:
    """A seed for a sub-task (trial, fold, ...) that depends on ``base`` and every part.

    Stable across processes and machines (no ``hash()``), and different parts give unrelated
    seeds, so trial 3 / fold 1 never reuses the stream of trial 1 / fold 3.
    """
    text = ":".join(str(int(p)) for p in (base, *parts)).encode()
    digest = hashlib.sha256(text).digest()
    return int.from_bytes(digest[:8], "little") % _SEED_MODULUS


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"device: unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested but CUDA is not available; use auto or cpu")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise UserError(
                f"device: {name!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(
                f"device: {name!r} requested but MPS is not available; use auto or cpu"
            )
    return device
