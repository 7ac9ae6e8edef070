"""Atomic writes: a failure mid-write keeps the old file and leaves no temporary file; the
next command sweeps what killed writes left, and probes its folders before it works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.atomic import (
    UNOWNED_STALE_S,
    atomic_open,
    check_writable,
    owner,
    remove_stale_temps,
    write_bytes_atomic,
    write_json_atomic,
    write_set,
)
from pipeline.errors import UserError
from tests.conftest import read_only
from tests.data.helpers import snapshot


def test_writes_create_folders_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    write_json_atomic(target, {"b": 1, "a": 2}, sort_keys=True)
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(target, "w") as fh:
            fh.write('{"version": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_interrupt_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as fh:
            fh.write(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


# --------------------------------------------------------------------------------------------
# What killed writes leave, swept by the next command
# --------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_swept_live_ones_kept(tmp_path: Path) -> None:
    host = owner().rpartition("-")[0]
    dead = tmp_path / f".metrics.json.tmp-{host}-{_dead_pid()}-k2j_9x0q"
    live = tmp_path / f".metrics.json.tmp-{host}-{os.getppid()}-abcdefgh"
    other_host = tmp_path / f".metrics.json.tmp-elsewhere-{_dead_pid()}-abcdefgh"
    old_format = tmp_path / ".confusion.png.ab12cd34.tmp"  # made before names had an owner
    fresh_old_format = tmp_path / ".curves.csv.zz12cd34.tmp"
    mine = tmp_path / "notes.tmp"  # not a name this module makes
    for path in (dead, live, other_host, old_format, fresh_old_format, mine):
        path.write_bytes(b"half")
    os.utime(old_format, (time.time() - UNOWNED_STALE_S - 10,) * 2)
    assert sorted(remove_stale_temps(tmp_path)) == sorted([dead, old_format])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, other_host, fresh_old_format, mine))


def test_a_set_is_written_whole(tmp_path: Path) -> None:
    write_set(tmp_path, {tmp_path / "a.json": b"1", tmp_path / "plots" / "b.csv": b"2"})
    (tmp_path / "plots" / "old.png").write_bytes(b"x")
    write_set(tmp_path, {tmp_path / "a.json": b"3"}, remove=[tmp_path / "plots" / "old.png"])
    assert snapshot(tmp_path) == {"a.json": b"3", "plots/b.csv": b"2"}
    with pytest.raises(ValueError, match="not inside"):
        write_set(tmp_path / "plots", {tmp_path / "a.json": b"4"})


@pytest.mark.parametrize("manifest", [True, False])
def test_a_set_cut_off_is_finished_or_discarded(tmp_path: Path, manifest: bool) -> None:
    """A set killed after its manifest is finished by the next writer; before it, dropped."""
    (tmp_path / "a.json").write_bytes(b"old a")
    (tmp_path / "b.csv").write_bytes(b"old b")
    staging = tmp_path / f".write-set.tmp-{owner().rpartition('-')[0]}-{_dead_pid()}-q1w2e3r4"
    staging.mkdir()
    (staging / "1").write_bytes(b"new b")  # "0" (a.json) was renamed before the kill
    (tmp_path / "a.json").write_bytes(b"new a")
    if manifest:
        (staging / "MANIFEST.json").write_text(
            json.dumps({"moves": [["0", "a.json"], ["1", "b.csv"]], "remove": []}))
    check_writable({tmp_path: "the test's files"})
    expected = b"new b" if manifest else b"old b"
    assert snapshot(tmp_path) == {"a.json": b"new a", "b.csv": expected}


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    with read_only(tmp_path / "reports"), pytest.raises(UserError) as caught:
        check_writable({tmp_path / "reports": "the reports (evaluate.reports_dir)"})
    assert re.fullmatch(
        rf"{tmp_path / 'reports'}: not writable \((Permission denied|Operation not permitted)\); "
        r"expected a folder this user can write, for the reports \(evaluate\.reports_dir\)",
        str(caught.value))
    with pytest.raises(UserError, match="not writable"):  # a file where a folder should be
        (tmp_path / "file").write_text("x")
        check_writable({tmp_path / "file" / "sub": "x"})
    check_writable({tmp_path / "new" / "deep": "x"})  # made when missing
    made = tmp_path / "new" / "deep"
    assert made.is_dir() and list(made.iterdir()) == []  # the probe leaves nothing
