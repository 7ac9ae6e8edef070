"""Stage ``fetch``: the built-in datasets, written from what scikit-learn ships (no download).

Reads: ``params.yaml`` (``fetch``) and scikit-learn's bundled ``load_digits`` / ``load_diabetes``.
Writes:
- ``<fetch.digits_dir>/``: the 1,797 digits as 28x28 grayscale JPEGs in the classic tutorial
  layout: ``train/00000.jpg``..., ``train_labels.txt`` (lines ``00000.jpg 7``), and a stratified
  ``val/`` + ``val_labels.txt`` (``fetch.val_fraction``, ``fetch.seed``);
- ``<fetch.diabetes_csv>``: the 442-row diabetes table in its original units, with a header and
  a ``target`` column.
Both are written atomically (temp, then rename) and byte-for-byte the same on every run, so DVC
sees no change when nothing changed.
Command: ``python -m pipeline.fetch [--params params.yaml]`` (DVC stage ``fetch``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pipeline import cli
from pipeline.config import PARAMS_FILE, load_params
from pipeline.data import FetchOptions, run_fetch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fetch",
        description="Write the built-in datasets (scikit-learn's digits and diabetes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="the params file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)

    def body() -> None:
        run_fetch(FetchOptions.from_params(load_params(args.params)))

    return cli.run(body)


if __name__ == "__main__":
    raise SystemExit(main())
