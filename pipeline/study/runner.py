"""Running a study: the library side of ``python -m pipeline.search``.

:func:`search` reads straight down: **set up** (options checked, params, study file, cache,
storage: :func:`~pipeline.study.setup.load_setup`; the MLflow store, the Optuna study, the
parent run and this worker's lease: :func:`_open`), **run** the trials within this run's
:class:`~pipeline.study.budget.RunBudget` (:func:`_run_trials`), and **end** the one way this
search ended (:func:`_conclude`, every ending in one place). Each trial is an MLflow run
(:mod:`pipeline.study.trial_runs`); how every run ends is :mod:`pipeline.tracking.endings`'s.
Every worker holds a lease in the study and cleans up after workers that died
(:mod:`pipeline.study.workers`). It never prints; the command prints the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
from sqlalchemy.exc import SQLAlchemyError

from pipeline import gc_policy, tracking
from pipeline.config import Params
from pipeline.errors import TrackingUnreachable, UserError, caused_by, first_line
from pipeline.secrets import redact, redact_text
from pipeline.study import budget as budgets
from pipeline.study import parent, starts, workers
from pipeline.study.audit import AuditedPruner
from pipeline.study.instruments import Instruments, RecordWriter
from pipeline.study.interrupts import Interrupts, quiet_interrupted_trials
from pipeline.study.pool import run_workers
from pipeline.study.progress import MAX_CONSECUTIVE_FAILURES, SearchProgress
from pipeline.study.report import RECORD_LOST_PREFIX, StudyReport, from_study, report_path
from pipeline.study.setup import (
    DRY_RUN_EPOCHS,
    SearchOptions,
    Setup,
    check_settings,
    load_setup,
    settings_digest,
)
from pipeline.study.spec import STUDIES_DIR, StudySpec, make_pruner, make_sampler
from pipeline.study.storage import (
    check_search_folders,
    open_storage,
    resolve_storage,
    study_lock,
)
from pipeline.study.workers import WORKER_ATTR, Heartbeat, Lease, reconcile
from pipeline.tracking.endings import end_parent_run, end_trial_run

logger = logging.getLogger(__name__)

__all__ = ["DRY_RUN_EPOCHS", "SearchInterrupted", "SearchOptions", "SearchResult",
           "record_writer", "run_search", "search"]


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
    new_trials: list[int] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)  # trials of dead workers failed here
    reconciled: list[str] | None = None  # with --reconcile: what differed (empty: nothing)
    interrupted: bool = False
    dry_run: bool = False
    wall_s: float = 0.0
    page: Path | None = None  # the report page (index.html), written beside the report
    runs_url: str = ""  # the MLflow runs table, best trial first


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the search after it recorded everything; ``result`` says what was done."""

    result: SearchResult


def run_search(options: SearchOptions) -> SearchResult:
    """The body of the stage: one search in this process, or ``options.workers`` processes.

    Raises:
        UserError: bad study, params, dataset, cache or storage; the study storage or the
            tracking server lost; every trial failing.
        SearchInterrupted: Ctrl-C, after recording the interrupted trial and writing the
            report (the result is attached).
    """
    if options.workers > 1:
        return run_workers(options, finish=search)
    return search(options)


