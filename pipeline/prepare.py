"""Stage ``prepare``: raw images / CSV tables -> tensor caches.

Reads: ``params.yaml`` (``prepare`` and ``datasets``) and, for each dataset in
``prepare.datasets`` (or named with ``--dataset``), its raw input: a ``jpeg_labels`` folder, an
``image_folder`` tree or a ``csv`` table.
Writes: ``<prepare.cache_dir>/<dataset>/`` (``train_x.npy``, ``train_y.npy``, ``test_x.npy``,
``test_y.npy``, ``meta.json``), each atomically: a failure leaves the previous cache untouched.
Command: ``python -m pipeline.prepare [--params params.yaml] [--dataset NAME ...]``
(DVC stage ``prepare``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from pipeline import cli
from pipeline.config import PARAMS_FILE, Params, load_params
from pipeline.data.build import build_dataset
from pipeline.data.cache import CacheMeta, write_cache

logger = logging.getLogger(__name__)


def prepare(
    params: Params, datasets: Sequence[str] | None = None, *, progress: bool = False
) -> list[CacheMeta]:
    """Build and write the cache of each dataset (default: ``prepare.datasets``).

    Each dataset is read completely and checked before its cache is replaced, so a bad input
    stops with a UserError and leaves that dataset's previous cache as it was.
    """
    names = list(datasets) if datasets else list(params.prepare.datasets)
    entries = [params.dataset_entry(name) for name in names]  # unknown names fail first
    metas = []
    for entry in entries:
        start = time.perf_counter()
        built = build_dataset(
            entry,
            project_root=params.root,
            seed=params.prepare.seed,
            workers=params.prepare.workers,
            progress=progress,
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
    return metas


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.prepare",
        description="Turn the raw datasets declared in params.yaml into tensor caches.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="the params file")
    parser.add_argument(
        "--dataset",
        action="append",
        metavar="NAME",
        help="prepare only this dataset (repeatable); default: prepare.datasets",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> None:
        prepare(load_params(args.params), args.dataset, progress=sys.stderr.isatty())

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
