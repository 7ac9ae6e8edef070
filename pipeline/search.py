"""Stage ``search``: run an Optuna study over a dataset, every trial an MLflow run with its model.

Reads ``params.yaml``, ``studies/<study>.yaml`` and the tensor cache ``data/cache/<dataset>/``
(train part only). Writes the Optuna study (default: the journal file
``studies/<study>-<dataset>.journal``; ``--storage`` / ``PIPELINE_STORAGE`` /
``search.storage`` for another, e.g. PostgreSQL), MLflow runs in the experiment
``<study>-<dataset>`` (one parent run per invocation, one nested run ``trial-<number>`` per trial)
and the summary ``reports/studies/<study>.json`` (the DVC output; a run on another dataset than
the study's default writes ``<study>-<dataset>.json`` instead).

    python -m pipeline.search --study capacity [--dataset digits] [--n-trials 20] [--n-jobs 2]
    python -m pipeline.search --list
    python -m pipeline.search --study capacity --dry-run   # one tiny trial, nothing written

Running the same command again continues the same study and adds ``--n-trials`` new trials.
Ctrl-C stops the running trial (recorded as failed in Optuna and MLflow), keeps every finished
trial, writes the report and exits with code 130; the rerun continues.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import cli
from pipeline.atomic import write_json_atomic
from pipeline.config import PARAMS_FILE, Params, load_params
from pipeline.errors import UserError
from pipeline.study.spec import STUDIES_DIR, StudySpec, list_studies, load_study
from pipeline.study.storage import StorageChoice, open_storage, resolve_storage

logger = logging.getLogger(__name__)

DRY_RUN_EPOCHS = 2
MAX_CONSECUTIVE_FAILURES = 5  # stop a search whose every trial fails (a config problem)
TOP_TRIALS = 10


# --------------------------------------------------------------------------------------------
# Options and result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchOptions:
    """Everything the command line can set; None means "from the study file / params.yaml"."""

    study: str
    params_path: Path = Path(PARAMS_FILE)
    dataset: str | None = None
    n_trials: int | None = None
    timeout_s: float | None = None
    storage: str | None = None
    n_jobs: int = 1
    dry_run: bool = False
    device: str | None = None
    log_models: bool = True
    # Write each trial's record (metrics, curves, model) while the next trial trains. None:
    # only when training runs on an accelerator; on the CPU the writer competes with training
    # for the same cores (measured on 2 cores: slower than waiting, see BENCHMARKS.md).
    background_logging: bool | None = None


@dataclass
class SearchResult:
    """What one invocation did and where it is recorded."""

    study: StudySpec
    optuna_study: str
    dataset: str
    storage: str  # redacted
    report: dict[str, Any]
    report_path: Path | None
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    new_trials: list[int] = field(default_factory=list)
    interrupted: bool = False
    dry_run: bool = False
    wall_s: float = 0.0
    mlflow_s: float = 0.0  # time spent writing this invocation's trial runs (any thread)
    mlflow_blocking_s: float = 0.0  # of which trials waited for
    mlflow_blocking_by_trial: dict[int, float] = field(default_factory=dict)  # per trial number


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------
def run_search(options: SearchOptions) -> SearchResult:
    """Load everything, run the study, record it; the body of the stage (and of benchmarks).

    Raises:
        UserError: bad study, params, dataset, cache or storage.
        KeyboardInterrupt: after recording the interrupted trial and writing the report.
    """
    import optuna
    import torch

    from pipeline.data.cache import load_cache
    from pipeline.tracking import runs as tracking
    from pipeline.training import runtime

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    params = load_params(options.params_path)
    studies_dir = params.path(STUDIES_DIR)
    study = load_study(options.study, studies_dir, params)
    default_dataset = study.dataset or params.dataset
    dataset = options.dataset or default_dataset
    base = params.for_dataset(dataset)
    n_trials = options.n_trials if options.n_trials is not None else study.budget.n_trials
    timeout = options.timeout_s if options.timeout_s is not None else study.budget.timeout_s
    if n_trials is not None and n_trials < 1:
        raise UserError(f"--n-trials: expected an integer ≥ 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout: expected seconds > 0, got {timeout:g}")
    if options.n_jobs < 1:
        raise UserError(f"--n-jobs: expected an integer ≥ 1, got {options.n_jobs}")
    device = runtime.resolve_device(options.device or base.device)
    cache = load_cache(base.cache_dir(dataset))
    optuna_name = study.study_name(dataset)

    if options.dry_run:
        n_trials, timeout = 1, None
        choice = StorageChoice(kind="memory", target="", origin="--dry-run")
    else:
        choice = resolve_storage(
            options.storage,
            params_value=base.search.storage,
            root=base.root,
            studies_dir=STUDIES_DIR,
            study_name=optuna_name,
            params_source=base.source,
        )

    with _tracking_location(base, dry_run=options.dry_run) as tracked:
        uri = tracking.configure(tracked)
        storage = open_storage(choice)
        optuna_study = _create_study(study, optuna_name, storage, seed=base.seed)
        _check_settings(optuna_study, trial_settings(study, base, cache.meta.fingerprint),
                        where=choice.display())
        exp_id = tracking.experiment(optuna_name, tracked)
        logger.info(
            "study %s on %r (%d training samples), storage %s (from %s), %d trial(s) so far",
            optuna_name, dataset, cache.meta.n_train, choice.display(), choice.origin,
            len(optuna_study.trials),
        )
        threads_before = torch.get_num_threads()
        if options.n_jobs > 1:
            torch.set_num_threads(max(1, threads_before // options.n_jobs))
        try:
            return _optimize(
                options=options, params=tracked, study=study, optuna_study=optuna_study,
                cache=cache, device=device, dataset=dataset, default_dataset=default_dataset,
                choice=choice, experiment_id=exp_id, tracking_uri=uri, n_trials=n_trials,
                timeout=timeout,
            )
        finally:
            torch.set_num_threads(threads_before)


@contextlib.contextmanager
def _tracking_location(params: Params, *, dry_run: bool) -> Iterator[Params]:
    """The params to track with: as given, or (dry run) pointing MLflow at a temporary folder."""
    if not dry_run:
        yield params
        return
    from pipeline.tracking.runs import ENV_URI

    saved = os.environ.pop(ENV_URI, None)  # a dry run never writes to the real store
    try:
        with tempfile.TemporaryDirectory(prefix="search-dry-run-") as tmp:
            yield params.with_overrides(
                {
                    "mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                    "mlflow.artifacts_dir": f"{tmp}/artifacts",
                },
                origin="--dry-run",
            )
    finally:
        if saved is not None:
            os.environ[ENV_URI] = saved


def _create_study(spec: StudySpec, name: str, storage: Any, *, seed: int) -> Any:
    import optuna

    from pipeline.study.spec import make_pruner, make_sampler

    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, default_seed=seed),
        pruner=make_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise UserError(
            f"{spec.source}: direction: the stored study {name!r} was created with "
            f"{study.direction.name.lower()}, the file says {spec.direction}; use another "
            "storage or delete the study"
        )
    return study


def trial_settings(study: StudySpec, params: Params, fingerprint: str) -> dict[str, str]:
    """Everything that makes two trials' values comparable: data, base params, space, CV."""
    out = {"data.fingerprint": fingerprint}
    out.update({f"params.{k}": str(v) for k, v in params.flat().items()})
    skip = ("study.n_trials", "study.timeout_s", "study.sampler", "study.pruner")
    out.update({k: v for k, v in study.summary().items() if not k.startswith(skip)})
    return out


