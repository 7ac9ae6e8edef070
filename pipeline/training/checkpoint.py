"""Atomic training checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds a trainer's plain state dict (``Trainer.state_dict()``: model, optimizer,
scheduler, early-stopping state, epoch, RNG states, history) plus optional plain ``meta``
values (the resolved params and the data fingerprint) that a resume must match. It is written
to a temporary file in the same folder and renamed over the old one, so an interrupted write
leaves the previous checkpoint.
Only tensors and plain containers are stored: loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_open
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

FORMAT = "pipeline-checkpoint-1"


def save_checkpoint(
    state: dict[str, Any], path: Path, *, meta: dict[str, Any] | None = None
) -> Path:
    """Write a trainer's ``state`` (``Trainer.state_dict()``) and ``meta`` atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: expected a state dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "meta": meta or {}, "trainer": state}
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    logger.debug("checkpoint written: %s", path)
    return path


def load_checkpoint(path: Path, *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer state saved in ``path`` (tensors on the CPU).

    Args:
        path: a file written by :func:`save_checkpoint`.
        meta: when given, must equal the meta saved with the checkpoint; a mismatch (another
            configuration or other data) raises :class:`UserError` naming the differing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint here; start without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is the user's to fix
        # One line of our own: torch's message advises weights_only=False, i.e. letting the
        # file run code, which a checkpoint of ours never needs.
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            raise UserError(
                f"{path}: refused: the file holds Python objects, not only tensors and plain "
                "containers, so this pipeline did not write it; delete it to start over"
            ) from None
        raise UserError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint written by this pipeline ({FORMAT})")
    if meta is not None:
        saved = payload.get("meta") or {}
        differ = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
        if differ:
            shown = ", ".join(
                f"{k}: checkpoint {saved.get(k)!r} vs now {meta.get(k)!r}" for k in differ[:5]
            )
            raise UserError(
                f"{path}: the checkpoint was written for another configuration ({shown}); "
                "run without --resume to start over, or restore the old settings"
            )
    state = payload.get("trainer")
    if not isinstance(state, dict):
        raise UserError(f"{path}: the checkpoint holds no trainer state; delete it to start over")
    return state
