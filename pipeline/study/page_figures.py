"""What the study report page shows, as numbers and pictures: pure functions of its view.

:class:`StudyView` (built by :func:`pipeline.study.report_page.collect`) holds every trial as
the page needs it. From it this module works out the answers the tutorials ask (how big, which
choice, what pruning cost) and draws them as PNGs with matplotlib's bare ``Figure`` (no pyplot,
no GUI backend: safe in threads). Nothing here reads or writes a file.
"""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from pipeline.study.report import Choice, OneStandardError, one_standard_error

__all__ = [
    "ChoiceGroup",
    "ParamSpace",
    "PruningCost",
    "StudyView",
    "TrialView",
    "capacity_rule",
    "choice_groups",
    "fit_classes",
    "pruning_cost",
    "verdict",
]

Curve = list[tuple[int, float]]
TOP_CURVES = 5  # trials whose curves are overlaid
TOP_PANELS = 6  # trials with a train-vs-validation panel
TOP_ROWS = 20  # leaderboard rows
MIN_PER_CHOICE = 3  # complete trials a choice needs before the page compares it
SAME_SIZE = 1.5  # largest / smallest parameter count below this: the study did not vary size
BLUE, ORANGE, RED, GREEN, GREY = "#4c78a8", "#ef6c00", "#c62828", "#2e7d32", "#9e9e9e"
FIT_COLOURS = {"good": GREEN, "under": ORANGE, "over": RED, "": BLUE}


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
    n_params: int | None = None
    folds: int | None = None
    train_value: float | None = None  # the objective's train counterpart at the best epoch
    duration_s: float | None = None
    duplicate: bool = False  # took an earlier trial's result without training
    baseline: bool = False  # the study's first trial: params.yaml's configuration
    rung: int | None = None  # under a rung schedule: the rungs it completed


@dataclass(frozen=True)
class ParamSpace:
    """A searched parameter as Optuna's distribution describes it."""

    kind: str  # categorical | int | float
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False


@dataclass(frozen=True)
class StudyView:
    """Everything the page needs; no storage or MLflow handles."""

    title: str
    description: str
    metric: str
    direction: str
    trials: list[TrialView]
    importances: dict[str, float] | None
    importance_trials: int
    space: dict[str, ParamSpace] = field(default_factory=dict)
    pruning: dict[str, Any] | None = None  # the pruning audit's estimates (StudyReport.pruning)
    max_epochs: int | None = None  # train.max_epochs of the study's base params
    links: dict[str, str] = field(default_factory=dict)  # label -> URL (the MLflow runs table)
    rungs: str = ""  # the study's rung schedule, in words ("" without one)

    @property
    def log_values(self) -> bool:
        """Losses are drawn on a log axis: the late-epoch differences are what matter."""
        return self.metric.endswith("loss")

    @property
    def sign(self) -> float:
        return -1.0 if self.direction == "maximize" else 1.0


def ranked(view: StudyView) -> list[TrialView]:
    """Complete trials, best first."""
    done = [t for t in view.trials if t.state == "COMPLETE" and t.value is not None]
    return sorted(done, key=lambda t: (view.sign * (t.value or 0.0), t.number))


# --------------------------------------------------------------------------------------------
# Answers (numbers)
# --------------------------------------------------------------------------------------------
def capacity_rule(view: StudyView) -> OneStandardError | None:
    """The one-standard-error rule over the complete trials (the report's own rule)."""
    return one_standard_error(
        [Choice(number=t.number, value=float(t.value or 0.0), value_std=t.value_std,
                folds=t.folds, n_params=t.n_params) for t in ranked(view) if not t.duplicate],
        view.direction,
    )


def fit_classes(view: StudyView, rule: OneStandardError) -> dict[int, str]:
    """Trial number -> ``good`` (within one standard error of the best), ``under`` (worse,
    and its train value is no better than the threshold either: it cannot fit), ``over``
    (worse, with a wider gap between validation and train than the best's: it fits the
    training data and validates worse) or ``""`` (worse for no clear reason, or no train value
    to tell)."""
    rows = ranked(view)
    by_number = {t.number: t for t in rows}
    best_gap = _gap(view, by_number.get(rule.best.number))
    out = {}
    for t in rows:
        assert t.value is not None
        if view.sign * t.value <= view.sign * rule.threshold + 1e-12:
            out[t.number] = "good"
        elif t.train_value is not None and \
                view.sign * t.train_value > view.sign * rule.threshold:
            out[t.number] = "under"
        elif best_gap is not None and (_gap(view, t) or 0.0) > best_gap:
            out[t.number] = "over"
        else:
            out[t.number] = ""
    return out


