"""From a declared dataset to the contents of its tensor cache (arrays and ``meta.json``).

:func:`build_dataset` reads the raw input, applies the dataset's policies, fixes the test split
(a declared test part, or a stratified fraction carved out with ``holdout_split`` and the prepare
seed), computes the normalisation statistics on the training part only and the fingerprint of
the raw inputs. It writes nothing: ``prepare`` hands the result to ``write_cache``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.config import CsvDataset, DatasetEntry, ImageFolderDataset, JpegLabelsDataset
from pipeline.data.cache import CacheMeta
from pipeline.data.fingerprint import Fingerprint
from pipeline.data.images import (
    CORRUPT,
    MAX_IMAGE_PIXELS,
    SKIPPABLE,
    DecodeResult,
    Failure,
    channel_stats,
    decode_files,
)
from pipeline.data.readers import ImageListing, list_image_folder, list_jpeg_labels
from pipeline.data.splits import holdout_split
from pipeline.data.tabular import (
    FLOAT32_MAX,
    CsvTable,
    cell_number,
    numeric_columns,
    python_only,
    read_table,
    rows_to_keep,
)
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

# task: auto calls an integer-valued target with at most this many distinct values a class label.
AUTO_MAX_CLASSES = 20
# A standard deviation below this is stored as 1.0, so normalising never divides by ~zero.
_MIN_STD = 1e-8
_MAX_LISTED = 5  # skipped or suspicious files named one by one in the log
# The training part must hold this many items: K-fold cross-validation (folds: auto uses
# search.cv_folds, default 5, on small data) needs at least one item per fold, and a holdout
# needs at least one on each side.
MIN_TRAIN_ITEMS = 5

# A classifier needs several examples of a class to learn it and one more to test it: a target
# with fewer items than this per class on average (a continuous value or an identifier read as
# classes) is refused.
MIN_ITEMS_PER_CLASS = 2

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class BuiltDataset:
    meta: CacheMeta
    arrays: dict[str, np.ndarray]  # train_x, train_y, test_x, test_y


def build_dataset(
    entry: DatasetEntry,
    *,
    project_root: Path,
    seed: int,
    workers: int = 0,
    progress: bool = False,
    max_pixels: int = MAX_IMAGE_PIXELS,
    min_train: int = MIN_TRAIN_ITEMS,
) -> BuiltDataset:
    """Read ``entry``'s raw data and return what its cache holds.

    Args:
        entry: the dataset as declared in params.yaml.
        project_root: relative paths in the dataset config are resolved from here.
        seed: ``prepare.seed``: the carved-out test split; recorded as ``split_seed``.
        workers: decoding processes; 0 = one per core.
        progress: show a progress bar while decoding.
        max_pixels: an image whose header declares more pixels is refused before decoding.
        min_train: the fewest training items accepted (see :data:`MIN_TRAIN_ITEMS`).

    Raises:
        UserError: anything wrong with the raw data, naming the file and line or key.
    """
    src = entry.source
    key = f"datasets.{entry.name}"
    if isinstance(src, JpegLabelsDataset | ImageFolderDataset):
        built = _build_images(
            entry,
            project_root=project_root,
            seed=seed,
            decoding=_Decoding(workers=workers, progress=progress, max_pixels=max_pixels),
        )
    elif isinstance(src, CsvDataset):
        built = _build_csv(entry, project_root=project_root, seed=seed)
    else:
        raise UserError(f"{key}.format: unknown dataset format {getattr(src, 'format', src)!r}")
    _check_built(built.meta, key=key, min_train=min_train)
    return built


@dataclass(frozen=True)
class _Decoding:
    workers: int
    progress: bool
    max_pixels: int


def _check_built(meta: CacheMeta, *, key: str, min_train: int) -> None:
    """Refuse a dataset the later stages cannot use, saying what is needed."""
    if meta.task == "classification" and meta.num_classes < 2:
        found = f"only {meta.class_names[0]!r}" if meta.class_names else "none"
        raise UserError(
            f"{key}: {meta.num_classes} class ({found}); expected at least two classes "
            "for classification"
        )
    if meta.task == "classification":
        _check_classes(meta, key=key)
    if meta.n_train < min_train:
        raise UserError(
            f"{key}: {meta.n_train} training item(s) after the test split ({meta.n_test} "
            f"test); expected at least {min_train} (prepare.min_train_items), so that a "
            "validation holdout and the study's folds each get items"
        )
    stats = [*meta.mean, *meta.std, meta.target_mean, meta.target_std]
    if not all(np.isfinite(stats)):  # values are checked to fit float32, so never expected
        raise UserError(f"{key}: the normalisation statistics are not finite: {stats}")


def _check_classes(meta: CacheMeta, *, key: str) -> None:
    """Refuse classes that cannot be learnt: about one item per class, or a class whose items
    all went to the test part."""
    n = meta.n_train + meta.n_test
    if meta.num_classes * MIN_ITEMS_PER_CLASS > n:
        hint = (
            f"is column {meta.target_name!r} a continuous value (task: regression) or an "
            "identifier?" if meta.kind == "tabular" else "check the labels"
        )
        raise UserError(
            f"{key}: {meta.num_classes} classes for {n} items; expected at least "
            f"{MIN_ITEMS_PER_CLASS} items per class on average, so that each class can be "
            f"learnt and tested: {hint}"
        )
    train, test = meta.counts.get("train", {}), meta.counts.get("test", {})
    untrained = [c for c in meta.class_names if not train.get(c) and test.get(c)]
    if untrained:
        shown = ", ".join(repr(c) for c in untrained[:_MAX_LISTED])
        more = f" (+{len(untrained) - _MAX_LISTED} more)" if untrained[_MAX_LISTED:] else ""
        raise UserError(
            f"{key}: class(es) {shown}{more} have no training item after the test split "
            f"(all {sum(test[c] for c in untrained)} of their items are test items); expected "
            "every class in the training part: add items of these classes, or lower "
            "test_fraction (a test_part must not hold the only items of a class)"
        )


def _settings(source: Any, seed: int) -> dict[str, Any]:
    """The settings that change the cache: the dataset config minus its location, plus seed."""
    settings = dataclasses.asdict(source)
    settings.pop("root", None)
    settings.pop("path", None)
    settings["split_seed"] = seed
    return settings


def _std(values: list[float]) -> list[float]:
    return [v if v > _MIN_STD else 1.0 for v in values]


def _carve_test(
    y: np.ndarray, *, fraction: float, seed: int, classification: bool, key: str
) -> tuple[np.ndarray, np.ndarray]:
    n = len(y)
    n_test = int(np.ceil(n * fraction))
    if n < 2 or n_test >= n:
        raise UserError(
            f"{key}.test_fraction: {n} item(s) are too few to hold out {fraction:g} of them for "
            "testing; expected more data or a smaller fraction"
        )
    try:
        return holdout_split(y, fraction=fraction, seed=seed, classification=classification)
    except ValueError as exc:  # e.g. fewer test items than classes when stratifying
        raise UserError(f"{key}.test_fraction: cannot split {n} items ({exc})") from None


def _counts(y: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(names))
    return {name: int(counts[k]) for k, name in enumerate(names)}


def _class_counts(
    train_y: np.ndarray, test_y: np.ndarray, names: list[str]
) -> dict[str, dict[str, int]]:
    return {"train": _counts(train_y, names), "test": _counts(test_y, names)}


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def _build_images(
    entry: DatasetEntry, *, project_root: Path, seed: int, decoding: _Decoding
) -> BuiltDataset:
    src = entry.source
    assert isinstance(src, JpegLabelsDataset | ImageFolderDataset)
    key = f"datasets.{entry.name}"
    opts = src.image
    listing, decoded, failures = _read_images(
        src, root=project_root / src.root, name=entry.name, key=key, decoding=decoding
    )
    skipped = [
        {"file": listing.sources[f.index], "kind": f.kind, "reason": f.message} for f in failures
    ]

    fingerprint = Fingerprint(_settings(src, seed))
    fingerprint.add_many(listing.sources, [str(k) for k in listing.labels], decoded.digests)

    index = _good_images(len(listing), failures, key=key)
    x = decoded.images
    y = np.asarray(listing.labels, dtype=np.int64)
    train_idx, test_idx = _split_images(
        src, parts=listing.parts, y=y, index=index, seed=seed, key=key
    )
    train_x, test_x = x[train_idx], x[test_idx]
    train_y, test_y = y[train_idx], y[test_idx]
    mean, std = channel_stats(train_x)
    names = listing.class_names
    meta = CacheMeta(
        name=entry.name,
        task="classification",
        kind="image",
        input_shape=[opts.channels, *opts.size],
        class_names=names,
        feature_names=[],
        target_name="label",
        n_train=len(train_idx),
        n_test=len(test_idx),
        counts=_class_counts(train_y, test_y, names),
        mean=mean,
        std=_std(std),
        target_mean=0.0,
        target_std=1.0,
        split_seed=seed,
        fingerprint=fingerprint.hexdigest(),
        source_format=src.format,
        skipped=skipped,
        size_policy=opts.size_policy,
        test_sources=[listing.sources[i] for i in test_idx],
    )
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return BuiltDataset(meta=meta, arrays=arrays)


def _read_images(
    src: JpegLabelsDataset | ImageFolderDataset,
    *,
    root: Path,
    name: str,
    key: str,
    decoding: _Decoding,
) -> tuple[ImageListing, DecodeResult, list[Failure]]:
    """List and decode the images; return them with the bad files (see :func:`_bad_files`)."""
    opts = src.image
    listing: ImageListing
    if isinstance(src, JpegLabelsDataset):
        listing = list_jpeg_labels(src, root, key=key, on_bad_file=opts.on_bad_file)
    else:
        listing = list_image_folder(src, root, key=key)
    logger.info(
        "%s: decoding %d images (%d classes) from %s",
        name,
        len(listing),
        len(listing.class_names),
        root,
    )
    decoded = decode_files(
        listing.paths,
        channels=opts.channels,
        size=opts.size,
        size_policy=opts.size_policy,
        workers=decoding.workers,
        progress=decoding.progress,
        desc=name,
        max_pixels=decoding.max_pixels,
    )
    failures = _bad_files(decoded, listing, on_bad_file=opts.on_bad_file, name=name)
    _warn_same_content(listing, decoded.digests, failures, name=name)
    return listing, decoded, failures


def _good_images(n: int, failures: list[Failure], *, key: str) -> np.ndarray:
    """The indices of the images that are not bad, in order; refuses a dataset of none."""
    good = np.ones(n, dtype=bool)
    good[[f.index for f in failures]] = False
    index = np.flatnonzero(good)
    if len(index) == 0:
        raise UserError(f"{key}: every image was skipped as bad; nothing left to prepare")
    return index


def _split_images(
    src: JpegLabelsDataset | ImageFolderDataset,
    *,
    parts: list[str],
    y: np.ndarray,
    index: np.ndarray,
    seed: int,
    key: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices among ``index``: the declared test part, else a carved-out one."""
    if isinstance(src, JpegLabelsDataset) and src.test_part is not None:
        in_test = np.array([p == src.test_part for p in parts])
        train_idx, test_idx = index[~in_test[index]], index[in_test[index]]
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise UserError(
                f"{key}.test_part: {src.test_part!r} leaves "
                f"{len(train_idx)} training and {len(test_idx)} test images; expected both > 0"
            )
        return train_idx, test_idx
    keep, held = _carve_test(
        y[index], fraction=src.test_fraction, seed=seed, classification=True, key=key
    )
    return index[keep], index[held]


