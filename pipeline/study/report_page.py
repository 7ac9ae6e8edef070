"""The study report people look at: one self-contained HTML page (no CDN) and its PNGs.

:func:`collect` gathers what the page shows from the Optuna study (values, fold spread, model
size, the per-epoch values the pruner saw, timings) and, when given, each trial's MLflow record
(train vs validation curves and the best epoch's summaries, named by :mod:`pipeline.tracking`'s
one naming rule). :func:`render` is pure: a :class:`StudyView` in, the page and its pictures
out. The page answers the questions the tutorials ask: how big the model must be (parameters
against train and validation loss, the smallest model within one standard error of the best),
which trials tie (mean ± std over folds), which models underfit or overfit, what a choice such
as batch norm, dropout or the optimizer does (with its spread, or "cannot tell"), and what
pruning cost.

Every ``pipeline.search`` writes it beside the study report (:func:`publish`) and logs it to
its parent run; ``python -m pipeline.report`` rebuilds it (:func:`run_report`).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from pipeline import tracking
from pipeline.atomic import check_writable, write_bytes_atomic
from pipeline.config import Params, load_params
from pipeline.data.cache import CacheMeta, read_meta
from pipeline.errors import UserError
from pipeline.study import page_figures as fig
from pipeline.study.importance import get_param_importances
from pipeline.study.page_figures import (
    TOP_PANELS,
    TOP_ROWS,
    ParamSpace,
    StudyView,
    TrialView,
    ranked,
    short,
)
from pipeline.study.report import N_PARAMS_ATTR, StudyReport, find_report
from pipeline.study.rungs import describe_rungs
from pipeline.study.spec import STUDIES_DIR, StudySpec, load_study
from pipeline.study.storage import open_storage, resolve_storage
from pipeline.study.trial_attrs import BASELINE_ATTR, RUNG_ATTR

logger = logging.getLogger(__name__)

__all__ = [
    "PAGE_SUFFIX",
    "Published",
    "ReportOptions",
    "ReportPage",
    "ReportResult",
    "RunData",
    "Sources",
    "StudyView",
    "TrialView",
    "collect",
    "mlflow_runs",
    "page_folder",
    "param_counter",
    "publish",
    "render",
    "run_report",
    "write_page",
]

PAGE_SUFFIX = "-page"  # reports/studies/<study>-page/index.html beside <study>.json
Curve = list[tuple[int, float]]
# The MLflow names of the curves the page draws, from the one naming rule (history key ->
# MLflow metric): a renamed metric cannot leave the page reading names nobody writes.
TRAIN_CURVE = tracking.curve_name("train/loss")
VAL_CURVE = tracking.curve_name("val/loss")
CURVE_KEYS = (TRAIN_CURVE, VAL_CURVE)


@dataclass(frozen=True)
class ReportPage:
    html: str
    pngs: dict[str, bytes]


@dataclass(frozen=True)
class RunData:
    """What the page reads from one trial's MLflow run."""

    curves: dict[str, Curve] = field(default_factory=dict)  # MLflow metric name -> (step, value)
    summaries: dict[str, float] = field(default_factory=dict)  # the run's step-0 metrics


@dataclass(frozen=True)
class Sources:
    """Where the page reads what the Optuna study does not hold."""

    runs: Callable[[str, bool], RunData] | None = None  # (run id, with curves) -> its record
    count_params: Callable[[dict[str, Any]], int | None] | None = None  # for older trials
    pruning: dict[str, Any] | None = None  # the pruning audit (StudyReport.pruning)
    max_epochs: int | None = None
    links: dict[str, str] = field(default_factory=dict)  # label -> URL
    rungs: str = ""  # the study's rung schedule in words (StudySpec's pruner)


def _curve(values: Mapping[int, float]) -> Curve:
    return [(int(k), float(v)) for k, v in sorted(values.items()) if math.isfinite(v)]


def _importances(study: optuna.Study, complete: Sequence[FrozenTrial]) -> dict[str, float] | None:
    searched = {k for t in complete for k in t.params}
    if len(complete) < 2 or len(searched) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None  # e.g. every complete trial has the same value


