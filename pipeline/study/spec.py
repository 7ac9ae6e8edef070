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

Everything is checked on load: an unknown key, a wrong type, an empty space, ``low > high``, a
dotted path that is not a key of ``params.yaml``, a value the params would reject, an unknown
sampler or pruner, or a grid over a float range without ``step`` raises :class:`UserError`
naming the file (with its line) and the key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config import Params, has_dotted_field
from pipeline.errors import UserError

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
        """A short human form: ``int [16, 1024] log``, ``categorical [true, false]``."""
        if self.type == "categorical":
            choices = yaml.safe_dump(list(self.choices), default_flow_style=True).strip()
            return f"categorical {choices}"
        extra = " log" if self.log else ""
        if self.step is not None and not (self.type == "int" and self.step == 1):
            extra += f" step {self.step:g}"
        return f"{self.type} [{self.low:g}, {self.high:g}]{extra}"


@dataclass(frozen=True)
class Budget:
    n_trials: int | None = 20  # trials per invocation (a rerun adds this many)
    timeout_s: float | None = None  # stop starting new trials after this many seconds


@dataclass(frozen=True)
class SamplerSpec:
    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = None  # None: params.yaml `seed`
    options: dict[str, Any] = field(default_factory=dict)  # type-specific settings


@dataclass(frozen=True)
class PrunerSpec:
    type: Literal["none", "median", "percentile", "successive_halving", "hyperband"] = "none"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CvSpec:
    """``folds``: ``"auto"`` (k-fold below ``search.cv_threshold`` samples), K ≥ 2, or 0."""

    folds: int | Literal["auto"] = "auto"
    holdout: float | None = None  # holdout validation fraction; None: train.val_fraction

    def resolve(self, n_train: int, params: Params) -> tuple[int, float]:
        """``(K, holdout_fraction)`` for a training part of ``n_train`` samples; K=0: holdout."""
        fraction = self.holdout if self.holdout is not None else params.train.val_fraction
        if self.folds == "auto":
            k = params.search.cv_folds if n_train < params.search.cv_threshold else 0
        else:
            k = int(self.folds)
        return k, fraction


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
        for p in self.space:
            out[f"space.{p.name}"] = p.describe()
        return out


# --------------------------------------------------------------------------------------------
# Settings of each sampler and pruner: name -> (kind, default)
# --------------------------------------------------------------------------------------------
_INT_GE0 = ("int", 0)
_INT_GE1 = ("int", 1)
_INT_GE2 = ("int", 2)
_BOOL = ("bool", None)

SAMPLER_OPTIONS: dict[str, dict[str, tuple[str, Any]]] = {
    "tpe": {
        "n_startup_trials": _INT_GE0,
        "n_ei_candidates": _INT_GE1,
        "multivariate": _BOOL,
        "group": _BOOL,
        "constant_liar": _BOOL,
        "consider_endpoints": _BOOL,
    },
    "random": {},
    "grid": {},
}
_PERCENTILE_COMMON = {
    "n_startup_trials": _INT_GE0,
    "n_warmup_steps": _INT_GE0,
    "interval_steps": _INT_GE1,
    "n_min_trials": _INT_GE1,
}
PRUNER_OPTIONS: dict[str, dict[str, tuple[str, Any]]] = {
    "none": {},
    "median": dict(_PERCENTILE_COMMON),
    "percentile": {"percentile": ("percent", None), **_PERCENTILE_COMMON},
    "successive_halving": {
        "min_resource": ("int_or_auto", 1),
        "reduction_factor": _INT_GE2,
        "min_early_stopping_rate": _INT_GE0,
        "bootstrap_count": _INT_GE0,
    },
    "hyperband": {
        "min_resource": _INT_GE1,
        "max_resource": ("int_or_auto", 1),
        "reduction_factor": _INT_GE2,
        "bootstrap_count": _INT_GE0,
    },
}
_REQUIRED_OPTIONS = {"percentile": ("percentile",)}


