"""Study files (``studies/<name>.yaml``) → checked, frozen dataclasses → Optuna objects.

A study file holds only the search; every other value comes from ``params.yaml``::

    description: How wide and deep must the MLP be?   # shown by --help / --list and in MLflow
    dataset: digits           # optional; default: params.yaml `dataset`
    metric: val/loss          # val/loss | val/accuracy | val/mae | val/rmse
    direction: minimize       # optional; must agree with the metric
    budget: {n_trials: 20, timeout_s: 600}
    sampler: {type: tpe, seed: 42}            # tpe | random | grid (+ their settings)
    pruner: {type: median, n_warmup_steps: 3} # none | median | percentile |
                                              # successive_halving | hyperband
    cv: {folds: auto}         # auto | K (≥ 2) | 0 (holdout); holdout: fraction
    space:                    # dotted paths into params.yaml
      model.width: {type: int, low: 16, high: 1024, log: true}
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      model.batch_norm: {type: categorical, choices: [true, false]}

Everything is checked on load, with the YAML reader and typed checker of
:mod:`pipeline.config`: an unknown or repeated key, a wrong type, an empty space,
``low > high``, a dotted path that is not a key of ``params.yaml``, a value the params would
reject, or a grid over a float range without ``step`` raises :class:`UserError` naming the file
(with its line) and the key. The sampler's and pruner's settings are Optuna's: the names and
types a file may set are read from the constructor's signature, and the sampler and pruner are
built on load so that Optuna checks the values itself; its refusal is quoted at the setting's
line.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import operator
import re
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler

from pipeline.config import (
    PLAIN_NAME,
    PLAIN_NAME_RULE,
    Params,
    Where,
    bounds,
    build,
    check_bounds,
    convert,
    did_you_mean,
    dotted_fields,
    has_dotted_field,
    parse_yaml,
    read_yaml,
)
from pipeline.errors import UserError
from pipeline.study.fold_pruning import FoldPruner
from pipeline.study.rungs import RungPruner, RungsSpec, describe_rungs, rung_ends

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "STUDIES_DIR",
    "Budget",
    "CvSpec",
    "ParamSpace",
    "PrunerSpec",
    "SamplerSpec",
    "StudySpec",
    "check_metric_for_task",
    "fit_to_data",
    "list_studies",
    "load_study",
    "make_pruner",
    "make_sampler",
    "parse_study",
    "study_path",
    "suggest",
]

STUDIES_DIR = "studies"  # relative to the project root (the folder holding params.yaml)

# Metrics a study may optimise, with the direction that makes them better.
METRICS: dict[str, Literal["minimize", "maximize"]] = {
    "val/loss": "minimize",
    "val/accuracy": "maximize",
    "val/mae": "minimize",
    "val/rmse": "minimize",
}
CLASSIFICATION_METRICS = ("val/loss", "val/accuracy")
REGRESSION_METRICS = ("val/loss", "val/mae", "val/rmse")

Scalar = bool | int | float | str | None
_FOLDS = "auto, 0 (holdout) or a number of folds ≥ 2"
# A grid sampler visits every point; more than this is a typo, not a search.
_MAX_GRID_POINTS = 100_000


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpace:
    """One searched value: a dotted key of params.yaml and the distribution to draw it from."""

    name: str  # dotted path, e.g. "model.width"
    type: Literal["int", "float", "categorical"]
    low: float | None = None  # int / float
    high: float | None = None
    log: bool = False
    step: float | None = None  # int: default 1; float: None = continuous
    choices: tuple[Scalar, ...] = ()  # categorical
    # Searched only when every earlier key named here has one of the listed values
    # (``when: {model.arch: cnn}``); empty: always.
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether this value is drawn, given the values drawn before it."""
        return all(key in values and _one_of(values[key], allowed) for key, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        """Draw this value from an Optuna trial (a ``Trial`` or a ``FixedTrial``)."""
        if self.type == "int":
            assert self.low is not None and self.high is not None
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        if self.type == "float":
            assert self.low is not None and self.high is not None
            return trial.suggest_float(
                self.name, float(self.low), float(self.high), step=self.step, log=self.log
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid_values(self) -> list[Any] | None:
        """Every value a grid search visits, or None when the range is continuous."""
        if self.type == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def describe(self) -> str:
        """A short human form: ``int [16, 1024] log``, ``categorical [true, false]``, with
        `` when model.arch=cnn`` for a conditional value."""
        condition = "".join(
            f" when {key}={'|'.join(_plain(v) for v in allowed)}" for key, allowed in self.when)
        if self.type == "categorical":
            choices = yaml.safe_dump(list(self.choices), default_flow_style=True).strip()
            return f"categorical {choices}{condition}"
        extra = " log" if self.log else ""
        if self.step is not None and not (self.type == "int" and self.step == 1):
            extra += f" step {self.step:g}"
        return f"{self.type} [{self.low:g}, {self.high:g}]{extra}{condition}"


def _one_of(value: Any, allowed: Sequence[Any]) -> bool:
    """``value in allowed`` without ``True == 1``: YAML's true and 1 are different choices."""
    return any(type(value) is type(a) and value == a for a in allowed)


def _plain(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")



@dataclass(frozen=True)
class Budget:
    # The study's total: a run adds trials until this many are done or running (every worker
    # and every earlier run counts); None: no limit (stop with --timeout or Ctrl-C).
    n_trials: int | None = field(default=20, metadata=bounds(1))
    # Stop starting new trials after this many seconds.
    timeout_s: float | None = field(
        default=None, metadata=bounds(0, lo_open=True, what="a number of seconds")
    )
    # Stop when it is done: once this many trials in a row have finished without beating the
    # best by more than its standard error (budget.flat_trials); None: never.
    patience: int | None = field(default=None, metadata=bounds(1))


@dataclass(frozen=True)
class SamplerSpec:
    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = None  # None: params.yaml `seed`
    options: dict[str, Any] = field(default_factory=dict)  # the sampler's own settings

    @property
    def startup_trials(self) -> int:
        """Trials drawn at random before the sampler models the space (TPE's
        ``n_startup_trials``, Optuna's default when unset); 0 for random and grid."""
        if self.type != "tpe":
            return 0
        default = inspect.signature(TPESampler).parameters["n_startup_trials"].default
        return int(self.options.get("n_startup_trials", default))


@dataclass(frozen=True)
class PrunerSpec:
    type: Literal["none", "median", "percentile", "successive_halving", "hyperband", "rungs",
                  "folds"] = "none"
    options: dict[str, Any] = field(default_factory=dict)  # an Optuna pruner's settings
    rungs: RungsSpec | None = None  # type rungs: the schedule (pipeline.study.rungs)


@dataclass(frozen=True)
class CvSpec:
    """``folds``: ``"auto"`` (k-fold below ``search.cv_threshold`` samples), K ≥ 2, or 0."""

    folds: int | Literal["auto"] = field(default="auto", metadata={"what": _FOLDS})
    # The holdout validation fraction; None: train.val_fraction.
    holdout: float | None = field(
        default=None, metadata=bounds(0.0, 0.9, lo_open=True, what="a validation fraction")
    )

    def resolve(self, n_train: int, params: Params) -> tuple[int, float | None]:
        """``(folds, holdout)`` for a training part of ``n_train`` samples: ``(K, None)`` for
        K-fold cross-validation, ``(1, fraction)`` for one holdout split."""
        folds = self.folds
        if folds == "auto":
            folds = params.search.cv_folds if n_train < params.search.cv_threshold else 0
        if folds:
            return int(folds), None
        return 1, self.holdout if self.holdout is not None else params.train.val_fraction


@dataclass(frozen=True)
class StudySpec:
    """A study file, checked."""

    name: str
    source: str  # the file, for messages
    description: str
    dataset: str | None
    metric: str
    direction: Literal["minimize", "maximize"]
    budget: Budget
    sampler: SamplerSpec
    pruner: PrunerSpec
    cv: CvSpec
    space: tuple[ParamSpace, ...]

    def study_name(self, dataset: str) -> str:
        """The Optuna study name and MLflow experiment name: ``<study>-<dataset>``."""
        return f"{self.name}-{dataset}"

    def summary(self) -> dict[str, str]:
        """Flat string values describing the search, for MLflow params of the parent run."""
        out = {
            "study.name": self.name,
            "study.metric": self.metric,
            "study.direction": self.direction,
            "study.n_trials": str(self.budget.n_trials),
            "study.timeout_s": str(self.budget.timeout_s),
            "study.patience": str(self.budget.patience),
            "study.sampler": self.sampler.type,
            "study.sampler_seed": str(self.sampler.seed),
            "study.pruner": self.pruner.type,
            "study.cv_folds": str(self.cv.folds),
            "study.cv_holdout": str(self.cv.holdout),
        }
        for key, value in sorted(self.sampler.options.items()):
            out[f"study.sampler.{key}"] = str(value)
        for key, value in sorted(self.pruner.options.items()):
            out[f"study.pruner.{key}"] = str(value)
        if self.pruner.rungs is not None:
            out["study.pruner.rungs"] = describe_rungs(self.pruner.rungs.rungs)
            out["study.pruner.reduction_factor"] = str(self.pruner.rungs.reduction_factor)
            out["study.pruner.min_samples"] = str(self.pruner.rungs.min_samples)
        for p in self.space:
            out[f"space.{p.name}"] = p.describe()
        return out


# --------------------------------------------------------------------------------------------
# Samplers and pruners: Optuna's constructors, and the settings their signatures declare
# --------------------------------------------------------------------------------------------
_SAMPLERS: dict[str, type[BaseSampler]] = {
    "tpe": TPESampler,
    "random": RandomSampler,
    "grid": GridSampler,
}
_PRUNERS: dict[str, type[BasePruner]] = {
    "none": NopPruner,
    "median": MedianPruner,
    "percentile": PercentilePruner,
    "successive_halving": SuccessiveHalvingPruner,
    "hyperband": HyperbandPruner,
    "rungs": RungPruner,  # ours: successive halving over data and epochs (study/rungs.py)
    "folds": FoldPruner,  # ours: fold-aware, forgiving (study/fold_pruning.py)
}
# Constructor arguments that are not settings: the seed has its own key, a grid's values come
# from the space.
_NOT_SETTINGS = ("self", "seed", "search_space")
_SCALAR_TYPES: dict[str, Any] = {
    "bool": bool, "int": int, "float": float, "str": str, "None": type(None),
}
# Values Optuna accepts when the object is built and trips on only while the search runs: a
# negative n_startup_trials acts as 0, and n_ei_candidates=0 fails every trial after the
# startup ones.
_LATE_MINIMUM: dict[tuple[type, str], int] = {
    (TPESampler, "n_startup_trials"): 0,
    (TPESampler, "n_ei_candidates"): 1,
}
# Hyperband builds its successive-halving brackets at the first report, from these settings.
_HYPERBAND_BRACKET = ("min_resource", "reduction_factor", "bootstrap_count")


def _scalar_hint(annotation: Any) -> Any:
    """The type of an argument a YAML value can give, or None (callables, arrays, ...)."""
    if isinstance(annotation, str):  # Optuna's modules use postponed annotations
        parts = [_SCALAR_TYPES.get(name.strip()) for name in annotation.split("|")]
    elif get_origin(annotation) in (Union, types.UnionType):
        parts = list(get_args(annotation))
    else:
        parts = [annotation]
    if any(p not in _SCALAR_TYPES.values() for p in parts):
        return None
    return functools.reduce(operator.or_, parts)


@functools.cache
def _settings(cls: type) -> dict[str, tuple[Any, inspect.Parameter]]:
    """What a study file may set for ``cls``: argument name -> (type, Optuna's parameter)."""
    out = {}
    for p in inspect.signature(cls).parameters.values():
        if p.name in _NOT_SETTINGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = _scalar_hint(p.annotation)
        if hint is not None:
            out[p.name] = (hint, p)
    return out


def _read_settings(
    cls: type, data: Mapping[str, Any], where: Where, *, label: str, keys: Sequence[str]
) -> dict[str, Any]:
    """Check the settings of ``cls`` in ``data`` by name and type (values: Optuna's check)."""
    settings = _settings(cls)
    for key in data:
        if key not in settings:
            raise UserError(
                f"{where.child(key)}: unknown key" + did_you_mean(key, [*keys, *settings])
            )
    for name, (_, p) in settings.items():
        if p.default is p.empty and name not in data:
            raise UserError(f"{where.child(name)}: required by the {label}")
    options = {}
    for key, value in data.items():
        options[key] = convert(value, settings[key][0], where.child(key))
        low = _LATE_MINIMUM.get((cls, key))
        if low is not None and options[key] < low:
            raise UserError(f"{where.child(key)}: expected an integer ≥ {low}, got {value!r}")
    return options


def _sampler(kind: str, options: Mapping[str, Any], seed: int, space: Sequence[ParamSpace]) -> Any:
    if kind == "grid":
        grid = {p.name: p.grid_values() for p in space}
        return GridSampler(grid, seed=seed, **options)  # type: ignore[arg-type]
    return _SAMPLERS[kind](seed=seed, **options)  # type: ignore[call-arg]


def _optuna_checks(make: Callable[[], Any], cls: type, keys: Sequence[str], where: Where) -> None:
    """Build the object now so Optuna checks its arguments; its refusal names the setting."""
    try:
        with warnings.catch_warnings():
            # Experimental and deprecation notes come again when the search builds it.
            warnings.simplefilter("ignore")
            make()
    except (ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        named = [k for k in keys if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", message, re.I)]
        at = where.child(max(named, key=len)) if named else where
        raise UserError(f"{at}: {message} (Optuna's {cls.__name__})") from None


def _hyperband_brackets(options: Mapping[str, Any]) -> None:
    defaults = {k: p.default for k, (_, p) in _settings(HyperbandPruner).items()}
    SuccessiveHalvingPruner(**{k: options.get(k, defaults[k]) for k in _HYPERBAND_BRACKET})


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
_TOP_KEYS = (
    "description", "dataset", "metric", "direction", "budget", "sampler", "pruner", "cv", "space",
)
_SPACE_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("type", "low", "high", "step", "log", "when"),
    "float": ("type", "low", "high", "step", "log", "when"),
    "categorical": ("type", "choices", "when"),
}
# What a trial trains with. Other params.yaml keys (paths, storage, tracking) would be
# accepted by the params but change nothing a trial learns, or worse, where it is recorded.
_SEARCHABLE = ("model.", "train.", "seed")


def _mapping(value: Any, where: Where) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: Where) -> None:
    for key in data:
        if key not in allowed:
            raise UserError(f"{where.child(key)}: unknown key" + did_you_mean(key, allowed))


def _parse_sampler(
    raw: Any, where: Where, space: Sequence[ParamSpace], space_at: Where
) -> SamplerSpec:
    data = _mapping(raw, where)
    kind = data.pop("type", "tpe")
    if not isinstance(kind, str) or kind not in _SAMPLERS:
        raise UserError(
            f"{where.child('type')}: unknown sampler {kind!r}" + did_you_mean(str(kind), _SAMPLERS)
        )
    seed = convert(data.pop("seed", None), int | None, where.child("seed"))
    cls = _SAMPLERS[kind]
    options = _read_settings(
        cls, data, where, label=f"{kind} sampler", keys=("type", "seed")
    )
    if kind == "grid":
        _check_grid(space, space_at)
    _optuna_checks(
        lambda: _sampler(kind, options, 0 if seed is None else seed, space),
        cls,
        [*options, *([] if seed is None else ["seed"])],
        where,
    )
    return SamplerSpec(type=kind, seed=seed, options=options)  # type: ignore[arg-type]


def _check_grid(space: Sequence[ParamSpace], where: Where) -> None:
    points = 1
    for p in space:
        if p.when:
            raise UserError(f"{where.child(p.name, 'when')}: a grid sampler cannot search a "
                            "conditional space; use the tpe or random sampler")
        size = _grid_size(p)
        if size is None:
            raise UserError(
                f"{where.child(p.name)}: a grid sampler needs a finite set of values; "
                "give this float range a step (or use type: categorical)"
            )
        points *= size
        if points > _MAX_GRID_POINTS:
            raise UserError(
                f"{where.child(p.name)}: the grid has more than {_MAX_GRID_POINTS:,} points; "
                "narrow the ranges, give larger steps, or use the tpe or random sampler"
            )


def _grid_size(p: ParamSpace) -> int | None:
    """How many values a grid visits for ``p``, without listing them (None: continuous)."""
    if p.type == "categorical":
        return len(p.choices)
    assert p.low is not None and p.high is not None
    if p.step is None:
        return None if p.type == "float" else int(p.high - p.low) + 1
    return int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1


def _parse_pruner(raw: Any, where: Where) -> PrunerSpec:
    if raw is None:
        return PrunerSpec(type="none")
    data = _mapping(raw, where)
    if "type" not in data:
        raise UserError(f"{where.child('type')}: required; one of " + ", ".join(_PRUNERS))
    kind = data.pop("type")
    if not isinstance(kind, str) or kind not in _PRUNERS:
        raise UserError(
            f"{where.child('type')}: unknown pruner {kind!r}" + did_you_mean(str(kind), _PRUNERS)
        )
    if kind == "rungs":
        return PrunerSpec(type="rungs", rungs=_parse_rungs(data, where))
    cls = _PRUNERS[kind]
    options = _read_settings(cls, data, where, label=f"{kind} pruner", keys=("type",))
    _optuna_checks(lambda: cls(**options), cls, list(options), where)
    if kind == "hyperband":
        _optuna_checks(lambda: _hyperband_brackets(options), cls, list(options), where)
    return PrunerSpec(type=kind, options=options)  # type: ignore[arg-type]


def _parse_rungs(data: Mapping[str, Any], where: Where) -> RungsSpec:
    spec = build(RungsSpec, data, where)
    if not spec.rungs:
        raise UserError(f"{where.child('rungs')}: expected at least one rung, e.g. "
                        "[{data: 0.111, epochs: 3}, {data: 1.0, epochs: 3}]")
    for i in range(1, len(spec.rungs)):
        if spec.rungs[i].data < spec.rungs[i - 1].data:
            raise UserError(
                f"{where.child('rungs', i, 'data')}: {spec.rungs[i].data:g} is less than the "
                f"rung before ({spec.rungs[i - 1].data:g}); each rung trains on the data of "
                "the one before and more")
    return spec


def _parse_budget(raw: Any, where: Where) -> Budget:
    budget = build(Budget, _mapping(raw, where), where)
    if budget.n_trials is None and budget.timeout_s is None:
        raise UserError(
            f"{where}: set n_trials or timeout_s (or both); with neither the search "
            "would never end"
        )
    return budget


def _parse_cv(raw: Any, where: Where) -> CvSpec:
    cv = build(CvSpec, _mapping(raw, where), where)
    if cv.folds != "auto" and (cv.folds < 0 or cv.folds == 1):
        raise UserError(f"{where.child('folds')}: expected {_FOLDS}, got {cv.folds!r}")
    return cv


def _parse_param(
    name: str, raw: Any, where: Where, earlier: Mapping[str, ParamSpace]
) -> ParamSpace:
    if not has_dotted_field(name):
        searchable = [k for k in dotted_fields() if k.startswith(_SEARCHABLE)]
        raise UserError(f"{where}: not a key of params.yaml" + did_you_mean(name, searchable))
    if not name.startswith(_SEARCHABLE):
        raise UserError(
            f"{where}: not a training setting; expected a model.*, train.* or seed key"
        )
    data = _mapping(raw, where)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _SPACE_KEYS:
        raise UserError(
            f"{where.child('type')}: expected int, float or categorical, got {kind!r}"
        )
    _check_keys(data, _SPACE_KEYS[kind], where)
    if kind == "categorical":
        param = _parse_choices(name, data.get("choices"), where.child("choices"))
    else:
        param = _parse_range(name, kind, data, where)
    if "when" not in data:
        return param
    return replace(param, when=_parse_when(data["when"], where.child("when"), earlier))


def _parse_when(
    raw: Any, where: Where, earlier: Mapping[str, ParamSpace]
) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    """``when: {model.arch: cnn}`` (or a list of values): categorical keys searched before."""
    data = _mapping(raw, where)
    if not data:
        raise UserError(f"{where}: expected a mapping of a categorical key searched above to "
                        "its value or values, e.g. {model.arch: cnn}")
    out = []
    for key, value in data.items():
        at = where.child(key)
        condition = earlier.get(key)
        if condition is None:
            raise UserError(f"{at}: not a key searched above this one (a condition names a "
                            "categorical key listed earlier in space:)"
                            + did_you_mean(key, list(earlier)))
        if condition.type != "categorical":
            raise UserError(f"{at}: a condition needs a categorical key; {key} is "
                            f"{condition.type}")
        allowed = value if isinstance(value, list) else [value]
        for v in allowed:
            if not _one_of(v, condition.choices):
                raise UserError(f"{at}: {v!r} is not one of {key}'s choices "
                                f"{list(condition.choices)}")
        out.append((key, tuple(allowed)))
    return tuple(out)


def _parse_choices(name: str, choices: Any, where: Where) -> ParamSpace:
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{where}: expected a non-empty list, got {choices!r}")
    for c in choices:
        if c is not None and not isinstance(c, bool | int | float | str):
            raise UserError(
                f"{where}: choices must be numbers, strings, true/false or null, got {c!r}"
            )
    if len({(type(c), c) for c in choices}) != len(choices):
        raise UserError(f"{where}: duplicate choices in {choices!r}")
    return ParamSpace(name=name, type="categorical", choices=tuple(choices))


def _parse_range(name: str, kind: str, data: Mapping[str, Any], where: Where) -> ParamSpace:
    number: Any = int if kind == "int" else int | float  # a float range keeps an int bound
    expected = "an integer" if kind == "int" else "a number"
    for key in ("low", "high"):
        if key not in data:
            raise UserError(f"{where.child(key)}: required for type {kind}")
    low = convert(data["low"], number, where.child("low"), what=expected)
    high = convert(data["high"], number, where.child("high"), what=expected)
    if low > high:
        raise UserError(f"{where}: low ({low}) is greater than high ({high})")
    log = convert(data.get("log", False), bool, where.child("log"))
    step = convert(data.get("step"), number | None, where.child("step"),
                   what=f"{expected} > 0 or null")
    if step is not None:
        check_bounds(step, bounds(0, lo_open=True, what=expected), number, where.child("step"))
    if log and low <= 0:
        raise UserError(f"{where.child('low')}: a log range needs low > 0, got {low!r}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise UserError(
            f"{where}: log and step cannot be combined (Optuna samples a log range "
            "continuously); drop one"
        )
    step = 1 if kind == "int" and step is None else step
    return ParamSpace(name=name, type=kind, low=low, high=high, log=log, step=step)  # type: ignore[arg-type]


def _check_against_params(spec: ParamSpace, params: Params, where: Where) -> None:
    """Every value the search may draw must be one params.yaml accepts for that key."""
    if spec.type == "categorical":
        probes: list[Any] = list(spec.choices)
    else:
        assert spec.low is not None and spec.high is not None
        probes = [spec.low, spec.high]
        if spec.type == "float":
            probes.append((spec.low + spec.high) / 2.0)  # a float an int-only key refuses
    for value in probes:
        try:
            params.with_overrides({spec.name: value}, origin=params.source)
        except UserError as exc:
            raise UserError(
                f"{where}: the value {value!r} is not accepted by {params.source} ({exc})"
            ) from None


def _parse_space(raw: Any, where: Where) -> tuple[ParamSpace, ...]:
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"{where}: expected a non-empty mapping of dotted params.yaml keys to ranges, "
            f"got {raw!r}"
        )
    space: dict[str, ParamSpace] = {}
    for key, value in raw.items():
        space[str(key)] = _parse_param(str(key), value, where.child(str(key)), space)
    return tuple(space.values())


def _parse_header(
    data: Mapping[str, Any], top: Where, params: Params | None
) -> tuple[str, str | None, str, Literal["minimize", "maximize"]]:
    """``(description, dataset, metric, direction)``."""
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise UserError(
            f"{top.child('description')}: expected a one-line description of the study "
            f"(shown by --list), got {description!r}"
        )
    dataset = convert(data.get("dataset"), str | None, top.child("dataset"),
                      what="a dataset name")
    if dataset is not None and not PLAIN_NAME.match(dataset):
        raise UserError(f"{top.child('dataset')}: expected a dataset name, got {dataset!r}")
    if dataset is not None and params is not None and dataset not in params.datasets:
        raise UserError(
            f"{top.child('dataset')}: {dataset!r} is not declared under datasets in "
            f"{params.source}" + did_you_mean(dataset, sorted(params.datasets))
        )
    metric = data.get("metric", "val/loss")
    if not isinstance(metric, str) or metric not in METRICS:
        raise UserError(
            f"{top.child('metric')}: unknown metric {metric!r}"
            + did_you_mean(str(metric), METRICS)
        )
    direction = data.get("direction", METRICS[metric])
    if direction not in ("minimize", "maximize"):
        raise UserError(
            f"{top.child('direction')}: expected minimize or maximize, got {direction!r}"
        )
    if direction != METRICS[metric]:
        raise UserError(
            f"{top.child('direction')}: {metric} is better when "
            f"{'lower' if METRICS[metric] == 'minimize' else 'higher'}, so direction must be "
            f"{METRICS[metric]}, got {direction}"
        )
    return " ".join(description.split()), dataset, metric, direction


def _parse(raw: Any, *, name: str, top: Where, params: Params | None) -> StudySpec:
    if not isinstance(raw, dict):
        raise UserError(
            f"{top.source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    data = {str(k): v for k, v in raw.items()}
    _check_keys(data, _TOP_KEYS, top)
    description, dataset, metric, direction = _parse_header(data, top, params)
    space = _parse_space(data.get("space"), top.child("space"))
    spec = StudySpec(
        name=name,
        source=top.source,
        description=description,
        dataset=dataset,
        metric=metric,
        direction=direction,
        budget=_parse_budget(data.get("budget"), top.child("budget")),
        sampler=_parse_sampler(data.get("sampler"), top.child("sampler"), space,
                               top.child("space")),
        pruner=_parse_pruner(data.get("pruner"), top.child("pruner")),
        cv=_parse_cv(data.get("cv"), top.child("cv")),
        space=space,
    )
    if params is not None:
        for p in space:
            _check_against_params(p, params, top.child("space", p.name))
    return spec


def parse_study(
    raw: Any,
    *,
    name: str,
    source: str,
    params: Params | None = None,
    text: str | None = None,
) -> StudySpec:
    """Check a study mapping and build a :class:`StudySpec`.

    Args:
        raw: the mapping read from the YAML file.
        name: the study name (the file's stem).
        source: the file name used in messages.
        params: when given, dataset names and every searchable value are checked against it.
        text: the file's text, so messages can carry line numbers.

    Raises:
        UserError: anything wrong, naming the file, line and key.
    """
    lines = parse_yaml(text, source).lines if text is not None else {}
    return _parse(raw, name=name, top=Where(source, (), lines), params=params)


def study_path(folder: Path, name: str) -> Path:
    """``<folder>/<name>.yaml``; the name must be plain, so the path stays in ``folder``.

    Raises:
        UserError: ``name`` holds anything but letters, digits, ``-`` and ``_``.
    """
    if not isinstance(name, str) or not PLAIN_NAME.match(name):
        raise UserError(
            f"study {name!r}: expected a plain study name ({PLAIN_NAME_RULE}), the stem of a "
            f"file in {Path(folder).name}/"
        )
    return Path(folder) / f"{name}.yaml"


def list_studies(folder: Path) -> dict[str, str]:
    """``{name: description}`` for every ``*.yaml`` in ``folder`` (sorted by name).

    A file that cannot be read gets its problem as its description, so ``--list`` still shows it.
    """
    out: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        if not PLAIN_NAME.match(path.stem):
            out[path.stem] = f"(not a plain study name: {PLAIN_NAME_RULE}; rename the file)"
            continue
        try:
            raw = read_yaml(path, path.name).data
        except UserError as exc:
            out[path.stem] = f"(unreadable: {exc})"
            continue
        desc = raw.get("description") if isinstance(raw, dict) else None
        out[path.stem] = " ".join(str(desc).split()) if desc else "(no description)"
    return out


def load_study(name: str, folder: Path, params: Params | None = None) -> StudySpec:
    """Read and check ``<folder>/<name>.yaml``.

    Raises:
        UserError: the name is not plain, the study does not exist (the message lists the
            available ones) or the file is wrong.
    """
    path = study_path(folder, name)
    if not path.is_file():
        available = list_studies(folder)
        listing = ", ".join(available) if available else f"none (no *.yaml in {folder})"
        raise UserError(
            f"unknown study {name!r}{did_you_mean(name, available, listing=False)}: no file "
            f"{path}; available studies: {listing}"
        )
    doc = read_yaml(path, f"{Path(folder).name}/{path.name}")
    return _parse(doc.data, name=name, top=doc.where(), params=params)


# --------------------------------------------------------------------------------------------
# Optuna objects
# --------------------------------------------------------------------------------------------
def suggest(trial: Any, space: Sequence[ParamSpace]) -> dict[str, Any]:
    """Draw the values of ``space`` from ``trial`` in order, each only when its conditions
    hold for the values drawn before it: ``{dotted key: value}``."""
    values: dict[str, Any] = {}
    for p in space:
        if p.active(values):
            values[p.name] = p.suggest(trial)
    return values


def fit_to_data(spec: StudySpec, arch_fits: Callable[[str], bool]) -> StudySpec:
    """The study as it searches one dataset: ``model.arch`` choices the data cannot take
    (``arch_fits`` False: a CNN on a table) are left out, and so is every value searched only
    for them (its ``when`` can no longer hold). One study file serves images and tables.

    Raises:
        UserError: no ``model.arch`` choice fits the data.
    """
    space: dict[str, ParamSpace] = {}
    dropped: list[str] = []
    for p in spec.space:
        if p.name == "model.arch" and p.type == "categorical":
            kept = tuple(c for c in p.choices if arch_fits(str(c)))
            if not kept:
                raise UserError(f"{spec.source}: space: model.arch: none of "
                                f"{list(p.choices)} can take this dataset's input")
            dropped += [f"model.arch={c}" for c in p.choices if c not in kept]
            p = replace(p, choices=kept)
        when = tuple((key, tuple(v for v in allowed if key not in space
                                 or _one_of(v, space[key].choices)))
                     for key, allowed in p.when)
        if any(key not in space or not allowed for key, allowed in when):
            dropped.append(p.name)
            continue
        space[p.name] = replace(p, when=when)
    if not dropped:
        return spec
    logger.info("%s: not searched on this dataset: %s", spec.source, ", ".join(dropped))
    return replace(spec, space=tuple(space.values()))


def make_sampler(spec: StudySpec, *, default_seed: int) -> Any:
    """The Optuna sampler the study file names, seeded (``sampler.seed`` or ``default_seed``).

    Each trial draws from its own stream, seeded from the study seed and the trial number, so
    workers sharing a study never repeat each other and a rerun does not replay its first
    samples (:class:`TrialSeededSampler`).
    """
    from pipeline.study._sampling import TrialSeededSampler

    seed = spec.sampler.seed if spec.sampler.seed is not None else default_seed
    sampler = spec.sampler
    if sampler.type == "grid":
        # Optuna's grid sampler already hands grid points out by trial number (unique across
        # workers); its seed shuffles the grid, which must be the same in every worker.
        return _sampler(sampler.type, sampler.options, seed, spec.space)

    def factory(trial_seed: int) -> Any:
        # Built anew for every trial: Optuna's notes on experimental settings (multivariate,
        # group) were said once, when the study file was checked.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return _sampler(sampler.type, sampler.options, trial_seed, spec.space)

    return TrialSeededSampler(factory, seed)


def make_pruner(spec: StudySpec) -> Any:
    """The Optuna pruner the study file names, with its settings."""
    if spec.pruner.rungs is not None:
        rungs = spec.pruner.rungs
        return RungPruner(rung_ends(rungs.rungs), reduction_factor=rungs.reduction_factor)
    return _PRUNERS[spec.pruner.type](**spec.pruner.options)


def check_metric_for_task(spec: StudySpec, task: str) -> None:
    """A classification study cannot optimise MAE, nor a regression study accuracy."""
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if spec.metric not in allowed:
        raise UserError(
            f"{spec.source}: metric: {spec.metric} is not computed for {task}; "
            f"allowed for {task}: {', '.join(allowed)}"
        )
