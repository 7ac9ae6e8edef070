"""The built-in datasets, written from what scikit-learn ships (no download).

- digits: the 1,797 digits as 28x28 grayscale JPEGs in the classic tutorial layout
  (``train/00000.jpg``..., ``train_labels.txt`` with lines ``00000.jpg 7``, and a stratified
  ``val/`` + ``val_labels.txt``);
- diabetes: the 442-row table in its original units, with a header and a ``target`` column.

Both are written atomically (temp, then rename) and byte-for-byte the same on every run, so DVC
sees no change when nothing changed. :func:`run_fetch` is what ``python -m pipeline.fetch`` runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import check_writable, write_bytes_atomic
from pipeline.config import Params
from pipeline.data.cache import staged_dir
from pipeline.data.splits import holdout_split

logger = logging.getLogger(__name__)

DIGITS_SIZE = 28
JPEG_QUALITY = 95


@dataclass(frozen=True)
class FetchOptions:
    digits_dir: Path  # the JPEG folders and labels files go here
    diabetes_csv: Path  # the diabetes table
    val_fraction: float  # of the digits held out as val/ (stratified)
    seed: int  # of that split

    @classmethod
    def from_params(cls, params: Params) -> FetchOptions:
        """The ``fetch`` section of params.yaml, paths resolved from the project root."""
        cfg = params.fetch
        return cls(
            digits_dir=params.path(cfg.digits_dir),
            diabetes_csv=params.path(cfg.diabetes_csv),
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )


@dataclass(frozen=True)
class FetchResult:
    digits_dir: Path
    digits_counts: dict[str, int]  # {"train": n, "val": n}
    diabetes_csv: Path
    diabetes_rows: int


def run_fetch(options: FetchOptions) -> FetchResult:
    """Write both built-in datasets."""
    check_writable({options.digits_dir.parent: "the built-in digits (fetch.digits_dir)",
                    options.diabetes_csv.parent: "the built-in table (fetch.diabetes_csv)"})
    counts = write_digits(options.digits_dir, val_fraction=options.val_fraction, seed=options.seed)
    logger.info(
        "wrote %s: %d train + %d val JPEGs", options.digits_dir, counts["train"], counts["val"]
    )
    rows = write_diabetes(options.diabetes_csv)
    logger.info("wrote %s: %d rows", options.diabetes_csv, rows)
    return FetchResult(
        digits_dir=options.digits_dir,
        digits_counts=counts,
        diabetes_csv=options.diabetes_csv,
        diabetes_rows=rows,
    )


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (values 0-16) as ``uint8 [N, 28, 28]`` (0-255) and labels."""
    from sklearn.datasets import load_digits  # heavy: only `fetch` needs it

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
