"""Running a study: the library side of ``python -m pipeline.search``.

:func:`run_search` loads the params, the study file and the cache, opens the study (journal
file, RDB or in memory), runs trials until this run's budget (:mod:`pipeline.study.budget`) or
timeout is spent, and records everything: each trial an MLflow run, one parent run per
invocation (:mod:`pipeline.study.parent`), the study report (:mod:`pipeline.study.report`).
Every worker holds a lease in the study and cleans up after workers that died
(:mod:`pipeline.study.workers`). It never prints; the command prints the summary.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from pipeline import tracking
from pipeline.config import PARAMS_FILE, Params, load_params
from pipeline.data.cache import load_cache
from pipeline.errors import TrackingUnreachable, UserError, caused_by, first_line
from pipeline.secrets import redact, redact_text
from pipeline.study import budget as budgets
from pipeline.study import parent, workers
from pipeline.study.interrupts import Interrupts
from pipeline.study.report import (
    RECORD_LOST_PREFIX,
    StudyReport,
    from_study,
    report_path,
    short_params,
)
from pipeline.study.spec import STUDIES_DIR, StudySpec, load_study, make_pruner, make_sampler
from pipeline.study.storage import StorageChoice, open_storage, resolve_storage, study_lock
from pipeline.study.timing import TrackingTimes
from pipeline.study.workers import WORKER_ATTR, reconcile

if TYPE_CHECKING:
    from pipeline.study.trial_runs import RecordWriter

logger = logging.getLogger(__name__)

DRY_RUN_EPOCHS = 2
MAX_CONSECUTIVE_FAILURES = 5  # stop a search whose every trial fails (a config problem)


@dataclass(frozen=True)
class SearchOptions:
    """Everything the command line can set; None means "from the study file / params.yaml"."""

    study: str
    params_path: Path = Path(PARAMS_FILE)
    dataset: str | None = None
    n_trials: int | None = None  # trials to add; None: up to the study's total budget
    timeout_s: float | None = None
    storage: str | None = None
    n_jobs: int = 1
    dry_run: bool = False
    device: str | None = None
    log_models: bool = True
    # Benchmarks and tests only (no command-line flag): who writes each trial's record
    # (MlflowTrialTracker's writer; None: :func:`record_writer` decides), skip the models, time
    # the records.
    record_writer: RecordWriter | None = None
    times: TrackingTimes | None = None
    reconcile: bool = False  # train nothing; make Optuna and MLflow agree, say what differed


@dataclass
class SearchResult:
    """What one invocation did and where it is recorded."""

    study: StudySpec
    optuna_study: str
    dataset: str
    storage: str  # redacted
    report: StudyReport
    report_path: Path | None
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    budget: str = ""  # what this run set out to do, in words
    new_trials: list[int] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)  # trials of dead workers failed here
    reconciled: list[str] | None = None  # with --reconcile: what differed (empty: nothing)
    interrupted: bool = False
    dry_run: bool = False
    wall_s: float = 0.0
    page: Path | None = None  # the report page (index.html), written beside the report
    runs_url: str = ""  # the MLflow runs table, best trial first


@dataclass(frozen=True)
class _Setup:
    """What a search runs on, loaded and checked before anything is written."""

    params: Params  # the dataset's params
    study: StudySpec
    dataset: str
    default_dataset: str
    cache: Any
    device: Any
    choice: StorageChoice
    timeout: float | None
    n_trials: int | None  # --n-trials, or None for the study's total

    @functools.cached_property
    def settings(self) -> dict[str, str]:
        """What makes this search's trials comparable (:func:`trial_settings`)."""
        return trial_settings(self.study, self.params, self.cache.meta.fingerprint)