# --------------------------------------------------------------------------------------------
# Locations: the line of a key in the YAML text, for messages
# --------------------------------------------------------------------------------------------
class _Where:
    """Builds ``file:line: dotted.key`` prefixes from the composed YAML node tree."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.root: yaml.Node | None = None
        if text is not None:
            try:
                self.root = yaml.compose(text)
            except yaml.YAMLError:
                self.root = None

    def line(self, path: Sequence[str]) -> int | None:
        node = self.root
        found: yaml.Node | None = None
        for part in path:
            if not isinstance(node, yaml.MappingNode):
                break
            for key_node, value_node in node.value:
                if str(key_node.value) == part:
                    found, node = key_node, value_node
                    break
            else:
                break
        return None if found is None else found.start_mark.line + 1

    def __call__(self, *path: str) -> str:
        line = self.line(path)
        loc = f"{self.source}:{line}" if line is not None else self.source
        return f"{loc}: {'.'.join(path)}" if path else loc


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
_TOP_KEYS = (
    "description", "dataset", "metric", "direction", "budget", "sampler", "pruner", "cv", "space",
)


def _suggest_key(word: str, allowed: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; allowed: {', '.join(allowed) if allowed else 'none'}"


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _check_keys(
    data: Mapping[str, Any], allowed: Sequence[str], where: _Where, *path: str
) -> None:
    for key in data:
        if key not in allowed:
            raise UserError(f"{where(*path, key)}: unknown key" + _suggest_key(key, allowed))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _option(kind: str, low: Any, value: Any, at: str) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{at}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if not _is_int(value) or value < low:
            raise UserError(f"{at}: expected an integer ≥ {low}, got {value!r}")
        return value
    if kind == "int_or_auto":
        if value == "auto" or (_is_int(value) and value >= low):
            return value
        raise UserError(f"{at}: expected auto or an integer ≥ {low}, got {value!r}")
    if kind == "percent":
        if not _is_number(value) or not 0 <= value <= 100:
            raise UserError(f"{at}: expected a number in [0, 100], got {value!r}")
        return float(value)
    raise AssertionError(kind)


def _parse_sampler(raw: Any, where: _Where) -> SamplerSpec:
    data = _mapping(raw, where("sampler"))
    kind = data.pop("type", "tpe")
    if kind not in SAMPLER_OPTIONS:
        raise UserError(
            f"{where('sampler', 'type')}: unknown sampler {kind!r}; allowed: "
            + ", ".join(SAMPLER_OPTIONS)
        )
    seed = data.pop("seed", None)
    if seed is not None and not _is_int(seed):
        raise UserError(f"{where('sampler', 'seed')}: expected an integer or null, got {seed!r}")
    allowed = SAMPLER_OPTIONS[kind]
    _check_keys(data, ["type", "seed", *allowed], where, "sampler")
    options = {
        k: _option(allowed[k][0], allowed[k][1], v, where("sampler", k)) for k, v in data.items()
    }
    return SamplerSpec(type=kind, seed=seed, options=options)


def _parse_pruner(raw: Any, where: _Where) -> PrunerSpec:
    if raw is None:
        return PrunerSpec(type="none")
    data = _mapping(raw, where("pruner"))
    if "type" not in data:
        raise UserError(
            f"{where('pruner')}.type: required; one of " + ", ".join(PRUNER_OPTIONS)
        )
    kind = data.pop("type")
    if kind not in PRUNER_OPTIONS:
        raise UserError(
            f"{where('pruner', 'type')}: unknown pruner {kind!r}; allowed: "
            + ", ".join(PRUNER_OPTIONS)
        )
    allowed = PRUNER_OPTIONS[kind]
    _check_keys(data, ["type", *allowed], where, "pruner")
    for key in _REQUIRED_OPTIONS.get(kind, ()):
        if key not in data:
            raise UserError(f"{where('pruner')}.{key}: required by the {kind} pruner")
    options = {
        k: _option(allowed[k][0], allowed[k][1], v, where("pruner", k)) for k, v in data.items()
    }
    return PrunerSpec(type=kind, options=options)


def _parse_budget(raw: Any, where: _Where) -> Budget:
    data = _mapping(raw, where("budget"))
    _check_keys(data, ["n_trials", "timeout_s"], where, "budget")
    n_trials = data.get("n_trials", Budget.n_trials)
    if n_trials is not None and (not _is_int(n_trials) or n_trials < 1):
        raise UserError(
            f"{where('budget', 'n_trials')}: expected an integer ≥ 1 or null, got {n_trials!r}"
        )
    timeout = data.get("timeout_s")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        raise UserError(
            f"{where('budget', 'timeout_s')}: expected a number of seconds > 0 or null, "
            f"got {timeout!r}"
        )
    if n_trials is None and timeout is None:
        raise UserError(
            f"{where('budget')}: set n_trials or timeout_s (or both); with neither the search "
            "would never end"
        )
    return Budget(n_trials=n_trials, timeout_s=None if timeout is None else float(timeout))


def _parse_cv(raw: Any, where: _Where) -> CvSpec:
    data = _mapping(raw, where("cv"))
    _check_keys(data, ["folds", "holdout"], where, "cv")
    folds = data.get("folds", "auto")
    if not (folds == "auto" or (_is_int(folds) and (folds == 0 or folds >= 2))):
        raise UserError(
            f"{where('cv', 'folds')}: expected auto, 0 (holdout) or a number of folds ≥ 2, "
            f"got {folds!r}"
        )
    holdout = data.get("holdout")
    if holdout is not None and (not _is_number(holdout) or not 0 < holdout <= 0.9):
        raise UserError(
            f"{where('cv', 'holdout')}: expected a validation fraction in (0, 0.9], "
            f"got {holdout!r}"
        )
    return CvSpec(folds=folds, holdout=None if holdout is None else float(holdout))


_SPACE_KEYS: dict[str, tuple[str, ...]] = {
    "int": ("type", "low", "high", "step", "log"),
    "float": ("type", "low", "high", "step", "log"),
    "categorical": ("type", "choices"),
}


# What a trial trains with. Other params.yaml keys (paths, storage, tracking) would be
# accepted by the params but change nothing a trial learns, or worse, where it is recorded.
_SEARCHABLE = ("model.", "train.", "seed")


def _parse_param(name: str, raw: Any, where: _Where) -> ParamSpace:
    at = where("space", name)
    from pipeline.config.params import _all_dotted_fields  # the list of settable keys

    searchable = [k for k in _all_dotted_fields() if k.startswith(_SEARCHABLE)]
    if not has_dotted_field(name):
        raise UserError(f"{at}: not a key of params.yaml" + _suggest_key(name, searchable))
    if not name.startswith(_SEARCHABLE):
        raise UserError(
            f"{at}: not a training setting; expected a model.*, train.* or seed key"
        )
    data = _mapping(raw, at)
    kind = data.get("type")
    if kind not in _SPACE_KEYS:
        raise UserError(
            f"{where('space', name, 'type')}: expected int, float or categorical, got {kind!r}"
        )
    _check_keys(data, _SPACE_KEYS[kind], where, "space", name)
    if kind == "categorical":
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(
                f"{where('space', name, 'choices')}: expected a non-empty list, got {choices!r}"
            )
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise UserError(
                    f"{where('space', name, 'choices')}: choices must be numbers, strings, "
                    f"true/false or null, got {c!r}"
                )
        if len({(type(c), c) for c in choices}) != len(choices):
            raise UserError(f"{where('space', name, 'choices')}: duplicate choices in {choices!r}")
        return ParamSpace(name=name, type="categorical", choices=tuple(choices))

    check = _is_int if kind == "int" else _is_number
    expected = "an integer" if kind == "int" else "a number"
    for key in ("low", "high"):
        if key not in data:
            raise UserError(f"{at}.{key}: required for type {kind}")
        if not check(data[key]):
            raise UserError(
                f"{where('space', name, key)}: expected {expected}, got {data[key]!r}"
            )
    low, high = data["low"], data["high"]
    if low > high:
        raise UserError(f"{where('space', name)}: low ({low}) is greater than high ({high})")
    log = data.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where('space', name, 'log')}: expected true or false, got {log!r}")
    step = data.get("step")
    if step is not None and (not check(step) or step <= 0):
        raise UserError(
            f"{where('space', name, 'step')}: expected {expected} > 0 or null, got {step!r}"
        )
    if log and low <= 0:
        raise UserError(f"{where('space', name, 'low')}: a log range needs low > 0, got {low!r}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise UserError(
            f"{where('space', name)}: log and step cannot be combined (Optuna samples a log "
            "range continuously); drop one"
        )
    return ParamSpace(
        name=name,
        type=kind,
        low=low,
        high=high,
        log=log,
        step=(1 if kind == "int" and step is None else step),
    )


def _check_against_params(spec: ParamSpace, params: Params, where: _Where) -> None:
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
            params.with_overrides({spec.name: value}, origin=where("space", spec.name))
        except UserError as exc:
            raise UserError(
                f"{where('space', spec.name)}: the value {value!r} is not accepted by "
                f"{params.source} ({exc})"
            ) from None


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
    where = _Where(source, text)
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping at the top level, got {raw!r}")
    data = {str(k): v for k, v in raw.items()}
    _check_keys(data, _TOP_KEYS, where)

    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise UserError(
            f"{where('description')}: expected a one-line description of the study (shown by "
            f"--list), got {description!r}"
        )
    dataset = data.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise UserError(f"{where('dataset')}: expected a dataset name, got {dataset!r}")
    if dataset is not None and params is not None and dataset not in params.datasets:
        raise UserError(
            f"{where('dataset')}: {dataset!r} is not declared under datasets in "
            f"{params.source}" + _suggest_key(dataset, sorted(params.datasets))
        )

    metric = data.get("metric", "val/loss")
    if metric not in METRICS:
        raise UserError(
            f"{where('metric')}: unknown metric {metric!r}"
            + _suggest_key(str(metric), list(METRICS))
        )
    direction = data.get("direction", METRICS[metric])
    if direction not in ("minimize", "maximize"):
        raise UserError(
            f"{where('direction')}: expected minimize or maximize, got {direction!r}"
        )
    if direction != METRICS[metric]:
        raise UserError(
            f"{where('direction')}: {metric} is better when "
            f"{'lower' if METRICS[metric] == 'minimize' else 'higher'}, so direction must be "
            f"{METRICS[metric]}, got {direction}"
        )

    space_raw = data.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise UserError(
            f"{where('space')}: expected a non-empty mapping of dotted params.yaml keys to "
            f"ranges, got {space_raw!r}"
        )
    space = tuple(_parse_param(str(k), v, where) for k, v in space_raw.items())
    sampler = _parse_sampler(data.get("sampler"), where)
    if sampler.type == "grid":
        for p in space:
            if p.grid_values() is None:
                raise UserError(
                    f"{where('space', p.name)}: a grid sampler needs a finite set of values; "
                    "give this float range a step (or use type: categorical)"
                )
    spec = StudySpec(
        name=name,
        source=source,
        description=" ".join(description.split()),
        dataset=dataset,
        metric=metric,
        direction=direction,
        budget=_parse_budget(data.get("budget"), where),
        sampler=sampler,
        pruner=_parse_pruner(data.get("pruner"), where),
        cv=_parse_cv(data.get("cv"), where),
        space=space,
    )
    if params is not None:
        for p in space:
            _check_against_params(p, params, where)
    return spec


def study_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.yaml"


def list_studies(folder: Path) -> dict[str, str]:
    """``{name: description}`` for every ``*.yaml`` in ``folder`` (sorted by name).

    A file that cannot be read gets its problem as its description, so ``--list`` still shows it.
    """
    out: dict[str, str] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text())
            desc = raw.get("description") if isinstance(raw, dict) else None
            out[path.stem] = " ".join(str(desc).split()) if desc else "(no description)"
        except (OSError, yaml.YAMLError) as exc:
            out[path.stem] = f"(unreadable: {type(exc).__name__})"
    return out


def load_study(name: str, folder: Path, params: Params | None = None) -> StudySpec:
    """Read and check ``<folder>/<name>.yaml``.

    Raises:
        UserError: the study does not exist (the message lists the available ones) or the file
            is wrong.
    """
    path = study_path(folder, name)
    if not path.is_file():
        available = list_studies(folder)
        import difflib

        listing = ", ".join(available) if available else f"none (no *.yaml in {folder})"
        close = difflib.get_close_matches(name, list(available), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"unknown study {name!r}{hint}: no file {path}; available studies: {listing}"
        )
    text = path.read_text()
    source = f"{Path(folder).name}/{path.name}"
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    return parse_study(raw, name=name, source=source, params=params, text=text)


# --------------------------------------------------------------------------------------------
# Optuna objects
# --------------------------------------------------------------------------------------------
def suggest(trial: Any, space: Sequence[ParamSpace]) -> dict[str, Any]:
    """Draw every value of ``space`` from ``trial``: ``{dotted key: value}``."""
    return {p.name: p.suggest(trial) for p in space}


def make_sampler(spec: StudySpec, *, default_seed: int) -> Any:
    """The Optuna sampler the study file names, seeded (``sampler.seed`` or ``default_seed``)."""
    import optuna

    seed = spec.sampler.seed if spec.sampler.seed is not None else default_seed
    if spec.sampler.type == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **spec.sampler.options)
    if spec.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler.type == "grid":
        grid = {p.name: p.grid_values() for p in spec.space}
        return optuna.samplers.GridSampler(grid, seed=seed)  # type: ignore[arg-type]
    raise AssertionError(spec.sampler.type)


def make_pruner(spec: StudySpec) -> Any:
    """The Optuna pruner the study file names, with its settings."""
    import optuna

    kind, options = spec.pruner.type, dict(spec.pruner.options)
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**options)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(**options)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    raise AssertionError(kind)


def check_metric_for_task(spec: StudySpec, task: str) -> None:
    """A classification study cannot optimise MAE, nor a regression study accuracy."""
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if spec.metric not in allowed:
        raise UserError(
            f"{spec.source}: metric: {spec.metric} is not computed for {task}; "
            f"allowed for {task}: {', '.join(allowed)}"
        )
