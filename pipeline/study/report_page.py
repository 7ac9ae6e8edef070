"""The study report people look at: one self-contained HTML page (no CDN) and its PNGs.

:func:`collect` gathers what the page shows from the Optuna study (values, fold spread, the
per-epoch values the pruner saw) and, when given, each trial's MLflow curves (train vs validation
loss). :func:`render` is pure: a :class:`StudyView` in, the page and its pictures out. The page
answers the questions the tutorials ask: which trials tie (mean ± std over folds), which models
underfit or overfit (train vs validation loss), what a choice such as batch norm or the optimizer
does (values grouped by each categorical parameter), and when the pruner stopped each trial.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from pipeline import tracking
from pipeline.atomic import check_writable, write_bytes_atomic
from pipeline.config import Params, load_params
from pipeline.errors import UserError
from pipeline.study.spec import STUDIES_DIR, load_study
from pipeline.study.storage import open_storage, resolve_storage

__all__ = [
    "ReportOptions",
    "ReportPage",
    "ReportResult",
    "StudyView",
    "TrialView",
    "collect",
    "mlflow_histories",
    "render",
    "run_report",
    "write_page",
]

TOP_CURVES = 5  # trials whose curves are overlaid
TOP_PANELS = 6  # trials with a train-vs-validation panel
TOP_ROWS = 20  # leaderboard rows
Curve = list[tuple[int, float]]


@dataclass(frozen=True)
class TrialView:
    """One trial as the page shows it."""

    number: int
    state: str
    value: float | None
    value_std: float | None
    params: dict[str, Any]
    epochs: int | None
    reported: Curve  # what the pruner saw: the metric per epoch (mean over folds)
    train_loss: Curve = field(default_factory=list)
    val_loss: Curve = field(default_factory=list)


@dataclass(frozen=True)
class StudyView:
    """Everything :func:`render` needs; no storage or MLflow handles."""

    title: str
    description: str
    metric: str
    direction: str
    trials: list[TrialView]
    importances: dict[str, float] | None
    importance_trials: int


@dataclass(frozen=True)
class ReportPage:
    html: str
    pngs: dict[str, bytes]


def _curve(values: Mapping[int, float]) -> Curve:
    return [(int(k), float(v)) for k, v in sorted(values.items()) if math.isfinite(v)]


def _importances(study: optuna.Study, complete: Sequence[FrozenTrial]) -> dict[str, float] | None:
    searched = {k for t in complete for k in t.params}
    if len(complete) < 2 or len(searched) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None  # e.g. every complete trial has the same value


def collect(
    study: optuna.Study,
    *,
    title: str,
    description: str,
    metric: str,
    histories: Callable[[str], dict[str, Curve]] | None = None,
) -> StudyView:
    """The view of ``study``; ``histories(run_id)`` gives a trial's MLflow curves by metric."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    views = []
    for t in trials:
        curves = {}
        run_id = t.user_attrs.get("mlflow_run_id")
        if histories is not None and run_id and t.state in (TrialState.COMPLETE,
                                                             TrialState.PRUNED):
            curves = histories(str(run_id))
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        views.append(TrialView(
            number=t.number, state=t.state.name, value=value,
            value_std=t.user_attrs.get("value_std"), params=dict(t.params),
            epochs=t.user_attrs.get("epochs"), reported=_curve(t.intermediate_values),
            train_loss=curves.get("train/loss", []), val_loss=curves.get("val/loss", []),
        ))
    return StudyView(
        title=title, description=description, metric=metric,
        direction=study.direction.name.lower(), trials=views,
        importances=_importances(study, complete), importance_trials=len(complete),
    )


def _ranked(view: StudyView) -> list[TrialView]:
    done = [t for t in view.trials if t.state == "COMPLETE" and t.value is not None]
    return sorted(done, key=lambda t: t.value or 0.0, reverse=view.direction == "maximize")


def _subplots(*grid: int, figsize: tuple[float, float], squeeze: bool = True) -> Any:
    # A bare Figure, not pyplot: no global figure registry, no GUI backend, thread-safe.
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, squeeze=squeeze) if grid else fig.subplots()