def search(options: SearchOptions, instruments: Instruments | None = None) -> SearchResult:
    """One search in this process; ``instruments``: benchmarks' and tests' hooks."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
    quiet_interrupted_trials()
    setup = load_setup(options)
    check_search_folders(setup.choice, setup.params)  # before anything is trained or written
    with _tracking_params(setup) as tracked, _tracking_server_errors(), \
            _threads(options.n_jobs):
        session = _open(setup, tracked)
        with session.interrupts.installed():
            try:
                outcome = _run_trials(session, instruments or Instruments())
                return _conclude(session, outcome)
            except SearchInterrupted:
                raise
            except BaseException as exc:
                _end_crashed(session, exc)
                raise


# --------------------------------------------------------------------------------------------
# Set up
# --------------------------------------------------------------------------------------------
@dataclass
class _Session:
    """One search invocation's handles: the study, its MLflow side, this worker's lease."""

    setup: Setup
    params: Params  # the dataset's params as tracked (a dry run tracks in a temporary folder)
    optuna_study: Any
    client: Any  # MlflowClient
    experiment_id: str
    tracking_uri: str
    parent_id: str
    lease: Lease
    heartbeat: Heartbeat
    interrupts: Interrupts
    base_tags: dict[str, str]
    tracker: Any = None  # the trials' MlflowTrialTracker, once made
    storage_lost: bool = False  # the study database went away: write nothing more to it

    @property
    def tracking_lost(self) -> str | None:
        """Why the tracking server is taken for lost (None while it answers)."""
        return None if self.tracker is None else self.tracker.lost


def _open(setup: Setup, params: Params) -> _Session:
    """The MLflow store and experiment, the Optuna study, the parent run and the lease."""
    from mlflow.tracking import MlflowClient

    uri = tracking.configure(params, ignore_env=setup.options.dry_run)
    optuna_study = _open_study(setup)
    check_settings(optuna_study, setup.settings, where=setup.choice.display())
    experiment_id = tracking.experiment(optuna_study.study_name, params)
    meta = setup.cache.meta
    logger.info(
        "study %s on %r (%d training samples), storage %s (from %s), %d trial(s) so far",
        optuna_study.study_name, setup.dataset, meta.n_train, setup.choice.display(),
        setup.choice.origin, len(optuna_study.trials),
    )
    base_tags = {
        **tracking.run_tags(meta, params.root),
        "pipeline.study": setup.study.name,
        "pipeline.dataset": setup.dataset,
        "pipeline.fingerprint": meta.fingerprint,
        "pipeline.storage": setup.choice.display(),
    }
    client = MlflowClient()
    parent_id = parent.create_parent(
        client, experiment_id, dry_run=setup.options.dry_run,
        tags={**base_tags, "optuna.study": optuna_study.study_name, "pipeline.role": "search",
              "mlflow.note.content": setup.study.description},
    )
    lease = workers.new_lease(parent_id)
    heartbeat = Heartbeat(optuna_study, lease, interval_s=params.search.heartbeat_interval_s)
    return _Session(
        setup=setup, params=params, optuna_study=optuna_study, client=client,
        experiment_id=experiment_id, tracking_uri=uri, parent_id=parent_id, lease=lease,
        heartbeat=heartbeat, interrupts=Interrupts(), base_tags=base_tags,
    )


def _open_study(setup: Setup) -> Any:
    spec, search_params = setup.study, setup.params.search
    storage = open_storage(
        setup.choice, heartbeat_interval_s=search_params.heartbeat_interval_s,
        grace_period_s=search_params.grace_period_s, max_retry=search_params.max_retry,
    )
    name = spec.study_name(setup.dataset)
    seed = spec.sampler.seed if spec.sampler.seed is not None else setup.params.seed
    pruner = AuditedPruner(make_pruner(spec), share=search_params.prune_audit, seed=seed)
    study = optuna.create_study(
        study_name=name, storage=storage, pruner=pruner, direction=spec.direction,
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


@contextlib.contextmanager
def _tracking_params(setup: Setup) -> Iterator[Params]:
    """The params to track with: as given, or (dry run) MLflow in a temporary folder."""
    if not setup.options.dry_run:
        yield setup.params
        return
    with tempfile.TemporaryDirectory(prefix="search-dry-run-") as tmp:
        yield setup.params.with_overrides(
            {"mlflow.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
             "mlflow.artifacts_dir": f"{tmp}/artifacts"},
            origin="--dry-run",
        )


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


@contextlib.contextmanager
def _threads(n_jobs: int) -> Iterator[None]:
    """Trials in ``n_jobs`` threads share the cores torch would use for one."""
    import torch

    before = torch.get_num_threads()
    if n_jobs > 1:
        torch.set_num_threads(max(1, before // n_jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------
Ending = Literal["done", "interrupted", "storage lost"]


@dataclass
class _Outcome:
    """How this run's trials ended, for :func:`_conclude`."""

    ending: Ending
    budget: budgets.RunBudget
    progress: SearchProgress
    reaped: list[int]
    failed_records: dict[int, str]  # trials whose MLflow record could not be completed
    storage_error: BaseException | None = None
    wall_s: float = 0.0


