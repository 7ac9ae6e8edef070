"""How a study starts: the user's own configuration first, then what earlier studies found.

- **The baseline.** A new study's first trial is the configuration the user would have trained
  by hand: ``params.yaml`` with the dataset's ``overrides:``, the searched keys at their
  defaults (:func:`baseline_values`), trained with the seed of ``params.yaml`` as
  ``pipeline.train`` would (under a rung schedule it climbs the rungs like every trial, as
  their bar, and is never stopped). So a search is never worse than not searching, and the
  summary and the report page state the margin over it. It carries the trial attribute
  :data:`BASELINE_ATTR`.
- **A warm start** (``--warm-start STUDY[:DATASET]``): the best configurations of an earlier
  study (another dataset, an earlier space) are queued before anything is sampled
  (:func:`warm_start`), each with :data:`WARM_ATTR` naming the trial it comes from. A
  configuration the study already holds or has queued is not queued again.

A default or an earlier value that the space cannot draw (``weight_decay: 0`` in a log range
from 1e-6) is moved to the nearest value the space can draw, and the trial says so
(:data:`ADJUSTED_ATTR`): Optuna's samplers would otherwise fit their models to a value outside
the space (TPE takes the log of 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from optuna.trial import TrialState

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.study.spec import ParamSpace
from pipeline.study.trial_attrs import ADJUSTED_ATTR, BASELINE_ATTR, WARM_ATTR

logger = logging.getLogger(__name__)

__all__ = [
    "ADJUSTED_ATTR",
    "BASELINE_ATTR",
    "WARM_ATTR",
    "baseline_values",
    "fit_values",
    "queue_baseline",
    "warm_start",
]

WARM_START_TOP = 3  # configurations taken from the earlier study


def _into(p: ParamSpace, value: Any) -> Any:
    """``value`` as ``p`` can draw it: a range's nearest value (on its step), a choice as is,
    else None (no choice matches)."""
    if p.type == "categorical":
        same = [c for c in p.choices if type(c) is type(value) and c == value]
        return same[0] if same else None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return None
    assert p.low is not None and p.high is not None
    inside = min(max(value, p.low), p.high)
    if p.step is not None:
        inside = p.low + round((inside - p.low) / p.step) * p.step
        inside = min(inside, p.high)
    return int(round(inside)) if p.type == "int" else float(inside)


def fit_values(
    space: Sequence[ParamSpace], wanted: Mapping[str, Any], fallback: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Values for every key of ``space`` that is drawn, in order, given the values before it:
    ``wanted``'s where it has the key, else ``fallback``'s, each moved into the space when it
    lies outside; and a line per value moved (``key: was -> now``)."""
    values: dict[str, Any] = {}
    moved: list[str] = []
    for p in space:
        if not p.active(values):
            continue
        value = wanted[p.name] if p.name in wanted else fallback[p.name]
        inside = _into(p, value)
        if inside is None:  # not among the choices: the first choice
            inside = p.choices[0] if p.type == "categorical" else p.low
        if inside != value or type(inside) is not type(value):
            moved.append(f"{p.name}: {value!r} -> {inside!r}")
        values[p.name] = inside
    return values, moved


def baseline_values(
    space: Sequence[ParamSpace], params: Params
) -> tuple[dict[str, Any], list[str]]:
    """The searched keys as ``params`` (the dataset's) sets them, moved into the space."""
    return fit_values(space, {}, params.flat())


def _holds(optuna_study: Any, values: Mapping[str, Any]) -> bool:
    """Whether the study already holds (or has queued) a trial with exactly these values."""
    for t in optuna_study.get_trials(deepcopy=False):
        params = t.params if t.state != TrialState.WAITING else t.system_attrs.get(
            "fixed_params", {})
        if params == dict(values):
            return True
    return False


def queue_baseline(
    optuna_study: Any, space: Sequence[ParamSpace], params: Params,
    lock: Callable[[], AbstractContextManager[Any]],
) -> bool:
    """Queue the baseline as the first trial of a study that has none yet (under the
    study's lock, so workers starting together queue it once); whether it was queued."""
    values, moved = baseline_values(space, params)
    attrs: dict[str, Any] = {BASELINE_ATTR: True}
    if moved:
        attrs[ADJUSTED_ATTR] = "; ".join(moved)
    with lock():
        if optuna_study.get_trials(deepcopy=False):
            return False
        optuna_study.enqueue_trial(values, user_attrs=attrs)
    logger.info("the study's first trial is the params.yaml configuration%s",
                f" ({'; '.join(moved)}: outside the space)" if moved else "")
    return True


def warm_start(
    optuna_study: Any, earlier: Any, space: Sequence[ParamSpace], params: Params,
    lock: Callable[[], AbstractContextManager[Any]], *, top: int = WARM_START_TOP,
) -> list[dict[str, Any]]:
    """Queue the ``top`` best complete configurations of the ``earlier`` Optuna study that
    this study does not hold yet; the values queued.

    Raises:
        UserError: the earlier study has no complete trial.
    """
    done = [t for t in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        raise UserError(f"--warm-start: study {earlier.study_name!r} has no complete trial "
                        "to start from")
    sign = -1.0 if earlier.direction.name == "MAXIMIZE" else 1.0
    done.sort(key=lambda t: (sign * float(t.value), t.number))
    queued: list[dict[str, Any]] = []
    with lock():
        for t in done[:top]:
            values, moved = fit_values(space, t.params, params.flat())
            if _holds(optuna_study, values) or values in queued:
                continue
            attrs: dict[str, Any] = {WARM_ATTR: f"{earlier.study_name}#{t.number}"}
            if moved:
                attrs[ADJUSTED_ATTR] = "; ".join(moved)
            optuna_study.enqueue_trial(values, user_attrs=attrs)
            queued.append(values)
    logger.info("--warm-start: queued %d configuration(s) of %s", len(queued),
                earlier.study_name)
    return queued