def _gap(view: StudyView, t: TrialView | None) -> float | None:
    """How much worse a trial validates than it trains (a ratio on a log axis)."""
    if t is None or t.value is None or t.train_value is None:
        return None
    if view.log_values and t.value > 0 and t.train_value > 0:
        return view.sign * math.log(t.value / t.train_value)
    return view.sign * (t.value - t.train_value)


@dataclass(frozen=True)
class ChoiceGroup:
    """The trials that took one choice (or one range) of a parameter."""

    label: str
    values: list[float]  # complete trials' values
    pruned: int = 0
    failed: int = 0

    @property
    def tried(self) -> int:
        return len(self.values) + self.pruned + self.failed

    def spread(self) -> str:
        if not self.values:
            return ""
        mean = statistics.fmean(self.values)
        # One trial has no spread: its value alone, not "± 0".
        return f"{mean:.4f}" + (f" ± {statistics.stdev(self.values):.4f}"
                                if len(self.values) > 1 else "")


def _bins(space: ParamSpace) -> list[tuple[float, float, str]]:
    """Three equal parts of the sampled range (in log space for a log parameter)."""
    lo, hi = (math.log10(space.low), math.log10(space.high)) if space.log else (space.low,
                                                                                space.high)
    edges = [lo + (hi - lo) * i / 3 for i in range(4)]
    if space.log:
        edges = [10**e for e in edges]
    names = ("low", "middle", "high")

    def edge(v: float) -> str:
        return f"{round(v)}" if space.kind == "int" else f"{v:.3g}" if v < 1000 else f"{v:.0f}"

    return [(edges[i], edges[i + 1], f"{names[i]} {edge(edges[i])}–{edge(edges[i + 1])}")
            for i in range(3)]


def _group_of(space: ParamSpace, value: Any) -> str:
    if space.kind == "categorical" or _few_ints(space):
        return _fmt(value)
    for lo, hi, label in _bins(space):
        if lo <= float(value) <= hi:
            return label
    return _fmt(value)


def _few_ints(space: ParamSpace) -> bool:
    return space.kind == "int" and not space.log and space.high - space.low <= 6


def _labels(space: ParamSpace) -> list[str]:
    if space.kind == "categorical":
        return [_fmt(c) for c in space.choices]
    if _few_ints(space):
        return [str(v) for v in range(int(space.low), int(space.high) + 1)]
    return [label for _, _, label in _bins(space)]


def choice_groups(view: StudyView, name: str) -> list[ChoiceGroup]:
    """One group per choice of ``name`` (per value of a small int range, per third of a numeric
    range), with the untried ones too: a choice never sampled is an answer of its own."""
    space = view.space[name]
    found: dict[str, dict[str, Any]] = {label: {"values": [], "pruned": 0, "failed": 0}
                                        for label in _labels(space)}
    for t in view.trials:
        if name not in t.params or t.duplicate:
            continue
        slot = found.setdefault(_group_of(space, t.params[name]),
                                {"values": [], "pruned": 0, "failed": 0})
        if t.state == "COMPLETE" and t.value is not None:
            slot["values"].append(t.value)
        elif t.state == "PRUNED":
            slot["pruned"] += 1
        elif t.state == "FAIL":
            slot["failed"] += 1
    return [ChoiceGroup(label, **slot) for label, slot in found.items()]