# libjpeg's warnings that mean damaged pixels (OpenCV decodes such a file anyway, with grey or
# smeared blocks); others, such as "Invalid SOS parameters for sequential JPEG", come from
# encoders whose files decode fine.
_CORRUPT_WARNINGS = ("Corrupt JPEG data", "Premature end of JPEG file")


def _bad_files(
    decoded: DecodeResult, listing: ImageListing, *, on_bad_file: str, name: str
) -> list[Failure]:
    """The files prepare cannot use: failures, and JPEGs that decoded with damaged scan data.

    Raises:
        UserError: under ``on_bad_file: error`` (or a failure no policy skips), for the first.
    """
    failures = list(decoded.failures)
    for i, said in decoded.warnings:
        if any(w in said for w in _CORRUPT_WARNINGS):
            failures.append(Failure(i, CORRUPT, f"corrupt JPEG data [libjpeg: {said}]; expected "
                                    "an intact JPEG (image.on_bad_file: skip leaves it out)"))
        else:
            logger.warning("%s: decoded, but libjpeg warned: %s", listing.paths[i], said)
    failures.sort(key=lambda f: f.index)
    fatal = [f for f in failures if on_bad_file == "error" or f.kind not in SKIPPABLE]
    if fatal:
        first = fatal[0]
        more = f" (and {len(fatal) - 1} more bad file(s))" if len(fatal) > 1 else ""
        where = listing.paths[first.index]
        if listing.origins[first.index] != where:
            where = f"{where} (listed at {listing.origins[first.index]})"
        raise UserError(f"{where}: {first.message}{more}")
    for f in failures[:_MAX_LISTED]:
        logger.warning("%s: skipped %s (%s)", name, listing.sources[f.index], f.message)
    if failures:
        logger.warning("%s: skipped %d bad file(s) (image.on_bad_file: skip); listed in "
                       "meta.json", name, len(failures))
    return failures


