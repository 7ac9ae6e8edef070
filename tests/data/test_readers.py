"""Each reader: jpeg_labels (grayscale, colour, declared test part), image_folder, CSV."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline.data.images as images_mod
from pipeline.config import load_params
from pipeline.data import PrepareOptions
from pipeline.data import run_prepare as prepare_datasets  # helpers.run_prepare is main()
from pipeline.data.cache import load_cache
from pipeline.data.images import channel_stats, decode_files, jpeg_is_complete
from pipeline.data.readers import decode_image, read_csv_table
from pipeline.errors import UserError
from tests.data.conftest import TinyProject
from tests.data.helpers import (
    encode_jpeg,
    jpeg_dataset,
    make_csv,
    make_image_folder,
    pattern,
    run_prepare,
    write_jpeg,
)


def test_jpeg_labels_cache(tiny: TinyProject) -> None:
    assert run_prepare(tiny.params) == 0
    cache = load_cache(tiny.cache / "tiny")
    meta = cache.meta
    assert cache.train_x.dtype == np.uint8 and cache.train_x.shape[1:] == (1, 8, 8)
    assert cache.train_y.dtype == np.int64 and cache.test_y.dtype == np.int64
    assert meta.n_train + meta.n_test == 33 and meta.n_test == 9  # ceil(33 * 0.25)
    assert meta.class_names == ["0", "1", "2"]
    assert meta.counts["train"] == {"0": 8, "1": 8, "2": 8}
    assert meta.counts["test"] == {"0": 3, "1": 3, "2": 3}  # stratified
    assert meta.split_seed == 42 and meta.size_policy == "resize"
    assert meta.kind == "image" and meta.task == "classification"
    assert meta.input_shape == [1, 8, 8] and meta.source_format == "jpeg_labels"
    assert len(meta.fingerprint) == 64 and meta.skipped == []
    # Normalisation from the training part only.
    mean, std = channel_stats(np.asarray(cache.train_x))
    assert meta.mean == pytest.approx(mean) and meta.std == pytest.approx(std)
    scaled = np.asarray(cache.train_x, dtype=np.float64) / 255
    assert meta.mean[0] == pytest.approx(scaled.mean())
    assert meta.std[0] == pytest.approx(scaled.std())
    # test_sources name the raw files, and the cached pixels are those files decoded.
    assert len(meta.test_sources) == meta.n_test
    for i, source in enumerate(meta.test_sources):
        assert source.startswith(("train/", "val/"))
        img = cv2.imread(str(tiny.raw / source), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(cache.test_x[i, 0], img)


def test_declared_test_part_is_used_as_is(tiny: TinyProject) -> None:
    tiny.write(tiny=jpeg_dataset(test_part="val"))
    assert run_prepare(tiny.params) == 0
    meta = load_cache(tiny.cache / "tiny").meta
    assert meta.n_train == 24 and meta.n_test == 9
    assert meta.test_sources == [f"val/{i:05d}.jpg" for i in range(9)]


def test_colour_images_are_rgb_chw(tiny: TinyProject) -> None:
    root = tiny.root / "raw" / "colour"
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 250  # red in OpenCV's BGR order
    for i in range(8):
        write_jpeg(root / "train" / f"{i}.jpg", bgr)
    (root / "train_labels.txt").write_text("".join(f"{i}.jpg {i % 2}\n" for i in range(8)))
    entry = jpeg_dataset(root="raw/colour", image={"channels": 3})
    entry["parts"] = {"train": {"images": "train", "labels": "train_labels.txt"}}
    tiny.write(colour=entry)
    assert run_prepare(tiny.params) == 0
    cache = load_cache(tiny.cache / "colour")
    assert cache.train_x.shape[1:] == (3, 8, 8) and cache.meta.input_shape == [3, 8, 8]
    red, green, blue = (cache.train_x[:, c].mean() for c in range(3))
    assert red > 240 and green < 10 and blue < 10
    assert len(cache.meta.mean) == 3 and cache.meta.mean[0] > 0.9


def test_image_folder(tiny: TinyProject) -> None:
    make_image_folder(tiny.root / "raw" / "pets", channels=3)
    (tiny.root / "raw" / "pets" / "dog" / "notes.txt").write_text("not an image")
    tiny.write(
        pets={
            "format": "image_folder",
            "root": "raw/pets",
            "test_fraction": 0.5,
            "image": {"channels": 3, "size": [8, 8]},
        }
    )
    assert run_prepare(tiny.params) == 0
    cache = load_cache(tiny.cache / "pets")
    meta = cache.meta
    assert meta.class_names == ["cat", "dog", "emu"]
    assert meta.counts == {
        "train": {"cat": 3, "dog": 3, "emu": 3},
        "test": {"cat": 3, "dog": 3, "emu": 3},
    }
    assert cache.train_x.shape == (9, 3, 8, 8)
    for i, source in enumerate(meta.test_sources):
        cls, _ = source.split("/")
        assert meta.class_names[cache.test_y[i]] == cls


def test_resize_policy_converts_size_and_channels(tiny: TinyProject) -> None:
    # One colour 12x10 image in a grayscale 8x8 dataset: converted and resized.
    write_jpeg(tiny.raw / "train" / "00000.jpg", pattern(0, size=(12, 10), channels=3))
    assert run_prepare(tiny.params) == 0
    assert load_cache(tiny.cache / "tiny").train_x.shape[1:] == (1, 8, 8)


def test_pool_and_single_process_agree(tmp_path: Path) -> None:
    paths = []
    for i in range(300):  # above the in-process threshold
        write_jpeg(tmp_path / f"{i}.jpg", pattern(i % 4, seed=i))
        paths.append(str(tmp_path / f"{i}.jpg"))
    kw = {"channels": 1, "size": (8, 8), "size_policy": "reject"}
    one = decode_files(paths, workers=1, **kw)
    two = decode_files(paths, workers=2, **kw)
    assert np.array_equal(one.images, two.images) and one.digests == two.digests
    assert one.failures == two.failures == []
    assert np.array_equal(one.images[7, 0], cv2.imread(paths[7], cv2.IMREAD_GRAYSCALE))


def test_decode_image_helper(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    write_jpeg(path, pattern(1, size=(10, 12)))
    img = decode_image(path, channels=1, size=(8, 8), size_policy="resize")
    assert img.shape == (1, 8, 8) and img.dtype == np.uint8
    assert decode_image(path, channels=3, size=(10, 12), size_policy="resize").shape == (3, 10, 12)
    with pytest.raises(UserError, match=r"a\.jpg: is 10x12 \(HxW\); expected 8x8"):
        decode_image(path, channels=1, size=(8, 8), size_policy="reject")
    # Another channel count is converted under either policy; only sizes are refused.
    colour = decode_image(path, channels=3, size=(10, 12), size_policy="reject")
    assert colour.shape == (3, 10, 12)
    with pytest.raises(UserError, match=r"nope\.jpg: file not found"):
        decode_image(tmp_path / "nope.jpg", channels=1, size=(8, 8), size_policy="resize")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match=r"bad\.jpg: .*truncated|bad\.jpg: corrupt"):
        decode_image(tmp_path / "bad.jpg", channels=1, size=(8, 8), size_policy="resize")


def _warning_jpeg(path: Path) -> None:
    """A JPEG that decodes, but with a libjpeg warning (damage inside the scan data)."""
    noise = np.random.default_rng(0).integers(0, 255, (28, 28)).astype(np.uint8)
    data = bytearray(encode_jpeg(noise))
    data[len(data) - 40 : len(data) - 38] = b"\x12\x34"
    path.write_bytes(bytes(data))


def test_libjpeg_warnings_are_captured(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _warning_jpeg(tmp_path / "warn.jpg")
    result = decode_files(
        [str(tmp_path / "warn.jpg")], channels=1, size=(28, 28), size_policy="reject", workers=1
    )
    said = result.warnings[0][1] if result.warnings else result.failures[0].message
    assert "Corrupt JPEG data" in said
    assert "Corrupt JPEG" not in capfd.readouterr().err  # nothing leaked to the terminal


def test_truncation_check() -> None:
    data = encode_jpeg(pattern(2, size=(28, 28)))
    assert jpeg_is_complete(data)
    assert jpeg_is_complete(data + b"\x00\x00")  # padding after EOI
    assert jpeg_is_complete(data + b"camera trailer")  # data after EOI: walk finds EOI
    for cut in (10, len(data) // 2, len(data) - 1):
        assert not jpeg_is_complete(data[:cut])


def test_csv_regression(tiny: TinyProject, caplog: pytest.LogCaptureFixture) -> None:
    params = load_params(tiny.params)
    with caplog.at_level(logging.INFO):
        (meta,) = prepare_datasets(PrepareOptions(params, ("table",))).metas
    assert "auto -> regression" in caplog.text
    cache = load_cache(tiny.cache / "table")
    assert meta.task == "regression" and meta.kind == "tabular"
    assert meta.feature_names == ["a", "b"] and meta.target_name == "y"
    assert cache.train_x.dtype == np.float32 and cache.train_x.shape == (32, 2)
    assert cache.train_y.dtype == np.float32 and meta.n_test == 8
    assert meta.mean == pytest.approx(cache.train_x.mean(axis=0), rel=1e-5)
    assert meta.std == pytest.approx(cache.train_x.std(axis=0), rel=1e-4)
    assert meta.target_mean == pytest.approx(float(cache.train_y.mean()), rel=1e-5)
    assert meta.target_std == pytest.approx(float(cache.train_y.std()), rel=1e-4)
    assert meta.counts == {} and meta.class_names == []
    rows = tiny.csv.read_text().splitlines()
    for i, source in enumerate(meta.test_sources):
        line = int(source.removeprefix("row:"))
        assert float(rows[line - 1].split(",")[2]) == pytest.approx(cache.test_y[i], rel=1e-6)


def test_csv_classification_auto_and_labels(tiny: TinyProject, caplog) -> None:
    make_csv(
        tiny.root / "raw" / "cls.csv",
        ["x1", "x2", "kind"],
        [[i, i * 0.5, i % 3] for i in range(30)],
    )
    make_csv(
        tiny.root / "raw" / "names.csv",
        ["x", "species"],
        [[i, ["setosa", "virginica"][i % 2]] for i in range(20)],
    )
    tiny.write(
        cls={"format": "csv", "path": "raw/cls.csv", "target": "kind"},
        names={
            "format": "csv",
            "path": "raw/names.csv",
            "target": "species",
            "task": "classification",
            "test_fraction": 0.5,
        },
    )
    with caplog.at_level(logging.INFO):
        metas = prepare_datasets(PrepareOptions(load_params(tiny.params))).metas
    assert "auto -> classification" in caplog.text
    cls, names = metas
    assert cls.task == "classification" and cls.class_names == ["0", "1", "2"]
    assert cls.counts["train"] == {"0": 8, "1": 8, "2": 8}
    assert cls.target_mean == 0.0 and cls.target_std == 1.0
    assert names.class_names == ["setosa", "virginica"]
    assert load_cache(tiny.cache / "cls").train_y.dtype == np.int64


def test_csv_features_subset_and_missing_drop(tiny: TinyProject) -> None:
    make_csv(
        tiny.root / "raw" / "holes.csv",
        ["a", "b", "unused", "y"],
        [[i, "" if i == 3 else i, "text", i * 2.0] for i in range(20)],
    )
    tiny.write(
        holes={
            "format": "csv",
            "path": "raw/holes.csv",
            "target": "y",
            "task": "regression",
            "features": ["b", "a"],
            "missing": "drop",
        }
    )
    (meta,) = prepare_datasets(PrepareOptions(load_params(tiny.params))).metas
    assert meta.feature_names == ["b", "a"] and meta.n_train + meta.n_test == 19
    assert "row:5" not in meta.test_sources  # line 5 = the row with the hole


def test_read_csv_table(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    make_csv(path, ["a", "b", "c"], [[1, 2, "x"], [3.5, 4, "y"]])
    table = read_csv_table(path, columns=["b", "a"])
    assert table.dtype == np.float32 and table.tolist() == [[2, 1], [4, 3.5]]
    with pytest.raises(UserError, match=r"t\.csv: no column 'z'"):
        read_csv_table(path, columns=["z"])
    with pytest.raises(UserError, match=r"t\.csv:2:3: column 'c': expected a number, got 'x'"):
        read_csv_table(path, columns=["a", "c"])


def _many_jpegs(folder: Path, n: int = 300) -> list[str]:
    for i in range(n):
        write_jpeg(folder / f"{i}.jpg", pattern(i % 4, seed=i))
    return [str(folder / f"{i}.jpg") for i in range(n)]


def test_helper_process_failure_is_raised(tmp_path: Path, monkeypatch) -> None:
    paths = _many_jpegs(tmp_path)
    parent = os.getpid()
    real = images_mod._Claims.next

    # A helper claims at least once, however late it starts (the parent may have claimed
    # every chunk by then), so failing in the claim makes every helper fail.
    def fails_in_child(self):
        if os.getpid() != parent:
            raise MemoryError("helper ran out of memory")
        return real(self)

    monkeypatch.setattr(images_mod._Claims, "next", fails_in_child)
    with pytest.raises(RuntimeError, match="(?s)a decoding process failed: .*MemoryError"):
        decode_files(paths, channels=1, size=(8, 8), size_policy="reject", workers=2)


def test_no_deadlock_after_parallel_opencv_in_parent(tmp_path: Path) -> None:
    """A forked helper inherits OpenCV's thread pool without its threads; it must not hang."""
    _many_jpegs(tmp_path)
    script = (
        "import sys, cv2, numpy as np\n"
        "from pipeline.data.images import decode_files\n"
        "big = np.zeros((2000, 2000), np.uint8)\n"
        "for _ in range(3): cv2.resize(big, (1000, 1000))  # starts OpenCV's thread pool\n"
        f"paths = [{str(tmp_path)!r} + f'/{{i}}.jpg' for i in range(300)]\n"
        "r = decode_files(paths, channels=1, size=(8, 8), size_policy='reject', workers=2)\n"
        "assert not r.failures and r.images.any()\n"
        "cv2.resize(big, (1000, 1000))  # the parent's own thread pool still works\n"
    )
    _run_script(script)


def _run_script(script: str, timeout: float = 60) -> None:
    """Run ``script`` in a fresh interpreter; fail (instead of hanging) if it does not end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and any helper it forked
        proc.wait()
        pytest.fail(f"hung for {timeout} s:\n{script}")
    assert proc.returncode == 0, err.decode()


def test_many_libjpeg_warnings_do_not_block(tmp_path: Path) -> None:
    """More warnings than a pipe holds (64 KiB) in one chunk: captured, never blocking."""
    _warning_jpeg(tmp_path / "warn.jpg")
    script = (
        "from pipeline.data import images\n"
        f"paths = [{str(tmp_path / 'warn.jpg')!r}] * 3000\n"
        "out = images._shared_array((3000, 1, 28, 28))\n"
        "job = images._Job(paths, out, [(0, 3000)], 1, (28, 28), 'reject')\n"
        "start, digests, failures, warnings = images._run_chunk(job, 0)\n"
        "assert len(digests) == 3000 and len(failures) + len(warnings) == 3000\n"
    )
    _run_script(script)
