"""Stage ``prepare``: raw images / CSV tables -> tensor caches.

Reads: ``params.yaml`` (``prepare`` and ``datasets``) and, for each dataset in
``prepare.datasets`` (or named with ``--dataset``), its raw input: a ``jpeg_labels`` folder, an
``image_folder`` tree or a ``csv`` table.
Writes: ``<prepare.cache_dir>/<dataset>/`` (``train_x.npy``, ``train_y.npy``, ``test_x.npy``,
``test_y.npy``, ``meta.json``), each atomically: a failure leaves the previous cache untouched,
and staging folders left by a killed run are removed by the next one.
Command: ``python -m pipeline.prepare [--params params.yaml] [--dataset NAME ...]``
(DVC stage ``prepare``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline import cli
from pipeline.config import PARAMS_FILE, load_params
from pipeline.data import PrepareOptions, run_prepare


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> None:
        options = PrepareOptions(
            params=load_params(args.params),
            datasets=tuple(args.dataset or ()),
            progress=sys.stderr.isatty(),
        )
        run_prepare(options)

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