def _run_trials(session: _Session, instruments: Instruments) -> _Outcome:
    """Reap dead workers, then run trials until the budget, a Ctrl-C or a lost storage."""
    setup = session.setup
    reaped = _reap(session)
    if setup.extra_trials != 0:
        _start_study(session)
    done = budgets.counted(t.state.name for t in session.optuna_study.get_trials(deepcopy=False))
    gc_policy.settle()  # start-up done: the libraries stay out of later collections
    budget = budgets.run_budget(
        extra=setup.extra_trials, total=setup.study_total, done=done,
        timeout_s=setup.timeout_s, trial_time_share=setup.params.search.trial_time_share,
        epoch_cap=DRY_RUN_EPOCHS if setup.options.dry_run else None,
    ).start_clock()
    patience = _patience_rule(setup.study)
    if patience is not None and _done_already(session, patience):
        budget = dataclasses.replace(budget, n_trials=0)
    logger.info("budget: %s", budget.describe(done))
    objective = _objective(session, budget, instruments)
    _log_parent_params(session, objective.plan.describe(), budget)
    progress = SearchProgress(study=setup.study, n_trials=budget.n_trials)
    objective.on_epoch = progress.epoch
    t0 = time.perf_counter()
    ending: Ending = "done"
    storage_error: BaseException | None = None
    try:
        ending, storage_error = _optimize(session, objective, budget, progress, patience)
    finally:
        progress.close()
        failed_records = session.tracker.flush()  # every trial's run is complete now
        session.tracker.close()
        if ending == "storage lost":
            session.storage_lost = True
            session.heartbeat.stop()
        else:
            _mark_lost_records(session.optuna_study, failed_records)
            session.heartbeat.end()
    return _Outcome(ending=ending, budget=budget, progress=progress, reaped=reaped,
                    failed_records=failed_records, storage_error=storage_error,
                    wall_s=time.perf_counter() - t0)


def _patience_rule(spec: StudySpec) -> budgets.PatienceRule | None:
    """The study's stop rule (``budget.patience``), the sampler's start-up trials not counted."""
    if spec.budget.patience is None:
        return None
    return budgets.PatienceRule(spec.budget.patience, spec.direction,
                                warmup=spec.sampler.startup_trials)


def _done_already(session: _Session, patience: budgets.PatienceRule) -> bool:
    """Whether the study's last trials already show it is done (``budget.patience``)."""
    done = patience.done(session.optuna_study.get_trials(deepcopy=False))
    if done is None:
        return False
    flat, best = done
    logger.info("the study is done: its last %d trials did not beat the best (trial %d) by "
                "more than its standard error (budget.patience: %d); no new trial",
                flat, best.number, patience.patience)
    return True


def _start_study(session: _Session) -> None:
    """A new study's first trial is the params.yaml configuration; ``--warm-start`` queues an
    earlier study's best configurations (:mod:`pipeline.study.starts`)."""
    setup, study = session.setup, session.optuna_study
    lock = functools.partial(study_lock, setup.choice, study._storage, study.study_name)
    starts.queue_baseline(study, setup.study.space, setup.params, lock)
    earlier = setup.options.warm_start_from()
    if earlier is not None:
        name, dataset = earlier
        starts.warm_start(study, _earlier_study(setup, name, dataset or setup.dataset),
                          setup.study.space, setup.params, lock)


def _earlier_study(setup: Setup, name: str, dataset: str) -> Any:
    """The Optuna study ``<name>-<dataset>`` where this search would find it."""
    study_name = f"{name}-{dataset}"
    choice = setup.choice if setup.choice.kind != "journal" else resolve_storage(
        setup.options.storage, params_value=setup.params.search.storage,
        root=setup.params.root, studies_dir=STUDIES_DIR, study_name=study_name,
        params_source=setup.params.source)
    if choice.kind == "journal" and not Path(choice.target).is_file():
        raise UserError(f"--warm-start: no study {study_name!r} ({choice.display()} does "
                        "not exist); run it first or name another")
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(choice))
    except KeyError:
        raise UserError(f"--warm-start: no study {study_name!r} in {choice.display()}; run "
                        "it first or name another") from None


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


