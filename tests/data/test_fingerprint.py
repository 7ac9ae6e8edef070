"""The fingerprint names the exact data: stable for the same input, changed by any change."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import load_params
from pipeline.data import PrepareOptions, run_prepare
from pipeline.data.cache import load_cache
from pipeline.data.fingerprint import Fingerprint
from tests.data.conftest import TinyProject
from tests.data.helpers import jpeg_dataset, write_jpeg, write_params


def _fingerprint(t: TinyProject, dataset: str = "tiny") -> str:
    (meta,) = run_prepare(PrepareOptions(load_params(t.params), (dataset,))).metas
    return meta.fingerprint


def test_same_input_same_fingerprint(tiny: TinyProject, tmp_path_factory) -> None:
    first = _fingerprint(tiny)
    assert _fingerprint(tiny) == first
    # Elsewhere on disk, with more workers: still the same data, so the same fingerprint.
    other = tmp_path_factory.mktemp("copy")
    shutil.copytree(tiny.root, other, dirs_exist_ok=True)
    write_params(other, TinyProject.default_datasets(), workers=2)
    (meta,) = run_prepare(PrepareOptions(load_params(other / "params.yaml"), ("tiny",))).metas
    assert meta.fingerprint == first
    assert load_cache(other / "cache" / "tiny").meta == load_cache(tiny.cache / "tiny").meta


def test_labels_file_order_does_not_matter(tiny: TinyProject) -> None:
    first = _fingerprint(tiny)
    x = np.asarray(load_cache(tiny.cache / "tiny").train_x).copy()
    labels = tiny.raw / "train_labels.txt"
    labels.write_text("".join(reversed(labels.read_text().splitlines(keepends=True))))
    assert _fingerprint(tiny) == first
    assert np.array_equal(load_cache(tiny.cache / "tiny").train_x, x)


def test_one_changed_pixel_changes_fingerprint(tiny: TinyProject) -> None:
    first = _fingerprint(tiny)
    path = tiny.raw / "val" / "00004.jpg"
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    img[3, 3] = 255 - img[3, 3]
    write_jpeg(path, img)
    assert _fingerprint(tiny) != first


def test_changed_label_name_or_setting_changes_fingerprint(tiny: TinyProject) -> None:
    first = _fingerprint(tiny)
    labels = tiny.raw / "val_labels.txt"
    original = labels.read_text()
    labels.write_text(original.replace("00004.jpg 1", "00004.jpg 2"))
    assert _fingerprint(tiny) != first
    labels.write_text(original)
    assert _fingerprint(tiny) == first

    (tiny.raw / "val" / "00004.jpg").rename(tiny.raw / "val" / "renamed.jpg")
    labels.write_text(original.replace("00004.jpg", "renamed.jpg"))
    assert _fingerprint(tiny) != first
    (tiny.raw / "val" / "renamed.jpg").rename(tiny.raw / "val" / "00004.jpg")
    labels.write_text(original)

    tiny.write(tiny=jpeg_dataset(test_fraction=0.3))
    assert _fingerprint(tiny) != first
    tiny.write()
    write_params(tiny.root, TinyProject.default_datasets(), seed=7)
    assert _fingerprint(tiny) != first


def test_csv_fingerprint(tiny: TinyProject) -> None:
    first = _fingerprint(tiny, "table")
    assert _fingerprint(tiny, "table") == first
    text = tiny.csv.read_text().splitlines(keepends=True)
    cells = text[5].split(",")
    cells[0] = str(float(cells[0]) + 0.001)
    text[5] = ",".join(cells)
    tiny.csv.write_text("".join(text))
    assert _fingerprint(tiny, "table") != first


def test_location_is_not_part_of_the_fingerprint(tiny: TinyProject) -> None:
    first = _fingerprint(tiny)
    shutil.move(tiny.raw, tiny.root / "moved")
    tiny.write(tiny=jpeg_dataset(root="moved"))
    assert _fingerprint(tiny) == first
    assert Path(tiny.root / "moved").is_dir()


def test_add_many_is_add_in_a_loop() -> None:
    items = [("a.jpg", "1", bytes(32)), ("b/c.jpg", "12", b"\x01" * 32)]
    one, many = Fingerprint({"x": 1}), Fingerprint({"x": 1})
    for name, label, digest in items:
        one.add(name, label, digest)
    many.add_many(*zip(*items, strict=True))
    assert one.hexdigest() == many.hexdigest() != Fingerprint({"x": 2}).hexdigest()