def _space(trials: Sequence[FrozenTrial]) -> dict[str, ParamSpace]:
    out: dict[str, ParamSpace] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                out[name] = ParamSpace("categorical", choices=tuple(dist.choices))
            elif isinstance(dist, IntDistribution | FloatDistribution):
                kind = "int" if isinstance(dist, IntDistribution) else "float"
                out[name] = ParamSpace(kind, low=float(dist.low), high=float(dist.high),
                                       log=bool(dist.log))
    return dict(sorted(out.items()))


def _train_key(metric: str) -> str | None:
    """``val/loss`` -> ``train/loss``: the objective's counterpart on the training data."""
    part, slash, name = metric.partition("/")
    return f"train/{name}" if slash and part == "val" else None


def _top(trials: Sequence[FrozenTrial], direction: str) -> set[int]:
    sign = -1.0 if direction == "maximize" else 1.0
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    done.sort(key=lambda t: (sign * float(t.value or 0.0), t.number))
    return {t.number for t in done[:TOP_PANELS]}


def _trial_view(t: FrozenTrial, *, metric: str, sources: Sources, curves: bool) -> TrialView:
    run_id = t.user_attrs.get("mlflow_run_id")
    duplicate = "pipeline.duplicate_of" in t.user_attrs
    data = RunData()
    if sources.runs is not None and run_id and t.state == TrialState.COMPLETE and not duplicate:
        data = sources.runs(str(run_id), curves)
    n_params = t.user_attrs.get(N_PARAMS_ATTR)
    if n_params is None and sources.count_params is not None and t.state in (
            TrialState.COMPLETE, TrialState.PRUNED):
        n_params = sources.count_params(dict(t.params))
    train_key = _train_key(metric)
    train_value = data.summaries.get(tracking.summary_name(train_key)) if train_key else None
    value = t.value if t.value is not None and math.isfinite(t.value) else None
    return TrialView(
        number=t.number, state=t.state.name, value=value,
        value_std=t.user_attrs.get("value_std"), params=dict(t.params),
        epochs=t.user_attrs.get("epochs"), reported=_curve(t.intermediate_values),
        train_loss=data.curves.get(TRAIN_CURVE, []), val_loss=data.curves.get(VAL_CURVE, []),
        n_params=None if n_params is None else int(n_params), folds=t.user_attrs.get("folds"),
        train_value=train_value if train_value is None or math.isfinite(train_value) else None,
        duration_s=t.duration.total_seconds() if t.duration is not None else None,
        duplicate=duplicate, baseline=bool(t.user_attrs.get(BASELINE_ATTR)),
        rung=t.user_attrs.get(RUNG_ATTR),
    )