def _objective(session: _Session, budget: budgets.RunBudget, instruments: Instruments) -> Any:
    from pipeline.study.objective import SETTINGS_ATTR, Objective
    from pipeline.study.trial_runs import MlflowTrialTracker, RunTarget

    setup = session.setup
    target = RunTarget(
        experiment_id=session.experiment_id, parent_run_id=session.parent_id,
        optuna_study=session.optuna_study.study_name,
        base_tags={**session.base_tags, "pipeline.role": "trial"},
        metric=setup.study.metric, direction=setup.study.direction,
    )
    tracker = MlflowTrialTracker(
        target, meta=setup.cache.meta, times=instruments.times,
        writer=record_writer(instruments.record_writer, device=setup.device,
                             n_jobs=setup.options.n_jobs),
        shield=session.interrupts.shield,
    )
    session.tracker = tracker
    objective = Objective(
        params=session.params, study=setup.study, cache=setup.cache, device=setup.device,
        tracker=tracker, stop=session.interrupts.stop, budget=budget,
        trial_attrs={WORKER_ATTR: session.lease.id,
                     SETTINGS_ATTR: settings_digest(setup.settings)},
    )
    tracker.example = objective.example
    tracker.start_recorder()  # it warms up (imports, torch.export) while trial 0 trains
    return objective


def _log_parent_params(session: _Session, validation: str, budget: budgets.RunBudget) -> None:
    setup = session.setup
    parent.log_parent_params(session.client, session.parent_id, {
        **setup.study.summary(),
        "study.description": setup.study.description,
        "dataset": setup.dataset,
        "fingerprint": setup.cache.meta.fingerprint,
        "storage": setup.choice.display(),
        "storage.origin": setup.choice.origin,
        "validation": validation,
        "run.n_trials": str(budget.n_trials),
        "run.study_total": str(budget.total),
        "run.timeout_s": str(budget.timeout_s),
        "run.n_jobs": str(setup.options.n_jobs),
        "run.device": str(setup.device),
        "run.dry_run": str(setup.options.dry_run),
    })
    logger.info("MLflow experiment %r, parent run %s; validation: %s",
                session.optuna_study.study_name, session.parent_id, validation)


def _optimize(session: _Session, objective: Any, budget: budgets.RunBudget,
              progress: SearchProgress, patience: budgets.PatienceRule | None
              ) -> tuple[Ending, BaseException | None]:
    """Optuna's loop over trials; how it ended, and the lost storage's error if that was it."""
    if budget.n_trials == 0:
        return "done", None
    study = session.optuna_study
    callbacks: list[Any] = [progress, lambda s, t: _reap_quietly(session),
                            budgets.stop_when_spent(budget),
                            functools.partial(_stop_when_asked, session)]
    if patience is not None:
        callbacks.append(patience.callback())
    admission: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if budget.total is not None:
        callbacks.append(budgets.stop_at_total(budget.total))
        lock = functools.partial(study_lock, session.setup.choice, study._storage,
                                 study.study_name)
        admission = budgets.admitting(study, budget.total, lock)
    try:
        with warnings.catch_warnings(), admission:
            warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna")
            study.optimize(objective, n_trials=budget.n_trials,
                           n_jobs=session.setup.options.n_jobs, catch=(Exception,),
                           callbacks=callbacks, gc_after_trial=False, show_progress_bar=False)
    except KeyboardInterrupt:
        return "interrupted", None
    except budgets.BudgetReached as exc:  # other workers took the last places
        logger.info("%s; this worker stops", exc)
    except Exception as exc:
        if not caused_by(exc, SQLAlchemyError):  # a lost study database
            raise
        return "storage lost", exc
    # A Ctrl-C held while a record was written: that trial finished, no other starts.
    return ("interrupted" if session.interrupts.requested else "done"), None


