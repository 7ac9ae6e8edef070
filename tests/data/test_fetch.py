"""The built-in data: the tutorial layout, real units, and the same bytes on every run."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import fetch
from pipeline.data import write_diabetes, write_digits
from pipeline.data.readers import decode_image


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fetch") / "digits"
    write_digits(folder, val_fraction=0.2, seed=0)
    return folder


def test_digits_layout(digits_dir: Path) -> None:
    train = (digits_dir / "train_labels.txt").read_text().splitlines()
    val = (digits_dir / "val_labels.txt").read_text().splitlines()
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert train[0].split()[0] == "00000.jpg" and val[-1].split()[0] == "00359.jpg"
    assert sorted(os.listdir(digits_dir)) == ["train", "train_labels.txt", "val", "val_labels.txt"]
    assert len(os.listdir(digits_dir / "train")) == len(train)
    labels = np.array([int(line.split()[1]) for line in val])
    assert np.bincount(labels).min() >= 35  # stratified: every digit ~36 times
    img = cv2.imread(str(digits_dir / "train" / "00000.jpg"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (28, 28) and img.dtype == np.uint8 and img.max() > 200
    pixels = decode_image(
        digits_dir / "val" / "00000.jpg", channels=1, size=(28, 28), size_policy="reject"
    )
    assert pixels.shape == (1, 28, 28)


def test_fetch_is_deterministic(digits_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "digits"
    write_digits(again, val_fraction=0.2, seed=0)
    assert _tree_hash(again) == _tree_hash(digits_dir)
    write_digits(again, val_fraction=0.2, seed=0)  # over an existing folder
    assert _tree_hash(again) == _tree_hash(digits_dir)
    assert os.listdir(tmp_path) == ["digits"]  # no temp folders left
    write_diabetes(tmp_path / "a.csv")
    write_diabetes(tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_diabetes_csv(tmp_path: Path) -> None:
    path = tmp_path / "raw" / "diabetes.csv"
    assert write_diabetes(path) == 442
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 442 and list(rows[0])[-1] == "target"
    assert float(rows[0]["age"]) == 59 and float(rows[0]["target"]) == 151  # original units
    assert os.listdir(path.parent) == ["diabetes.csv"]


def test_fetch_main(project: Path) -> None:
    assert fetch.main(["--params", str(project / "params.yaml")]) == 0
    assert (project / "data" / "raw" / "digits" / "val_labels.txt").is_file()
    assert (project / "data" / "raw" / "diabetes.csv").is_file()
