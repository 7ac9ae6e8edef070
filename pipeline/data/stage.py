"""The ``prepare`` stage as a library call: raw datasets -> tensor caches.

:func:`run_prepare` builds each dataset with :func:`~pipeline.data.build.build_dataset` and
writes its cache with :func:`~pipeline.data.cache.write_cache`; it is what
``python -m pipeline.prepare`` runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pipeline.atomic import check_writable
from pipeline.config import Params
from pipeline.data.build import build_dataset
from pipeline.data.cache import CacheMeta, write_cache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    params: Params
    datasets: tuple[str, ...] = ()  # empty: prepare.datasets
    progress: bool = False  # a progress bar while decoding


@dataclass(frozen=True)
class PrepareResult:
    metas: list[CacheMeta] = field(default_factory=list)  # in the order prepared


def run_prepare(options: PrepareOptions) -> PrepareResult:
    """Build and write the cache of each dataset (default: ``prepare.datasets``).

    Each dataset is read completely and checked before its cache is replaced, so a bad input
    stops with a UserError and leaves that dataset's previous cache as it was.
    """
    params = options.params
    names = list(options.datasets) if options.datasets else list(params.prepare.datasets)
    entries = [params.dataset_entry(name) for name in names]  # unknown names fail first
    check_writable({params.cache_dir(e.name).parent: "the tensor caches (prepare.cache_dir)"
                    for e in entries})
    metas = []
    for entry in entries:
        start = time.perf_counter()
        built = build_dataset(
            entry,
            project_root=params.root,
            seed=params.prepare.seed,
            workers=params.prepare.workers,
            progress=options.progress,
            max_pixels=params.prepare.max_image_pixels,
            min_train=params.prepare.min_train_items,
        )
        write_cache(params.cache_dir(entry.name), built.meta, built.arrays)
        meta = built.meta
        logger.info(
            "%s: %d train + %d test %s items, %s, fingerprint %s… (%.2f s)",
            entry.name,
            meta.n_train,
            meta.n_test,
            meta.kind,
            meta.task,
            meta.fingerprint[:12],
            time.perf_counter() - start,
        )
        metas.append(meta)
    return PrepareResult(metas=metas)