def _check_settings(optuna_study: Any, settings: dict[str, str], *, where: str) -> None:
    """Warn when a continued study's earlier trials ran with other settings (not comparable)."""
    stored = optuna_study.user_attrs.get("settings")
    if stored is None:
        optuna_study.set_user_attr("settings", settings)
        return
    changed = [
        f"{k} ({stored.get(k, '-')} -> {settings.get(k, '-')})"
        for k in sorted(set(stored) | set(settings))
        if stored.get(k) != settings.get(k)
    ]
    if changed:
        logger.warning(
            "study %s in %s holds trials run with other settings: %s. New trials are not "
            "comparable with them; to start afresh use another --storage or delete the study",
            optuna_study.study_name, where, "; ".join(changed[:8])
            + (f"; and {len(changed) - 8} more" if len(changed) > 8 else ""),
        )


def _optimize(
    *,
    options: SearchOptions,
    params: Params,
    study: StudySpec,
    optuna_study: Any,
    cache: Any,
    device: Any,
    dataset: str,
    default_dataset: str,
    choice: StorageChoice,
    experiment_id: str,
    tracking_uri: str,
    n_trials: int | None,
    timeout: float | None,
) -> SearchResult:
    from mlflow.tracking import MlflowClient

    from pipeline.study.objective import MlflowTrialTracker, Objective
    from pipeline.tracking import runs as tracking

    client = MlflowClient()
    meta = cache.meta
    optuna_name = optuna_study.study_name
    base_tags = {
        **tracking.run_tags(meta, params.root),
        "pipeline.study": study.name,
        "pipeline.dataset": dataset,
        "pipeline.fingerprint": meta.fingerprint,
        "pipeline.storage": choice.display(),
    }
    started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parent = client.create_run(
        experiment_id,
        run_name=f"search-{started}" + ("-dry-run" if options.dry_run else ""),
        tags={
            **base_tags,
            "optuna.study": optuna_name,
            "pipeline.role": "search",
            "mlflow.note.content": study.description,
        },
    )
    parent_id = parent.info.run_id
    background = (
        options.background_logging if options.background_logging is not None
        else device.type != "cpu"
    )
    tracker = MlflowTrialTracker(
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        optuna_study=optuna_name,
        meta=meta,
        base_tags={**base_tags, "pipeline.role": "trial"},
        metric=study.metric,
        direction=study.direction,
        log_models=options.log_models,
        background=background,
        # One trial at a time on the CPU: record in the trial's thread (see the tracker).
        inline=not background and options.n_jobs == 1,
    )
    stop = threading.Event()
    objective = Objective(
        params=params,
        study=study,
        cache=cache,
        device=device,
        tracker=tracker,
        epoch_cap=DRY_RUN_EPOCHS if options.dry_run else None,
        stop=stop,
    )
    tracker.example = objective.example
    _log_parent_params(
        client, parent_id, study=study, dataset=dataset, meta=meta, choice=choice,
        plan=objective.plan.describe(), n_trials=n_trials, timeout=timeout, options=options,
        device=str(device),
    )
    logger.info(
        "MLflow experiment %r, parent run %s; validation: %s",
        optuna_name, parent_id, objective.plan.describe(),
    )

    progress = _Progress(n_trials=n_trials, study=study, stop_study=optuna_study.stop)
    interrupted = False
    t0 = time.perf_counter()
    try:
        with _sigint_sets(stop), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna")
            optuna_study.optimize(
                objective,
                n_trials=n_trials,
                timeout=timeout,
                n_jobs=options.n_jobs,
                catch=(Exception,),
                callbacks=[progress],
                gc_after_trial=False,
                show_progress_bar=False,
            )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        failed_records = tracker.flush()  # every trial's run is complete before the report
        tracker.close()
    wall = time.perf_counter() - t0

    report = build_report(
        optuna_study, study=study, dataset=dataset, storage=choice.display(), meta=meta,
        parent_run_id=parent_id, experiment_id=experiment_id,
    )
    report_path = None
    if not options.dry_run:
        name = study.name if dataset == default_dataset else f"{study.name}-{dataset}"
        report_path = params.path(params.search.reports_dir) / f"{name}.json"
        write_json_atomic(report_path, report)
    _finish_parent(
        client, parent_id, optuna_study, report=report, report_path=report_path,
        new_trials=progress.numbers, interrupted=interrupted, wall_s=wall,
        mlflow_s=tracker.work_s, mlflow_blocking_s=tracker.blocking_s,
    )
    if failed_records:
        raise RuntimeError(
            f"the MLflow runs of trial(s) {failed_records} could not be completed (see the "
            "errors above); the Optuna study and the report are written"
        )
    if progress.gave_up:
        raise UserError(
            f"{study.source}: the last {MAX_CONSECUTIVE_FAILURES} trials all failed (see the "
            f"warnings above and the MLflow runs' pipeline.error tag); stopped the search"
        )
    result = SearchResult(
        study=study, optuna_study=optuna_name, dataset=dataset, storage=choice.display(),
        report=report, report_path=report_path, parent_run_id=parent_id,
        experiment_id=experiment_id, tracking_uri=tracking_uri, new_trials=progress.numbers,
        interrupted=interrupted, dry_run=options.dry_run, wall_s=wall,
        mlflow_s=tracker.work_s, mlflow_blocking_s=tracker.blocking_s,
        mlflow_blocking_by_trial=dict(tracker.blocking_by_trial),
    )
    if interrupted:
        _print_summary(result, sys.stdout)
        raise KeyboardInterrupt
    return result