def _warn_same_content(
    listing: ImageListing, digests: list[bytes], failures: list[Failure], *, name: str
) -> None:
    """Say when files with the same bytes carry different labels (one image, two classes)."""
    bad = {f.index for f in failures}
    first: dict[bytes, int] = {}
    clashes = []
    for i, digest in enumerate(digests):
        j = first.setdefault(digest, i)
        if i not in bad and j != i and listing.labels[j] != listing.labels[i]:
            clashes.append((j, i))
    if clashes:
        j, i = clashes[0]
        names = listing.class_names
        logger.warning(
            "%s: %d image(s) have the same content as an image of another class (by content "
            "hash), e.g. %s (%r) and %s (%r): their labels contradict each other", name,
            len(clashes), listing.sources[j], names[listing.labels[j]], listing.sources[i],
            names[listing.labels[i]],
        )


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------
def _build_csv(entry: DatasetEntry, *, project_root: Path, seed: int) -> BuiltDataset:
    src = entry.source
    assert isinstance(src, CsvDataset)
    key = f"datasets.{entry.name}"
    path = project_root / src.path
    table = read_table(path)
    target, features = _csv_columns(table, src, path=path, key=key)
    keep = _csv_rows(table, [*features, target], missing=src.missing, path=path, key=key)
    x = numeric_columns(table, features, keep).astype(np.float32)
    task, y, class_names = _target(table, target, keep, task=src.task, key=key)
    lines = np.asarray(table.lines)[keep]

    fingerprint = Fingerprint(_settings(src, seed))
    fingerprint.add_bytes("table", path.read_bytes())  # the name is not data

    classification = task == "classification"
    train_idx, test_idx = _carve_test(
        y, fraction=src.test_fraction, seed=seed, classification=classification, key=key
    )
    train_x, test_x, train_y, test_y = x[train_idx], x[test_idx], y[train_idx], y[test_idx]
    mean = train_x.astype(np.float64).mean(axis=0)
    std = train_x.astype(np.float64).std(axis=0)
    if classification:
        counts = _class_counts(train_y, test_y, class_names)
        target_mean, target_std = 0.0, 1.0
    else:
        counts = {}
        target_mean = float(train_y.astype(np.float64).mean())
        target_std = _std([float(train_y.astype(np.float64).std())])[0]
    meta = CacheMeta(
        name=entry.name,
        task=task,
        kind="tabular",
        input_shape=[len(features)],
        class_names=class_names,
        feature_names=[table.header[i] for i in features],
        target_name=src.target,
        n_train=len(train_idx),
        n_test=len(test_idx),
        counts=counts,
        mean=[float(v) for v in mean],
        std=_std([float(v) for v in std]),
        target_mean=target_mean,
        target_std=target_std,
        split_seed=seed,
        fingerprint=fingerprint.hexdigest(),
        source_format=src.format,
        size_policy="",
        test_sources=[f"row:{int(lines[i])}" for i in test_idx],
    )
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return BuiltDataset(meta=meta, arrays=arrays)