def _load(options: SearchOptions) -> _Setup:
    from pipeline.training import runtime

    if options.n_trials is not None and options.n_trials < 0:
        raise UserError(f"--n-trials: expected an integer ≥ 0, got {options.n_trials}")
    if options.timeout_s is not None and options.timeout_s <= 0:
        raise UserError(f"--timeout: expected seconds > 0, got {options.timeout_s:g}")
    if options.n_jobs < 1:
        raise UserError(f"--n-jobs: expected an integer ≥ 1, got {options.n_jobs}")
    if options.reconcile and (options.n_trials or options.dry_run):
        raise UserError("--reconcile trains nothing: leave out --n-trials and --dry-run")
    params = load_params(options.params_path)
    study = load_study(options.study, params.path(STUDIES_DIR), params)
    default_dataset = study.dataset or params.dataset
    dataset = options.dataset or default_dataset
    base = params.for_dataset(dataset)
    timeout = options.timeout_s if options.timeout_s is not None else study.budget.timeout_s
    if options.dry_run:
        choice = StorageChoice(kind="memory", target="", origin="--dry-run")
    else:
        choice = resolve_storage(
            options.storage, params_value=base.search.storage, root=base.root,
            studies_dir=STUDIES_DIR, study_name=study.study_name(dataset),
            params_source=base.source,
        )
    return _Setup(
        params=base, study=study, dataset=dataset, default_dataset=default_dataset,
        cache=load_cache(base.cache_dir(dataset)),
        device=runtime.resolve_device(options.device or base.device), choice=choice,
        timeout=None if options.dry_run else timeout,
        n_trials=1 if options.dry_run else (0 if options.reconcile else options.n_trials),
    )


def run_search(options: SearchOptions) -> SearchResult:
    """Load everything, run the study, record it; the body of the stage (and of benchmarks).

    Raises:
        UserError: bad study, params, dataset, cache or storage; the study storage lost.
        KeyboardInterrupt: after recording the interrupted trial and writing the report (the
            result is attached as ``exc.result``).
    """
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    _quiet_interrupted_trials()
    setup = _load(options)
    with _tracking_params(setup.params, dry_run=options.dry_run) as tracked, \
            _tracking_server_errors():
        uri = tracking.configure(tracked, ignore_env=options.dry_run)
        optuna_study = _open_study(setup)
        _check_settings(optuna_study, setup.settings, where=setup.choice.display())
        exp_id = tracking.experiment(optuna_study.study_name, tracked)
        logger.info(
            "study %s on %r (%d training samples), storage %s (from %s), %d trial(s) so far",
            optuna_study.study_name, setup.dataset, setup.cache.meta.n_train,
            setup.choice.display(), setup.choice.origin, len(optuna_study.trials),
        )
        threads_before = torch.get_num_threads()
        if options.n_jobs > 1:
            torch.set_num_threads(max(1, threads_before // options.n_jobs))
        try:
            return _Search(options, setup, tracked, optuna_study, exp_id, uri).run()
        finally:
            torch.set_num_threads(threads_before)


@contextlib.contextmanager
def _tracking_server_errors() -> Iterator[None]:
    """An MLflow server that cannot be reached when the search starts (or that nothing more
    specific caught later) is one line, not MLflow's traceback."""
    import mlflow

    try:
        yield
    except Exception as exc:
        if isinstance(exc, UserError) or not _is_unreachable(exc):
            raise
        why = str(exc) if isinstance(exc, TrackingUnreachable) else (
            f"the MLflow tracking server is unreachable ({tracking.unreachable_reason(exc)})")
        raise UserError(f"{why} at {redact(mlflow.get_tracking_uri())}: start it (or unset "
                        f"{tracking.ENV_URI} to use the project's own store), then rerun; "
                        "the study keeps every finished trial") from None


class _InterruptedTrialFilter(logging.Filter):
    """Optuna logs a trial ended by Ctrl-C as a failure with a traceback, then "failed with
    value None"; the search records and reports the interruption itself, and a traceback
    would read like a crash. Other failures keep Optuna's lines."""

    def __init__(self) -> None:
        super().__init__()
        self._dropped = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrackingUnreachable):
            record.exc_info = None  # its one line says it all
            return True
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self._dropped = True
            return False
        if self._dropped and "failed with value" in record.getMessage():
            self._dropped = False
            return False
        return True


def _quiet_interrupted_trials() -> None:
    optuna_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _InterruptedTrialFilter) for f in optuna_log.filters):
        optuna_log.addFilter(_InterruptedTrialFilter())


@contextlib.contextmanager
def _tracking_params(params: Params, *, dry_run: bool) -> Iterator[Params]:
    """The params to track with: as given, or (dry run) MLflow in a temporary folder."""
    if not dry_run:
        yield params
        return
    with tempfile.TemporaryDirectory(prefix="search-dry-run-") as tmp:
        yield params.with_overrides(
            {"mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
             "mlflow.artifacts_dir": f"{tmp}/artifacts"},
            origin="--dry-run",
        )