@contextlib.contextmanager
def _sigint_sets(stop: threading.Event) -> Iterator[None]:
    """While searching, Ctrl-C also sets ``stop`` so trials in worker threads end too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Progress:
    """Optuna callback: a progress bar over trials (a log line per trial when not a tty)."""

    def __init__(self, *, n_trials: int | None, study: StudySpec, stop_study: Any) -> None:
        from tqdm import tqdm

        self.study = study
        self.stop_study = stop_study
        self.numbers: list[int] = []
        self.failures_in_a_row = 0
        self.gave_up = False
        self._lock = threading.Lock()
        self.bar = tqdm(
            total=n_trials, unit="trial", desc=study.name, disable=not sys.stderr.isatty(),
            dynamic_ncols=True,
        )

    def __call__(self, optuna_study: Any, trial: Any) -> None:
        with self._lock:
            self.numbers.append(trial.number)
            state = trial.state.name
            self.failures_in_a_row = self.failures_in_a_row + 1 if state == "FAIL" else 0
            value = f"{trial.value:.4g}" if trial.value is not None else "-"
            logger.info(
                "trial %d %s %s=%s after %s epoch(s) in %.1f s (%s)",
                trial.number, state, self.study.metric, value,
                trial.user_attrs.get("epochs", "?"),
                trial.duration.total_seconds() if trial.duration else float("nan"),
                _short_params(trial.params),
            )
            self.bar.update(1)
            with contextlib.suppress(ValueError):
                self.bar.set_postfix(best=f"{optuna_study.best_value:.4g}")
            if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES and not self.gave_up:
                self.gave_up = True
                optuna_study.stop()

    def close(self) -> None:
        self.bar.close()


def _short_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in values.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# --------------------------------------------------------------------------------------------
# Parent run and report
# --------------------------------------------------------------------------------------------
def _log_parent_params(
    client: Any, run_id: str, *, study: StudySpec, dataset: str, meta: Any,
    choice: StorageChoice, plan: str, n_trials: int | None, timeout: float | None,
    options: SearchOptions, device: str,
) -> None:
    from mlflow.entities import Param

    values = {
        **study.summary(),
        "study.description": study.description,
        "dataset": dataset,
        "fingerprint": meta.fingerprint,
        "storage": choice.display(),
        "storage.origin": choice.origin,
        "validation": plan,
        "run.n_trials": str(n_trials),
        "run.timeout_s": str(timeout),
        "run.n_jobs": str(options.n_jobs),
        "run.device": device,
        "run.dry_run": str(options.dry_run),
    }
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items()],
                     synchronous=True)


def build_report(
    optuna_study: Any,
    *,
    study: StudySpec,
    dataset: str,
    storage: str,
    meta: Any,
    parent_run_id: str,
    experiment_id: str,
) -> dict[str, Any]:
    """The study summary written to ``reports/studies/<study>.json`` (all trials, all runs)."""
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    best = None
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        bt = optuna_study.best_trial
        run_id = bt.user_attrs.get("mlflow_run_id")
        best = {
            "number": bt.number,
            "value": bt.value,
            "value_std": bt.user_attrs.get("value_std"),
            "params": dict(bt.params),
            "run_id": run_id,
            "model_uri": f"runs:/{run_id}/model" if run_id else None,
            "epochs": bt.user_attrs.get("epochs"),
        }
    return {
        "study": study.name,
        "description": study.description,
        "optuna_study": optuna_study.study_name,
        "dataset": dataset,
        "fingerprint": meta.fingerprint,
        "direction": study.direction,
        "metric": study.metric,
        "storage": storage,
        "best": best,
        "counts": {k: v for k, v in counts.items() if v or k in ("COMPLETE", "PRUNED", "FAIL")},
        "n_trials": len(trials),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.value is None or math.isfinite(t.value) else None,
                "run_id": t.user_attrs.get("mlflow_run_id"),
                "epochs": t.user_attrs.get("epochs"),
                "params": dict(t.params),
            }
            for t in trials
        ],
        "parent_run_id": parent_run_id,
        "experiment_id": experiment_id,
    }


def _finish_parent(
    client: Any, run_id: str, optuna_study: Any, *, report: dict[str, Any],
    report_path: Path | None, new_trials: list[int], interrupted: bool, wall_s: float,
    mlflow_s: float, mlflow_blocking_s: float,
) -> None:
    """Best-trial summary, Optuna's plots and the report on the parent run; then end it."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = {f"trials/{k.lower()}": float(v) for k, v in report["counts"].items()}
    metrics["trials/this_run"] = float(len(new_trials))
    metrics["search/wall_s"] = wall_s
    metrics["search/mlflow_s"] = mlflow_s
    metrics["search/mlflow_blocking_s"] = mlflow_blocking_s
    best = report["best"]
    params: list[Any] = []
    if best is not None:
        metrics["best/value"] = float(best["value"])
        metrics["best/trial_number"] = float(best["number"])
        if best.get("value_std") is not None:
            metrics["best/value_std"] = float(best["value_std"])
        params = [Param(f"best.{k}", _fmt(v)) for k, v in best["params"].items()]
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
        synchronous=True,
    )
    if not interrupted:
        _log_optuna_plots(client, run_id, optuna_study)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (report_path.name if report_path else "study.json")
        write_json_atomic(path, report)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="KILLED" if interrupted else "FINISHED")


