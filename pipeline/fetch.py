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
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline import cli
from pipeline.atomic import write_bytes_atomic
from pipeline.config import PARAMS_FILE, FetchConfig, Params, load_params
from pipeline.data.cache import staged_dir
from pipeline.data.splits import holdout_split

logger = logging.getLogger(__name__)

DIGITS_SIZE = 28
JPEG_QUALITY = 95


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0-16) as ``uint8 [N, 28, 28]`` (0-255) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    big = np.stack(
        [
            cv2.resize(img, (DIGITS_SIZE, DIGITS_SIZE), interpolation=cv2.INTER_LINEAR)
            for img in small
        ]
    )
    return big, digits.target.astype(np.int64)


def write_digits(folder: Path, *, val_fraction: float, seed: int) -> dict[str, int]:
    """Write the digits as ``train/`` and ``val/`` JPEG folders with their labels files."""
    images, labels = digit_images()
    train, val = holdout_split(labels, fraction=val_fraction, seed=seed, classification=True)
    with staged_dir(folder) as tmp:
        for part, index in (("train", train), ("val", val)):
            (tmp / part).mkdir()
            lines = []
            for number, i in enumerate(index):
                name = f"{number:05d}.jpg"
                ok, buf = cv2.imencode(".jpg", images[i], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
                    raise RuntimeError(f"could not encode digit {i} as JPEG")
                (tmp / part / name).write_bytes(buf.tobytes())
                lines.append(f"{name} {int(labels[i])}\n")
            (tmp / f"{part}_labels.txt").write_text("".join(lines), newline="\n")
    return {"train": len(train), "val": len(val)}


def _number(value: float) -> str:
    """Shortest text that reads back as the same float; integers without ``.0``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def write_diabetes(path: Path) -> int:
    """Write the diabetes table (original units where scikit-learn has them) as CSV."""
    from sklearn.datasets import load_diabetes

    try:
        data = load_diabetes(scaled=False)
    except TypeError:  # scikit-learn < 1.1: only the scaled version
        data = load_diabetes()
    header = [*data.feature_names, "target"]
    rows = np.column_stack([data.data, data.target])
    text = ",".join(header) + "\n"
    text += "".join(",".join(_number(v) for v in row) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode())
    return len(rows)


def fetch(params: Params) -> None:
    cfg: FetchConfig = params.fetch
    digits_dir = params.path(cfg.digits_dir)
    counts = write_digits(digits_dir, val_fraction=cfg.val_fraction, seed=cfg.seed)
    logger.info("wrote %s: %d train + %d val JPEGs", digits_dir, counts["train"], counts["val"])
    csv_path = params.path(cfg.diabetes_csv)
    rows = write_diabetes(csv_path)
    logger.info("wrote %s: %d rows", csv_path, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.fetch",
        description="Write the built-in datasets (scikit-learn's digits and diabetes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="the params file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    return cli.run(lambda: fetch(load_params(args.params)))


if __name__ == "__main__":
    sys.exit(main())
