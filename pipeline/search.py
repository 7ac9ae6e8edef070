"""Stage ``search``: run an Optuna study over a dataset, every trial an MLflow run with its model.

Reads ``params.yaml``, ``studies/<study>.yaml`` and the tensor cache ``data/cache/<dataset>/``
(train part only). Writes the Optuna study (default: the journal file
``studies/<study>-<dataset>.journal``; ``PIPELINE_STORAGE`` / ``search.storage`` /
``--storage`` for another, e.g. PostgreSQL), MLflow runs in the experiment
``<study>-<dataset>`` (one parent run per invocation, one nested run ``trial-<number>`` per trial)
and the summary ``reports/studies/<study>.json`` (the DVC output; a run on another dataset than
the study's default writes ``<study>-<dataset>.json`` instead).

    python -m pipeline.search --study capacity [--dataset digits] [--n-trials 5] [--n-jobs 2]
    python -m pipeline.search --study capacity --workers 2   # two processes, one study
    python -m pipeline.search --list
    python -m pipeline.search --study capacity --dry-run   # one tiny trial, nothing written

The study file's ``budget.n_trials`` is the study's total: a run adds trials until that many are
done, counting every worker and every earlier run; running it again when the total is reached
trains nothing. ``--n-trials N`` adds N more (``0``: only create or check the study and clean up
after workers that died). Ctrl-C stops the running trial, keeps every finished trial, writes the
report and exits with code 130; the rerun continues.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pipeline import cli
from pipeline.config import PARAMS_FILE, load_params
from pipeline.errors import UserError
from pipeline.secrets import redact
from pipeline.study.audit import describe as describe_pruning
from pipeline.study.pool import OPTIONS_ON_STDIN
from pipeline.study.report import StudyReport, baseline_margin, leaderboard, short_params
from pipeline.study.runner import SearchInterrupted, SearchResult, run_search
from pipeline.study.setup import DRY_RUN_EPOCHS, SearchOptions
from pipeline.study.spec import STUDIES_DIR, list_studies
from pipeline.tracking import ui_url

logger = logging.getLogger(__name__)


def print_summary(result: SearchResult, out: TextIO) -> None:
    """The end-of-search summary: counts, the leaderboard, the best trial, where it all is."""
    report = result.report
    counts = ", ".join(f"{v} {k.lower()}" for k, v in report.counts.items() if v)
    head = "interrupted" if result.interrupted else "done"
    print(
        f"{result.optuna_study}: {head}; {len(result.new_trials)} new trial(s) in "
        f"{result.wall_s:.1f} s; {report.n_trials} in the study ({counts or 'none'})",
        file=out,
    )
    _print_state(result, out)
    rows = leaderboard(report, [p.name for p in result.study.space])
    if rows:
        print(file=out)
        print("\n".join(rows), file=out)
    print(file=out)
    _print_best(report, out)
    if result.dry_run:
        print("dry run: nothing was written (study in memory, MLflow in a temporary folder)",
              file=out)
        return
    _print_where(result, out)


def _print_state(result: SearchResult, out: TextIO) -> None:
    """What else the study's state says: dead workers, early stops, pruning, reconcile."""
    report = result.report
    if result.reaped:
        print(f"failed and queued again: trial(s) {result.reaped} of a worker that died",
              file=out)
    # Nothing is left behind silently: what this worker could not finish, someone will.
    if report.counts.get("WAITING"):
        print(f"{report.counts['WAITING']} trial(s) of a worker that died are queued again: the "
              "next search on this study runs them (rerun the same command)", file=out)
    if report.counts.get("RUNNING"):
        print(f"{report.counts['RUNNING']} trial(s) still running: on other workers, or on one "
              "that died too recently to be sure (the next search cleans up after it)",
              file=out)
    if report.stopped_flat:
        print(f"done: the last {report.stopped_flat['after']} trials did not beat the best "
              "by more than its standard error (budget.patience); the study stopped early",
              file=out)
    pruning = describe_pruning(report.pruning or {})
    if pruning:
        print(f"pruning: {pruning}", file=out)
    if result.reconciled is not None:
        print("reconcile: Optuna and MLflow agree" if not result.reconciled else
              "reconcile:\n  " + "\n  ".join(result.reconciled), file=out)


