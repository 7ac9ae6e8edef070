"""The study report: the contract between ``search`` (writes it) and ``promote`` (reads it).

``reports/studies/<study>.json`` for a search on the study's own dataset, else
``<study>-<dataset>.json``; both names are decided here only (:func:`report_path`,
:func:`find_report`). The JSON keys are those of :meth:`StudyReport.to_json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from pipeline.atomic import write_json_atomic
from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.study.audit import pruning_summary
from pipeline.study.trial_attrs import BASELINE_ATTR, RUNG_ATTR, STOPPED_FLAT_ATTR

TOP_TRIALS = 10  # rows of the leaderboard printed at the end of a search
# Study user attributes ``pipeline.record_lost.<trial number>``: why that trial's MLflow record
# could not be completed (a lost tracking server, a full disk). Its result stands in the study,
# but its run has no model: promote passes over it. On the study, not the trial, because a
# record written after its trial finished (the recorder process) can fail when the trial no
# longer takes attributes.
RECORD_LOST_PREFIX = "pipeline.record_lost."
# Trial user attribute: the model's parameter count (what "how big" means on the report page and
# for ``registry.select: smallest_within_1se``).
N_PARAMS_ATTR = "n_params"
SELECTIONS = ("best", "smallest_within_1se")  # what promote may take (``registry.select``)
# Trial user attribute: the name of the trial's logged model (``runs:/<run>/<name>``), set when
# its run starts: MLflow's model list then tells the trials' models apart.
MODEL_NAME_ATTR = "mlflow_model_name"


def trial_model_name(number: int) -> str:
    """The logged model of trial ``number``: ``trial-<number>``."""
    return f"trial-{number}"


def lost_records(optuna_study: Any) -> dict[int, str]:
    """Trial number -> why its MLflow record is incomplete."""
    return {int(k[len(RECORD_LOST_PREFIX):]): str(v) for k, v in optuna_study.user_attrs.items()
            if k.startswith(RECORD_LOST_PREFIX) and k[len(RECORD_LOST_PREFIX):].isdigit()}


@dataclass(frozen=True)
class StudyReport:
    """Every trial of the study (all workers, all runs) and its best, as JSON."""

    study: str
    description: str
    optuna_study: str
    dataset: str
    fingerprint: str
    direction: str
    metric: str
    storage: str  # redacted
    best: dict[str, Any] | None  # number, value, value_std, params, run_id, model_uri, epochs
    counts: dict[str, int]
    trials: list[dict[str, Any]] = field(default_factory=list)
    parent_run_id: str = ""
    experiment_id: str = ""
    # The best of the complete trials and of those Ctrl-C interrupted (which keep the model
    # of their best epoch): what `promote --allow-interrupted` takes.
    best_with_interrupted: dict[str, Any] | None = None
    # The study's first trial, the params.yaml configuration: number, state, value.
    baseline: dict[str, Any] | None = None
    # The smallest model (parameters) whose value is within one standard error of the best's
    # (:func:`one_standard_error`), as ``best`` plus ``n_params`` and ``rule`` (the numbers).
    smallest_within_1se: dict[str, Any] | None = None
    # What pruning did and what the audit says it cost (pipeline.study.audit.pruning_summary).
    pruning: dict[str, Any] | None = None
    # The search stopped because the study was done (budget.patience): after how many flat
    # trials, and the best trial then.
    stopped_flat: dict[str, Any] | None = None

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "n_trials": self.n_trials}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path, study: str) -> StudyReport:
        """The report at ``path``; UserError naming the file when it is missing or unusable."""
        if not path.is_file():
            raise UserError(
                f"{path}: no study report for study {study!r}; run the search first "
                f"(dvc repro or python -m pipeline.search --study {study})"
            )
        unusable = f"{path}: not a valid study report"
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{unusable} ({exc}); rerun the search") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a valid study report (expected a JSON object)")
        if not data.get("dataset"):
            raise UserError(f"{path}: the study report names no dataset; rerun the search")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise UserError(f"{unusable} ({exc}); rerun the search") from None


def from_study(
    optuna_study: Any, *, study: Any, dataset: str, storage: str, fingerprint: str,
    parent_run_id: str, experiment_id: str,
) -> StudyReport:
    """The report of every trial ``optuna_study`` holds."""

    trials = optuna_study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    # The best trials promote can take: finished (or, for the second, interrupted) with a
    # model in MLflow; a tie goes to the earlier trial, as Optuna's best_trial does.
    lost = lost_records(optuna_study)
    complete = [(float(t.value), t) for t in trials if t.state == TrialState.COMPLETE
                and t.value is not None and t.number not in lost]
    interrupted = [
        (float(t.user_attrs["pipeline.interrupted_value"]), t) for t in trials
        if t.state == TrialState.FAIL and "pipeline.interrupted_value" in t.user_attrs
        and t.user_attrs.get("mlflow_run_id") and t.number not in lost
    ]
    sign = -1.0 if study.direction == "maximize" else 1.0

    def best_of(pool: list[tuple[float, Any]]) -> dict[str, Any] | None:
        pool = [(v, t) for v, t in pool if math.isfinite(v)]
        if not pool:
            return None
        value, trial = min(pool, key=lambda vt: (sign * vt[0], vt[1].number))
        return _best_entry(trial, value)

    best, best_any = best_of(complete), best_of(complete + interrupted)
    first = next((t for t in trials if t.user_attrs.get(BASELINE_ATTR)), None)
    return StudyReport(
        study=study.name, description=study.description, optuna_study=optuna_study.study_name,
        dataset=dataset, fingerprint=fingerprint, direction=study.direction,
        metric=study.metric, storage=storage, best=best,
        counts={k: v for k, v in counts.items() if v or k in ("COMPLETE", "PRUNED", "FAIL")},
        trials=[_trial_row(t, lost.get(t.number)) for t in trials],
        parent_run_id=parent_run_id, experiment_id=experiment_id,
        best_with_interrupted=best_any,
        pruning=pruning_summary(trials, study.direction),
        stopped_flat=optuna_study.user_attrs.get(STOPPED_FLAT_ATTR),
        baseline=None if first is None else {
            "number": first.number, "state": first.state.name,
            "value": first.value if first.value is not None and math.isfinite(first.value)
            else None},
        smallest_within_1se=_smallest_entry(complete, study.direction),
    )


# --------------------------------------------------------------------------------------------
# The one-standard-error rule: the smallest model as good as the best within its fold spread
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    """A complete trial as the one-standard-error rule sees it."""

    number: int
    value: float
    value_std: float | None = None  # std of the value over the folds (None: a holdout)
    folds: int | None = None
    n_params: int | None = None


@dataclass(frozen=True)
class OneStandardError:
    """The best trial, the standard error of its value, and the rule's pick."""

    best: Choice
    pick: Choice
    standard_error: float  # value_std / sqrt(folds); 0 without a fold spread
    threshold: float  # the best value plus (minimize) or minus one standard error

    def numbers(self) -> dict[str, Any]:
        """What justified the pick, as plain values (report and registry tags)."""
        return {"best_trial": self.best.number, "best_value": self.best.value,
                "best_value_std": self.best.value_std, "best_n_params": self.best.n_params,
                "folds": self.best.folds, "standard_error": self.standard_error,
                "threshold": self.threshold, "n_params": self.pick.n_params}