def _log_optuna_plots(client: Any, run_id: str, optuna_study: Any) -> None:
    """Optuna's matplotlib plots as PNGs under ``optuna/`` on the parent run (when drawable)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    trials = optuna_study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    searched = {k for t in complete for k in t.params}
    plots: dict[str, tuple[Callable[..., Any], bool]] = {
        "optimization_history": (ovm.plot_optimization_history, bool(complete)),
        "param_importances": (
            ovm.plot_param_importances, len(complete) >= 2 and len(searched) > 1
        ),
        "parallel_coordinate": (ovm.plot_parallel_coordinate, bool(complete)),
        "intermediate_values": (
            ovm.plot_intermediate_values, any(t.intermediate_values for t in trials)
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


# --------------------------------------------------------------------------------------------
# Output for humans
# --------------------------------------------------------------------------------------------
def _print_summary(result: SearchResult, out: Any) -> None:
    report = result.report
    counts = ", ".join(f"{v} {k.lower()}" for k, v in report["counts"].items() if v)
    head = "interrupted" if result.interrupted else "done"
    print(
        f"{result.optuna_study}: {head}; {len(result.new_trials)} new trial(s) in "
        f"{result.wall_s:.1f} s; {report['n_trials']} in the study ({counts or 'none'})",
        file=out,
    )
    trials = report["trials"]
    # Complete trials only: a pruned trial's value is its last report, not a finished score.
    finished = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    reverse = result.study.direction == "maximize"
    finished.sort(key=lambda t: t["value"], reverse=reverse)
    shown = finished[:TOP_TRIALS]
    others = {s: sum(t["state"] == s for t in trials) for s in ("PRUNED", "FAIL", "RUNNING")}
    if shown:
        keys = [p.name for p in result.study.space]
        short = [k.split(".")[-1] for k in keys]
        header = ["trial", result.study.metric, "state", "epochs", *short]
        rows = [
            [str(t["number"]), f"{t['value']:.4f}", t["state"], str(t.get("epochs") or ""),
             *[_fmt(t["params"].get(k, "")) for k in keys]]
            for t in shown
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(file=out)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), file=out)
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), file=out)
        more = len(finished) - len(shown)
        hidden = [f"{more} more complete"] if more else []
        hidden += [f"{n} {state.lower()}" for state, n in others.items() if n]
        if hidden:
            print(f"(not shown: {', '.join(hidden)})", file=out)
    best = report["best"]
    print(file=out)
    if best is not None:
        print(
            f"best: trial {best['number']} {result.study.metric}={best['value']:.4f} "
            f"{_short_params(best['params'])}", file=out,
        )
        print(f"      model {best['model_uri']}", file=out)
    else:
        print("best: no trial completed yet", file=out)
    if result.dry_run:
        print("dry run: nothing was written (study in memory, MLflow in a temporary folder)",
              file=out)
        return
    if result.report_path is not None:
        print(f"report: {result.report_path}", file=out)
    print(f"storage: {result.storage}", file=out)
    if result.study and result.tracking_uri.startswith("sqlite:") and result.report_path:
        print(
            f"MLflow: experiment {result.optuna_study!r} - open the UI with `make ui` "
            "(http://127.0.0.1:5000)", file=out,
        )
    elif result.report_path is not None:
        print(f"MLflow: experiment {result.optuna_study!r} at {_redact(result.tracking_uri)}",
              file=out)


def _redact(url: str) -> str:
    from pipeline.secrets import redact

    return redact(url)


def _epilog(studies_dir: Path) -> str:
    studies = list_studies(studies_dir) if studies_dir.is_dir() else {}
    if not studies:
        return f"no studies found in {studies_dir}"
    width = max(len(n) for n in studies)
    lines = [f"  {n.ljust(width)}  {d}" for n, d in studies.items()]
    return "studies (studies/<name>.yaml):\n" + "\n".join(lines)


def build_parser(studies_dir: Path | None = None) -> argparse.ArgumentParser:
    studies_dir = studies_dir or Path(PARAMS_FILE).resolve().parent / STUDIES_DIR
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.search",
        description="Run an Optuna study (studies/<name>.yaml); every trial is an MLflow run.",
        epilog=_epilog(studies_dir),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--study", help="study name (a file studies/<name>.yaml)")
    parser.add_argument("--params", default=PARAMS_FILE, type=Path,
                        help="params file; its folder is the project root (default: %(default)s)")
    parser.add_argument("--dataset", help="dataset (default: the study's, else params.yaml's)")
    parser.add_argument("--n-trials", type=int, metavar="N",
                        help="new trials to run (default: the study's budget)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="stop starting trials after S seconds (default: the study's)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL or journal file (default: $PIPELINE_STORAGE, "
                             "search.storage, else studies/<study>-<dataset>.journal)")
    parser.add_argument("--n-jobs", type=int, default=1, metavar="J",
                        help="trials in parallel threads (default: %(default)s)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: params.yaml)")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"one trial of {DRY_RUN_EPOCHS} epochs, in-memory study, MLflow in "
                             "a temporary folder; writes nothing in the project")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        if args.list:
            params = load_params(args.params)
            studies = list_studies(params.path(STUDIES_DIR))
            width = max((len(n) for n in studies), default=0)
            for name, desc in studies.items():
                print(f"{name.ljust(width)}  {desc}")
            return 0
        if not args.study:
            raise UserError(
                "--study NAME is required (python -m pipeline.search --list shows them)"
            )
        options = SearchOptions(
            study=args.study, params_path=args.params, dataset=args.dataset,
            n_trials=args.n_trials, timeout_s=args.timeout, storage=args.storage,
            n_jobs=args.n_jobs, dry_run=args.dry_run, device=args.device,
        )
        result = run_search(options)
        _print_summary(result, sys.stdout)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
