"""Training curves as PNG (like Keras' History plots): loss, and accuracy or error, per epoch."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def plot_history(history: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Draw ``train/loss`` vs ``val/loss`` and ``val/accuracy`` (or ``val/mae``/``val/rmse``).

    Args:
        history: the rows :func:`pipeline.engine.fit` returned.
        path: the PNG to write (folders are created).
        title: an optional figure title (e.g. the run name).
    """
    # A bare Figure, not pyplot: searches draw on a logging thread, and pyplot's global figure
    # registry is not thread-safe. Fixed margins instead of tight_layout, which costs a third
    # of the drawing time (every trial of a search draws one).
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [int(r["epoch"]) for r in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_metric = fig.subplots(1, 2)
    for key, style in (("train/loss", "-o"), ("val/loss", "-s")):
        ax_loss.plot(epochs, [r.get(key, float("nan")) for r in history], style, label=key,
                     markersize=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    classification = any("val/accuracy" in r for r in history)
    keys = ["val/accuracy"] if classification else ["val/mae", "val/rmse"]
    for key in keys:
        ax_metric.plot(epochs, [r.get(key, float("nan")) for r in history], "-o",
                       label=key, markersize=3)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_title("accuracy" if classification else "error (target units)")
    ax_metric.legend()
    best = min(history, key=lambda r: r.get("val/loss", float("inf")), default=None)
    if best is not None:
        for ax in (ax_loss, ax_metric):
            ax.axvline(int(best["epoch"]), color="grey", linestyle=":", linewidth=1)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86 if title else 0.92,
                        wspace=0.22)
    fig.savefig(path, dpi=100)
    logger.debug("wrote %s", path)
    return path