def standard_error(choice: Choice) -> float:
    """The standard error of a trial's value: its fold spread over the root of its folds."""
    if choice.value_std is None or not choice.folds or choice.folds < 2:
        return 0.0
    return float(choice.value_std) / math.sqrt(choice.folds)


def one_standard_error(choices: Sequence[Choice], direction: str) -> OneStandardError | None:
    """The smallest model (fewest parameters) whose value is within one standard error of the
    best value; ties go to the better value, then the earlier trial. None without a trial.

    Trials without a parameter count cannot be picked (the best stays the pick when none has
    one). Without a fold spread (a holdout) the standard error is 0: only ties with the best
    qualify.
    """
    finite = [c for c in choices if math.isfinite(c.value)]
    if not finite:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    best = min(finite, key=lambda c: (sign * c.value, c.number))
    se = standard_error(best)
    threshold = best.value + sign * se
    slack = 1e-12 * max(1.0, abs(threshold))  # a value exactly at the threshold is within
    within = [c for c in finite
              if c.n_params is not None and sign * c.value <= sign * threshold + slack]
    pick = min(within, key=lambda c: (c.n_params or 0, sign * c.value, c.number),
               default=best)
    return OneStandardError(best=best, pick=pick, standard_error=se, threshold=threshold)


def trial_choice(trial: Any, value: float) -> Choice:
    """A trial (Optuna's) as a :class:`Choice`."""
    attrs = trial.user_attrs
    n_params = attrs.get(N_PARAMS_ATTR)
    return Choice(number=trial.number, value=value, value_std=attrs.get("value_std"),
                  folds=attrs.get("folds"), n_params=None if n_params is None else int(n_params))


def _smallest_entry(complete: list[tuple[float, Any]], direction: str) -> dict[str, Any] | None:
    """``smallest_within_1se`` of the report: the pick's entry and the rule's numbers."""
    pool = [(v, t) for v, t in complete if t.user_attrs.get("mlflow_run_id")]
    rule = one_standard_error([trial_choice(t, v) for v, t in pool], direction)
    if rule is None:
        return None
    value, trial = next((v, t) for v, t in pool if t.number == rule.pick.number)
    return {**_best_entry(trial, value), "n_params": rule.pick.n_params, "rule": rule.numbers()}