def _csv_columns(
    table: CsvTable, src: CsvDataset, *, path: Path, key: str
) -> tuple[int, list[int]]:
    """(target, features): column indices; features default to every column but the target."""
    target = table.column(src.target, key=f"{key}.target", role="target column")
    if src.features is None:
        features = [i for i in range(len(table.header)) if i != target]
    else:
        features = [
            table.column(name, key=f"{key}.features", role="feature column")
            for name in src.features
        ]
        if target in features:
            raise UserError(
                f"{path}: {src.target!r} is both the target and a feature ({key}.features); "
                "expected it in one place only"
            )
    if not features:
        raise UserError(f"{path}: no feature columns besides the target {src.target!r}")
    return target, features


def _csv_rows(
    table: CsvTable, columns: list[int], *, missing: str, path: Path, key: str
) -> np.ndarray:
    """The rows kept (a bool mask) under the ``missing`` policy; refuses a table of none."""
    keep = rows_to_keep(table, columns, missing=missing, key=f"{key}.missing")
    dropped = int((~keep).sum())
    if dropped:
        logger.warning("%s: dropped %d row(s) with missing values (missing: drop)", path, dropped)
    if not keep.any():
        raise UserError(f"{path}: every row has a missing value; no rows left (missing: drop)")
    return keep


