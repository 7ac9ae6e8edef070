"""The tensor cache: what ``prepare`` writes and every later stage reads.

Layout of ``data/cache/<dataset>/``::

    train_x.npy   uint8 [N, C, H, W] images or float32 [N, F] features (the search/training pool)
    train_y.npy   int64 class ids or float32 regression targets
    test_x.npy    the fixed held-out test split, same dtypes; never seen by a search
    test_y.npy
    meta.json     see :class:`CacheMeta`

``.npy`` is memory-mappable and loads with ``allow_pickle=False``. The folder is written to a
temporary sibling and renamed into place, so an interrupted ``prepare`` leaves the old cache or
none, never a half-written one.

Staging folders are named ``.<folder>.tmp-<host>-<pid>-<random>`` (and the old folder moved
aside ``.<folder>.old-<host>-<pid>``). A process killed with ``kill -9`` cannot remove its own,
so every :func:`staged_dir` first sweeps the stale ones of the same folder: those made on this
host by a process that is no longer alive, and those in the unowned format of earlier versions
(``.<folder>.tmp-<random>``) not modified for an hour: the rule of
:func:`pipeline.atomic.is_stale`, which sweeps temporary files too. An ``.old`` folder whose
owner died is put back when ``<folder>`` itself is missing (it was killed between the two
renames), else removed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.atomic import is_stale, owner
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
ARRAYS = ("train_x", "train_y", "test_x", "test_y")
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheMeta:
    """Everything a later stage needs to know about a cached dataset."""

    name: str
    task: Literal["classification", "regression"]
    kind: Literal["image", "tabular"]
    input_shape: list[int]  # [C, H, W] for images, [F] for features
    class_names: list[str]  # classification only; index = class id
    feature_names: list[str]  # tabular only
    target_name: str
    n_train: int
    n_test: int
    counts: dict[str, dict[str, int]]  # {"train": {class: n}, "test": {...}}; empty for regression
    # Normalisation computed on the training part only. Images: per-channel mean/std of pixel
    # values scaled to [0, 1]; features: per-feature mean/std.
    mean: list[float]
    std: list[float]
    # Regression targets are standardised for training with these (train part only).
    target_mean: float
    target_std: float
    split_seed: int  # test split (when carved out) and fold / holdout assignment
    fingerprint: str  # sha256 over the raw inputs (names, labels, bytes) and the prepare params
    source_format: str
    skipped: list[dict[str, str]] = field(default_factory=list)  # on_bad_file: skip
    # Images: how an image of another size is handled (predict applies the same policy).
    size_policy: str = "resize"
    # Raw file (relative to the dataset root) or CSV row number of each test item, in cache
    # order, so raw inputs can be matched to cached ones (predict vs evaluate).
    test_sources: list[str] = field(default_factory=list)
    version: int = CACHE_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        """Strict JSON: a NaN or infinite value raises ValueError instead of writing ``NaN``."""
        data = dataclasses.asdict(self)
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Cache:
    """A loaded cache: numpy arrays (memory-mapped) and their metadata."""

    meta: CacheMeta
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def write_cache(
    folder: Path,
    meta: CacheMeta,
    arrays: dict[str, np.ndarray],
    *,
    _before_rename: Any = None,
) -> None:
    """Write a cache atomically: a temp folder beside ``folder``, then rename over it.

    ``_before_rename`` is a test hook called with the temp folder just before the swap.
    """
    missing = set(ARRAYS) - set(arrays)
    if missing:
        raise ValueError(f"write_cache: missing arrays {sorted(missing)}")
    with staged_dir(Path(folder)) as tmp:
        for name in ARRAYS:
            arr = np.ascontiguousarray(arrays[name])
            with open(tmp / f"{name}.npy", "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        (tmp / META_FILE).write_text(meta.to_json())
        if _before_rename is not None:
            _before_rename(tmp)
    logger.info("wrote cache %s (%d train, %d test)", folder, meta.n_train, meta.n_test)


@contextmanager
def staged_dir(folder: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside ``folder``; on success it replaces ``folder``.

    On any exception (including KeyboardInterrupt) the temp folder is removed and ``folder`` is
    left as it was. The swap moves the old folder aside, renames the new one in, then deletes
    the old one: ``folder`` is the complete old one, the complete new one or, for an instant
    between two renames, absent; never half-written.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(folder)
    made_by = owner()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{made_by}-", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it normal rights
        yield tmp
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{made_by}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old is not None:  # put the old folder back
                os.replace(old, folder)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging folders of ``folder`` left by killed processes; return them."""
    folder = Path(folder)
    pattern = re.compile(
        rf"\.{re.escape(folder.name)}\.(tmp|old)-(?:(?P<owner>[A-Za-z0-9_.]+-\d+)(?:-|$))?"
    )
    removed = []
    now = time.time()
    try:
        entries = sorted(folder.parent.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        found = pattern.match(entry.name)
        if found is None or not entry.is_dir() or entry.is_symlink():
            continue
        if not is_stale(entry, found.group("owner"), now):
            continue
        if found.group(1) == "old" and not folder.exists():
            os.replace(entry, folder)  # killed between the two renames: the old one is whole
            logger.warning("%s: put back from %s (a killed write moved it aside)", folder, entry)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.warning("removed %s, left by a killed write of %s", entry, folder)
        removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _damaged(path: Path, what: str) -> UserError:
    return UserError(
        f"{path}: damaged tensor cache ({what}); rebuild it with `dvc repro prepare` or "
        "`python -m pipeline.prepare`"
    )


def read_meta(folder: Path) -> CacheMeta:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise UserError(
            f"{folder}: no tensor cache here (missing {META_FILE}); run `dvc repro prepare` "
            "or `python -m pipeline.prepare` first"
        )
    try:
        return CacheMeta.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not a mapping, a key
        raise _damaged(path, f"unreadable metadata: {exc}") from None


def load_cache(folder: Path, *, mmap: bool = True) -> Cache:
    """Load a cache written by :func:`write_cache` (no pickle, memory-mapped by default).

    Raises:
        UserError: the cache is missing, or a file of it is damaged (cut short, overwritten,
            or not the size ``meta.json`` says), naming the file and what to do.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    mode: Literal["r"] | None = "r" if mmap else None
    arrays = {}
    for name in ARRAYS:
        path = folder / f"{name}.npy"
        if not path.is_file():
            raise UserError(f"{path}: missing from the cache; rerun prepare")
        try:
            arrays[name] = np.load(path, mmap_mode=mode, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _damaged(path, str(exc).split("\n")[0]) from None
        rows = meta.n_train if name.startswith("train") else meta.n_test
        shape = (rows, *meta.input_shape) if name.endswith("_x") else (rows,)
        if tuple(arrays[name].shape) != shape:
            raise _damaged(path, f"shape {list(arrays[name].shape)}, but {META_FILE} says "
                                 f"{list(shape)}")
    return Cache(meta=meta, **arrays)
