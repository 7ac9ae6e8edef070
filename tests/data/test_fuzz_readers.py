"""Malformed input for every reader, through the command: ``prepare.main([...])``.

The contract, for every input: exit code 0 (the input was valid after all: the cache is strict
JSON and finite) or 2 with one ``error:`` line naming the file (or the dataset's key) and no
traceback, and the previous cache byte-identical. Inputs: random bytes, a small valid file cut
at every byte, extreme numbers, odd encodings (UTF-16, BOM, NUL, CR/CRLF, Latin-1).

The default run has a fixed seed and a small example budget; ``-m slow`` runs many more.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import prepare
from pipeline.data import load_cache
from tests.data.helpers import (
    encode_jpeg,
    jpeg_dataset,
    make_csv,
    make_jpeg_labels,
    pattern,
    regression_rows,
    snapshot,
    write_params,
)

REPO = Path(__file__).resolve().parents[2]
FAST = settings(
    derandomize=True,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
SLOW = settings(FAST, max_examples=1000)


@dataclass(frozen=True)
class Project:
    root: Path
    params: Path
    csv: Path
    labels: Path
    image: Path
    valid_csv: bytes
    valid_labels: bytes
    valid_image: bytes

    def restore(self) -> None:
        self.csv.write_bytes(self.valid_csv)
        self.labels.write_bytes(self.valid_labels)
        self.image.write_bytes(self.valid_image)


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    make_jpeg_labels(root / "raw" / "tiny", parts={"train": 12, "val": 6})
    csv = root / "raw" / "table.csv"
    make_csv(csv, ["a", "b", "y"], regression_rows(16))
    datasets = {
        "tiny": jpeg_dataset(),
        "table": {"format": "csv", "path": "raw/table.csv", "target": "y", "task": "auto"},
    }
    params = write_params(root, datasets)
    labels = root / "raw" / "tiny" / "train_labels.txt"
    image = root / "raw" / "tiny" / "train" / "00004.jpg"
    p = Project(
        root=root,
        params=params,
        csv=csv,
        labels=labels,
        image=image,
        valid_csv=csv.read_bytes(),
        valid_labels=labels.read_bytes(),
        valid_image=image.read_bytes(),
    )
    assert _prepare(p, "tiny")[0] == 0 and _prepare(p, "table")[0] == 0
    return p


def _prepare(p: Project, dataset: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = prepare.main(["--params", str(p.params), "--dataset", dataset])
    return code, err.getvalue()


def _check(p: Project, dataset: str, names: tuple[str, ...]) -> None:
    """Run prepare on the current raw files and assert the contract."""
    cache = p.root / "cache" / dataset
    before = snapshot(cache)
    code, err = _prepare(p, dataset)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 0:
        assert not errors, err
        meta = json.loads((cache / "meta.json").read_text(), parse_constant=_no_constant)
        loaded = load_cache(cache)
        assert meta["n_train"] == len(loaded.train_y)
        if loaded.train_x.dtype == np.float32:
            assert np.isfinite(loaded.train_x).all() and np.isfinite(loaded.test_x).all()
        return
    assert code == 2, err
    assert len(errors) == 1, err
    assert any(name in errors[0] for name in names), errors[0]
    assert snapshot(cache) == before, "a failed prepare changed the cache"


def _no_constant(name: str) -> None:
    raise AssertionError(f"meta.json holds {name}")


def _csv_names(p: Project) -> tuple[str, ...]:
    return (str(p.csv), "datasets.table")


def _image_names(p: Project) -> tuple[str, ...]:
    return (str(p.root / "raw" / "tiny"), "datasets.tiny")


def _with(p: Project, path: Path, data: bytes, dataset: str, names: tuple[str, ...]) -> None:
    p.restore()
    path.write_bytes(data)
    try:
        _check(p, dataset, names)
    finally:
        p.restore()


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
EXTREME_CELLS = [
    "1e39",
    "-1e39",
    "1e308",
    "-1e308",
    "1e309",
    "3.4028235e38",
    "3.5e38",
    "1e-320",
    "5e-324",
    "nan",
    "NaN",
    "inf",
    "-Infinity",
    "1,234",
    "0x10",
    "1_000",
    "\u22121",
    "\u0661\u0662",
    "",
    " ",
    "+1",
    "1e",
    ".",
    "-",
    "1.2.3",
    "\x00",
    '"1"',
    "'1'",
    "9" * 400,
    "1e-999999",
]


def _encodings(text: str) -> list[bytes]:
    return [
        text.encode("utf-16"),
        text.encode("utf-16-le"),
        text.encode("utf-32"),
        b"\xef\xbb\xbf" + text.encode(),
        b"\xef\xbb\xbf\xef\xbb\xbf" + text.encode(),
        text.replace("\n", "\r\n").encode(),
        text.replace("\n", "\r").encode(),
        text.encode().replace(b"\n", b"\x00\n", 1),
        text.encode().replace(b",", b"\x00", 1),
        text.replace("a", "\u00e9", 1).encode("latin-1"),
        text.replace("\n", "\u2028").encode(),
        b"\x00" * 64,
        b"",
        b"\n\n\n",
    ]


def _replace_cell(valid: bytes, row: int, col: int, cell: str) -> bytes:
    lines = valid.decode().splitlines()
    cells = lines[row].split(",")
    cells[col % len(cells)] = cell
    lines[row] = ",".join(cells)
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def _jpeg_with_size(height: int, width: int) -> bytes:
    data = bytearray(encode_jpeg(pattern(1)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _png_with_size(height: int, width: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", pattern(1))
    data = bytearray(buf.tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


ODD_IMAGES = [
    b"",
    b"\xff\xd8",
    b"\xff\xd8\xff\xd9",
    b"\x89PNG\r\n\x1a\n",
    _jpeg_with_size(0, 0),
    _jpeg_with_size(65535, 65535),
    _jpeg_with_size(1, 65535),
    _png_with_size(0, 0),
    _png_with_size(100_000, 100_000),
    _png_with_size(2**31 - 1, 2**31 - 1),
    b"BM" + b"\x00" * 60,
    b"GIF89a" + b"\x00" * 20,
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
]


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------
def test_csv_cut_at_every_byte(proj: Project) -> None:
    for n in range(len(proj.valid_csv)):
        _with(proj, proj.csv, proj.valid_csv[:n], "table", _csv_names(proj))


@pytest.mark.parametrize("index", range(14))
def test_csv_odd_encodings(proj: Project, index: int) -> None:
    data = _encodings(proj.valid_csv.decode())[index]
    _with(proj, proj.csv, data, "table", _csv_names(proj))


def test_csv_extreme_cells(proj: Project) -> None:
    rows = len(proj.valid_csv.decode().splitlines())
    for k, cell in enumerate(EXTREME_CELLS):
        for col in range(3):
            data = _replace_cell(proj.valid_csv, 1 + k % (rows - 1), col, cell)
            _with(proj, proj.csv, data, "table", _csv_names(proj))


def _csv_property(proj: Project, data: bytes) -> None:
    _with(proj, proj.csv, data, "table", _csv_names(proj))


def _csv_inputs() -> st.SearchStrategy[bytes]:
    cells = st.one_of(
        st.sampled_from(EXTREME_CELLS),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=8),
    )
    grid = st.lists(st.lists(cells, min_size=1, max_size=4), min_size=1, max_size=12)
    return st.one_of(
        st.binary(max_size=300),
        grid.map(lambda rows: "a,b,y\n" + "".join(",".join(r) + "\n" for r in rows)).map(
            lambda t: t.encode("utf-8", "surrogatepass")
        ),
    )


@FAST
@given(data=_csv_inputs())
def test_csv_fuzz(proj: Project, data: bytes) -> None:
    _csv_property(proj, data)


@pytest.mark.slow
@SLOW
@given(data=_csv_inputs())
def test_csv_fuzz_long(proj: Project, data: bytes) -> None:
    _csv_property(proj, data)


# --------------------------------------------------------------------------------------------
# Labels files
# --------------------------------------------------------------------------------------------
def _labels_inputs(valid: bytes) -> st.SearchStrategy[bytes]:
    lines = st.lists(
        st.one_of(
            st.sampled_from(valid.decode().splitlines()),
            st.text(max_size=20),
            st.sampled_from(
                [
                    "00000.jpg -1",
                    "00000.jpg 1e39",
                    "../x.jpg 0",
                    "/etc/passwd 0",
                    "00000.jpg",
                    "00000.jpg 0 0",
                    "00000.jpg 99999999999999999999",
                ]
            ),
        ),
        max_size=14,
    )
    return st.one_of(
        st.binary(max_size=200),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.sampled_from(_encodings(valid.decode())),
        lines.map(lambda ls: "".join(line + "\n" for line in ls).encode("utf-8", "surrogatepass")),
    )


def _labels_property(proj: Project, data: bytes) -> None:
    _with(proj, proj.labels, data, "tiny", _image_names(proj))


def test_labels_fuzz(proj: Project) -> None:
    @FAST
    @given(data=_labels_inputs(proj.valid_labels))
    def run(data: bytes) -> None:
        _labels_property(proj, data)

    run()


@pytest.mark.slow
def test_labels_cut_at_every_byte(proj: Project) -> None:
    for n in range(len(proj.valid_labels)):
        _labels_property(proj, proj.valid_labels[:n])


@pytest.mark.slow
def test_labels_fuzz_long(proj: Project) -> None:
    @SLOW
    @given(data=_labels_inputs(proj.valid_labels))
    def run(data: bytes) -> None:
        _labels_property(proj, data)

    run()


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------
def _image_inputs(valid: bytes) -> st.SearchStrategy[bytes]:
    flips = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255))
    return st.one_of(
        st.binary(max_size=400),
        st.integers(0, len(valid)).map(lambda n: valid[:n]),
        st.lists(flips, min_size=1, max_size=4).map(lambda fs: _flip(valid, fs)),
        st.sampled_from(ODD_IMAGES),
    )


def _flip(valid: bytes, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid)
    for pos, value in flips:
        data[pos] = value
    return bytes(data)


def _image_property(proj: Project, data: bytes) -> None:
    _with(proj, proj.image, data, "tiny", _image_names(proj))


@pytest.mark.parametrize("index", range(len(ODD_IMAGES)))
def test_odd_images(proj: Project, index: int) -> None:
    _image_property(proj, ODD_IMAGES[index])


def test_image_fuzz(proj: Project) -> None:
    @FAST
    @given(data=_image_inputs(proj.valid_image))
    def run(data: bytes) -> None:
        _image_property(proj, data)

    run()


@pytest.mark.slow
def test_image_cut_at_every_byte(proj: Project) -> None:
    for n in range(len(proj.valid_image)):
        _image_property(proj, proj.valid_image[:n])


@pytest.mark.slow
def test_image_fuzz_long(proj: Project) -> None:
    @SLOW
    @given(data=_image_inputs(proj.valid_image))
    def run(data: bytes) -> None:
        _image_property(proj, data)

    run()
