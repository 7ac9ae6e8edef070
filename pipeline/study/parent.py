"""The search's parent MLflow run: one per invocation, holding what the invocation did.

Its params say what was searched and how (the study, dataset, storage, validation, budget);
at the end it gets the study's counts, the best trial (params unrounded, run and model URI as
tags), Optuna's plots under ``optuna/`` and the study report, and ends FINISHED (KILLED when
interrupted).
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from pipeline.atomic import write_json_atomic
from pipeline.study import importance  # before Optuna's plots: no scikit-learn
from pipeline.study.report import StudyReport
from pipeline.tracking.endings import end_parent_run

logger = logging.getLogger(__name__)


def create_parent(
    client: Any, experiment_id: str, *, tags: dict[str, str], dry_run: bool
) -> str:
    """Start the parent run, named for when it started; returns its id."""
    started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        experiment_id, run_name=f"search-{started}" + ("-dry-run" if dry_run else ""), tags=tags
    )
    return str(run.info.run_id)


def log_parent_params(client: Any, run_id: str, values: dict[str, Any]) -> None:
    """What this invocation searches and how, as the parent run's params."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items()],
                     synchronous=True)


# The parent run's summary tags: counts and one-off figures are tags, not metrics, because as
# metrics MLflow's chart view drew each as a one-bar chart in a section of its own beside the
# trials' curves. Tags are replaced at every run's end, so a resumed search updates them.
TRIALS_TAG = "trials/"  # + a trial state in lower case (the study's counts), or "this_run"
WALL_TAG = "search/wall_s"  # this invocation's wall time
PRUNING_TAG = "pruning/"  # + a key of the pruning audit's summary (StudyReport.pruning)
_AUDIT_KEYS = ("false_prune_rate", "saved_share_estimate", "audited")


def summary_tags(report: StudyReport, *, this_run: int, wall_s: float) -> dict[str, str]:
    """The parent run's summary tags: the study's trial counts, this invocation's trials and
    wall time, and the pruning audit's estimate (where it has one)."""
    values: dict[str, float] = {f"{TRIALS_TAG}{k.lower()}": v for k, v in report.counts.items()}
    values[f"{TRIALS_TAG}this_run"] = this_run
    values[WALL_TAG] = wall_s
    for key in _AUDIT_KEYS:
        value = (report.pruning or {}).get(key)
        if value is not None:
            values[PRUNING_TAG + key] = value
    return {key: _tag_value(value) for key, value in values.items()}


def finish_parent(
    client: Any, run_id: str, optuna_study: Any, *, report: StudyReport,
    report_name: str, this_run: int, wall_s: float, interrupted: bool,
) -> None:
    """Best-trial summary, Optuna's plots and the report on the parent run; then end it."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    tags = [RunTag(k, v) for k, v in summary_tags(report, this_run=this_run,
                                                   wall_s=wall_s).items()]
    metrics: dict[str, float] = {}
    best = report.best
    params: list[Any] = []
    if best is not None:
        metrics["best_value"] = float(best["value"])
        metrics["best_trial"] = float(best["number"])
        if best.get("value_std") is not None:
            metrics["best_value_std"] = float(best["value_std"])
        params = [Param(f"best.{k}", repr(v) if isinstance(v, float) else str(v))
                  for k, v in best["params"].items()]
        for key, value in (
            ("best.trial_number", str(best["number"])),
            ("best.run_id", str(best["run_id"])),
            ("best.model_uri", str(best["model_uri"])),
        ):
            client.set_tag(run_id, key, value)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)],
        params=params,
        tags=tags,
        synchronous=True,
    )
    if not interrupted:
        _log_optuna_plots(client, run_id, optuna_study)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / report_name
        write_json_atomic(path, report.to_json())
        client.log_artifact(run_id, str(path))
    end_parent_run(client, run_id, status="KILLED" if interrupted else "FINISHED")


def _tag_value(value: float | int) -> str:
    """A count as an integer, anything else (a share, seconds) in plain digits."""
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:.4f}".rstrip("0")


def _log_optuna_plots(client: Any, run_id: str, optuna_study: Any) -> None:
    """Optuna's matplotlib plots as PNGs under ``optuna/`` on the parent run (when drawable)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    trials = optuna_study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    drawn_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    searched = {k for t in complete for k in t.params}
    plots: dict[str, tuple[Callable[..., Any], bool]] = {
        "optimization_history": (ovm.plot_optimization_history, bool(complete)),
        "param_importances": (
            functools.partial(ovm.plot_param_importances, evaluator=importance.evaluator()),
            len(complete) >= 2 and len(searched) > 1,
        ),
        "parallel_coordinate": (ovm.plot_parallel_coordinate, bool(complete)),
        "intermediate_values": (
            # Optuna draws these for complete, pruned and running trials only (else it warns).
            ovm.plot_intermediate_values,
            any(t.intermediate_values for t in trials if t.state in drawn_states),
        ),
    }
    # Optuna's plots switch the process's matplotlib style to ggplot for good; rc_context puts
    # it back, or every later figure in this process (trial curves) would change style.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # ExperimentalWarning on every matplotlib plot
        for name, (plot, drawable) in plots.items():
            if not drawable:
                logger.debug("skipping the %s plot: not enough trials", name)
                continue
            try:
                ax = plot(optuna_study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                # e.g. importances when every complete trial has the same value
                logger.warning("could not draw Optuna's %s plot: %s", name, exc)
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            path = Path(tmp) / f"{name}.png"
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            client.log_artifact(run_id, str(path), artifact_path="optuna")
