"""Typed configuration: ``params.yaml`` parsed once into frozen dataclasses.

Every key is checked here and nowhere else: an unknown key, a repeated key, a wrong type or a
value out of range raises :class:`UserError` naming the file and line, the dotted key, the bad
value and what was expected. A trial's configuration is the file's values with dotted-path
overrides laid over the raw mapping and parsed again, so overrides get exactly the same checks.

``params.yaml`` is the one home of defaults: each stage section (``fetch``, ``model``,
``train``, ...) must list every key, and a missing one is an error naming it. The field
defaults below serve only code that builds a config directly (tests, benchmarks);
``tests/config/test_params.py`` keeps them equal to ``params.yaml``. A dataset entry may leave
out its optional keys: those defaults are how an entry is read, not settings of this project.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from pipeline.config._suggest import did_you_mean
from pipeline.config._typed import bounds, build, check_bounds, convert
from pipeline.config._yaml import KeyPath, Where, parse_scalar, read_yaml
from pipeline.errors import UserError
from pipeline.secrets import has_password

PARAMS_FILE = "params.yaml"
# The seeds numpy's legacy generator and Optuna's samplers accept.
_SEED = bounds(0, 2**32 - 1)
# Dataset and study names become folder and file names: nothing that could leave the folder.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
PLAIN_NAME_RULE = "letters, digits, '-' and '_' only"


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
    test_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9, lo_open=True))
    format: Literal["jpeg_labels"] = "jpeg_labels"


@dataclass(frozen=True)
class ImageFolderDataset:
    """``root/<class name>/*.jpg``; sorted class names give the class ids."""

    root: str
    image: ImageOptions = field(default_factory=ImageOptions)
    test_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9, lo_open=True))
    format: Literal["image_folder"] = "image_folder"


@dataclass(frozen=True)
class CsvDataset:
    """A CSV file with a header row, a target column and numeric feature columns."""

    path: str
    target: str
    task: Literal["classification", "regression", "auto"] = "auto"
    features: list[str] | None = None  # None: every column but the target
    missing: Literal["reject", "drop"] = "reject"  # rows with empty cells
    test_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9, lo_open=True))
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
    val_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9, lo_open=True))
    seed: int = field(default=0, metadata=_SEED)


@dataclass(frozen=True)
class PrepareConfig:
    cache_dir: str = "data/cache"
    seed: int = field(default=42, metadata=_SEED)  # test split and fold assignment
    workers: int = field(default=0, metadata=bounds(0))  # 0: one per CPU core
    # An image whose header declares more pixels is refused before it is decoded.
    max_image_pixels: int = field(default=50_000_000, metadata=bounds(1))
    # The fewest training items a dataset may have: enough for a holdout and the folds.
    min_train_items: int = field(default=5, metadata=bounds(2))
    datasets: list[str] = field(default_factory=lambda: ["digits", "diabetes"])


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["mlp", "cnn", "resnet18", "resnet50"] = "mlp"
    hidden_layers: int = field(default=2, metadata=bounds(0, 64))
    width: int = field(default=256, metadata=bounds(1, 65536))
    # constant: every hidden layer `width` wide (784-256-256-10); shrinking: halve each layer
    # (784-48-24-10)
    width_schedule: Literal["constant", "shrinking"] = "constant"
    activation: Literal["relu", "gelu", "silu", "tanh", "leaky_relu"] = "relu"
    batch_norm: bool = False  # Linear/Conv -> BatchNorm -> activation
    # 1.0 would zero every hidden activation (a network that learns nothing).
    dropout: float = field(default=0.0, metadata=bounds(0.0, 1.0, hi_open=True))
    conv_blocks: int = field(default=2, metadata=bounds(1, 8))  # cnn only
    conv_channels: int = field(default=32, metadata=bounds(1, 4096))  # first block; doubles
    weights: str | None = None  # resnet only: local weights file; None = random init
    freeze_backbone: bool = False  # resnet only: train the new head only


@dataclass(frozen=True)
class EarlyStoppingConfig:
    patience: int = field(default=5, metadata=bounds(1))
    min_delta: float = field(default=0.0, metadata=bounds(0.0))
    restore_best: bool = True


@dataclass(frozen=True)
class LrScheduleConfig:
    """ReduceLROnPlateau on validation loss."""

    enabled: bool = True
    patience: int = field(default=2, metadata=bounds(0))
    factor: float = field(default=0.5, metadata=bounds(0.0, 1.0, lo_open=True))
    min_lr: float = field(default=1.0e-6, metadata=bounds(0.0))


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = field(default=1.0e-3, metadata=bounds(0.0, 10.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=bounds(0.0, 1.0))  # sgd, rmsprop
    weight_decay: float = field(default=0.0, metadata=bounds(0.0))
    batch_size: int = field(default=256, metadata=bounds(1))
    max_epochs: int = field(default=30, metadata=bounds(1))
    val_fraction: float = field(default=0.2, metadata=bounds(0.0, 0.9, lo_open=True))
    hflip: bool = False  # random horizontal flips (colour images only)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    lr_schedule: LrScheduleConfig = field(default_factory=LrScheduleConfig)


@dataclass(frozen=True)
class SearchConfig:
    studies: list[str] = field(default_factory=lambda: ["capacity"])  # one DVC stage each
    storage: str | None = None  # Optuna storage URL; None: a local file under studies/
    cv_threshold: int = field(default=5000, metadata=bounds(1))  # folds: auto uses k-fold below
    cv_folds: int = field(default=5, metadata=bounds(2))  # K for folds: auto
    reports_dir: str = "reports/studies"
    # Every worker renews its lease in the study this often (and RDB trials beat as often)...
    heartbeat_interval_s: int = field(default=60, metadata=bounds(1))
    # ...a worker (on another host) or RDB trial silent this long is taken for dead...
    grace_period_s: int = field(default=180, metadata=bounds(1))
    # ...its running trials failed and queued again at most this many times.
    max_retry: int = field(default=2, metadata=bounds(0))
    # With a time budget, one trial may use at most this share of it (the deadline still holds).
    trial_time_share: float = field(default=0.25, metadata=bounds(0.0, 1.0, lo_open=True))
    # A k-fold MLP trial trains its folds as one batched model (same results, one stack of
    # weights): true, false, or auto (where benchmarks/bench_folds.py measured it faster).
    fold_batching: Literal["auto"] | bool = "auto"
    # The pruning audit: this share of the trials the pruner would stop (drawn per trial,
    # seeded) is let finish, to estimate how often pruning throws a winner away; 0: off.
    prune_audit: float = field(default=0.1, metadata=bounds(0.0, 1.0))


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "pipeline-{dataset}"  # {dataset} is replaced by the dataset name
    # Compared on the test split; lower is better for loss/mae/rmse, higher for accuracy/r2.
    classification_metric: Literal["accuracy", "loss"] = "accuracy"
    regression_metric: Literal["rmse", "mae", "r2"] = "rmse"
    reports_dir: str = "reports/promote"  # one decision record per study
    # Which trial promote registers: the best value, or the smallest model (parameters) whose
    # value is within one standard error (fold spread / sqrt(folds)) of the best.
    select: Literal["best", "smallest_within_1se"] = "best"


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
        """Return a copy with dotted-path values laid over the raw mapping, checked again.

        A refused value is reported at ``origin`` (``--set``, a study file's line, ...), where
        the user gave it, not at the params file.
        """
        raw = copy.deepcopy(self.raw)
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value, origin=origin, source=self.source)
        try:
            return parse_params(raw, root=self.root, source=self.source)
        except UserError as exc:
            detail = re.sub(rf"^{re.escape(self.source)}(:[0-9]+)?: ", "", str(exc))
            raise UserError(f"{origin}: {detail}") from None

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
_NOT_SETTABLE = ("root", "source", "raw", "datasets")


def has_dotted_field(dotted: str) -> bool:
    """Whether ``dotted`` names a settable leaf of :class:`Params` (e.g. ``train.lr``)."""
    cls: Any = Params
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        hints = get_type_hints(cls)
        if part not in hints or part in _NOT_SETTABLE:
            return False
        cls = hints[part]
    return not dataclasses.is_dataclass(cls)


def dotted_fields(cls: Any = None, prefix: str = "") -> list[str]:
    """Every settable dotted key of :class:`Params` (``seed``, ``model.width``, ...)."""
    cls = cls or Params
    out = []
    for name, hint in get_type_hints(cls).items():
        if name in _NOT_SETTABLE:
            continue
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            out += dotted_fields(hint, key + ".")
        else:
            out.append(key)
    return out


def set_dotted(
    raw: dict[str, Any], dotted: str, value: Any, *, origin: str, source: str
) -> None:
    if not has_dotted_field(dotted):
        raise UserError(
            f"{origin}: {dotted!r} is not a key of {source}"
            + did_you_mean(dotted, sorted(dotted_fields()))
        )
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def parse_set_option(item: str) -> tuple[str, Any]:
    """``train.lr=1e-3`` -> ("train.lr", 0.001); the value is read as in params.yaml."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    key, text = item.split("=", 1)
    key = key.strip()
    return key, parse_scalar(text, f"--set {key}")


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
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
_OPTIONAL = ("overrides",)  # absent: no dataset has overrides
_TOP_KEYS = ("seed", "device", "dataset", "datasets", *_OPTIONAL, *_SECTIONS)


def _parse_dataset(name: str, data: Any, overrides: Any, top: Where) -> DatasetEntry:
    where = top.child("datasets", name)
    if not PLAIN_NAME.match(name):
        raise UserError(
            f"{where}: expected a dataset name of {PLAIN_NAME_RULE} (it names a cache folder)"
        )
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {data!r}")
    fmt = data.get("format")
    if not isinstance(fmt, str) or fmt not in _DATASET_FORMATS:
        raise UserError(
            f"{where.child('format')}: unknown dataset format {fmt!r}; expected one of "
            + ", ".join(repr(f) for f in _DATASET_FORMATS)
        )
    source_cfg = build(_DATASET_FORMATS[fmt], data, where)
    if isinstance(source_cfg, JpegLabelsDataset):
        if not source_cfg.parts:
            raise UserError(f"{where.child('parts')}: expected at least one folder")
        if source_cfg.test_part is not None and source_cfg.test_part not in source_cfg.parts:
            raise UserError(
                f"{where.child('test_part')}: {source_cfg.test_part!r} is not one of the parts "
                f"{sorted(source_cfg.parts)}"
            )
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise UserError(
            f"{top.child('overrides', name)}: expected a mapping of dotted keys, got {overrides!r}"
        )
    for key in overrides:
        if not has_dotted_field(str(key)):
            raise UserError(
                f"{top.child('overrides', name, str(key))}: not a key of {top.source}"
                + did_you_mean(str(key), sorted(dotted_fields()))
            )
    return DatasetEntry(name=name, source=source_cfg, overrides=dict(overrides))


def _check_top_keys(raw: Mapping[Any, Any], top: Where) -> None:
    for key in raw:
        if key not in _TOP_KEYS:
            raise UserError(
                f"{top.child(str(key))}: unknown key" + did_you_mean(str(key), sorted(_TOP_KEYS))
            )
    for key in _TOP_KEYS:
        if key not in raw and key not in _OPTIONAL:
            raise UserError(
                f"{top.child(key)}: missing key ({top.source} is the one home of defaults and "
                "lists every setting)"
            )


def _parse_datasets(raw: Mapping[str, Any], top: Where) -> tuple[dict[str, DatasetEntry], str]:
    datasets_raw = raw["datasets"]
    if not isinstance(datasets_raw, dict) or not datasets_raw:
        raise UserError(
            f"{top.child('datasets')}: expected a mapping of dataset name to its source"
        )
    overrides_raw = raw.get("overrides") or {}
    if not isinstance(overrides_raw, dict):
        raise UserError(
            f"{top.child('overrides')}: expected a mapping of dataset name to dotted keys"
        )
    for name in overrides_raw:
        if name not in datasets_raw:
            raise UserError(
                f"{top.child('overrides', str(name))}: no dataset of that name"
                + did_you_mean(str(name), sorted(str(n) for n in datasets_raw))
            )
    datasets = {
        str(n): _parse_dataset(str(n), d, overrides_raw.get(n), top)
        for n, d in datasets_raw.items()
    }
    dataset = convert(raw["dataset"], str, top.child("dataset"))
    if dataset not in datasets:
        raise UserError(
            f"{top.child('dataset')}: {dataset!r} is not declared under datasets"
            + did_you_mean(dataset, sorted(datasets))
        )
    return datasets, dataset


def _check_cross_keys(
    sections: Mapping[str, Any], datasets: Mapping[str, Any], top: Where
) -> None:
    storage = sections["search"].storage
    if storage and has_password(storage):
        raise UserError(
            f"{top.child('search', 'storage')}: the URL holds a password, and this file is "
            "committed (DVC also copies it into dvc.lock); expected a URL without one - put the "
            "full URL in the PIPELINE_STORAGE environment variable, or keep the password in a "
            "libpq password file (~/.pgpass or PGPASSFILE) or in PGPASSWORD"
        )
    for i, name in enumerate(sections["prepare"].datasets):
        if name not in datasets:
            raise UserError(
                f"{top.child('prepare', 'datasets', i)}: {name!r} is not declared under datasets"
                + did_you_mean(name, sorted(datasets))
            )


def parse_params(
    raw: Mapping[str, Any],
    *,
    root: Path,
    source: str = PARAMS_FILE,
    lines: Mapping[KeyPath, int] | None = None,
) -> Params:
    """Check a params mapping and build :class:`Params`.

    Args:
        raw: the mapping as read from YAML.
        root: the project root.
        source: the file name used in messages.
        lines: the line of each key, so messages carry ``file:line``.

    Raises:
        UserError: anything wrong, naming the file, the line and the key.
    """
    top = Where(source, (), lines or {})
    if not isinstance(raw, Mapping):
        raise UserError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    _check_top_keys(raw, top)
    sections = {
        name: convert(raw[name], cls, top.child(name), complete=True)
        for name, cls in _SECTIONS.items()
    }
    seed = convert(raw["seed"], int, top.child("seed"))
    check_bounds(seed, _SEED, int, top.child("seed"))
    device = convert(raw["device"], str, top.child("device"))
    if device not in ("auto", "cpu", "mps") and not re.fullmatch(r"cuda(:[0-9]+)?", device):
        raise UserError(
            f"{top.child('device')}: expected auto, cpu, cuda, cuda:N or mps, got {device!r}"
        )
    datasets, dataset = _parse_datasets(raw, top)
    _check_cross_keys(sections, datasets, top)
    return Params(
        root=root,
        source=source,
        raw=copy.deepcopy(dict(raw)),
        seed=seed,
        device=device,
        dataset=dataset,
        datasets=datasets,
        **sections,
    )


def _display_path(path: Path) -> str:
    """``path`` as the user would type it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_dataset_overrides(params: Params, lines: Mapping[KeyPath, int]) -> None:
    """Each ``overrides.<dataset>`` value gets the checks of the key it sets, at load time."""
    for entry in params.datasets.values():
        for key, value in entry.overrides.items():
            where = Where(params.source, ("overrides", entry.name, key), lines)
            try:
                params.with_overrides({key: value}, origin=str(where))
            except UserError as exc:
                detail = str(exc).removeprefix(f"{where}: ").removeprefix(f"{key}: ")
                raise UserError(f"{where}: {detail}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and check ``params.yaml``; its folder is the project root."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(
            f"{path}: params file not found (run from the project root or pass --params)"
        )
    source = _display_path(path)
    doc = read_yaml(path, source)
    params = parse_params(doc.data, root=path.parent, source=source, lines=doc.lines)
    _check_dataset_overrides(params, doc.lines)
    return params