def _epoch_axis(ax: Any, fontsize: float | None = None) -> None:
    ax.set_xlabel("epoch", fontsize=fontsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs read as 1, 2, 3


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _short(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _leaderboard_png(view: StudyView, ranked: Sequence[TrialView]) -> bytes:
    shown = list(ranked[:TOP_ROWS])[::-1]
    fig, ax = _subplots(figsize=(9, 0.35 * len(shown) + 1.2))
    ax.barh([f"#{t.number}" for t in shown], [t.value or 0.0 for t in shown],
            xerr=[t.value_std or 0.0 for t in shown], color="#4c78a8", ecolor="#333", capsize=3)
    ax.set_xlabel(f"{view.metric} (mean ± std over folds)")
    ax.set_title("Complete trials: bars that overlap within their error bars are ties")
    return _png(fig)


def _curves_png(view: StudyView, ranked: Sequence[TrialView]) -> bytes:
    fig, ax = _subplots(figsize=(9, 5))
    for t in ranked[:TOP_CURVES]:
        xs, ys = zip(*t.reported, strict=True) if t.reported else ((), ())
        ax.plot(xs, ys, marker="o", ms=3, label=f"#{t.number} {_short(t.params)}"[:80])
    _epoch_axis(ax)
    ax.set_ylabel(view.metric)
    ax.set_title(f"The {min(TOP_CURVES, len(ranked))} best trials, epoch by epoch")
    ax.legend(fontsize=8)
    return _png(fig)


def _train_val_png(ranked: Sequence[TrialView]) -> bytes | None:
    shown = [t for t in ranked[:TOP_PANELS] if t.train_loss and t.val_loss]
    if not shown:
        return None
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = _subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, t in zip(axes.flat, shown, strict=False):
        for curve, label in ((t.train_loss, "train/loss"), (t.val_loss, "val/loss")):
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, marker=".", label=label)
        ax.set_title(f"#{t.number} {_short(t.params)}"[:48], fontsize=8)
        _epoch_axis(ax, fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("Train vs validation loss: a gap that widens is overfitting; two high "
                 "curves, underfitting", fontsize=9)
    return _png(fig)


def _pruning_png(view: StudyView) -> bytes | None:
    with_curves = [t for t in view.trials if t.reported]
    if not with_curves:
        return None
    fig, ax = _subplots(figsize=(9, 5))
    for t in with_curves:
        xs, ys = zip(*t.reported, strict=True)
        pruned = t.state == "PRUNED"
        ax.plot(xs, ys, color="#bbbbbb" if pruned else "#4c78a8", lw=1, alpha=0.9)
        if pruned:
            ax.plot(xs[-1], ys[-1], marker="x", color="#d62728", ms=7)
    _epoch_axis(ax)
    ax.set_ylabel(view.metric)
    ax.set_title("Pruning: grey curves ending in × were stopped by the pruner at that epoch")
    return _png(fig)


def _importance_png(view: StudyView) -> bytes | None:
    if not view.importances:
        return None
    items = sorted(view.importances.items(), key=lambda kv: kv[1])
    fig, ax = _subplots(figsize=(8, 0.45 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#59a14f")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(f"Parameter importance, based on {view.importance_trials} complete trials")
    return _png(fig)


def _by_choice(view: StudyView, ranked: Sequence[TrialView]) -> list[tuple[str, str, str, int]]:
    """(param, choice, mean ± std of the value, trials) for every categorical parameter."""
    rows = []
    names = sorted({k for t in ranked for k, v in t.params.items()
                    if isinstance(v, str | bool) or v is None})
    for name in names:
        groups: dict[str, list[float]] = {}
        for t in ranked:
            if name in t.params and t.value is not None:
                groups.setdefault(_fmt(t.params[name]), []).append(t.value)
        for choice, values in sorted(groups.items()):
            # One trial has no spread: its value alone, not "± 0".
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            rows.append((name, choice, f"{statistics.fmean(values):.4f}{spread}",
                         len(values)))
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:
1100px;color:#222;padding:0 1em}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid
#ddd}table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;border-bottom:1px solid
#eee;text-align:left}th{background:#f6f6f6}img{max-width:100%}.muted{color:#777}
.COMPLETE{color:#2e7d32}.PRUNED{color:#9e9e9e}.FAIL{color:#c62828}
"""


def _table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(name: str, data: bytes | None, alt: str) -> str:
    if data is None:
        return f'<p class="muted">No {html.escape(alt)} yet: not enough trials.</p>'
    b64 = base64.b64encode(data).decode()
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}" id="{name}">'


def render(view: StudyView) -> ReportPage:
    """The page and its PNGs for ``view`` (pure: nothing read or written)."""
    ranked = _ranked(view)
    pngs = {
        "leaderboard.png": _leaderboard_png(view, ranked) if ranked else None,
        "curves.png": _curves_png(view, ranked) if ranked else None,
        "train_vs_val.png": _train_val_png(ranked),
        "pruning.png": _pruning_png(view),
        "importance.png": _importance_png(view),
    }
    counts = {s: sum(t.state == s for t in view.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    board = _table(
        ["rank", "trial", f"{view.metric} (mean ± std)", "epochs", "params"],
        # A holdout trial has no spread across folds: its value alone, not "± 0".
        [(i + 1, t.number, f"{t.value:.4f}" + ("" if t.value_std is None
                                                else f" ± {t.value_std:.4f}"), t.epochs or "",
          _short(t.params)) for i, t in enumerate(ranked[:TOP_ROWS])],
    )
    choices = _by_choice(view, ranked)
    every = _table(["trial", "state", view.metric, "epochs", "params"],
                   [(t.number, t.state.lower(), "" if t.value is None else f"{t.value:.4f}",
                     t.epochs or "", _short(t.params)) for t in view.trials],
                   classes=[t.state for t in view.trials])
    parts = [
        f"<h1>{html.escape(view.title)}</h1>",
        f"<p>{html.escape(view.description)}</p>",
        f"<p>{len(view.trials)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} "
        f"pruned, {counts['FAIL']} failed. Objective: {html.escape(view.metric)} "
        f"({view.direction}).</p>",
        "<h2>Leaderboard</h2>", board, _img("leaderboard", pngs["leaderboard.png"], "leaderboard"),
        "<h2>Learning curves of the best trials</h2>",
        _img("curves", pngs["curves.png"], "learning curves"),
        "<h2>Underfitting or overfitting?</h2>",
        _img("train_vs_val", pngs["train_vs_val.png"], "train vs validation curves"),
        "<h2>What each choice does</h2>",
        _table(["parameter", "choice", f"{view.metric} of complete trials", "trials"], choices)
        if choices else '<p class="muted">No categorical parameters in this study.</p>',
        "<h2>Pruning</h2>", _img("pruning", pngs["pruning.png"], "pruning picture"),
        "<h2>Parameter importance</h2>",
        _img("importance", pngs["importance.png"], "parameter importance"),
        "<h2>Every trial</h2>", every,
    ]
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(view.title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts) + "</body></html>"
    )
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
PAGE_SUFFIX = "-page"  # reports/studies/<study>-page/index.html beside <study>.json
HISTORY_KEYS = ("train/loss", "val/loss")


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


def mlflow_histories(client: MlflowClient) -> Callable[[str], dict[str, Curve]]:
    """``run_id → {metric: [(epoch, value)]}`` for the curves the page draws."""

    def read(run_id: str) -> dict[str, Curve]:
        try:
            return {
                key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)
                            if math.isfinite(m.value))
                for key in HISTORY_KEYS
            }
        except MlflowException:
            return {}  # a run deleted by hand: the page shows the trial without its curves

    return read


def page_folder(params: Params, study: str, dataset: str, default_dataset: str) -> Path:
    name = study if dataset == default_dataset else f"{study}-{dataset}"
    return params.path(params.search.reports_dir) / f"{name}{PAGE_SUFFIX}"


def run_report(options: ReportOptions) -> ReportResult:
    """Read the study from its storage and its curves from MLflow; write the page."""
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
    view = collect(study, title=name, description=spec.description, metric=spec.metric,
                   histories=mlflow_histories(MlflowClient()))
    return ReportResult(index=write_page(render(view), folder), n_trials=len(view.trials))