def verdict(groups: Sequence[ChoiceGroup], direction: str) -> str:
    """What the study can say about these choices, in one sentence.

    Two choices read apart when their means differ by more than twice the standard error of
    the difference; with fewer than :data:`MIN_PER_CHOICE` complete trials a choice is not
    compared at all.
    """
    never = [g.label for g in groups if not g.tried]
    enough = [g for g in groups if len(g.values) >= MIN_PER_CHOICE]
    few = [f"{g.label} ({len(g.values)} complete" + (f", {g.pruned} pruned" if g.pruned else "")
           + (f", {g.failed} failed" if g.failed else "") + ")"
           for g in groups if g.tried and g not in enough]
    notes = ([f"never tried: {', '.join(never)}"] if never else []) + (
        [f"too few complete trials to compare: {', '.join(few)}"] if few else [])
    if len(enough) < 2:
        return "Cannot tell: " + "; ".join(notes or ["fewer than two choices were tried"]) + "."
    sign = -1.0 if direction == "maximize" else 1.0
    best = min(enough, key=lambda g: sign * statistics.fmean(g.values))
    parts = []
    for g in enough:
        if g is best:
            continue
        diff = abs(statistics.fmean(g.values) - statistics.fmean(best.values))
        se = math.sqrt(_var(best.values) / len(best.values) + _var(g.values) / len(g.values))
        parts.append(f"{best.label} beats {g.label} by {diff:.4f} (twice the standard error "
                     f"is {2 * se:.4f})" if diff > 2 * se else
                     f"{best.label} and {g.label} cannot be told apart ({diff:.4f} apart, "
                     f"within twice the standard error {2 * se:.4f})")
    return "; ".join(parts + notes) + "."


def _var(values: Sequence[float]) -> float:
    return statistics.variance(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class PruningCost:
    """What pruning saved, what it cost, and what the study can say about its mistakes."""

    pruned: int
    epochs_run: int  # by the pruned trials
    full_epochs: float  # a trial run to its end: the complete trials' median epochs
    epochs_saved: int
    saved_share: float  # of the epochs the study would have run without pruning
    time_share: float | None  # of the trials' time, spent in pruned trials
    stopped_at: list[tuple[int, int]]  # (epoch, trials stopped there)
    better_than_worst: int  # pruned trials whose last value beat the worst complete value
    worst_complete: float | None


def pruning_cost(view: StudyView) -> PruningCost:
    """The cost of pruning from the trials alone (the audit, when run, adds its estimates)."""
    ran = [t for t in view.trials if not t.duplicate and t.state in ("COMPLETE", "PRUNED",
                                                                     "FAIL")]
    pruned = [t for t in ran if t.state == "PRUNED"]
    complete = [t for t in ran if t.state == "COMPLETE" and t.value is not None]
    lengths = [t.epochs for t in complete if t.epochs]
    full = float(statistics.median(lengths)) if lengths else float(view.max_epochs or 0)
    run = [t.epochs or len(t.reported) for t in pruned]
    saved = int(round(sum(max(0.0, full - e) for e in run)))
    total = sum(t.epochs or len(t.reported) for t in ran) + saved
    times = [(t.state, t.duration_s) for t in ran if t.duration_s is not None]
    spent = sum(s for _, s in times)
    worst = max((view.sign * float(t.value) for t in complete if t.value is not None),
                default=None)
    better = sum(1 for t in pruned if t.reported and worst is not None
                 and view.sign * t.reported[-1][1] < worst)
    return PruningCost(
        pruned=len(pruned), epochs_run=sum(run), full_epochs=full, epochs_saved=saved,
        saved_share=saved / total if total else 0.0,
        time_share=sum(s for st, s in times if st == "PRUNED") / spent if spent else None,
        stopped_at=sorted(Counter(t.reported[-1][0] for t in pruned if t.reported).items()),
        better_than_worst=better,
        worst_complete=None if worst is None else view.sign * worst,
    )


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
def _subplots(*grid: int, figsize: tuple[float, float], squeeze: bool = True) -> Any:
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, squeeze=squeeze) if grid else fig.subplots()


