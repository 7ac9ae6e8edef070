"""A finished trial as the MLflow record its run ends with (plain data plus the weights).

:func:`trial_record` is built in the trial's thread, however the trial ended, and handed to
whoever writes it (:mod:`pipeline.study.record_writers`). Its end tags and status follow
:mod:`pipeline.tracking.endings`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params
from pipeline.study.folds import combine_rows
from pipeline.study.report import trial_model_name
from pipeline.study.trial_training import AVERAGED_SKIP, TrialProgress, best_row
from pipeline.tracking import ModelPart, RunRecord, fold_table
from pipeline.tracking.endings import RUN_STATUS, trial_end_tags

__all__ = ["FOLD_TABLE", "run_params", "trial_record"]

FOLD_TABLE = "folds.csv"  # per-fold, per-epoch detail of a k-fold trial, out of the charts


def trial_record(
    progress: TrialProgress, *, metric: str, direction: str, title: str, keep_net: bool
) -> RunRecord:
    """The trial's end-of-run record: curves, ``best_*`` summaries, end tags, per-fold detail,
    and the model of its best fold (complete, pruned and interrupted trials).

    ``keep_net``: the record carries the network itself (written in this process), not only
    its weights (written by the recorder process, which rebuilds it).
    """
    assert progress.run_id is not None
    best = progress.best_fold(direction, metric)
    model = None
    if best is not None and (progress.state in ("COMPLETE", "PRUNED") or progress.interrupted):
        net = progress.trainers[best].model
        model = ModelPart(
            weights={k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()},
            model=dataclasses.asdict(progress.params.model) if progress.params else {},
            root=str(progress.params.root) if progress.params else "",
            params=run_params(progress.params) if progress.params is not None else {},
            net=net if keep_net else None,
            name=trial_model_name(progress.number),
        )
    return RunRecord(
        run_id=progress.run_id, status=RUN_STATUS.get(progress.state, "FAILED"),
        history=list(progress.history), summary=_summary(progress, metric, direction),
        # The sampled values were rejected: record them (else they are in the params).
        params={} if progress.params is not None else {
            k: _param_str(v) for k, v in progress.values.items()},
        tags=_end_tags(progress, best),
        texts={FOLD_TABLE: fold_table([t.history for t in progress.trainers])}
        if len(progress.trainers) > 1 else {},
        title=title,
        model=model,
        failure_tags=trial_end_tags(progress.number, progress.state,
                                    interrupted=progress.interrupted),
        # A Ctrl-C inside the record fails the trial in Optuna too.
        interrupt_tags=trial_end_tags(progress.number, "FAIL", interrupted=True),
    )


def _summary(progress: TrialProgress, metric: str, direction: str) -> dict[str, float]:
    """``best_*``: each fold's best epoch, combined (the spread over folds beside it)."""
    rows = [best_row(t) for t in progress.trainers]
    out = {tracking.summary_name(k): v for k, v in combine_rows(
        rows, skip=(*AVERAGED_SKIP, "lr"), spread=metric).items()}
    # The epoch of the weights logged as the model (an integer, not a mean over folds).
    best = progress.best_fold(direction, metric)
    if best is not None and rows[best]:
        out["best_epoch"] = float(rows[best]["epoch"])
    out["epochs"] = float(progress.epochs)
    out["fold_epochs"] = float(progress.fold_epochs)
    out["train_s"] = float(progress.train_s)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _end_tags(progress: TrialProgress, best: int | None) -> dict[str, str]:
    """The tags a trial's run ends with: its state and name, how and why it stopped."""
    stops = sorted({t.stop_reason for t in progress.trainers if t.stop_reason})
    if progress.state == "PRUNED":
        stop: str | None = "pruned"
    elif progress.interrupted:
        stop = "interrupted"
    else:
        stop = progress.cut_short or (",".join(stops) if stops else None)
    tags = trial_end_tags(progress.number, progress.state, interrupted=progress.interrupted,
                          error=progress.error, stop_reason=stop)
    tags["pipeline.epochs"] = str(progress.epochs)
    tags["pipeline.folds"] = str(progress.folds)
    if best is not None and progress.folds > 1:
        tags["pipeline.model_fold"] = str(best)
    return tags


def run_params(params: Params) -> dict[str, str]:
    """Every resolved param as MLflow stores it (on the trial's run and on its model)."""
    return {k: _param_str(v) for k, v in params.flat().items()}


def _param_str(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)
