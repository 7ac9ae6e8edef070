"""Stage ``promote``: the study's best trial becomes a registered model version; the gate
decides whether it takes the ``champion`` alias.

Reads ``reports/studies/<study>.json`` (written by ``pipeline.search``; ``best.model_uri`` is the
best completed trial's model), the dataset's cache (``data/cache/<dataset>/``, held-out test
split) and the MLflow registry. Writes a new version of ``registry.model_name`` (once per run:
rerunning with the same best trial registers nothing new), its tags, the ``champion`` or
``challenger`` alias, and the decision record ``reports/promote/<study>.json``.

    python -m pipeline.promote --study capacity [--params params.yaml] [--force] [--report PATH]

``--allow-interrupted`` also considers trials that Ctrl-C stopped (default: finished trials
only). ``--force`` moves ``champion`` to the candidate even when it does not beat the current
champion (a human decision, recorded in the version's ``forced`` / ``forced_by`` tags).
See :mod:`pipeline.registry.gate` for the gate's rules.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pipeline import cli
from pipeline.atomic import write_json_atomic
from pipeline.config import Params, load_params
from pipeline.errors import UserError
from pipeline.registry.gate import CHAMPION, Candidate, Decision, alias_uri
from pipeline.secrets import redact
from pipeline.study.report import StudyReport, find_report

logger = logging.getLogger(__name__)



def candidate_from_report(
    report: StudyReport, study: str, path: Path, *, allow_interrupted: bool = False
) -> Candidate:
    """The study's best trial as a promotion candidate; UserError when there is none yet.

    By default only trials that finished count; ``allow_interrupted`` also takes a trial that
    Ctrl-C stopped (it keeps the model of its best epoch).
    """
    best = report.best_with_interrupted if allow_interrupted else report.best
    if not isinstance(best, dict) or not best.get("run_id"):
        raise UserError(
            f"{path}: study {study!r} has no completed trial with a logged model yet; run more "
            f"trials (python -m pipeline.search --study {study} --dataset {report.dataset} "
            "--n-trials N)"
        )
    run_id = str(best["run_id"])
    number = best.get("number")
    value = best.get("value")
    return Candidate(
        study=study,
        dataset=report.dataset,
        run_id=run_id,
        model_uri=str(best.get("model_uri") or f"runs:/{run_id}/model"),
        trial=None if number is None else int(number),
        value=None if value is None else float(value),
    )


def records_dir(params: Params) -> Path:
    return params.path(params.registry.reports_dir)


def build_record(
    *, study: str, candidate: Candidate, decision: Decision, tracking_uri: str
) -> dict[str, Any]:
    """The decision record: deterministic for the same registry state (no timestamps)."""
    name = decision.registered_model
    return {
        "study": study,
        "dataset": candidate.dataset,
        "registered_model": name,
        "tracking_uri": tracking_uri,
        "fingerprint": decision.fingerprint,
        "metric": decision.metric,
        "higher_is_better": decision.higher_is_better,
        "candidate": {
            "version": decision.candidate_version,
            "new_version": decision.new_version,
            "run_id": candidate.run_id,
            "trial": candidate.trial,
            "model_uri": candidate.model_uri,
            "study_value": candidate.value,
            "test_metrics": decision.candidate_metrics,
        },
        "previous_champion": decision.previous_champion,
        "decision": {
            "alias": decision.alias,
            "moved": decision.moved,
            "forced": decision.forced,
            "reason": decision.reason,
        },
        "champion": {
            "version": decision.champion_version,
            "uri": alias_uri(name, CHAMPION),
        },
    }


def summary(record: dict[str, Any]) -> str:
    cand = record["candidate"]
    dec = record["decision"]
    metrics = ", ".join(
        f"{k}={v:.4f}" for k, v in cand["test_metrics"].items() if "/" not in k
    )
    trial = "?" if cand["trial"] is None else cand["trial"]
    new = "new version" if cand["new_version"] else "already registered"
    lines = [
        f"study {record['study']} ({record['dataset']}): best trial #{trial}, "
        f"run {cand['run_id']}",
        f"{record['registered_model']} v{cand['version']} ({new}); test: {metrics}",
        f"{'champion' if dec['alias'] == 'champion' else 'challenger'}: {dec['reason']}",
        f"champion is v{record['champion']['version']}: {record['champion']['uri']}",
    ]
    return "\n".join(lines)


def display_uri(uri: str, root: Path) -> str:
    """The tracking URI for the record: secrets redacted, the project root left out."""

    return redact(uri).replace(f"{root.resolve()}/", "")


def run_promote(
    params: Params,
    *,
    study: str,
    dataset: str | None = None,
    force: bool = False,
    report: Path | None = None,
    allow_interrupted: bool = False,
) -> dict[str, Any]:
    """Promote ``study``'s best trial; write and return the decision record."""
    from mlflow import MlflowClient

    from pipeline import tracking
    from pipeline.data.cache import load_cache
    from pipeline.registry import gate as registry

    path = find_report(params, study, dataset)
    candidate = candidate_from_report(
        StudyReport.read(path, study), study, path, allow_interrupted=allow_interrupted
    )
    params.dataset_entry(candidate.dataset)  # must still be declared
    cache = load_cache(params.cache_dir(candidate.dataset))
    uri = tracking.configure(params)
    name = registry.registered_model_name(params, candidate.dataset)
    decision = registry.promote(
        MlflowClient(),
        name=name,
        candidate=candidate,
        cache=cache,
        metric=registry.gate_metric(params, cache.meta.task),
        force=force,
    )
    record = build_record(
        study=study, candidate=candidate, decision=decision,
        tracking_uri=display_uri(uri, params.root),
    )
    out = report or records_dir(params) / path.name
    write_json_atomic(out, record, sort_keys=True)
    logger.info("wrote %s", out)
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.promote",
        description="Register a study's best trial and move the 'champion' alias to it if it "
        "beats the current champion on the held-out test split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--study", required=True, help="study name (reports/studies/NAME.json)")
    parser.add_argument("--params", default="params.yaml", help="params file (project root)")
    parser.add_argument(
        "--dataset", default=None,
        help="for a search run with --dataset on another dataset than the study's own "
        "(reads reports/studies/STUDY-DATASET.json)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="make the candidate champion even if it does not beat the current one (recorded "
        "in the version's tags)",
    )
    parser.add_argument(
        "--allow-interrupted", action="store_true",
        help="also consider trials stopped by Ctrl-C (they keep the model of their best epoch); "
        "by default only finished trials are candidates",
    )
    parser.add_argument(
        "--report", type=Path, default=None,
        help="where to write the decision record (default: reports/promote/ + the study "
        "report's file name)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> int:
        params = load_params(args.params)
        record = run_promote(
            params, study=args.study, dataset=args.dataset, force=args.force, report=args.report,
            allow_interrupted=args.allow_interrupted,
        )
        print(summary(record))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
