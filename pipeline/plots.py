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
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    try:
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
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    logger.debug("wrote %s", path)
    return path