def collect(
    study: optuna.Study, *, title: str, description: str, metric: str,
    sources: Sources | None = None,
) -> StudyView:
    """The view of ``study``; ``sources`` adds the MLflow records and what else is known."""
    sources = sources or Sources()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    direction = study.direction.name.lower()
    top = _top(trials, direction)
    return StudyView(
        title=title, description=description, metric=metric, direction=direction,
        trials=[_trial_view(t, metric=metric, sources=sources, curves=t.number in top)
                for t in trials],
        importances=_importances(study, complete), importance_trials=len(complete),
        space=_space(trials), pruning=sources.pruning, max_epochs=sources.max_epochs,
        links=dict(sources.links), rungs=sources.rungs,
    )


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:
1100px;color:#222;padding:0 1em}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid
#ddd}table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;border-bottom:1px solid
#eee;text-align:left}th{background:#f6f6f6}img{max-width:100%}.muted{color:#777}
.answer{background:#f3f8f3;border-left:4px solid #2e7d32;padding:.5em .9em}
.COMPLETE{color:#2e7d32}.PRUNED{color:#9e9e9e}.FAIL{color:#c62828}.pick{font-weight:bold}
"""


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(name: str, data: bytes | None, alt: str, why: str = "not enough trials") -> str:
    if data is None:
        return f'<p class="muted">No {html.escape(alt)} yet: {html.escape(why)}.</p>'
    b64 = base64.b64encode(data).decode()
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}" id="{name}">'


def _p(text: str, cls: str = "") -> str:
    return f'<p{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{html.escape(text)}</p>'


def _section(key: str, title: str, *body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>' + "\n".join(body) + "</section>"


def _value(value: float | None, std: float | None) -> str:
    if value is None:
        return ""
    # A holdout trial has no spread across folds: its value alone, not "± 0".
    return f"{value:.4f}" + ("" if std is None else f" ± {std:.4f}")


def _intro(view: StudyView) -> list[str]:
    counts = {s: sum(t.state == s for t in view.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    parts = [f"<h1>{html.escape(view.title)}</h1>", _p(view.description),
             _p(f"{len(view.trials)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} "
                f"pruned, {counts['FAIL']} failed. Objective: {view.metric} "
                f"({view.direction}).")]
    margin = _margin(view)
    if margin:
        parts.append(_p(margin, "answer"))
    for label, url in view.links.items():
        parts.append(f'<p>{html.escape(label)}: <a href="{html.escape(url)}">'
                     f"{html.escape(url)}</a></p>")
    return parts


def _margin(view: StudyView) -> str:
    """The best trial against the first one (params.yaml's configuration), in one sentence."""
    first = next((t for t in view.trials if t.baseline), None)
    rows = ranked(view)
    if first is None or first.value is None or not rows:
        return ""
    best = rows[0]
    if best.value is None:
        return ""
    if best.number == first.number:
        return (f"The first trial, params.yaml's own configuration, is still the best: "
                f"{view.metric} {first.value:.4f}.")
    change = abs(best.value - first.value) / abs(first.value) if first.value else 0.0
    return (f"The best trial ({best.number}, {view.metric} {best.value:.4f}) is {change:.1%} "
            f"{'better' if view.sign * (best.value - first.value) < 0 else 'worse'} than the "
            f"first, params.yaml's own configuration (trial {first.number}, "
            f"{first.value:.4f}): what searching gained over training it by hand.")


def _rungs(view: StudyView) -> str:
    """The rung schedule and how many trials reached each rung ("" without rungs)."""
    if not view.rungs:
        return ""
    reached = [t.rung for t in view.trials if t.rung is not None]
    top = max(reached, default=0)
    counts = ", ".join(f"rung {r}: {sum(x >= r for x in reached)}" for r in range(1, top + 1))
    return _section("rungs", "Rungs: where each trial got to", _p(
        f"Every trial climbs the rungs {view.rungs} (then trains to its end) and goes on at a "
        f"rung only while among the best of those that reached it. Trials that completed each "
        f"rung: {counts or 'none yet'}. The table of every trial below says how far each got.",
        "answer"))


def _leaderboard(view: StudyView, rows: list[TrialView], pick: int | None) -> tuple[str, Any]:
    png = fig.leaderboard_png(view, rows, pick) if rows else None
    table = _table(
        ["rank", "trial", f"{view.metric} (mean ± std)", "parameters", "epochs", "params"],
        [(i + 1, t.number, _value(t.value, t.value_std),
          f"{t.n_params:,}" if t.n_params else "", t.epochs or "", short(t.params))
         for i, t in enumerate(rows[:TOP_ROWS])],
        classes=["pick" if t.number == pick else "" for t in rows[:TOP_ROWS]],
    )
    return _section("leaderboard", "Leaderboard", table, _img("leaderboard", png,
                                                               "leaderboard")), png


def _capacity(view: StudyView) -> tuple[str, Any]:
    rule = fig.capacity_rule(view)
    sized = [t for t in ranked(view) if t.n_params and not t.duplicate]
    missing = [t for t in ranked(view) if not t.n_params]
    title = "How big must the model be?"
    note = ([_p(f"{len(missing)} complete trial(s) without a recorded parameter count are "
                "left out (they ran before the count was recorded).", "muted")]
            if missing else [])
    if rule is None or len(sized) < 2:
        return _section("capacity", title, _img("capacity", None, "capacity picture"),
                        *note), None
    sizes = [t.n_params or 0 for t in sized]
    if max(sizes) < fig.SAME_SIZE * min(sizes):
        return _section("capacity", title, _p(
            f"This study does not vary the model's size much ({min(sizes):,}–{max(sizes):,} "
            "parameters): see the capacity study for how big it must be."), *note), None
    png = fig.capacity_png(view, rule, fig.fit_classes(view, rule))
    best, pick = rule.best, rule.pick
    se = f"standard error {rule.standard_error:.4f}" if rule.standard_error else (
        "no fold spread (a holdout), so only ties qualify")
    answer = (f"Best: trial {best.number}, {view.metric} {best.value:.4f} with "
              f"{best.n_params or 0:,} parameters ({se}). Smallest within one standard "
              f"error (threshold {rule.threshold:.4f}): trial {pick.number}, {pick.value:.4f} "
              f"with {pick.n_params or 0:,} parameters"
              + (" — the best itself." if pick.number == best.number else "."))
    promote = ("" if pick.number == best.number else
               "<p><code>python -m pipeline.promote --select smallest_within_1se</code> "
               "registers it (the champion gate still decides).</p>")
    return _section("capacity", title, _p(answer, "answer"), promote,
                    _img("capacity", png, "capacity picture"),
                    _p("Green: within one standard error of the best; orange: underfits "
                       "(its train value is no better than that either); red: overfits (a "
                       "wider gap between validation and train than the best's); blue: worse, "
                       "for no clear reason; ▽ the train value at the same epoch; grey ×: a "
                       "pruned trial's value when it was stopped (not a final result).",
                       "muted"), *note), png


def _choices(view: StudyView) -> tuple[str, Any]:
    names = list(view.space)
    title = "What each choice does"
    if not names:
        return _section("choices", title, _p("Nothing was searched yet.", "muted")), None
    rows, answers = [], []
    for name in names:
        groups = fig.choice_groups(view, name)
        answers.append(f"<li><b>{html.escape(name)}</b>: "
                       f"{html.escape(fig.verdict(groups, view.direction))}</li>")
        rows += [(name, g.label, g.spread(), len(g.values), g.pruned, g.failed) for g in groups]
    png = fig.choices_png(view, names)
    table = _table(["parameter", "choice", f"{view.metric} of complete trials (mean ± std)",
                    "complete", "pruned", "failed"], rows)
    return _section("choices", title, f'<ul class="answer">{"".join(answers)}</ul>',
                    _img("choices", png, "per-choice picture"), table), png


def _pruning(view: StudyView) -> tuple[str, Any]:
    cost = fig.pruning_cost(view)
    png = fig.pruning_png(view)
    title = "What pruning cost"
    if cost.pruned == 0:
        return _section("pruning", title, _p("No trial was pruned. " + _audit_line(
            view.pruning), "answer"), _img("pruning", png, "pruning picture")), png
    stops = ", ".join(f"epoch {e} ({n})" for e, n in cost.stopped_at)
    lines = [
        f"{cost.pruned} trial(s) pruned after {cost.epochs_run} epochs in all; run to the end "
        f"(the complete trials' median, {cost.full_epochs:g} epochs) they would have run "
        f"about {cost.epochs_saved} more: {cost.saved_share:.0%} of the study's epochs saved.",
        f"Stopped at: {stops}" + (f" of at most {view.max_epochs}." if view.max_epochs
                                  else "."),
    ]
    if cost.time_share is not None:
        lines.append(f"Pruned trials used {cost.time_share:.0%} of the trials' time.")
    if cost.worst_complete is not None and cost.better_than_worst:
        lines.append(f"{cost.better_than_worst} pruned trial(s) were, when stopped, better than "
                     f"the worst complete trial ({cost.worst_complete:.4f}): the pruner compares "
                     "trials at the same epoch, so some of these may have been false prunes.")
    elif cost.worst_complete is not None:
        lines.append("No pruned trial was, when stopped, better than the worst complete trial "
                     f"({cost.worst_complete:.4f}).")
    lines.append(_audit_line(view.pruning))
    return _section("pruning", title, "<ul class=\"answer\">" + "".join(
        f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>",
        _img("pruning", png, "pruning picture")), png


def _audit_line(audit: Mapping[str, Any] | None) -> str:
    """The pruning audit's estimate (pipeline.study.audit), or what is missing without it."""
    if not audit or audit.get("false_prune_rate") is None:
        let = (audit or {}).get("audited")
        return ("False-prune rate: not estimated yet (" + (
            f"{let} pruned trial(s) let finish, none with a best to beat when it would have "
            "been stopped" if let else "no pruned trial let finish by the pruning audit, "
            "search.prune_audit") + ").")
    line = (f"False-prune rate (pruning audit: {audit.get('audited', '?')} trial(s) the pruner "
            f"would have stopped were let finish; {audit.get('false_prunes', 0)} of "
            f"{audit.get('judged', '?')} ended better than the best of their time): "
            f"{float(audit['false_prune_rate']):.0%}")
    if audit.get("saved_share_estimate") is not None:
        line += f"; training time saved: about {float(audit['saved_share_estimate']):.0%}"
    return line + "."


def render(view: StudyView) -> ReportPage:
    """The page and its PNGs for ``view`` (pure: nothing read or written)."""
    rows = ranked(view)
    rule = fig.capacity_rule(view)
    pick = rule.pick.number if rule is not None else None
    board, board_png = _leaderboard(view, rows, pick)
    capacity, capacity_png = _capacity(view)
    curves_png = fig.curves_png(view, rows) if rows else None
    train_val_png = fig.train_val_png(view, rows)
    choices, choices_png = _choices(view)
    pruning, pruning_png = _pruning(view)
    importance_png = fig.importance_png(view)
    every = _table(["trial", "state", view.metric, "parameters", "epochs", "rungs", "params"],
                   [(f"{t.number} (params.yaml)" if t.baseline else t.number, t.state.lower(),
                     "" if t.value is None else f"{t.value:.4f}",
                     f"{t.n_params:,}" if t.n_params else "", t.epochs or "",
                     "" if t.rung is None else t.rung, short(t.params))
                    for t in view.trials], classes=[t.state for t in view.trials])
    parts = [
        *_intro(view), board, capacity,
        _section("curves", "Learning curves of the best trials",
                 _img("curves", curves_png, "learning curves")),
        _section("train-vs-val", "Underfitting or overfitting?",
                 _img("train_vs_val", train_val_png, "train vs validation curves",
                      "no train and validation curves in MLflow for these trials")),
        choices, _rungs(view), pruning,
        _section("importance", "Parameter importance",
                 _img("importance", importance_png, "parameter importance")),
        _section("every", "Every trial", every),
    ]
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(view.title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    pngs = {"leaderboard.png": board_png, "capacity.png": capacity_png,
            "curves.png": curves_png, "train_vs_val.png": train_val_png,
            "choices.png": choices_png, "pruning.png": pruning_png,
            "importance.png": importance_png}
    return ReportPage(html=page, pngs={k: v for k, v in pngs.items() if v is not None})


def write_page(page: ReportPage, folder: Path) -> Path:
    """``folder/index.html`` and the PNGs beside it (each written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in page.pngs.items():
        write_bytes_atomic(folder / name, data)
    index = folder / "index.html"
    write_bytes_atomic(index, page.html.encode())
    return index


# --------------------------------------------------------------------------------------------
# From the stores
# --------------------------------------------------------------------------------------------
def mlflow_runs(client: MlflowClient) -> Callable[[str, bool], RunData]:
    """``(run_id, with_curves) → RunData``: a trial's summaries, and its curves when asked."""

    def read(run_id: str, with_curves: bool) -> RunData:
        try:
            summaries = dict(client.get_run(run_id).data.metrics)
            curves = {
                key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)
                            if math.isfinite(m.value))
                for key in (CURVE_KEYS if with_curves else ())
            }
        except MlflowException:
            return RunData()  # a run deleted by hand: the page shows the trial without it
        return RunData(curves=curves, summaries=summaries)

    return read


def param_counter(base: Params, meta: CacheMeta | None) -> Callable[[dict[str, Any]], int | None]:
    """Count a configuration's parameters without allocating them (for trials that ran before
    the count was recorded); None when it cannot be rebuilt."""

    def count(values: dict[str, Any]) -> int | None:
        import torch

        from pipeline.training import build_model

        if meta is None:
            return None
        try:
            cfg = base.with_overrides(values, origin="report page").model
            with torch.device("meta"):
                net = build_model(cfg, meta, root=base.root)
        except (UserError, RuntimeError, ValueError, OSError) as exc:
            logger.debug("cannot count the parameters of %s: %s", values, exc)
            return None
        return sum(p.numel() for p in net.parameters())

    return count


def _rungs_of(spec: StudySpec) -> str:
    return "" if spec.pruner.rungs is None else describe_rungs(spec.pruner.rungs.rungs)


def page_folder(params: Params, study: str, dataset: str, default_dataset: str) -> Path:
    name = study if dataset == default_dataset else f"{study}-{dataset}"
    return params.path(params.search.reports_dir) / f"{name}{PAGE_SUFFIX}"


def _runs_link(report: StudyReport, spec: StudySpec) -> str:
    """The runs table sorted by the objective, its parameters and summaries as columns."""
    if not report.experiment_id:
        return ""
    try:
        view = tracking.share_runs_view(
            report.experiment_id, order_by=tracking.summary_name(spec.metric),
            ascending=spec.direction == "minimize", params=[p.name for p in spec.space],
            metrics=[tracking.summary_name(spec.metric), tracking.summary_name(
                spec.metric + "_std"), "epochs", "train_s"],
        )
    except MlflowException as exc:
        logger.warning("could not save the sorted runs view in MLflow: %s", exc)
        view = ""
    return tracking.ui_url(report.experiment_id, base=tracking.ui_base(), view=view)


@dataclass(frozen=True)
class Published:
    """Where a search's page went."""

    index: Path | None  # None when it could not be drawn (the search goes on)
    runs_url: str  # the MLflow runs table, sorted by the objective ("" without an experiment)


def publish(
    optuna_study: optuna.Study, *, spec: StudySpec, params: Params, meta: CacheMeta,
    report: StudyReport, report_file: Path,
) -> Published:
    """Write the search's page beside its report (``<report>-page/``) and log it to the
    parent run under ``report_page/``. A page that cannot be drawn is a warning, not a failed
    search: the study and its report are already written."""
    runs_url = _runs_link(report, spec)
    try:
        sources = Sources(runs=mlflow_runs(MlflowClient()), count_params=param_counter(
            params, meta), pruning=report.pruning, max_epochs=params.train.max_epochs,
            links={"MLflow runs, best first": runs_url} if runs_url else {},
            rungs=_rungs_of(spec))
        view = collect(optuna_study, title=optuna_study.study_name,
                       description=spec.description, metric=spec.metric, sources=sources)
        index = write_page(render(view), report_file.with_name(report_file.stem + PAGE_SUFFIX))
        if report.parent_run_id:
            MlflowClient().log_artifacts(report.parent_run_id, str(index.parent),
                                         artifact_path="report_page")
    except (OSError, ValueError, RuntimeError, MlflowException) as exc:
        logger.warning("could not write the study's report page: %s", exc)
        return Published(index=None, runs_url=runs_url)
    return Published(index=index, runs_url=runs_url)


@dataclass(frozen=True)
class ReportOptions:
    study: str
    params_path: Path
    dataset: str | None = None
    storage: str | None = None
    out: Path | None = None  # default: <search.reports_dir>/<study>[-<dataset>]-page/


@dataclass(frozen=True)
class ReportResult:
    index: Path
    n_trials: int


def _stored_report(params: Params, spec: StudySpec, dataset: str) -> StudyReport | None:
    try:
        path = find_report(params, spec.name, dataset)
        return StudyReport.read(path, spec.name) if path.is_file() else None
    except UserError:
        return None


def run_report(options: ReportOptions) -> ReportResult:
    """Read the study from its storage and its records from MLflow; write the page."""
    params = load_params(options.params_path)
    spec = load_study(options.study, params.path(STUDIES_DIR), params)
    default_dataset = spec.dataset or params.dataset
    dataset = options.dataset or default_dataset
    base = params.for_dataset(dataset)
    name = spec.study_name(dataset)
    choice = resolve_storage(options.storage, params_value=base.search.storage, root=base.root,
                             studies_dir=STUDIES_DIR, study_name=name, params_source=base.source)
    folder = options.out or page_folder(base, spec.name, dataset, default_dataset)
    check_writable({folder: "the study's report page (search.reports_dir)"})
    storage = open_storage(choice)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(
            f"{choice.display()}: no study {name!r} yet; run python -m pipeline.search "
            f"--study {spec.name}" + (f" --dataset {dataset}" if dataset != default_dataset
                                       else "")
        ) from None
    tracking.configure(base)
    report = _stored_report(base, spec, dataset)
    meta_dir = base.cache_dir(dataset)
    meta = read_meta(meta_dir) if (meta_dir / "meta.json").is_file() else None
    runs_url = _runs_link(report, spec) if report is not None else ""
    sources = Sources(runs=mlflow_runs(MlflowClient()), count_params=param_counter(base, meta),
                      pruning=report.pruning if report else None,
                      max_epochs=base.train.max_epochs,
                      links={"MLflow runs, best first": runs_url} if runs_url else {},
                      rungs=_rungs_of(spec))
    view = collect(study, title=name, description=spec.description, metric=spec.metric,
                   sources=sources)
    return ReportResult(index=write_page(render(view), folder), n_trials=len(view.trials))

