"""Issue 11 rows for the data stage: values that do not fit, too little data, huge images,
``kill -9`` while decoding or writing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import pipeline.data.images as images_mod
from pipeline.atomic import UNOWNED_STALE_S
from pipeline.atomic import owner as _owner
from pipeline.data import load_cache, remove_stale_staging, staged_dir
from pipeline.data._header import image_pixels
from tests.conftest import make_image_cache
from tests.data.conftest import TinyProject
from tests.data.helpers import (
    encode_jpeg,
    jpeg_dataset,
    make_csv,
    make_jpeg_labels,
    pattern,
    regression_rows,
    run_prepare,
    snapshot,
    write_jpeg,
)

REPO = Path(__file__).resolve().parents[2]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one ``error:`` line on stderr (log lines may come before it), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# --------------------------------------------------------------------------------------------
# Numbers that do not fit float32
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "where"),
    [
        ("a", "1e39", r":5:1: column 'a'"),
        ("y", "1e308", r":5:3: column 'y'"),
        ("b", "-3.5e38", r":5:2: column 'b'"),
    ],
)
def test_csv_value_beyond_float32_is_refused(
    tiny: TinyProject, capsys, column: str, value: str, where: str
) -> None:
    assert run_prepare(tiny.params) == 0
    before = snapshot(tiny.cache)
    rows = regression_rows()
    rows[3][["a", "b", "y"].index(column)] = value  # data row 4 = line 5
    make_csv(tiny.csv, ["a", "b", "y"], rows)
    assert run_prepare(tiny.params, "table") == 2
    err = _one_error_line(capsys)
    assert re.search(rf"table\.csv{where}: '{re.escape(value)}' does not fit float32", err), err
    assert snapshot(tiny.cache) == before


def test_classification_target_beyond_float32_is_refused(tiny: TinyProject, capsys) -> None:
    rows: list[list[object]] = [[i, i % 2] for i in range(20)]
    rows[7][1] = "1e39"
    make_csv(tiny.csv, ["a", "y"], rows)
    assert run_prepare(tiny.params, "table") == 2
    assert re.search(
        r"table\.csv:9:2: column 'y': '1e39' does not fit float32", _one_error_line(capsys)
    )


def test_meta_json_is_strict(tmp_path: Path) -> None:
    meta = make_image_cache(tmp_path / "c", n_train=12, n_test=6)
    json.loads((tmp_path / "c" / "meta.json").read_text(), parse_constant=_no_constants)
    bad = type(meta)(**{**meta.__dict__, "target_std": float("inf")})
    with pytest.raises(ValueError, match="not JSON compliant"):
        bad.to_json()


def _no_constants(name: str) -> None:
    raise AssertionError(f"meta.json holds {name}")


# --------------------------------------------------------------------------------------------
# Too little data
# --------------------------------------------------------------------------------------------
def test_one_class_target_is_refused(tiny: TinyProject, capsys) -> None:
    make_csv(tiny.csv, ["a", "y"], [[i, "cat"] for i in range(20)])
    assert run_prepare(tiny.params, "table") == 2
    err = _one_error_line(capsys)
    assert "datasets.table: 1 class (only 'cat'); expected at least two classes" in err


def test_one_class_image_dataset_is_refused(tiny: TinyProject, capsys) -> None:
    make_jpeg_labels(tiny.root / "raw" / "mono", classes=1)
    tiny.write(mono=jpeg_dataset(root="raw/mono"))
    assert run_prepare(tiny.params, "mono") == 2
    assert "expected at least two classes" in _one_error_line(capsys)


def test_three_rows_are_refused(tiny: TinyProject, capsys) -> None:
    make_csv(tiny.csv, ["a", "b", "y"], regression_rows(3))
    assert run_prepare(tiny.params, "table") == 2
    err = _one_error_line(capsys)
    assert (
        "datasets.table: 2 training item(s) after the test split (1 test); expected at "
        "least 5" in err
    )


# --------------------------------------------------------------------------------------------
# The pixel limit, from the header
# --------------------------------------------------------------------------------------------
def _with_declared_size(data: bytes, height: int, width: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims ``height`` x ``width``; the scan stays small."""
    sof = data.index(b"\xff\xc0")
    out = bytearray(data)
    out[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


def test_image_pixels_reads_headers(tmp_path: Path) -> None:
    img = pattern(1, size=(30, 50))
    assert image_pixels(encode_jpeg(img)) == (50, 30)
    ok, png = cv2.imencode(".png", img)
    assert image_pixels(png.tobytes()) == (50, 30)
    ok, progressive = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_pixels(progressive.tobytes()) == (50, 30)
    ok, bmp = cv2.imencode(".bmp", img)
    assert image_pixels(bmp.tobytes()) == (50, 30)  # other formats: Pillow reads the header
    assert image_pixels(b"\xff\xd8") is None and image_pixels(b"junk") is None


def test_huge_jpeg_is_refused_before_decoding(tiny: TinyProject, capsys, monkeypatch) -> None:
    path = tiny.raw / "train" / "00003.jpg"
    path.write_bytes(_with_declared_size(path.read_bytes(), 20000, 20000))
    real = cv2.imdecode
    seen: list[bytes] = []

    def spy(buf, flags):  # no decode of a file whose header is over the limit
        seen.append(bytes(buf))
        return real(buf, flags)

    monkeypatch.setattr(images_mod.cv2, "imdecode", spy)
    assert run_prepare(tiny.params, "tiny") == 2
    err = _one_error_line(capsys)
    assert re.search(
        r"train/00003\.jpg .*: is 20000x20000 \(HxW, 400,000,000 pixels\); "
        r"expected at most 50,000,000 pixels",
        err,
    ), err
    assert path.read_bytes() not in seen


def test_pixel_limit_is_an_argument(tmp_path: Path) -> None:
    for i in range(3):
        write_jpeg(tmp_path / f"{i}.jpg", pattern(0, size=(10, 10 + i)))
    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    result = images_mod.decode_files(
        paths, channels=1, size=(8, 8), size_policy="resize", workers=1, max_pixels=105
    )
    assert [(f.index, f.kind) for f in result.failures] == [(1, "too_large"), (2, "too_large")]


# --------------------------------------------------------------------------------------------
# kill -9 while decoding: the helpers die with their parent
# --------------------------------------------------------------------------------------------
_SLOW_PREPARE = """
import os, sys, time
import pipeline.data.images as images
real = images._run_chunk
def slow(job, k):
    with open(sys.argv[2], "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(60)  # long enough that a surviving helper is seen
    return real(job, k)
images._run_chunk = slow
from pipeline import prepare
sys.exit(prepare.main(["--params", sys.argv[1], "--dataset", "many"]))
"""


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_kill_9_during_decode_takes_the_helpers_along(tiny: TinyProject, tmp_path) -> None:
    make_jpeg_labels(tiny.root / "raw" / "many", parts={"train": 300})
    tiny.write(
        many=jpeg_dataset(
            root="raw/many", parts={"train": {"images": "train", "labels": "train_labels.txt"}}
        )
    )
    text = tiny.params.read_text().replace("workers: 1", "workers: 3")
    tiny.params.write_text(text)
    pids_file = tmp_path / "pids"
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(_SLOW_PREPARE))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny.params), str(pids_file)], cwd=tiny.root, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = {int(p) for p in pids_file.read_text().split()} if pids_file.exists() else set()
            if len(pids - {proc.pid}) >= 2:
                break
            time.sleep(0.05)
        helpers = pids - {proc.pid}
        assert len(helpers) >= 2, "the helpers never started decoding"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_running(p) for p in helpers):
            time.sleep(0.05)
        survivors = [p for p in helpers if _running(p)]
        assert not survivors, f"decoder helpers outlived their parent: {survivors}"
    finally:
        proc.kill()
        for pid in pids_file.read_text().split() if pids_file.exists() else []:
            if int(pid) != proc.pid and _running(int(pid)):
                os.kill(int(pid), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# kill -9 while writing: the next run removes the staging folders it left
# --------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _staging(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "train_x.npy").write_bytes(b"x" * 1000)
    return folder


def test_next_prepare_removes_stale_staging(tiny: TinyProject) -> None:
    assert run_prepare(tiny.params) == 0
    host = _owner().rpartition("-")[0]
    dead = _staging(tiny.cache, f".tiny.tmp-{host}-{_dead_pid()}-abc123")
    dead_old = _staging(tiny.cache, f".tiny.old-{host}-{_dead_pid()}")
    unowned = _staging(tiny.cache, ".tiny.tmp-k2j_9x0q")
    os.utime(unowned, (time.time() - UNOWNED_STALE_S - 10,) * 2)
    live = _staging(tiny.cache, f".tiny.tmp-{host}-{os.getppid()}-live00")
    elsewhere = _staging(tiny.cache, f".tiny.tmp-otherhost-{_dead_pid()}-zz")
    fresh_unowned = _staging(tiny.cache, ".tiny.tmp-fresh_01")
    other_dataset = _staging(tiny.cache, f".table.tmp-{host}-{_dead_pid()}-q")
    assert run_prepare(tiny.params, "tiny") == 0
    assert not dead.exists() and not dead_old.exists() and not unowned.exists()
    assert live.exists() and elsewhere.exists() and fresh_unowned.exists()
    assert other_dataset.exists()  # only the folder being written is swept
    assert load_cache(tiny.cache / "tiny").meta.n_train > 0


def test_old_folder_is_put_back_when_killed_between_renames(tmp_path: Path) -> None:
    host = _owner().rpartition("-")[0]
    old = _staging(tmp_path, f".d.old-{host}-{_dead_pid()}")
    assert remove_stale_staging(tmp_path / "d") == []
    assert not old.exists() and (tmp_path / "d" / "train_x.npy").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses fork and SIGKILL")
def test_kill_9_during_write_then_rerun(tmp_path: Path) -> None:
    pid = os.fork()
    if pid == 0:  # the child starts a write and is killed inside it
        try:
            with staged_dir(tmp_path / "d") as tmp:
                (tmp / "part").write_bytes(np.zeros(1000, np.uint8).tobytes())
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    assert [p.name.startswith(".d.tmp-") for p in tmp_path.iterdir()] == [True]
    with staged_dir(tmp_path / "d") as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


# --------------------------------------------------------------------------------------------
# Found by the fuzz test
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["100000", "99999999999999999999", "9" * 5000])
def test_huge_label_is_refused(tiny: TinyProject, capsys, label: str) -> None:
    # Without declared classes, ids 0..max label are the classes: a label of 10**20 used to
    # build that many (and run out of memory); 5,000 digits hit int()'s digit limit.
    lines = (tiny.raw / "train_labels.txt").read_text().splitlines()
    lines[2] = f"00002.jpg {label}"
    (tiny.raw / "train_labels.txt").write_text("\n".join(lines) + "\n")
    assert run_prepare(tiny.params, "tiny") == 2
    err = _one_error_line(capsys)
    assert re.search(
        r"train_labels\.txt:3: label '?\d+'? .*is too large; expected a class id", err
    )


def _set_prepare(params: Path, **values: int) -> None:
    raw = yaml.safe_load(params.read_text())
    raw["prepare"].update(values)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_limits_are_settings_in_params_yaml(tiny: TinyProject, capsys) -> None:
    _set_prepare(tiny.params, max_image_pixels=10)
    assert run_prepare(tiny.params, "tiny") == 2
    assert "expected at most 10 pixels (prepare.max_image_pixels" in _one_error_line(capsys)
    _set_prepare(tiny.params, max_image_pixels=50_000_000, min_train_items=10_000)
    assert run_prepare(tiny.params, "tiny") == 2
    assert "expected at least 10000 (prepare.min_train_items)" in _one_error_line(capsys)
