"""Each bad input stops prepare: exit code 2, one line naming the file and line/key and what was
expected, no traceback, and the previous cache untouched. ``on_bad_file: skip`` skips instead."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable

import pytest
import yaml

from pipeline.config import load_params
from pipeline.data import PrepareOptions, load_cache
from pipeline.data import run_prepare as prepare_datasets  # helpers.run_prepare is main()
from tests.data.conftest import TinyProject
from tests.data.helpers import (
    jpeg_dataset,
    make_csv,
    make_image_folder,
    pattern,
    run_prepare,
    snapshot,
    write_jpeg,
    write_labels,
)

_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")


def _labels(t: TinyProject, *lines: str) -> None:
    """train_labels.txt with ``lines`` first, then the usual entries from 00003.jpg on."""
    rest = [f"{i:05d}.jpg {i % 3}" for i in range(3, 24)]
    write_labels(t.raw / "train_labels.txt", [*lines, *rest])


def _params(t: TinyProject, edit: Callable[[dict], None]) -> None:
    raw = yaml.safe_load(t.params.read_text())
    edit(raw)
    t.params.write_text(yaml.safe_dump(raw, sort_keys=False))


def _corrupt(t: TinyProject) -> None:
    """A JPEG whose header tables are overwritten: complete (ends with EOI) but undecodable."""
    path = t.raw / "train" / "00005.jpg"
    data = bytearray(path.read_bytes())
    data[2:200] = b"\x5a" * 198
    path.write_bytes(bytes(data))


def _truncated(t: TinyProject) -> None:
    path = t.raw / "train" / "00005.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_channels(t: TinyProject) -> None:
    write_jpeg(t.raw / "train" / "00005.jpg", pattern(2, channels=3))


def _wrong_size(t: TinyProject) -> None:
    write_jpeg(t.raw / "train" / "00005.jpg", pattern(2, size=(8, 9)))


def _reject(t: TinyProject) -> None:
    _params(t, lambda raw: raw["datasets"]["tiny"]["image"].update(size_policy="reject"))


def _empty_folder(t: TinyProject) -> None:
    for p in (t.raw / "val").iterdir():
        p.unlink()


def _empty_class_folder(t: TinyProject) -> None:
    make_image_folder(t.root / "raw" / "pets")
    for p in (t.root / "raw" / "pets" / "dog").iterdir():
        p.unlink()
    _params(
        t,
        lambda raw: (
            raw["datasets"]["tiny"].clear()
            or raw["datasets"]["tiny"].update({"format": "image_folder", "root": "raw/pets"})
        ),
    )


def _csv_rows(t: TinyProject, header: list[str], rows: list[list]) -> None:
    make_csv(t.csv, header, rows)


# (name, break the input, stderr must match, cache to check)
CASES: list[tuple[str, Callable[[TinyProject], None], str, str]] = [
    ("corrupt jpeg", _corrupt, r"train/00005\.jpg.*: corrupt image .*expected a JPEG", "tiny"),
    (
        "truncated jpeg",
        _truncated,
        r"train/00005\.jpg.*: truncated JPEG.*expected a complete",
        "tiny",
    ),
    (
        "one field",
        lambda t: _labels(t, "00000.jpg 0", "00001.jpg", "00002.jpg 2"),
        r"train_labels\.txt:2: 1 field\(s\) in '00001\.jpg'; expected 'NAME LABEL'",
        "tiny",
    ),
    (
        "non-integer label",
        lambda t: _labels(t, "00000.jpg 0", "00001.jpg one", "00002.jpg 2"),
        r"train_labels\.txt:2: label 'one' of '00001\.jpg' is not a non-negative integer",
        "tiny",
    ),
    (
        "negative label",
        lambda t: _labels(t, "00000.jpg -1", "00001.jpg 1", "00002.jpg 2"),
        r"train_labels\.txt:1: label '-1' .*expected a class id",
        "tiny",
    ),
    (
        "missing image",
        lambda t: _labels(t, "00000.jpg 0", "00001.jpg 1", "gone.jpg 2"),
        r"train_labels\.txt:3: image 'gone\.jpg' not found in .*train; expected an existing file",
        "tiny",
    ),
    (
        "escape",
        lambda t: _labels(t, "00000.jpg 0", "../val/00001.jpg 1", "00002.jpg 2"),
        r"train_labels\.txt:2: '\.\./val/00001\.jpg' escapes the images folder",
        "tiny",
    ),
    (
        "absolute path",
        lambda t: _labels(t, "00000.jpg 0", f"{t.raw}/val/00001.jpg 1"),
        r"train_labels\.txt:2: '/.*/val/00001\.jpg' is an absolute path; "
        r"expected a file name inside",
        "tiny",
    ),
    (
        "duplicate",
        lambda t: _labels(t, "00000.jpg 0", "00001.jpg 1", "00000.jpg 0"),
        r"train_labels\.txt:3: duplicate name '00000\.jpg' \(first on line 1\)",
        "tiny",
    ),
    (
        "empty folder",
        _empty_folder,
        r"tiny/val: empty folder \(datasets\.tiny\.parts\.val\.images\); expected JPEG files",
        "tiny",
    ),
    (
        "empty class folder",
        _empty_class_folder,
        r"pets/dog: empty folder; expected JPEG files",
        "tiny",
    ),
    (
        "wrong size",
        lambda t: (_reject(t), _wrong_size(t)),
        r"train/00005\.jpg.*: is 8x9 \(HxW\); expected 8x8 "
        r"\(image\.size, with size_policy: reject\)",
        "tiny",
    ),
    (
        "csv without target",
        lambda t: _csv_rows(t, ["a", "b", "z"], [[1, 2, 3]] * 5),
        r"table\.csv: no target column 'y' \(datasets\.table\.target\); the header has: 'a', 'b'",
        "table",
    ),
    (
        "csv non-numeric",
        lambda t: _csv_rows(t, ["a", "b", "y"], [[1, 2, 3], [4, "five", 6]] * 3),
        r"table\.csv:3:2: column 'b': expected a number, got 'five'",
        "table",
    ),
    (
        "csv missing value",
        lambda t: _csv_rows(t, ["a", "b", "y"], [[1, 2, 3], [4, "", 6]] * 3),
        r"table\.csv:3:2: column 'b' has no value \(''\); expected a number "
        r"\(set datasets\.table\.missing: drop",
        "table",
    ),
    (
        "csv ragged row",
        lambda t: _csv_rows(t, ["a", "b", "y"], [[1, 2, 3], [4, 6]]),
        r"table\.csv:3: 2 fields; expected 3 as in the header",
        "table",
    ),
    (
        "unknown format",
        lambda t: _params(t, lambda r: r["datasets"]["tiny"].update(format="jpeg_folder")),
        r"params\.yaml:\d+: datasets\.tiny\.format: unknown dataset format 'jpeg_folder'",
        "tiny",
    ),
    (
        "typo'd key",
        lambda t: _params(t, lambda r: r["datasets"]["tiny"].update(imgae={"channels": 1})),
        r"params\.yaml:\d+: datasets\.tiny\.imgae: unknown key \(did you mean 'image'\?\)",
        "tiny",
    ),
    (
        "typo'd prepare key",
        lambda t: _params(t, lambda r: r["prepare"].update(sed=1)),
        r"params\.yaml:\d+: prepare\.sed: unknown key \(did you mean 'seed'\?\)",
        "tiny",
    ),
]


@pytest.mark.parametrize(
    "breaks, expected, dataset", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_stops_prepare(
    tiny: TinyProject,
    capsys: pytest.CaptureFixture[str],
    breaks: Callable[[TinyProject], None],
    expected: str,
    dataset: str,
) -> None:
    assert run_prepare(tiny.params) == 0
    before = snapshot(tiny.cache)
    assert f"{dataset}/meta.json" in before
    capsys.readouterr()

    breaks(tiny)
    assert run_prepare(tiny.params) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert all(_LOG_LINE.match(line) or line in errors for line in err.splitlines()), err
    assert re.search(expected, errors[0]), errors[0]
    assert snapshot(tiny.cache) == before  # the previous caches are untouched
    assert sorted(os.listdir(tiny.cache)) == ["table", "tiny"]  # no temp folders left


def test_reject_policy_converts_channels(tiny: TinyProject) -> None:
    # size_policy: reject refuses other sizes only; channels are converted as the README says.
    _reject(tiny)
    _wrong_channels(tiny)
    assert run_prepare(tiny.params) == 0
    assert load_cache(tiny.cache / "tiny").train_x.shape[1:] == (1, 8, 8)


def test_bad_file_skip_policy(tiny: TinyProject, caplog: pytest.LogCaptureFixture) -> None:
    _corrupt(tiny)
    _labels(tiny, "00000.jpg 0", "00001.jpg 1", "gone.jpg 2")
    tiny.write(tiny=jpeg_dataset(image={"on_bad_file": "skip"}))
    with caplog.at_level(logging.WARNING):
        prepare_datasets(PrepareOptions(load_params(tiny.params), ("tiny",)))
    meta = json.loads((tiny.cache / "tiny" / "meta.json").read_text())
    skipped = {s["file"]: s for s in meta["skipped"]}
    assert set(skipped) == {"train/00005.jpg", "train/gone.jpg"}
    assert skipped["train/gone.jpg"]["kind"] == "missing"
    assert skipped["train/00005.jpg"]["kind"] == "corrupt"
    assert meta["n_train"] + meta["n_test"] == 33 - 2
    assert "skipped 2 bad file(s)" in caplog.text and "train/00005.jpg" in caplog.text


def test_skip_policy_still_rejects_wrong_size(tiny: TinyProject, capsys) -> None:
    _wrong_size(tiny)
    tiny.write(tiny=jpeg_dataset(image={"on_bad_file": "skip", "size_policy": "reject"}))
    assert run_prepare(tiny.params, "tiny") == 2
    assert "expected 8x8" in capsys.readouterr().err
    assert not (tiny.cache / "tiny").exists()


def test_symlink_out_of_the_folder_is_rejected(tiny: TinyProject, capsys) -> None:
    outside = tiny.root / "elsewhere.jpg"
    write_jpeg(outside, pattern(0))
    (tiny.raw / "train" / "00001.jpg").unlink()
    (tiny.raw / "train" / "00001.jpg").symlink_to(outside)
    assert run_prepare(tiny.params, "tiny") == 2
    assert "'00001.jpg' resolves outside the images folder" in capsys.readouterr().err


def test_unknown_dataset_name(tiny: TinyProject, capsys) -> None:
    assert run_prepare(tiny.params, "tiyn") == 2
    assert "unknown dataset 'tiyn'" in capsys.readouterr().err


def test_every_bad_file_counted(tiny: TinyProject, capsys) -> None:
    _corrupt(tiny)
    other = tiny.raw / "val" / "00002.jpg"
    other.write_bytes(other.read_bytes()[:50])
    assert run_prepare(tiny.params, "tiny") == 2
    assert "(and 1 more bad file(s))" in capsys.readouterr().err
    assert not (tiny.cache / "tiny").exists()


def test_same_image_in_two_parts(tiny: TinyProject, capsys) -> None:
    entry = jpeg_dataset()
    entry["parts"]["again"] = {"images": "train", "labels": "train_labels.txt"}
    tiny.write(tiny=entry)
    assert run_prepare(tiny.params, "tiny") == 2
    err = capsys.readouterr().err
    assert "train_labels.txt:1: '00000.jpg' is also listed at " in err
    assert "expected each image in one part only" in err