def _stop_when_asked(session: _Session, optuna_study: Any, trial: Any) -> None:
    """Optuna callback: after a Ctrl-C that waited for a record, or once the tracking server
    is lost (a trial must be an MLflow run), start no new trial."""
    if session.interrupts.requested or session.tracking_lost is not None:
        optuna_study.stop()


def _reap(session: _Session) -> list[int]:
    search_params = session.params.search
    return workers.reap(
        session.optuna_study, session.client, me=session.lease.id,
        grace_s=search_params.grace_period_s, interval_s=search_params.heartbeat_interval_s,
        max_retry=search_params.max_retry,
    )


def _reap_quietly(session: _Session) -> None:
    """Between trials: a failure to clean up after others must not stop this search."""
    try:
        _reap(session)
    except Exception as exc:  # noqa: BLE001 - the end-of-search reap tries again
        logger.warning("could not check for dead workers: %s", exc)


def _mark_lost_records(optuna_study: Any, failed: dict[int, str]) -> None:
    """Say in the study which trials' records are incomplete (promote passes over them)."""
    for number, why in failed.items():
        try:
            optuna_study.set_user_attr(f"{RECORD_LOST_PREFIX}{number}", why[:1000])
        except Exception as exc:  # noqa: BLE001 - the search's last line names them too
            logger.warning("could not mark trial %d's record as lost: %s", number, exc)


# --------------------------------------------------------------------------------------------
# End: every way a search ends, in one place
# --------------------------------------------------------------------------------------------
def _conclude(session: _Session, outcome: _Outcome) -> SearchResult:
    """End this search the way it ended; :func:`_end_crashed` covers an unexpected error.

    - the study database went away: its runs end FAILED, one line says to rerun;
    - the tracking server went away: the report is written, one line says to ``--reconcile``
      once it is back (nothing more is sent to the lost server);
    - otherwise (done, or Ctrl-C): dead workers reaped, ``--reconcile`` done, the report
      written, the parent run FINISHED (KILLED for a Ctrl-C); then trials whose records failed,
      or a search whose every trial failed, end in one line, and a Ctrl-C as
      :class:`SearchInterrupted` carrying the result.
    """
    if outcome.ending == "storage lost":
        raise _storage_lost(session, outcome)
    if session.tracking_lost is not None:
        raise _tracking_lost(session, outcome)
    result = _finish(session, outcome)
    if outcome.failed_records:
        raise UserError(
            f"the MLflow runs of trial(s) {sorted(outcome.failed_records)} could not be "
            "completed (see the errors above); the Optuna study and the report are written, "
            "and `--reconcile` closes those runs"
        )
    if outcome.progress.gave_up:
        raise UserError(
            f"{session.setup.study.source}: the last {MAX_CONSECUTIVE_FAILURES} trials all "
            "failed (see the warnings above and the MLflow runs' pipeline.error tag); stopped"
        )
    if result.interrupted:
        stopped = SearchInterrupted()
        stopped.result = result
        raise stopped
    return result


def _finish(session: _Session, outcome: _Outcome) -> SearchResult:
    """Reap, reconcile, write the report and its page and end the parent run; what this
    search did."""
    from pipeline.study import report_page  # matplotlib: only when a search ends

    setup = session.setup
    reaped = outcome.reaped + _reap(session)
    reconciled = None
    if setup.options.reconcile:
        reconciled = reconcile(session.optuna_study, session.client, session.experiment_id,
                               me=session.lease.id)
    report, path = _report(session)
    interrupted = outcome.ending == "interrupted"
    published = None
    with session.interrupts.shield():
        if not setup.options.dry_run:
            report.write(path)
            published = report_page.publish(
                session.optuna_study, spec=setup.study, params=session.params,
                meta=setup.cache.meta, report=report, report_file=path)
        parent.finish_parent(
            session.client, session.parent_id, session.optuna_study, report=report,
            report_name=path.name, interrupted=interrupted,
            this_run=len(outcome.progress.numbers), wall_s=outcome.wall_s,
        )
    return SearchResult(
        study=setup.study, optuna_study=session.optuna_study.study_name, dataset=setup.dataset,
        storage=setup.choice.display(), report=report,
        report_path=None if setup.options.dry_run else path, parent_run_id=session.parent_id,
        experiment_id=session.experiment_id, tracking_uri=session.tracking_uri,
        new_trials=outcome.progress.numbers, reaped=reaped, reconciled=reconciled,
        interrupted=interrupted or session.interrupts.requested,
        dry_run=setup.options.dry_run, wall_s=outcome.wall_s,
        page=published.index if published else None,
        runs_url=published.runs_url if published else "",
    )