def _target(
    table: CsvTable, column: int, keep: np.ndarray, *, task: str, key: str
) -> tuple[Task, np.ndarray, list[str]]:
    """(task, targets, class names): float32 values, or int64 ids into sorted class names."""
    name = table.header[column]
    if task == "regression":
        return "regression", numeric_columns(table, [column], keep)[:, 0].astype(np.float32), []
    cells = [row[column].strip() for row, k in zip(table.rows, keep, strict=True) if k]
    try:
        values = np.asarray(cells, dtype=np.float64)
        numeric = bool(np.isfinite(values).all())
    except ValueError:
        numeric = False
    if numeric and python_only("".join(cells)):  # numbers to Python only: name the first
        kept = np.flatnonzero(keep)
        first = next(i for i, cell in enumerate(cells) if python_only(cell))
        cell_number(table, int(kept[first]), column)  # raises, naming the file, line, column
    if numeric and not (np.abs(values) <= FLOAT32_MAX).all():
        kept = np.flatnonzero(keep)
        for r in kept[np.abs(values) > FLOAT32_MAX]:
            cell_number(table, int(r), column)  # raises, naming the file, line and column
    if task == "auto":
        if not numeric:
            task = "classification"
            reason = "it has non-numeric values"
        else:
            distinct = len(np.unique(values))
            integral = bool(np.all(values == np.round(values)))
            if integral and distinct <= AUTO_MAX_CLASSES:
                task = "classification"
                reason = f"its {distinct} distinct values are all integers"
            else:
                task = "regression"
                reason = f"it has {distinct} distinct values" if integral else "it has fractions"
        logger.info(
            "%s.task: auto -> %s: target column %r, %s (declare task: to override)",
            key,
            task,
            name,
            reason,
        )
        if task == "regression":
            return "regression", values.astype(np.float32), []
    if numeric:
        uniques = np.unique(values)
        ids = np.searchsorted(uniques, values).astype(np.int64)
        names = [_number_name(v) for v in uniques]
    else:
        labels = sorted(set(cells))
        lookup = {label: i for i, label in enumerate(labels)}
        ids = np.array([lookup[c] for c in cells], dtype=np.int64)
        names = labels
    return "classification", ids, names


def _number_name(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(float(value))
