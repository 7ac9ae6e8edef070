"""Data: raw datasets in, checked tensor caches out (the ``fetch`` and ``prepare`` stages).

The stages call :func:`run_fetch` and :func:`run_prepare`; every later stage reads a cache with
:func:`load_cache` and splits it with :func:`holdout_split` / :func:`kfold_splits`; ``predict``
reads raw inputs with :func:`decode_image` / :func:`read_csv_table`, which apply exactly the
checks ``prepare`` applies.
"""

from pipeline.data.build import MIN_TRAIN_ITEMS, BuiltDataset, build_dataset
from pipeline.data.builtin import (
    FetchOptions,
    FetchResult,
    run_fetch,
    write_diabetes,
    write_digits,
)
from pipeline.data.cache import (
    Cache,
    CacheMeta,
    load_cache,
    read_meta,
    remove_stale_staging,
    staged_dir,
    write_cache,
)
from pipeline.data.fingerprint import Fingerprint
from pipeline.data.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, decode_files
from pipeline.data.readers import decode_image, read_csv_table
from pipeline.data.splits import holdout_split, kfold_splits
from pipeline.data.stage import PrepareOptions, PrepareResult, run_prepare

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MIN_TRAIN_ITEMS",
    "BuiltDataset",
    "Cache",
    "CacheMeta",
    "FetchOptions",
    "FetchResult",
    "Fingerprint",
    "PrepareOptions",
    "PrepareResult",
    "build_dataset",
    "decode_files",
    "decode_image",
    "holdout_split",
    "kfold_splits",
    "load_cache",
    "read_csv_table",
    "read_meta",
    "remove_stale_staging",
    "run_fetch",
    "run_prepare",
    "staged_dir",
    "write_cache",
    "write_diabetes",
    "write_digits",
]