def _best_entry(trial: Any, value: float) -> dict[str, Any]:
    run_id = trial.user_attrs.get("mlflow_run_id")
    entry = {
        "number": trial.number,
        "value": value,
        "value_std": trial.user_attrs.get("value_std"),
        "params": dict(trial.params),
        "run_id": run_id,
        "model_uri": f"runs:/{run_id}/{model_name(trial)}" if run_id else None,
        "epochs": trial.user_attrs.get("epochs"),
    }
    if trial.state.name == "FAIL":
        entry["interrupted"] = True
    return entry


def model_name(trial: Any) -> str:
    """The name of a trial's logged model (``runs:/<run>/<name>``): ``trial-<N>``, or
    ``model`` for trials logged before models were named after their trial."""
    return str(trial.user_attrs.get(MODEL_NAME_ATTR, "model"))


def _trial_row(t: Any, record_lost: str | None) -> dict[str, Any]:
    row = {
        "number": t.number,
        "state": t.state.name,
        "value": t.value if t.value is None or math.isfinite(t.value) else None,
        "run_id": t.user_attrs.get("mlflow_run_id"),
        "epochs": t.user_attrs.get("epochs"),
        "params": dict(t.params),
    }
    if RUNG_ATTR in t.user_attrs:
        row["rung"] = t.user_attrs[RUNG_ATTR]
    for key in ("value_std", "folds", N_PARAMS_ATTR):
        if key in t.user_attrs:
            row[key] = t.user_attrs[key]
    for name in ("retry_of", "duplicate_of", "cut_short", "interrupted_value", "baseline",
                 "warm_start", "adjusted", "audit"):
        if f"pipeline.{name}" in t.user_attrs:
            row[name] = t.user_attrs[f"pipeline.{name}"]
    if record_lost is not None:
        row["record_lost"] = record_lost
    return row


# --------------------------------------------------------------------------------------------
# Where reports live
# --------------------------------------------------------------------------------------------
def report_path(params: Params, study: str, dataset: str, default_dataset: str) -> Path:
    """Where a search of ``study`` on ``dataset`` writes its report."""
    name = study if dataset == default_dataset else f"{study}-{dataset}"
    return params.path(params.search.reports_dir) / f"{name}.json"


def find_report(params: Params, study: str, dataset: str | None) -> Path:
    """The report to read for ``study`` (on ``dataset`` when given), as :func:`report_path`
    names it; UserError when a search on that dataset has not written one."""
    folder = params.path(params.search.reports_dir)
    plain = folder / f"{study}.json"
    if dataset is None:
        return plain
    other = folder / f"{study}-{dataset}.json"
    if other.is_file():
        return other
    if plain.is_file() and json.loads(plain.read_text()).get("dataset") == dataset:
        return plain
    raise UserError(
        f"{other}: no study report for study {study!r} on dataset {dataset!r}; run "
        f"python -m pipeline.search --study {study} --dataset {dataset} first"
    )


# --------------------------------------------------------------------------------------------
# For humans
# --------------------------------------------------------------------------------------------
def baseline_margin(report: StudyReport) -> str | None:
    """How the best trial compares with the first (the params.yaml configuration), in words;
    None without both."""
    first, best = report.baseline, report.best
    if first is None or best is None or first.get("value") is None:
        return None
    if first["number"] == best["number"]:
        return (f"the first trial (the params.yaml configuration, {report.metric}="
                f"{first['value']:.4f}) is still the best")
    change = (best["value"] - first["value"]) / abs(first["value"]) if first["value"] else 0.0
    better = change < 0 if report.direction == "minimize" else change > 0
    return (f"{abs(change):.1%} {'better' if better else 'worse'} than the first trial (the "
            f"params.yaml configuration, trial {first['number']}: {report.metric}="
            f"{first['value']:.4f})")


def fmt_value(value: Any) -> str:
    """A sampled value as people read it: floats to 3 significant digits."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def short_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={fmt_value(v)}" for k, v in values.items())


def leaderboard(report: StudyReport, space_keys: list[str]) -> list[str]:
    """The best complete trials as aligned text rows, and a line for what is not shown."""
    trials = report.trials
    # Complete trials only: a pruned trial's value is its last report, not a finished score.
    finished = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    finished.sort(key=lambda t: t["value"], reverse=report.direction == "maximize")
    shown = finished[:TOP_TRIALS]
    if not shown:
        return []
    header = ["trial", report.metric, "state", "epochs", *[k.split(".")[-1] for k in space_keys]]
    rows = [
        [str(t["number"]), f"{t['value']:.4f}", t["state"], str(t.get("epochs") or ""),
         *[fmt_value(t["params"].get(k, "")) for k in space_keys]]
        for t in shown
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    others = {s: sum(t["state"] == s for t in trials) for s in ("PRUNED", "FAIL", "RUNNING")}
    more = len(finished) - len(shown)
    hidden = [f"{more} more complete"] if more else []
    hidden += [f"{n} {state.lower()}" for state, n in others.items() if n]
    if hidden:
        lines.append(f"(not shown: {', '.join(hidden)})")
    return lines