def _open_study(setup: _Setup) -> Any:
    spec, search = setup.study, setup.params.search
    storage = open_storage(
        setup.choice, heartbeat_interval_s=search.heartbeat_interval_s,
        grace_period_s=search.grace_period_s, max_retry=search.max_retry,
    )
    name = spec.study_name(setup.dataset)
    study = optuna.create_study(
        study_name=name, storage=storage, pruner=make_pruner(spec), direction=spec.direction,
        sampler=make_sampler(spec, default_seed=setup.params.seed), load_if_exists=True,
    )
    if study.direction.name.lower() != spec.direction:
        raise UserError(
            f"{spec.source}: direction: the stored study {name!r} was created with "
            f"{study.direction.name.lower()}, the file says {spec.direction}; use another "
            "storage or delete the study"
        )
    if study.metric_names != [spec.metric]:  # optuna-dashboard shows it, not "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # set_metric_names is marked experimental
            study.set_metric_names([spec.metric])
    return study


def trial_settings(study: StudySpec, params: Params, fingerprint: str) -> dict[str, str]:
    """Everything that makes two trials' values comparable: data, base params, space, CV."""
    out = {"data.fingerprint": fingerprint}
    out.update({f"params.{k}": str(v) for k, v in params.flat().items()})
    skip = ("study.n_trials", "study.timeout_s", "study.sampler", "study.pruner")
    out.update({k: v for k, v in study.summary().items() if not k.startswith(skip)})
    return out