def _epoch_axis(ax: Any, fontsize: float | None = None) -> None:
    ax.set_xlabel("epoch", fontsize=fontsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs read as 1, 2, 3


class _Plain(LogFormatter):
    """Log-axis labels as plain numbers: 0.07, 0.1, 1; 10,000 for parameter counts."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:,.0f}" if x >= 1000 else f"{x:g}"


def _log_y(ax: Any) -> None:
    """A log y axis labelled in plain numbers (0.07, not 7×10⁻²: easier to read, and
    matplotlib's math text is what costs time), minor ticks too on a short range."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_Plain())
    ax.yaxis.set_minor_formatter(_Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in params.items())


def robust_top(values: Sequence[float], *, log: bool) -> float | None:
    """An upper axis limit that a few diverged values cannot push up: the upper quartile plus
    three interquartile ranges (in log space on a log axis) and at least 3x the quartile; None
    when nothing lies above."""
    vals = sorted(v for v in values if math.isfinite(v) and (v > 0 or not log))
    if len(vals) < 4:
        return None
    tr = [math.log10(v) for v in vals] if log else vals
    q1, _, q3 = statistics.quantiles(tr, n=4, method="inclusive")
    # At least three times the upper quartile (or half of it again on a linear axis): a spread
    # that is merely wide is drawn whole.
    cap = q3 + max(3 * (q3 - q1), math.log10(3) if log else 0.5 * abs(q3))
    if tr[-1] <= cap:
        return None
    return 10**cap if log else cap


def _clip_note(ax: Any, top: float | None, values: Sequence[float], what: str) -> None:
    """Cap the y axis at ``top`` and say, on the picture, what lies above it."""
    if top is None:
        return
    above = [v for v in values if v > top]
    ax.set_ylim(top=top)
    ax.text(0.99, 0.99, f"▲ {len(above)} {what} above the top (up to {max(above):.3g}): "
            "diverged, clipped", transform=ax.transAxes, ha="right", va="top", fontsize=8,
            color=RED)


def leaderboard_png(view: StudyView, rows: Sequence[TrialView], pick: int | None) -> bytes:
    """Dots with their fold spread, on an axis that spans the values (not from 0)."""
    shown = list(rows[:TOP_ROWS])[::-1]
    fig, ax = _subplots(figsize=(9, 0.35 * len(shown) + 1.4))
    ys = range(len(shown))
    values = [float(t.value or 0.0) for t in shown]
    errs = [t.value_std or 0.0 for t in shown]
    colours = [GREEN if t.number == pick else BLUE for t in shown]
    for y, v, e, c in zip(ys, values, errs, colours, strict=True):
        ax.errorbar(v, y, xerr=e, fmt="o", color=c, ecolor=c, capsize=3)
    ax.set_yticks(list(ys), [f"#{t.number}" for t in shown])
    lo = min(v - e for v, e in zip(values, errs, strict=True))
    hi = max(v + e for v, e in zip(values, errs, strict=True))
    top = robust_top(values, log=False)
    hi = min(hi, top) if top is not None else hi
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.01
    ax.set_xlim(lo - pad, hi + pad)
    for y, v in zip(ys, values, strict=True):
        if v > hi + pad:
            ax.annotate(f"{v:.3g} ▶", (hi + pad, y), ha="right", va="center", color=RED,
                        fontsize=8)
    ax.set_xlabel(f"{view.metric} (mean ± std over folds; the axis spans the values, not 0)")
    ax.set_title("Complete trials: dots whose error bars overlap are ties"
                 + ("; green: smallest within one standard error of the best" if pick is not None
                    else ""), fontsize=10)
    return _png(fig)


def _best_point(view: StudyView, curve: Curve) -> tuple[int, float]:
    return min(curve, key=lambda p: (view.sign * p[1], p[0]))


def curves_png(view: StudyView, rows: Sequence[TrialView]) -> bytes:
    fig, ax = _subplots(figsize=(9, 5))
    peaks: list[float] = []  # each trial's highest value: a diverged trial stands out
    for t in rows[:TOP_CURVES]:
        if not t.reported:
            continue
        xs, ys = zip(*t.reported, strict=True)
        peaks.append(max(ys))
        line = ax.plot(xs, ys, marker="o", ms=3, label=f"#{t.number} {short(t.params)}"[:80])
        bx, by = _best_point(view, t.reported)
        ax.plot([bx], [by], marker="*", ms=13, color=line[0].get_color(), mec="k", zorder=3)
    _epoch_axis(ax)
    if view.log_values:
        _log_y(ax)
    _clip_note(ax, robust_top(peaks, log=view.log_values), peaks, "trial(s)")
    ax.set_ylabel(view.metric + (" (log scale)" if view.log_values else ""))
    ax.set_title(f"The {min(TOP_CURVES, len(rows))} best trials, epoch by epoch "
                 "(★ each trial's best epoch)")
    ax.legend(fontsize=8)
    return _png(fig)


def train_val_png(view: StudyView, rows: Sequence[TrialView]) -> bytes | None:
    shown = [t for t in rows[:TOP_PANELS] if t.train_loss and t.val_loss]
    if not shown:
        return None
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = _subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, t in zip(axes.flat, shown, strict=False):
        for curve, label, colour in ((t.train_loss, "train", ORANGE),
                                     (t.val_loss, "validation", BLUE)):
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, marker=".", label=label, color=colour)
        best_epoch = min(t.val_loss, key=lambda p: (p[1], p[0]))[0]
        ax.axvline(best_epoch, color=GREY, ls=":", lw=1)
        _log_y(ax)
        ax.set_title(f"#{t.number} {short(t.params)}"[:48], fontsize=8)
        _epoch_axis(ax, fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("Train vs validation loss (log scale; dotted: the best epoch). A gap that "
                 "widens is overfitting; two high curves, underfitting", fontsize=9)
    return _png(fig)


def capacity_png(view: StudyView, rule: OneStandardError, classes: dict[int, str]) -> bytes:
    """Parameters against the objective (± fold spread) and its train counterpart."""
    pts = [t for t in ranked(view) if t.n_params and not t.duplicate]
    fig, ax = _subplots(figsize=(9.5, 5.6))
    stopped = [t for t in view.trials if t.state == "PRUNED" and t.n_params and t.reported
               and not t.duplicate]
    if stopped:
        ax.plot([t.n_params for t in stopped], [t.reported[-1][1] for t in stopped], "x",
                color=GREY, ms=6, zorder=2)
    for t in pts:
        c = FIT_COLOURS[classes.get(t.number, "")]
        if t.train_value is not None:
            ax.plot([t.n_params, t.n_params], [t.train_value, t.value], color="#cccccc", lw=1,
                    zorder=1)
            ax.plot([t.n_params], [t.train_value], marker="v", ms=6, mfc="none", color=c)
        ax.errorbar([t.n_params], [t.value], yerr=[t.value_std or 0.0], fmt="o", color=c,
                    ecolor=c, capsize=3, zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_Plain())
    if view.log_values:
        _log_y(ax)
    every = [float(t.value or 0) for t in pts] + [t.train_value for t in pts
                                                  if t.train_value is not None] + [
        t.reported[-1][1] for t in stopped]
    _clip_note(ax, robust_top(every, log=view.log_values), every, "values")
    _mark_rule(ax, view, rule)
    _regions(ax, pts, rule, classes)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel(view.metric + (" (log scale)" if view.log_values else ""))
    ax.set_title("How big must the model be?\n● validation (± std over folds), ▽ train, at "
                 "each trial's best epoch" + ("; × pruned (its value when stopped)" if stopped
                                              else ""), fontsize=10)
    return _png(fig)


def _mark_rule(ax: Any, view: StudyView, rule: OneStandardError) -> None:
    best, pick = rule.best, rule.pick
    ax.axhline(rule.threshold, color=GREEN, ls="--", lw=1)
    ax.text(0.01, rule.threshold, " best + 1 standard error" if view.sign > 0 else
            " best - 1 standard error", transform=ax.get_yaxis_transform(), color=GREEN,
            fontsize=8, va="bottom", ha="left")
    if best.n_params:
        ax.plot([best.n_params], [best.value], marker="*", ms=20, color="gold", mec="k",
                zorder=4)
        ax.annotate(f"best: #{best.number}", (best.n_params, best.value), xytext=(8, -14),
                    textcoords="offset points", fontsize=9)
    if pick.n_params and pick.number != best.number:
        ax.plot([pick.n_params], [pick.value], marker="o", ms=17, mfc="none", mec=GREEN,
                mew=2.5, zorder=4)
        ax.annotate(f"smallest within 1 SE: #{pick.number} ({pick.n_params:,} params)",
                    (pick.n_params, pick.value), xytext=(-14, 16), textcoords="offset points",
                    fontsize=9, color=GREEN, ha="right",
                    arrowprops={"arrowstyle": "-", "color": GREEN, "lw": 0.8})


def _regions(ax: Any, pts: Sequence[TrialView], rule: OneStandardError,
             classes: dict[int, str]) -> None:
    """Shade where the small models underfit and the large ones overfit, labelled in place."""
    pick_x = rule.pick.n_params or 0
    best_x = rule.best.n_params or 0
    under = [t.n_params for t in pts if classes.get(t.number) == "under"
             and (t.n_params or 0) < pick_x]
    over = [t.n_params for t in pts if classes.get(t.number) == "over"
            and (t.n_params or 0) > best_x]
    for xs, colour, text, align in (
        (under, ORANGE, "underfitting:\ntrain loss high too", "left"),
        (over, RED, "overfitting:\nvalidation far from train", "right"),
    ):
        if not xs:
            continue
        lo, hi = min(x for x in xs if x) / 1.25, max(x for x in xs if x) * 1.25
        ax.axvspan(lo, hi, color=colour, alpha=0.09, zorder=0)
        ax.text(lo if align == "left" else hi, 0.98, text, transform=ax.get_xaxis_transform(),
                ha=align, va="top", fontsize=9, color=colour)


def choices_png(view: StudyView, names: Sequence[str]) -> bytes | None:
    """One panel per searched parameter: each complete trial's value by its choice."""
    if not names:
        return None
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = _subplots(nrows, cols, figsize=(4.4 * cols, 3.6 * nrows), squeeze=False)
    every = [float(t.value) for t in ranked(view) if t.value is not None]
    top = robust_top(every, log=view.log_values)
    for ax, name in zip(axes.flat, names, strict=False):
        _choice_panel(ax, view, name)
        if view.log_values:
            _log_y(ax)
        if top is not None:
            ax.set_ylim(top=top)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{view.metric} of the complete trials by choice (black: mean ± std; "
                 f"grey n: fewer than {MIN_PER_CHOICE} trials, too few to compare)", fontsize=9)
    return _png(fig)


def _choice_panel(ax: Any, view: StudyView, name: str) -> None:
    groups = choice_groups(view, name)
    for i, g in enumerate(groups):
        xs = [i + 0.18 * (((j * 7) % 5) / 4 - 0.5) for j in range(len(g.values))]
        ax.plot(xs, g.values, "o", color=BLUE, alpha=0.6, ms=5)
        if len(g.values) > 1:
            ax.errorbar([i], [statistics.fmean(g.values)], yerr=[statistics.stdev(g.values)],
                        fmt="_", color="k", ms=18, capsize=5, zorder=3)
        enough = len(g.values) >= MIN_PER_CHOICE
        ax.text(i, 0.02, f"n={len(g.values)}" + (f"+{g.pruned}p" if g.pruned else ""),
                transform=ax.get_xaxis_transform(), ha="center", fontsize=8,
                color="k" if enough else GREY)
    # "low 1e-06–2.15e-05": the range on a line of its own, so neighbours do not overlap.
    ax.set_xticks(range(len(groups)), [g.label.replace(" ", "\n", 1) for g in groups],
                  fontsize=8, rotation=15 if len(groups) > 3 else 0)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_title(name, fontsize=9)


def pruning_png(view: StudyView) -> bytes | None:
    with_curves = [t for t in view.trials if t.reported and not t.duplicate]
    if not with_curves:
        return None
    fig, ax = _subplots(figsize=(9, 5))
    peaks: list[float] = []  # each trial's highest value: a diverged trial stands out
    for t in with_curves:
        xs, ys = zip(*t.reported, strict=True)
        peaks.append(max(ys))
        pruned = t.state == "PRUNED"
        ax.plot(xs, ys, color="#bbbbbb" if pruned else BLUE, lw=1, alpha=0.9)
        if pruned:
            ax.plot(xs[-1], ys[-1], marker="x", color=RED, ms=7)
    _epoch_axis(ax)
    if view.log_values:
        _log_y(ax)
    _clip_note(ax, robust_top(peaks, log=view.log_values), peaks, "trial(s)")
    ax.set_ylabel(view.metric + (" (log scale)" if view.log_values else ""))
    ax.set_title("Pruning: grey curves ending in × were stopped by the pruner at that epoch; "
                 "blue ran to the end", fontsize=10)
    return _png(fig)


def importance_png(view: StudyView) -> bytes | None:
    if not view.importances:
        return None
    items = sorted(view.importances.items(), key=lambda kv: kv[1])
    fig, ax = _subplots(figsize=(8, 0.45 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#59a14f")
    ax.set_xlabel("importance (PED-ANOVA)")
    ax.set_title(f"Parameter importance, based on {view.importance_trials} complete trials")
    return _png(fig)
