"""A run's end-of-run record as plain data, and the one function that writes it to MLflow.

:class:`RunRecord` is everything a finished run still needs: its curves (per-epoch metrics and
the curves PNG), step-0 summaries, tags, text artifacts, the model's weights with the config
that rebuilds it, and the final status. It is built where the training ran and written by
:func:`write_record`, either right there or by the recorder process
(:mod:`pipeline.tracking.recorder`) while the next training goes on. :func:`to_wire` /
:func:`from_wire` carry it across: JSON, plus the weights in a file of tensors that loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.config import ModelConfig
from pipeline.data.cache import CacheMeta
from pipeline.tracking.endings import end_run, record_cut_short
from pipeline.tracking.models import log_model
from pipeline.tracking.runs import (
    BATCH_LIMIT,
    NOTE_TAG,
    curves_note,
    history_metrics,
    log_curves,
)
from pipeline.tracking.store import is_unreachable
from pipeline.training.models import build_model

__all__ = ["ModelPart", "RunRecord", "from_wire", "to_wire", "write_record"]


@dataclass
class ModelPart:
    """The model a run logs: its weights and what rebuilds the network around them."""

    weights: dict[str, torch.Tensor]  # the network's state_dict, on the CPU
    model: dict[str, Any]  # the ``model`` section of params (``ModelConfig`` fields)
    root: str  # the project root (a resnet's local weights file is relative to it)
    params: dict[str, str]  # the logged model's params in MLflow's model list
    net: nn.Module | None = None  # the network itself, in the process that trained it
    name: str = "model"  # the logged model's name (``runs:/<run>/<name>``)

    def network(self, meta: CacheMeta) -> nn.Module:
        if self.net is not None:
            return self.net
        net = build_model(ModelConfig(**self.model), meta, root=Path(self.root))
        net.load_state_dict(self.weights)
        return net.eval()


@dataclass
class RunRecord:
    """What one run records when it ends (see the module docstring)."""

    run_id: str
    status: str  # FINISHED | FAILED | KILLED
    history: list[dict[str, float]]  # per-epoch rows: metrics (step = epoch) and the PNG
    summary: dict[str, float] = field(default_factory=dict)  # step 0, linked to the model
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # artifact file name -> text
    title: str = ""  # the curves PNG's title
    model: ModelPart | None = None
    # Tags a record cut short by an error leaves, besides ``pipeline.error`` and FAILED; by a
    # Ctrl-C, which also fails what the run stands for (a trial), ``interrupt_tags``.
    failure_tags: dict[str, str] = field(default_factory=dict)
    interrupt_tags: dict[str, str] = field(default_factory=dict)


def write_record(
    record: RunRecord, *, meta: CacheMeta, example: np.ndarray | None, experiment_id: str,
    client: MlflowClient | None = None,
) -> str | None:
    """Write ``record`` to its run and end the run; returns the logged model's id (or None).

    The model goes first: logging it copies the run's step-0 metrics to the model by reading
    back the history of every metric already logged. Logged afterwards with the model's id,
    the summaries reach the model in the same request that writes them to the run. A model
    that cannot be logged does not stop the metrics; the error is raised after them. A record
    cut short by an error ends its run FAILED with ``pipeline.error`` (not when the server is
    unreachable: nothing more can be sent then).
    """
    client = client or MlflowClient()
    run_id = record.run_id
    try:
        model_id, model_error = None, None
        if record.model is not None:
            try:
                model_id = log_model(
                    record.model.network(meta), meta, name=record.model.name,
                    example=example, validate=False,
                    run_id=run_id, experiment_id=experiment_id, params=record.model.params,
                    config=ModelConfig(**record.model.model),
                ).model_id
            except Exception as exc:  # still write the metrics, then report it
                model_error = exc
        now = int(time.time() * 1000)
        metrics = history_metrics(record.history, timestamp_ms=now) + [
            Metric(k, v, now, 0, model_id=model_id) for k, v in record.summary.items()
        ]
        params = [Param(k, v) for k, v in record.params.items()]
        tags = [RunTag(k, v) for k, v in record.tags.items()]
        if record.history and NOTE_TAG not in record.tags:
            tags.append(RunTag(NOTE_TAG, curves_note(run_id, experiment_id)))
        for i in range(0, max(1, len(metrics)), BATCH_LIMIT):
            client.log_batch(run_id, metrics=metrics[i : i + BATCH_LIMIT],
                             params=params if i == 0 else [], tags=tags if i == 0 else [],
                             synchronous=True)
        for name, text in record.texts.items():
            client.log_text(run_id, text, name)
        if record.history:
            log_curves(record.history, run_id=run_id, title=record.title)
        if model_error is not None:
            raise model_error
    except BaseException as exc:
        if not is_unreachable(exc):
            interrupted = isinstance(exc, KeyboardInterrupt)
            why = "interrupted (Ctrl-C)" if interrupted else (
                " ".join(str(exc).split()) or type(exc).__name__)
            with contextlib.suppress(Exception):
                record_cut_short(client, run_id, why=why, tags=record.interrupt_tags
                                 if interrupted else record.failure_tags)
        raise
    end_run(client, run_id, status=record.status)
    return model_id


# --------------------------------------------------------------------------------------------
# Across a process boundary: JSON plus a file of tensors
# --------------------------------------------------------------------------------------------
def to_wire(record: RunRecord, folder: Path) -> str:
    """``record`` as one JSON line; its weights go to a file in ``folder``."""
    data = dataclasses.asdict(dataclasses.replace(record, model=None))
    # JSON has no NaN; a non-finite value is left out of the metrics anyway.
    data["history"] = [{k: v for k, v in row.items() if math.isfinite(v)}
                       for row in record.history]
    if record.model is not None:
        path = Path(folder) / f"{record.run_id}.pt"
        torch.save({k: v.detach().cpu() for k, v in record.model.weights.items()}, path)
        data["model"] = {"weights": str(path), "model": record.model.model,
                         "root": record.model.root, "params": record.model.params,
                         "name": record.model.name}
    return json.dumps(data, allow_nan=False)


def from_wire(line: str) -> RunRecord:
    """The record :func:`to_wire` wrote (its weights file is read, then removed)."""
    data = json.loads(line)
    part = data.pop("model")
    model = None
    if part is not None:
        path = Path(part.pop("weights"))
        weights = torch.load(path, map_location="cpu", weights_only=True)
        path.unlink(missing_ok=True)
        model = ModelPart(weights=weights, **part)
    return RunRecord(**data, model=model)