def _storage_lost(session: _Session, outcome: _Outcome) -> UserError:
    """The study database went away: end this worker's MLflow runs, say what to do."""
    exc = outcome.storage_error
    assert exc is not None
    choice = session.setup.choice
    reason = (f"lost the study storage {choice.display()} "
              f"({redact_text(first_line(exc), choice.target)})")
    client = session.client
    for run in client.search_runs(
        [session.experiment_id], f"tags.`mlflow.parentRunId` = '{session.parent_id}'"
        " and attributes.status = 'RUNNING'",
    ):
        number = run.data.tags.get("optuna.trial_number")
        end_trial_run(client, run.info.run_id, number=None if number is None else int(number),
                      state="FAIL", reason=reason)
    end_parent_run(client, session.parent_id, status="FAILED", reason=reason)
    return UserError(
        f"{reason}; every finished trial is kept in the study. Its running trial is failed "
        "and retried by the next search once the storage is back: rerun the same command"
    )


def _tracking_lost(session: _Session, outcome: _Outcome) -> UserError:
    """The tracking server went away: the study (Optuna) holds every result; write the
    report, say in one line what is missing and how to close the open runs later."""
    setup = session.setup
    report, path = _report(session, with_parent=False)
    report.write(path)
    failed = outcome.failed_records
    missing = (f"; trial(s) {sorted(failed)} finished without a complete MLflow run (their "
               "results are in the study, their runs have no model)" if failed else "")
    return UserError(
        f"{session.tracking_lost} at {redact(session.tracking_uri)}; the search stopped after "
        f"{len(outcome.progress.numbers)} trial(s), every finished trial is kept in the study "
        f"and in {path.name}{missing}. Once the server is back, `python -m pipeline.search "
        f"--study {setup.study.name} --dataset {setup.dataset} --reconcile` closes the runs "
        "left open, and a rerun continues the study"
    )


def _end_crashed(session: _Session, exc: BaseException) -> None:
    """Whatever else stopped the search, its parent run does not stay RUNNING (and the lease
    says this worker ended, unless the study storage itself is gone)."""
    if session.storage_lost or caused_by(exc, SQLAlchemyError):
        session.heartbeat.stop()
    else:
        session.heartbeat.end()
    if session.tracking_lost is not None or _is_unreachable(exc):
        return  # every request would wait through MLflow's retries; --reconcile ends it
    with contextlib.suppress(Exception):
        if session.client.get_run(session.parent_id).info.status == "RUNNING":
            reason = " ".join(str(exc).split()) or type(exc).__name__
            end_parent_run(session.client, session.parent_id, status="FAILED", reason=reason)


def _report(session: _Session, *, with_parent: bool = True) -> tuple[StudyReport, Path]:
    """The study's report as it stands, and the file it belongs in."""
    setup = session.setup
    report = from_study(
        session.optuna_study, study=setup.study, dataset=setup.dataset,
        storage=setup.choice.display(), fingerprint=setup.cache.meta.fingerprint,
        parent_run_id=session.parent_id if with_parent else "",
        experiment_id=session.experiment_id,
    )
    return report, report_path(session.params, setup.study.name, setup.dataset,
                               setup.default_dataset)


def _is_unreachable(exc: BaseException) -> bool:
    """A lost MLflow tracking server (see ``tracking.is_unreachable``)."""
    return isinstance(exc, TrackingUnreachable) or tracking.is_unreachable(exc)

