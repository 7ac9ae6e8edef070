"""Atomic cache writes: a crash at any point leaves the old cache, and no temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import pipeline.data.cache as cache_mod
import pipeline.data.stage as stage_mod
from pipeline.data.cache import load_cache, staged_dir, write_cache
from tests.conftest import make_image_cache
from tests.data.conftest import TinyProject
from tests.data.helpers import run_prepare, snapshot


class Crash(Exception):
    pass


def _arrays(value: int) -> dict[str, np.ndarray]:
    x = np.full((4, 1, 2, 2), value, np.uint8)
    y = np.zeros(4, np.int64)
    return {"train_x": x, "train_y": y, "test_x": x, "test_y": y}


def test_crash_before_rename_keeps_old_cache(tmp_path: Path) -> None:
    meta = make_image_cache(tmp_path / "c", n_train=12, n_test=6)
    before = snapshot(tmp_path / "c")

    def crash(tmp: Path) -> None:
        assert (tmp / "meta.json").is_file()  # the new cache was complete, then we "died"
        raise Crash

    with pytest.raises(Crash):
        write_cache(tmp_path / "c", meta, _arrays(7), _before_rename=crash)
    assert snapshot(tmp_path / "c") == before
    assert os.listdir(tmp_path) == ["c"]


def test_crash_mid_write_keeps_old_cache(tmp_path: Path, monkeypatch) -> None:
    meta = make_image_cache(tmp_path / "c", n_train=12, n_test=6)
    before = snapshot(tmp_path / "c")
    real_save = np.save
    calls = []

    def save_then_die(fh, arr, **kw):  # the second array's write is interrupted
        calls.append(1)
        if len(calls) == 2:
            fh.write(b"half")
            raise KeyboardInterrupt
        real_save(fh, arr, **kw)

    monkeypatch.setattr(cache_mod.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_cache(tmp_path / "c", meta, _arrays(7))
    monkeypatch.undo()
    assert snapshot(tmp_path / "c") == before
    assert os.listdir(tmp_path) == ["c"]
    assert load_cache(tmp_path / "c").meta == meta


def test_failed_swap_puts_the_old_folder_back(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".d.tmp-"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"), staged_dir(tmp_path / "d") as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(tmp_path) == ["d"]
    assert (tmp_path / "d" / "old.txt").read_text() == "old"


def test_interrupted_prepare_keeps_old_cache(tiny: TinyProject, monkeypatch, capsys) -> None:
    assert run_prepare(tiny.params) == 0
    before = snapshot(tiny.cache)

    def interrupted(folder, meta, arrays):
        def die(tmp: Path) -> None:
            raise KeyboardInterrupt

        write_cache(folder, meta, arrays, _before_rename=die)

    monkeypatch.setattr(stage_mod, "write_cache", interrupted)
    (tiny.raw / "train" / "00000.jpg").unlink()  # the new cache would differ
    (tiny.raw / "train_labels.txt").write_text(
        "".join(f"{i:05d}.jpg {i % 3}\n" for i in range(1, 24))
    )
    assert run_prepare(tiny.params) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
    assert snapshot(tiny.cache) == before
    assert sorted(os.listdir(tiny.cache)) == ["table", "tiny"]


def test_staged_dir_has_normal_permissions(tmp_path: Path) -> None:
    with staged_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
