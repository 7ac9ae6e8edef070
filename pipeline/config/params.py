"""Typed configuration: ``params.yaml`` parsed once into frozen dataclasses.

Every key is checked here and nowhere else: an unknown key, a wrong type or a value out of range
raises :class:`UserError` naming the file, the dotted key, the bad value and what was expected.
A trial's configuration is the defaults with dotted-path overrides laid over the raw mapping and
parsed again, so overrides get exactly the same checks as the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.errors import UserError
from pipeline.secrets import has_password

PARAMS_FILE = "params.yaml"


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledFolder:
    """One folder of JPEGs and its labels file (``00000.jpg 7`` per line)."""

    images: str  # folder, relative to the dataset root
    labels: str  # labels file, relative to the dataset root


@dataclass(frozen=True)
class ImageOptions:
    """How images are decoded and checked."""

    channels: Literal[1, 3] = 1  # 1 = grayscale, 3 = colour (RGB)
    size: tuple[int, int] = (28, 28)  # (height, width) every image ends up with
    size_policy: Literal["resize", "reject"] = "resize"  # for images of another size
    on_bad_file: Literal["error", "skip"] = "error"  # corrupt or missing images


@dataclass(frozen=True)
class JpegLabelsDataset:
    """The classic tutorial layout: folders of JPEGs, each with a ``name label`` file."""

    root: str  # relative to the project root
    parts: dict[str, LabelledFolder]  # e.g. train, val (and test, if the data has one)
    classes: list[str] | None = None  # display names for label ids 0..K-1; default "0".."K-1"
    image: ImageOptions = field(default_factory=ImageOptions)
    test_part: str | None = None  # a part used as is as the test split; None: carve one out
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    format: Literal["jpeg_labels"] = "jpeg_labels"


@dataclass(frozen=True)
class ImageFolderDataset:
    """``root/<class name>/*.jpg``; sorted class names give the class ids."""

    root: str
    image: ImageOptions = field(default_factory=ImageOptions)
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    format: Literal["image_folder"] = "image_folder"


@dataclass(frozen=True)
class CsvDataset:
    """A CSV file with a header row, a target column and numeric feature columns."""

    path: str
    target: str
    task: Literal["classification", "regression", "auto"] = "auto"
    features: list[str] | None = None  # None: every column but the target
    missing: Literal["reject", "drop"] = "reject"  # rows with empty cells
    test_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    format: Literal["csv"] = "csv"


DatasetConfig = JpegLabelsDataset | ImageFolderDataset | CsvDataset
_DATASET_FORMATS: dict[str, type] = {
    "jpeg_labels": JpegLabelsDataset,
    "image_folder": ImageFolderDataset,
    "csv": CsvDataset,
}


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset declared in ``params.yaml``: its source and the training defaults it needs."""

    name: str
    source: DatasetConfig
    # Dotted-path overrides (top-level `overrides.<name>` in params.yaml) applied when training on
    # this dataset (e.g. a smaller batch for a small CSV), before a study's sampled values. They
    # live outside `datasets` so that changing them does not re-run `prepare`.
    overrides: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchConfig:
    """Built-in datasets written from what scikit-learn ships."""

    digits_dir: str = "data/raw/digits"
    diabetes_csv: str = "data/raw/diabetes.csv"
    val_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    seed: int = 0


@dataclass(frozen=True)
class PrepareConfig:
    cache_dir: str = "data/cache"
    seed: int = 42  # test split and fold assignment
    workers: int = field(default=0, metadata=_range(0))  # 0: one per CPU core
    datasets: list[str] = field(default_factory=lambda: ["digits", "diabetes"])


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp", "cnn", "resnet18", "resnet50"] = "mlp"
    hidden_layers: int = field(default=2, metadata=_range(0, 64))
    width: int = field(default=256, metadata=_range(1, 65536))
    # constant: every hidden layer `width` wide (784-256-256-10); shrinking: halve each layer
    # (784-48-24-10)
    width_schedule: Literal["constant", "shrinking"] = "constant"
    activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu"
    batch_norm: bool = False  # Linear/Conv -> BatchNorm -> activation
    dropout: float = field(default=0.0, metadata=_range(0.0, 1.0))
    conv_blocks: int = field(default=2, metadata=_range(1, 8))  # cnn only
    conv_channels: int = field(default=32, metadata=_range(1, 4096))  # first block; doubles
    weights: str | None = None  # resnet only: local weights file; None = random init
    freeze_backbone: bool = False  # resnet only: train the new head only


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int = field(default=5, metadata=_range(1))
    min_delta: float = field(default=0.0, metadata=_range(0.0))
    restore_best: bool = True


@dataclass(frozen=True)
class LrScheduleConfig:
    """ReduceLROnPlateau on validation loss."""

    enabled: bool = True
    patience: int = field(default=2, metadata=_range(0))
    factor: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    min_lr: float = field(default=1.0e-6, metadata=_range(0.0))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = field(default=1.0e-3, metadata=_range(0.0, 10.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))  # sgd, rmsprop
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    batch_size: int = field(default=256, metadata=_range(1))
    max_epochs: int = field(default=30, metadata=_range(1))
    val_fraction: float = field(default=0.2, metadata=_range(0.0, 0.9, lo_open=True))
    hflip: bool = False  # random horizontal flips (colour images only)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_schedule: LrScheduleConfig = field(default_factory=LrScheduleConfig)


@dataclass(frozen=True)
class SearchConfig:
    studies: list[str] = field(default_factory=lambda: ["capacity"])  # one DVC stage each
    storage: str | None = None  # Optuna storage URL; None: a local file under studies/
    cv_threshold: int = field(default=5000, metadata=_range(1))  # folds: auto uses k-fold below
    cv_folds: int = field(default=5, metadata=_range(2))  # K for folds: auto
    reports_dir: str = "reports/studies"


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "pipeline-{dataset}"  # {dataset} is replaced by the dataset name
    # Compared on the test split; lower is better for loss/mae/rmse, higher for accuracy/r2.
    classification_metric: Literal["accuracy", "loss"] = "accuracy"
    regression_metric: Literal["rmse", "mae", "r2"] = "rmse"
    reports_dir: str = "reports/promote"  # one decision record per study


@dataclass(frozen=True)
class EvaluateConfig:
    reports_dir: str = "reports"


@dataclass(frozen=True)
class MlflowConfig:
    # Relative paths are resolved from the project root; MLFLOW_TRACKING_URI overrides both.
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifacts_dir: str = "mlruns/artifacts"


@dataclass(frozen=True)
class Params:
    """Everything in ``params.yaml``, typed and checked."""

    root: Path  # the project root (the folder holding params.yaml)
    source: str  # file name used in error messages
    raw: dict[str, Any]  # the mapping as read, for overrides and for logging to MLflow
    seed: int
    device: str
    dataset: str  # the default dataset for train/search/promote/evaluate
    datasets: dict[str, DatasetEntry]
    fetch: FetchConfig
    prepare: PrepareConfig
    model: ModelConfig
    train: TrainConfig
    search: SearchConfig
    registry: RegistryConfig
    evaluate: EvaluateConfig
    mlflow: MlflowConfig

    def path(self, relative: str | Path) -> Path:
        """Resolve a path from params.yaml against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def cache_dir(self, dataset: str) -> Path:
        return self.path(self.prepare.cache_dir) / dataset

    def dataset_entry(self, name: str | None) -> DatasetEntry:
        name = name or self.dataset
        if name not in self.datasets:
            raise UserError(
                f"{self.source}: unknown dataset {name!r}; declared datasets: "
                f"{', '.join(sorted(self.datasets))}"
            )
        return self.datasets[name]

    def with_overrides(self, overrides: Mapping[str, Any], origin: str = "override") -> Params:
        """Return a copy with dotted-path values laid over the raw mapping, checked again."""
        raw = copy.deepcopy(self.raw)
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value, origin=origin, source=self.source)
        return parse_params(raw, root=self.root, source=self.source)

    def for_dataset(self, name: str | None) -> Params:
        """The params a run on ``name`` uses: defaults plus the dataset's own overrides."""
        entry = self.dataset_entry(name)
        out = self.with_overrides(entry.overrides, origin=f"overrides.{entry.name}")
        raw = copy.deepcopy(out.raw)
        raw["dataset"] = entry.name
        return parse_params(raw, root=self.root, source=self.source)

    def flat(self, sections: tuple[str, ...] = ("seed", "model", "train")) -> dict[str, Any]:
        """The resolved values as ``section.key`` pairs, for MLflow params."""
        out: dict[str, Any] = {}
        for name in sections:
            value = getattr(self, name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                _flatten(dataclasses.asdict(value), name, out)
            else:
                out[name] = value
        return out


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = obj


# --------------------------------------------------------------------------------------------
# Dotted paths
# --------------------------------------------------------------------------------------------
def get_dotted(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def has_dotted_field(dotted: str) -> bool:
    """Whether ``dotted`` names a settable leaf of :class:`Params` (e.g. ``train.lr``)."""
    cls: Any = Params
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = get_type_hints(cls)
        if part not in hints or part in ("root", "source", "raw", "datasets"):
            return False
        cls = hints[part]
    return not dataclasses.is_dataclass(cls)


def set_dotted(
    raw: dict[str, Any], dotted: str, value: Any, *, origin: str, source: str
) -> None:
    if not has_dotted_field(dotted):
        raise UserError(
            f"{origin}: {dotted!r} is not a key of {source}"
            + _suggest(dotted, _all_dotted_fields())
        )
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _all_dotted_fields(cls: Any = None, prefix: str = "") -> list[str]:
    cls = cls or Params
    out = []
    for name, hint in get_type_hints(cls).items():
        if name in ("root", "source", "raw", "datasets"):
            continue
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            out += _all_dotted_fields(hint, key + ".")
        else:
            out.append(key)
    return out


def parse_set_option(item: str) -> tuple[str, Any]:
    """``train.lr=0.01`` -> ("train.lr", 0.01); the value is read as YAML."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return key.strip(), value


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def _suggest(word: str, options: list[str] | typing.Iterable[str]) -> str:
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if not options:
        return f"{hint}; none are declared"
    return f"{hint}; allowed: {', '.join(sorted(options))}"


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(get_args(hint)[0])}"
    if origin is tuple:
        return f"a list of {len(get_args(hint))} {_type_name(get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, str(hint)
    )


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint``; return it converted (e.g. int -> float)."""
    origin = get_origin(hint)
    bad = UserError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin is Literal:
        if value in get_args(hint) and not (isinstance(value, bool) and True in get_args(hint)):
            return value
        raise bad
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except UserError:
                continue
        raise bad
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_convert(v, get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, vt = get_args(hint)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise bad
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if "lo" not in meta or not isinstance(value, int | float):
        return
    lo, hi, lo_open = meta["lo"], meta["hi"], meta["lo_open"]
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    high_ok = hi is None or value <= hi
    if not (low_ok and high_ok):
        left = "(" if lo_open else "["
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise UserError(f"{where}: expected a value in {left}{lo_s}, {hi_s}], got {value!r}")


def _build(cls: Any, data: Mapping[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UserError(f"{where}.{key}: unknown key" + _suggest(str(key), fields))
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
            _check_range(kwargs[name], f.metadata, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{key}: missing required key ({_type_name(hints[name])})")
    return cls(**kwargs)


_SECTIONS: dict[str, type] = {
    "fetch": FetchConfig,
    "prepare": PrepareConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "search": SearchConfig,
    "registry": RegistryConfig,
    "evaluate": EvaluateConfig,
    "mlflow": MlflowConfig,
}
_SCALARS = {"seed": int, "device": str, "dataset": str}


def _parse_dataset(name: str, data: Any, overrides: Any, source: str) -> DatasetEntry:
    where = f"{source}: datasets.{name}"
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    fmt = data.get("format")
    if fmt not in _DATASET_FORMATS:
        raise UserError(
            f"{where}.format: unknown dataset format {fmt!r}; expected one of "
            + ", ".join(repr(f) for f in _DATASET_FORMATS)
        )
    source_cfg = _build(_DATASET_FORMATS[fmt], data, where)
    if isinstance(source_cfg, JpegLabelsDataset):
        if not source_cfg.parts:
            raise UserError(f"{where}.parts: expected at least one folder")
        if source_cfg.test_part is not None and source_cfg.test_part not in source_cfg.parts:
            raise UserError(
                f"{where}.test_part: {source_cfg.test_part!r} is not one of the parts "
                f"{sorted(source_cfg.parts)}"
            )
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise UserError(
            f"{source}: overrides.{name}: expected a mapping of dotted keys, got {overrides!r}"
        )
    for key in overrides:
        if not has_dotted_field(str(key)):
            raise UserError(
                f"{source}: overrides.{name}.{key}: not a key of {source}"
                + _suggest(str(key), _all_dotted_fields())
            )
    return DatasetEntry(name=name, source=source_cfg, overrides=dict(overrides))


def parse_params(raw: Mapping[str, Any], *, root: Path, source: str = PARAMS_FILE) -> Params:
    """Check a params mapping and build :class:`Params`. Raises UserError on any problem."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    allowed = set(_SECTIONS) | set(_SCALARS) | {"datasets", "overrides"}
    for key in raw:
        if key not in allowed:
            raise UserError(f"{source}: {key}: unknown key" + _suggest(str(key), allowed))
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        kwargs[name] = _convert(raw.get(name) or {}, cls, f"{source}: {name}")
    kwargs["seed"] = _convert(raw.get("seed", 42), int, f"{source}: seed")
    device = _convert(raw.get("device", "auto"), str, f"{source}: device")
    if device not in ("auto", "cpu", "mps") and not device.startswith("cuda"):
        raise UserError(
            f"{source}: device: expected auto, cpu, cuda, cuda:N or mps, got {device!r}"
        )
    kwargs["device"] = device
    datasets_raw = raw.get("datasets") or {}
    if not isinstance(datasets_raw, dict):
        raise UserError(f"{source}: datasets: expected a mapping of dataset name to its source")
    overrides_raw = raw.get("overrides") or {}
    if not isinstance(overrides_raw, dict):
        raise UserError(f"{source}: overrides: expected a mapping of dataset name to dotted keys")
    for name in overrides_raw:
        if name not in datasets_raw:
            raise UserError(
                f"{source}: overrides.{name}: no dataset of that name"
                + _suggest(str(name), [str(n) for n in datasets_raw])
            )
    datasets = {
        str(n): _parse_dataset(str(n), d, overrides_raw.get(n), source)
        for n, d in datasets_raw.items()
    }
    dataset = _convert(raw.get("dataset", next(iter(datasets), "")), str, f"{source}: dataset")
    if datasets and dataset not in datasets:
        raise UserError(
            f"{source}: dataset: {dataset!r} is not declared under datasets"
            + _suggest(dataset, datasets)
        )
    storage = kwargs["search"].storage
    if storage and has_password(storage):
        raise UserError(
            f"{source}: search.storage: the URL holds a password, and this file is committed "
            "(DVC also copies it into dvc.lock); expected a URL without one - put the full URL "
            "in the PIPELINE_STORAGE environment variable or pass --storage instead"
        )
    for name in kwargs["prepare"].datasets:
        if name not in datasets:
            raise UserError(
                f"{source}: prepare.datasets: {name!r} is not declared under datasets"
                + _suggest(name, datasets)
            )
    return Params(
        root=root,
        source=source,
        raw=copy.deepcopy(dict(raw)),
        dataset=dataset,
        datasets=datasets,
        **kwargs,
    )


def _display_path(path: Path) -> str:
    """``path`` as the user would type it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and check ``params.yaml``; its folder is the project root."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(
            f"{path}: params file not found (run from the project root or pass --params)"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise UserError(f"{_display_path(path)}{line}: not valid YAML ({problem})") from None
    return parse_params(raw, root=path.parent, source=_display_path(path))
