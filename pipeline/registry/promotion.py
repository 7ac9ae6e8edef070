"""Promoting a study's best trial: the library side of ``python -m pipeline.promote``.

Reads the study report (:mod:`pipeline.study.report`), runs the champion gate
(:func:`pipeline.registry.gate.promote`) and writes the decision record
``reports/promote/<study>.json`` (deterministic for the same registry state: no timestamps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.atomic import check_writable, write_json_atomic
from pipeline.config import Params
from pipeline.data.cache import load_cache
from pipeline.errors import UserError
from pipeline.registry import gate as registry
from pipeline.registry.gate import CHAMPION, Candidate, Decision, alias_uri
from pipeline.secrets import redact
from pipeline.study.report import SELECTIONS, StudyReport, find_report

logger = logging.getLogger(__name__)


def candidate_from_report(
    report: StudyReport, study: str, path: Path, *, allow_interrupted: bool = False,
    select: str = "best",
) -> Candidate:
    """The trial ``select`` names as a promotion candidate; UserError when there is none yet.

    ``best``: the best finished trial (``allow_interrupted`` also takes one Ctrl-C stopped,
    which keeps the model of its best epoch). ``smallest_within_1se``: the smallest model
    within one standard error of the best (finished trials only).
    """
    if select not in SELECTIONS:
        raise UserError(f"--select: expected one of {', '.join(SELECTIONS)}, got {select!r}")
    if select == "smallest_within_1se" and allow_interrupted:
        raise UserError("--allow-interrupted takes the best trial; leave it out with "
                        "--select smallest_within_1se (finished trials only)")
    entry = (report.best_with_interrupted if allow_interrupted else report.best) \
        if select == "best" else report.smallest_within_1se
    if not isinstance(entry, dict) or not entry.get("run_id"):
        raise UserError(
            f"{path}: study {study!r} has no completed trial with a logged model yet; run more "
            f"trials (python -m pipeline.search --study {study} --dataset {report.dataset} "
            "--n-trials N)" if report.best is None else
            f"{path}: the study report names no {select} trial (written before promote could "
            f"select it); rewrite it with python -m pipeline.search --study {study} "
            f"--dataset {report.dataset} --n-trials 0"
        )
    run_id = str(entry["run_id"])
    number, value = entry.get("number"), entry.get("value")
    return Candidate(
        study=study,
        dataset=report.dataset,
        run_id=run_id,
        model_uri=str(entry.get("model_uri") or f"runs:/{run_id}/model"),
        trial=None if number is None else int(number),
        value=None if value is None else float(value),
        selection=selection_tags(select, entry, metric=report.metric),
    )


def selection_tags(select: str, entry: dict[str, Any], *, metric: str) -> dict[str, str]:
    """``selected_by``, the reason in words and the rule's numbers, as version tags."""
    tags = {"selected_by": select}
    rule = entry.get("rule")
    if select != "smallest_within_1se" or not isinstance(rule, dict):
        return tags
    tags.update({f"selection.{k}": "" if v is None else f"{v:.6g}" if isinstance(v, float)
                 else str(v) for k, v in rule.items()})
    spread = (f" ± {rule['best_value_std']:.4g} over {rule['folds']} folds, standard error "
              f"{rule['standard_error']:.4g}" if rule.get("best_value_std") is not None
              else " (no fold spread: standard error 0)")
    tags["selection_reason"] = (
        f"trial {entry['number']} ({_count(entry.get('n_params'))} parameters, {metric} "
        f"{float(entry['value']):.4g}) is the smallest model within one standard error of the "
        f"best, trial {rule['best_trial']} ({metric} {float(rule['best_value']):.4g}{spread}, "
        f"{_count(rule.get('best_n_params'))} parameters): threshold "
        f"{float(rule['threshold']):.4g}"
    )
    return tags


def _count(n: Any) -> str:
    return f"{int(n):,}" if n is not None else "?"


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
            "selection": candidate.selection,
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
    selection = cand.get("selection") or {}
    how = ("smallest within one standard error of the best"
           if selection.get("selected_by") == "smallest_within_1se" else "best")
    lines = [
        f"study {record['study']} ({record['dataset']}): {how} trial #{trial}, "
        f"run {cand['run_id']}",
        *([f"selected: {selection['selection_reason']}"] if "selection_reason" in selection
          else []),
        f"{record['registered_model']} v{cand['version']} ({new}); test: {metrics}",
        f"{'champion' if dec['alias'] == 'champion' else 'challenger'}: {dec['reason']}",
        f"champion is v{record['champion']['version']}: {record['champion']['uri']}",
    ]
    return "\n".join(lines)


def display_uri(uri: str, root: Path) -> str:
    """The tracking URI for the record: secrets redacted, the project root left out."""

    return redact(uri).replace(f"{root.resolve()}/", "")


@dataclass(frozen=True)
class PromoteOptions:
    """What ``python -m pipeline.promote`` can set."""

    params: Params
    study: str
    dataset: str | None = None  # for a search run with --dataset on another dataset
    force: bool = False  # champion even if it does not beat the current one (a human decision)
    report: Path | None = None  # where the decision record goes (default: reports/promote/)
    allow_interrupted: bool = False  # also consider trials Ctrl-C stopped
    select: str | None = None  # best | smallest_within_1se (None: registry.select)


@dataclass(frozen=True)
class PromoteResult:
    record: dict[str, Any]  # the decision record, as written
    path: Path  # where it was written


def run_promote(options: PromoteOptions) -> PromoteResult:
    """Promote the study's best trial; write and return the decision record."""
    from mlflow import MlflowClient

    params, study = options.params, options.study
    path = find_report(params, study, options.dataset)
    out = options.report or records_dir(params) / path.name
    check_writable({out.parent: "the promote decision (registry.reports_dir, or --report)"})
    candidate = candidate_from_report(
        StudyReport.read(path, study), study, path, allow_interrupted=options.allow_interrupted,
        select=options.select or params.registry.select,
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
        force=options.force,
    )
    record = build_record(
        study=study, candidate=candidate, decision=decision,
        tracking_uri=display_uri(uri, params.root),
    )
    write_json_atomic(out, record, sort_keys=True)
    logger.info("wrote %s", out)
    return PromoteResult(record=record, path=out)