def _print_best(report: StudyReport, out: TextIO) -> None:
    if report.best is not None:
        best = report.best
        print(f"best: trial {best['number']} {report.metric}={best['value']:.4f} "
              f"{short_params(best['params'])}", file=out)
        print(f"      model {best['model_uri']}", file=out)
        margin = baseline_margin(report)
        if margin is not None:
            print(f"      {margin}", file=out)
    else:
        print("best: no trial completed yet", file=out)


def _print_where(result: SearchResult, out: TextIO) -> None:
    """Where it all is: the page, the report, the study storage, the MLflow runs."""
    if result.page is not None:
        print(f"page: {result.page} (open it in a browser: how big, which choices, what "
              "pruning cost)", file=out)
    if result.report_path is not None:
        print(f"report: {result.report_path}", file=out)
    print(f"storage: {result.storage}", file=out)
    runs = result.runs_url or ui_url(result.experiment_id)
    if result.tracking_uri.startswith("sqlite:"):
        print(f"MLflow: experiment {result.optuna_study!r} - `make ui`, then {runs}", file=out)
    else:
        print(f"MLflow: experiment {result.optuna_study!r} at {redact(result.tracking_uri)}"
              + (f": {result.runs_url}" if result.runs_url else ""), file=out)


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
                        help="add N trials (default: up to the study's total budget; 0: none, "
                             "only create or check the study)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="stop starting trials after S seconds (default: the study's)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage URL (no password: see $PIPELINE_STORAGE) or journal "
                             "file (default: $PIPELINE_STORAGE, search.storage, else "
                             "studies/<study>-<dataset>.journal)")
    parser.add_argument("--n-jobs", type=int, default=1, metavar="J",
                        help="trials in parallel threads (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run N worker processes on this machine, each with a share of "
                             "the cores (default: %(default)s)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: params.yaml)")
    parser.add_argument("--warm-start", metavar="STUDY[:DATASET]",
                        help="first queue the best configurations of an earlier study (e.g. "
                             "full:digits; default dataset: this search's)")
    parser.add_argument("--reconcile", action="store_true",
                        help="train nothing: clean up after dead workers, make every trial's "
                             "MLflow run agree with Optuna and print what differed")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"one trial of {DRY_RUN_EPOCHS} epochs, in-memory study, MLflow in "
                             "a temporary folder; writes nothing in the project")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    # A --workers process: its options as JSON on stdin (pipeline.study.pool).
    parser.add_argument(OPTIONS_ON_STDIN, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _options(args: argparse.Namespace) -> SearchOptions:
    if args.options_json:
        return SearchOptions.from_json(sys.stdin.read())
    if not args.study:
        raise UserError("--study NAME is required (python -m pipeline.search --list shows them)")
    return SearchOptions(
        study=args.study, params_path=args.params, dataset=args.dataset,
        n_trials=args.n_trials, timeout_s=args.timeout, storage=args.storage,
        n_jobs=args.n_jobs, workers=args.workers, dry_run=args.dry_run, device=args.device,
        reconcile=args.reconcile, warm_start=args.warm_start,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        if args.list:
            studies = list_studies(load_params(args.params).path(STUDIES_DIR))
            width = max((len(n) for n in studies), default=0)
            for name, desc in studies.items():
                print(f"{name.ljust(width)}  {desc}")
            return 0
        try:
            result = run_search(_options(args))
        except SearchInterrupted as stopped:
            print_summary(stopped.result, sys.stdout)
            raise
        print_summary(result, sys.stdout)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
