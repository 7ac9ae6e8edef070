"""Issue 27 rows for the data stage: data sets that cannot mean anything (one file under two
classes, linked class folders, as many classes as rows, classes without a training item),
numbers only Python reads, corrupt JPEG scan data, and a damaged cache. Real links, real
corrupt JPEGs; a refusal leaves the previous cache as it was."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import train
from tests.data.conftest import TinyProject
from tests.data.helpers import (
    encode_jpeg,
    make_csv,
    make_image_folder,
    regression_rows,
    run_prepare,
    snapshot,
    write_labels,
)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def _pets(tiny: TinyProject, **image: object) -> Path:
    """An image_folder dataset ``pets`` (cat, dog, emu; six images each), prepared once."""
    root = tiny.root / "raw" / "pets"
    make_image_folder(root)
    tiny.write(pets={
        "format": "image_folder", "root": "raw/pets", "test_fraction": 0.25,
        "image": {"channels": 1, "size": [8, 8], "size_policy": "resize",
                  "on_bad_file": "error", **image},
    })
    assert run_prepare(tiny.params, "pets") == 0
    return root


# --------------------------------------------------------------------------------------------
# One file, two classes
# --------------------------------------------------------------------------------------------
def test_a_link_putting_one_image_under_two_classes_is_refused(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _pets(tiny)
    before = snapshot(tiny.cache)
    (root / "dog" / "also-a-cat.jpg").symlink_to(root / "cat" / "img000.jpg")
    assert run_prepare(tiny.params, "pets") == 2
    line = _one_error_line(capsys)
    assert line == (
        f"error: {root / 'dog' / 'also-a-cat.jpg'}: {root / 'dog' / 'also-a-cat.jpg'} is the "
        f"same file as {root / 'cat' / 'img000.jpg'} (by path: a link to it), with labels "
        "'cat' and 'dog'; expected each image once"
    )
    assert snapshot(tiny.cache) == before  # the previous cache as it was


def test_a_linked_class_folder_is_refused(tiny: TinyProject,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = _pets(tiny)
    (root / "kitten").symlink_to(root / "cat", target_is_directory=True)
    assert run_prepare(tiny.params, "pets") == 2
    assert _one_error_line(capsys) == (
        f"error: {root / 'kitten'}: class folder 'kitten' is a link to class folder 'cat' "
        f"({(root / 'cat').resolve()}); expected one folder per class"
    )


def test_a_link_in_a_labels_file_to_another_listed_image_is_refused(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    (tiny.raw / "train" / "same.jpg").symlink_to(tiny.raw / "train" / "00001.jpg")
    lines = (tiny.raw / "train_labels.txt").read_text().splitlines() + ["same.jpg 2"]
    write_labels(tiny.raw / "train_labels.txt", lines)
    assert run_prepare(tiny.params, "tiny") == 2
    assert _one_error_line(capsys) == (
        f"error: {tiny.raw / 'train_labels.txt'}:25: {tiny.raw / 'train' / 'same.jpg'} is the "
        f"same file as {tiny.raw / 'train' / '00001.jpg'}, listed at "
        f"{tiny.raw / 'train_labels.txt'}:2 (by path: a link to it), with labels '1' and '2'; "
        "expected each image once"
    )


def test_the_same_content_under_two_classes_is_named(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _pets(tiny)
    shutil.copyfile(root / "cat" / "img002.jpg", root / "emu" / "copy.jpg")
    capsys.readouterr()
    assert run_prepare(tiny.params, "pets") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "by content" in line]
    assert said == [
        "WARNING pipeline.data.build: pets: 1 image(s) have the same content as an image of "
        "another class (by content hash), e.g. cat/img002.jpg ('cat') and emu/copy.jpg "
        "('emu'): their labels contradict each other"
    ]


# --------------------------------------------------------------------------------------------
# Classes that cannot be learnt
# --------------------------------------------------------------------------------------------
def test_a_target_with_as_many_classes_as_rows_is_refused(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [[*row[:2], f"patient-{i:03d}"] for i, row in enumerate(regression_rows(442))]
    make_csv(tiny.csv, ["a", "b", "y"], rows)
    assert run_prepare(tiny.params, "table") == 2
    assert _one_error_line(capsys) == (
        "error: datasets.table: 442 classes for 442 items; expected at least 2 items per class "
        "on average, so that each class can be learnt and tested: is column 'y' a continuous "
        "value (task: regression) or an identifier?"
    )


def test_a_class_without_a_training_item_is_refused(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    """A declared test part holding the only images of a class."""
    entries = [line.split() for line in (tiny.raw / "val_labels.txt").read_text().splitlines()]
    write_labels(tiny.raw / "val_labels.txt", [f"{name} {3 if i < 3 else label}"
                                               for i, (name, label) in enumerate(entries)])
    tiny.write(tiny={**tiny.default_datasets()["tiny"], "test_part": "val",
                     "classes": ["a", "b", "c", "d"]})
    assert run_prepare(tiny.params, "tiny") == 2
    assert _one_error_line(capsys).startswith(
        "error: datasets.tiny: class(es) 'd' have no training item after the test split (all "
        "3 of their items are test items); expected every class in the training part"
    )


# --------------------------------------------------------------------------------------------
# Numbers only Python reads
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("column", "cell", "where"), [
    ("a", "1_000", ":5:1: column 'a'"),
    ("y", "1_000", ":5:3: column 'y'"),
    ("b", "١٢", ":5:2: column 'b'"),  # Arabic-Indic digits: float() reads 12
])
def test_numbers_only_python_reads_are_refused(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str], column: str, cell: str, where: str
) -> None:
    rows = regression_rows()
    rows[3][["a", "b", "y"].index(column)] = cell
    make_csv(tiny.csv, ["a", "b", "y"], rows)
    assert run_prepare(tiny.params, "table") == 2
    assert _one_error_line(capsys) == (
        f"error: {tiny.csv}{where}: expected a number as CSV files write it, got {cell!r} "
        "(Python reads it, but pandas, R and spreadsheets take it for text: write it without "
        "'_' and with ASCII digits)"
    )


def test_a_classification_target_of_python_only_numbers_is_refused(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [[*row[:2], i % 3] for i, row in enumerate(regression_rows())]
    rows[7][2] = "1_0"
    make_csv(tiny.csv, ["a", "b", "y"], rows)
    assert run_prepare(tiny.params, "table") == 2
    assert f"{tiny.csv}:9:3: column 'y': expected a number as CSV files" in _one_error_line(
        capsys)


# --------------------------------------------------------------------------------------------
# Corrupt JPEG scan data
# --------------------------------------------------------------------------------------------
def _corrupt_scan(path: Path) -> None:
    """A JPEG that OpenCV decodes (with a libjpeg warning) into wrong pixels: two bytes of its
    entropy-coded data overwritten, its markers intact."""
    noise = np.random.default_rng(0).integers(0, 255, (8, 8)).astype(np.uint8)
    data = bytearray(encode_jpeg(noise))
    data[len(data) - 40 : len(data) - 38] = b"\x12\x34"
    path.write_bytes(bytes(data))


def test_corrupt_scan_data_is_refused_under_on_bad_file_error(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _pets(tiny)
    before = snapshot(tiny.cache)
    _corrupt_scan(root / "dog" / "img003.jpg")
    assert run_prepare(tiny.params, "pets") == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {root / 'dog' / 'img003.jpg'}: corrupt JPEG data [libjpeg: "
                           "Corrupt JPEG data")
    assert line.endswith("expected an intact JPEG (image.on_bad_file: skip leaves it out)")
    assert snapshot(tiny.cache) == before


def test_corrupt_scan_data_is_left_out_under_skip(tiny: TinyProject) -> None:
    root = _pets(tiny, on_bad_file="skip")
    _corrupt_scan(root / "dog" / "img003.jpg")
    assert run_prepare(tiny.params, "pets") == 0
    meta = json.loads((tiny.cache / "pets" / "meta.json").read_text())
    assert [s["file"] for s in meta["skipped"]] == ["dog/img003.jpg"]
    assert meta["n_train"] + meta["n_test"] == 17


# --------------------------------------------------------------------------------------------
# A damaged cache
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["cut", "meta"])
def test_a_damaged_cache_is_one_line_naming_the_file(
    tiny: TinyProject, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    assert run_prepare(tiny.params, "tiny") == 0
    target = tiny.cache / "tiny" / ("train_x.npy" if damage == "cut" else "meta.json")
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert train.main(["--params", str(tiny.params), "--dataset", "tiny"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {target}: damaged tensor cache (")
    assert line.endswith("rebuild it with `dvc repro prepare` or `python -m pipeline.prepare`")
    assert not (tiny.root / "checkpoints" / "train-tiny" / "last.pt").exists()
    assert run_prepare(tiny.params, "tiny") == 0  # the way forward: the cache is whole again
    assert os.path.getsize(target) == len(data)