def settings_digest(settings: dict[str, str]) -> str:
    """A short digest of :func:`trial_settings`, stored on every trial (``pipeline.settings``)."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _is_storage_error(exc: BaseException) -> bool:
    """A lost study database (SQLAlchemy's errors, or Optuna tripping over one)."""
    return caused_by(exc, SQLAlchemyError)


def record_writer(chosen: RecordWriter | None, *, device: Any, n_jobs: int) -> RecordWriter:
    """Who writes the trials' records. On an accelerator the recorder process, which uses the
    CPU the training leaves idle. On the CPU the trial's own thread (or one logging thread for
    trials in threads): measured on 2 cores, the recorder process made the capacity search
    about 20 % slower, because its second copy of torch and MLflow and its writing compete with
    training for the same cores (BENCHMARKS.md)."""
    if chosen is not None:
        return chosen
    if device.type != "cpu":
        return "process"
    return "inline" if n_jobs == 1 else "thread"


def _is_unreachable(exc: BaseException) -> bool:
    """A lost MLflow tracking server (see ``tracking.is_unreachable``)."""
    return isinstance(exc, TrackingUnreachable) or tracking.is_unreachable(exc)


class _Search:
    """One invocation's trials and records (split from :func:`run_search` for its length)."""

    def __init__(self, options: SearchOptions, setup: _Setup, params: Params,
                 optuna_study: Any, experiment_id: str, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.options, self.setup, self.params = options, setup, params
        self.optuna_study, self.experiment_id, self.tracking_uri = (
            optuna_study, experiment_id, tracking_uri,
        )
        self.client = MlflowClient()
        self.interrupts = Interrupts()
        self.tracker: Any = None  # the trials' MlflowTrialTracker, once made
        self.storage_error: BaseException | None = None
        self.reconciled: list[str] | None = None
        meta = setup.cache.meta
        self.base_tags = {
            **tracking.run_tags(meta, params.root),
            "pipeline.study": setup.study.name,
            "pipeline.dataset": setup.dataset,
            "pipeline.fingerprint": meta.fingerprint,
            "pipeline.storage": setup.choice.display(),
        }

    # ----------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        setup, search = self.setup, self.params.search
        parent_id = parent.create_parent(
            self.client, self.experiment_id, dry_run=self.options.dry_run,
            tags={**self.base_tags, "optuna.study": self.optuna_study.study_name,
                  "pipeline.role": "search", "mlflow.note.content": setup.study.description},
        )
        lease = workers.new_lease(parent_id)
        heartbeat = workers.Heartbeat(self.optuna_study, lease,
                                      interval_s=search.heartbeat_interval_s)
        try:
            with self.interrupts.installed():
                return self._run(parent_id, lease, heartbeat)
        except SearchInterrupted:
            raise
        except BaseException as exc:
            self._fail_parent(parent_id, heartbeat, exc)
            raise

    def _fail_parent(self, parent_id: str, heartbeat: Any, exc: BaseException) -> None:
        """Whatever stopped the search, its parent run does not stay RUNNING (and the lease
        says this worker ended, unless the study storage itself is gone)."""
        if self.storage_error is None:
            heartbeat.end()
        else:
            heartbeat.stop()
        if self.tracking_lost is not None or _is_unreachable(exc):
            return  # every request would wait through MLflow's retries; --reconcile ends it
        with contextlib.suppress(Exception):
            if self.client.get_run(parent_id).info.status == "RUNNING":
                reason = " ".join(str(exc).split()) or type(exc).__name__
                self.client.set_tag(parent_id, "pipeline.error", reason[:4000])
                self.client.set_terminated(parent_id, status="FAILED")

    def _run(self, parent_id: str, lease: Any, heartbeat: Any) -> SearchResult:
        setup = self.setup
        reaped = self._reap(lease.id)
        done = budgets.counted(t.state.name for t in self.optuna_study.get_trials(deepcopy=False))
        total = None if self.options.dry_run else setup.study.budget.n_trials
        run_budget = budgets.plan(extra=setup.n_trials, total=total, done=done)
        logger.info("budget: %s", run_budget.describe(done))
        tracker, objective = self._objective(parent_id, lease.id)
        self._log_parent_params(parent_id, objective.plan.describe(), run_budget)
        progress = _Progress(study=setup.study, n_trials=run_budget.n_trials)
        objective.on_epoch = progress.epoch
        t0 = time.perf_counter()
        outcome = "done"
        try:
            outcome = self._optimize(objective, run_budget, progress, lease.id)
        finally:
            progress.close()
            failed_records = tracker.flush()  # every trial's run is complete before the report
            tracker.close()
            if outcome != "storage lost":
                self._mark_lost_records(failed_records)
                heartbeat.end()
            else:
                heartbeat.stop()
        if outcome == "storage lost":
            self._end_after_storage_loss(parent_id)
        if self.tracking_lost is not None:
            self._end_after_tracking_loss(progress, failed_records)
        reaped += self._reap(lease.id)
        if self.options.reconcile:
            self.reconciled = reconcile(self.optuna_study, self.client, self.experiment_id,
                                        me=lease.id)
        return self._finish(
            parent_id, tracker, progress, run_budget.describe(done), reaped,
            interrupted=outcome == "interrupted", wall=time.perf_counter() - t0,
            failed_records=failed_records,
        )

    def _mark_lost_records(self, failed: dict[int, str]) -> None:
        """Say in the study which trials' records are incomplete (promote passes over them)."""
        for number, why in failed.items():
            try:
                self.optuna_study.set_user_attr(f"{RECORD_LOST_PREFIX}{number}", why[:1000])
            except Exception as exc:  # noqa: BLE001 - the search's last line names them too
                logger.warning("could not mark trial %d's record as lost: %s", number, exc)

    def _reap(self, me: str) -> list[int]:
        search = self.params.search
        return workers.reap(
            self.optuna_study, self.client, me=me, grace_s=search.grace_period_s,
            interval_s=search.heartbeat_interval_s, max_retry=search.max_retry,
        )

    def _reap_quietly(self, me: str) -> None:
        """Between trials: a failure to clean up after others must not stop this search."""
        try:
            self._reap(me)
        except Exception as exc:  # noqa: BLE001 - the end-of-search reap tries again
            logger.warning("could not check for dead workers: %s", exc)

    def _objective(self, parent_id: str, worker: str) -> tuple[Any, Any]:
        from pipeline.study.objective import SETTINGS_ATTR, Objective
        from pipeline.study.trial_runs import MlflowTrialTracker, RunTarget

        options, setup = self.options, self.setup
        target = RunTarget(
            experiment_id=self.experiment_id, parent_run_id=parent_id,
            optuna_study=self.optuna_study.study_name,
            base_tags={**self.base_tags, "pipeline.role": "trial"},
            metric=setup.study.metric, direction=setup.study.direction,
        )
        tracker = MlflowTrialTracker(
            target, meta=setup.cache.meta, log_models=options.log_models,
            writer=record_writer(options.record_writer, device=setup.device,
                                 n_jobs=options.n_jobs),
            times=options.times,
            shield=self.interrupts.shield,
        )
        objective = Objective(
            params=self.params, study=setup.study, cache=setup.cache, device=setup.device,
            tracker=tracker, epoch_cap=DRY_RUN_EPOCHS if options.dry_run else None,
            stop=self.interrupts.stop,
            trial_attrs={WORKER_ATTR: worker, SETTINGS_ATTR: settings_digest(setup.settings)},
        )
        tracker.example = objective.example
        tracker.start_recorder()  # it warms up (imports, torch.export) while trial 0 trains
        self.tracker = tracker
        return tracker, objective

    def _log_parent_params(self, parent_id: str, plan: str, run_budget: Any) -> None:
        setup, options = self.setup, self.options
        parent.log_parent_params(self.client, parent_id, {
            **setup.study.summary(),
            "study.description": setup.study.description,
            "dataset": setup.dataset,
            "fingerprint": setup.cache.meta.fingerprint,
            "storage": setup.choice.display(),
            "storage.origin": setup.choice.origin,
            "validation": plan,
            "run.n_trials": str(run_budget.n_trials),
            "run.study_total": str(run_budget.total),
            "run.timeout_s": str(setup.timeout),
            "run.n_jobs": str(options.n_jobs),
            "run.device": str(setup.device),
            "run.dry_run": str(options.dry_run),
        })
        logger.info("MLflow experiment %r, parent run %s; validation: %s",
                    self.optuna_study.study_name, parent_id, plan)

    def _optimize(self, objective: Any, run_budget: Any, progress: _Progress, me: str) -> str:
        """Run the trials; ``"done"``, ``"interrupted"`` (Ctrl-C) or ``"storage lost"``."""
        if run_budget.n_trials == 0:
            return "done"
        if self.setup.timeout is not None:  # trials running at the deadline end there too
            objective.set_time_budget(self.setup.timeout)
        callbacks: list[Any] = [progress, lambda study, trial: self._reap_quietly(me),
                                self._stop_when_asked]
        admission: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if run_budget.total is not None:
            callbacks.append(budgets.stop_at_total(run_budget.total))
            lock = functools.partial(study_lock, self.setup.choice, self.optuna_study._storage,
                                     self.optuna_study.study_name)
            admission = budgets.admitting(self.optuna_study, run_budget.total, lock)
        try:
            with warnings.catch_warnings(), admission:
                warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna")
                self.optuna_study.optimize(
                    objective, n_trials=run_budget.n_trials, timeout=self.setup.timeout,
                    n_jobs=self.options.n_jobs, catch=(Exception,), callbacks=callbacks,
                    gc_after_trial=False, show_progress_bar=False,
                )
        except KeyboardInterrupt:
            return "interrupted"
        except budgets.BudgetReached as exc:  # other workers took the last places
            logger.info("%s; this worker stops", exc)
        except Exception as exc:
            if not _is_storage_error(exc):
                raise
            self.storage_error = exc
            return "storage lost"
        # A Ctrl-C held while a record was written: that trial finished, no other starts.
        return "interrupted" if self.interrupts.requested else "done"

    @property
    def tracking_lost(self) -> str | None:
        """Why the tracking server is taken for lost (None while it answers)."""
        return None if self.tracker is None else self.tracker.lost

    def _stop_when_asked(self, optuna_study: Any, trial: Any) -> None:
        """Optuna callback: after a Ctrl-C that waited for a record, or once the tracking
        server is lost (a trial must be an MLflow run), start no new trial."""
        if self.interrupts.requested or self.tracking_lost is not None:
            optuna_study.stop()

    def _end_after_tracking_loss(self, progress: _Progress, failed: dict[int, str]) -> None:
        """The tracking server went away: the study (Optuna) holds every result; write the
        report, say in one line what is missing and how to close the open runs later."""
        setup = self.setup
        report, path = self._report(parent_id="")
        report.write(path)
        missing = (f"; trial(s) {sorted(failed)} finished without a complete MLflow run "
                   "(their results are in the study, their runs have no model)" if failed
                   else "")
        raise UserError(
            f"{self.tracking_lost} at {redact(self.tracking_uri)}; the search stopped after "
            f"{len(progress.numbers)} trial(s), every finished trial is kept in the study and "
            f"in {path.name}{missing}. Once the server is back, "
            f"`python -m pipeline.search --study {setup.study.name} --dataset {setup.dataset} "
            "--reconcile` closes the runs left open, and a rerun continues the study"
        )

    def _end_after_storage_loss(self, parent_id: str) -> None:
        """The study database went away: end this worker's MLflow runs and say what to do."""

        exc = self.storage_error
        assert exc is not None
        reason = (
            f"lost the study storage {self.setup.choice.display()} "
            f"({redact_text(first_line(exc), self.setup.choice.target)})"
        )
        for run in self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
            " and attributes.status = 'RUNNING'",
        ):
            self.client.set_tag(run.info.run_id, "pipeline.error", reason)
            self.client.set_tag(run.info.run_id, "optuna.state", "FAIL")
            self.client.set_terminated(run.info.run_id, status="FAILED")
        self.client.set_tag(parent_id, "pipeline.error", reason)
        self.client.set_terminated(parent_id, status="FAILED")
        raise UserError(
            f"{reason}; every finished trial is kept in the study. Its running trial is "
            "failed and retried by the next search once the storage is back: rerun the same "
            "command"
        )

    def _report(self, parent_id: str) -> tuple[StudyReport, Path]:
        """The study's report as it stands, and the file it belongs in."""
        setup = self.setup
        report = from_study(
            self.optuna_study, study=setup.study, dataset=setup.dataset,
            storage=setup.choice.display(), fingerprint=setup.cache.meta.fingerprint,
            parent_run_id=parent_id, experiment_id=self.experiment_id,
        )
        return report, report_path(self.params, setup.study.name, setup.dataset,
                                   setup.default_dataset)

    def _finish(self, parent_id: str, tracker: Any, progress: _Progress, budget_text: str,
                reaped: list[int], *, interrupted: bool, wall: float,
                failed_records: dict[int, str]) -> SearchResult:
        setup, options = self.setup, self.options
        from pipeline.study import report_page

        report, path = self._report(parent_id)
        published = None
        with self.interrupts.shield():
            if not options.dry_run:
                report.write(path)
                published = report_page.publish(
                    self.optuna_study, spec=setup.study, params=self.params,
                    meta=setup.cache.meta, report=report, report_file=path)
            parent.finish_parent(
                self.client, parent_id, self.optuna_study, report=report,
                report_name=path.name, interrupted=interrupted,
                metrics={"trials/this_run": float(len(progress.numbers)), "search/wall_s": wall},
            )
        interrupted = interrupted or self.interrupts.requested
        if failed_records:
            raise UserError(
                f"the MLflow runs of trial(s) {sorted(failed_records)} could not be completed "
                "(see the errors above); the Optuna study and the report are written, and "
                "`--reconcile` closes those runs"
            )
        if progress.gave_up:
            raise UserError(
                f"{setup.study.source}: the last {MAX_CONSECUTIVE_FAILURES} trials all failed "
                "(see the warnings above and the MLflow runs' pipeline.error tag); stopped"
            )
        result = SearchResult(
            study=setup.study, optuna_study=self.optuna_study.study_name, dataset=setup.dataset,
            storage=setup.choice.display(), report=report,
            report_path=None if options.dry_run else path, parent_run_id=parent_id,
            experiment_id=self.experiment_id, tracking_uri=self.tracking_uri,
            budget=budget_text, new_trials=progress.numbers, reaped=reaped,
            reconciled=self.reconciled,
            interrupted=interrupted, dry_run=options.dry_run, wall_s=wall,
            page=published.index if published else None,
            runs_url=published.runs_url if published else "",
        )
        if interrupted:
            stopped = SearchInterrupted()
            stopped.result = result
            raise stopped
        return result


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the search after it recorded everything; ``result`` says what was done."""

    result: SearchResult


class _Progress:
    """Optuna callback: a progress bar over trials (a log line per trial when not a tty)."""

    def __init__(self, *, n_trials: int | None, study: StudySpec) -> None:
        self.study = study
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
                short_params(trial.params),
            )
            self.bar.update(1)
            with contextlib.suppress(ValueError):
                self.bar.set_postfix(best=f"{optuna_study.best_value:.4g}")
            if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES and not self.gave_up:
                self.gave_up = True
                optuna_study.stop()

    def epoch(self, number: int, epoch: int, value: float) -> None:
        """Inside a trial: its number, epoch and current value on the bar (a tty only)."""
        if self.bar.disable:
            return
        with self._lock:
            self.bar.set_postfix_str(
                f"trial {number} epoch {epoch} {self.study.metric} {value:.4g}", refresh=True
            )

    def close(self) -> None:
        self.bar.close()
