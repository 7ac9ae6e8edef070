"""``python -m pipeline.predict`` on raw JPEGs and CSVs agrees with evaluation on the cache.

Tiny JPEGs are written in the ``jpeg_labels`` layout, ``pipeline.prepare`` builds the cache, a
model is trained and logged, then ``predict`` on the raw test files must match the pyfunc on the
cache's ``test_x`` for the same items (``meta.test_sources`` maps one to the other).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline import predict, prepare
from pipeline.config import Params, load_params
from pipeline.data.cache import Cache, load_cache
from pipeline.registry import gate as registry
from tests.conftest import REPO, SMALL, _deep_update, make_tabular_cache
from tests.registry.test_gate import error_line, setup_store, train_and_log

SIZE = 12
CLASSES = 3


def _write_jpegs(root: Path, part: str, n: int, rng: np.random.Generator) -> None:
    """Class k lights up horizontal band k, as conftest's synthetic caches do."""
    folder = root / part
    folder.mkdir(parents=True)
    lines = []
    band = SIZE // CLASSES
    for i in range(n):
        k = i % CLASSES
        img = rng.integers(0, 60, size=(SIZE, SIZE)).astype(np.uint8)
        img[k * band : (k + 1) * band, :] += 150
        name = f"{part}-{i:03d}.jpg"
        assert cv2.imwrite(str(folder / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"{name} {k}")
    (root / f"{part}_labels.txt").write_text("\n".join(lines) + "\n")


@dataclass
class World:
    root: Path
    params: Params
    cache: Cache
    image_run: str
    raw: Path
    table: Cache
    table_run: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("predict")
        raw_dir = root / "data" / "raw" / "tiny"
        rng = np.random.default_rng(0)
        _write_jpegs(raw_dir, "train", 90, rng)
        _write_jpegs(raw_dir, "val", 30, rng)
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        _deep_update(raw, SMALL)
        raw["datasets"]["tiny"] = {
            "format": "jpeg_labels",
            "root": "data/raw/tiny",
            "parts": {
                "train": {"images": "train", "labels": "train_labels.txt"},
                "val": {"images": "val", "labels": "val_labels.txt"},
            },
            "classes": ["top", "middle", "bottom"],
            "image": {"channels": 1, "size": [SIZE, SIZE], "size_policy": "resize"},
            "test_fraction": 0.25,
        }
        raw["dataset"] = "tiny"
        raw["prepare"]["datasets"] = ["tiny"]
        raw["prepare"]["workers"] = 1
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        params = load_params(root / "params.yaml")
        assert prepare.main(["--params", str(root / "params.yaml")]) == 0
        cache = load_cache(params.cache_dir("tiny"))
        make_tabular_cache(params.cache_dir("diabetes"), name="diabetes")
        table = load_cache(params.cache_dir("diabetes"))
        exp = setup_store(params)
        image_run, _ = train_and_log(params, cache, experiment_id=exp, lr=3e-3, epochs=3)
        table_run, _ = train_and_log(params, table, experiment_id=exp, lr=1e-2, epochs=3)
        yield World(root, params, cache, image_run, raw_dir, table, table_run)


def _predict(w: World, run_id: str, *inputs: object, extra: tuple[str, ...] = ()) -> int:
    return predict.main([
        "--model", f"runs:/{run_id}/model", "--params", str(w.root / "params.yaml"), *extra,
        *[str(i) for i in inputs],
    ])


def test_raw_jpegs_agree_with_cache(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    sources = w.cache.meta.test_sources
    assert len(sources) == w.cache.meta.n_test > 0
    files = [w.raw / s for s in sources]
    assert _predict(w, w.image_run, *files, extra=("--batch-size", "7")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(files)

    model = registry.load_model(f"runs:/{w.image_run}/model")
    served = model.predict(np.asarray(w.cache.test_x, dtype=np.float32))
    names = w.cache.meta.class_names
    assert list(served.columns) == ["label", *names]  # the label, then each class's probability
    proba = served[names].to_numpy()
    for line, path, p, served_label in zip(lines, files, proba, served["label"], strict=True):
        file, label, prob = line.split(" ")
        assert file == str(path)
        assert label == names[int(p.argmax())] == served_label  # predict prints what it serves
        assert float(prob) == pytest.approx(float(p.max()), abs=1e-4)


def test_folder_input(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    assert _predict(w, w.image_run, w.raw / "val") == 0
    lines = capsys.readouterr().out.splitlines()
    expected = sorted((w.raw / "val").glob("*.jpg"))
    assert [line.split(" ")[0] for line in lines] == [str(p) for p in expected]
    assert all(line.split(" ")[1] in ("top", "middle", "bottom") for line in lines)


def test_corrupt_image_is_one_clear_line(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert _predict(world, world.image_run, bad) == 2
    assert "broken.jpg" in error_line(capsys)


def test_wrong_input_kind(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "rows.csv"
    table.write_text("a,b\n1,2\n")
    assert _predict(world, world.image_run, table) == 2
    assert "takes image files" in error_line(capsys)
    assert _predict(world, world.image_run, tmp_path / "nope.jpg") == 2
    assert "no such file" in error_line(capsys)


def _write_csv(path: Path, x: np.ndarray, columns: list[str]) -> None:
    rows = [",".join(columns)] + [",".join(repr(float(v)) for v in row) for row in x]
    path.write_text("\n".join(rows) + "\n")


def test_csv_rows(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = world
    x = np.array(w.table.test_x[:9], dtype=np.float32)
    names = w.table.meta.feature_names
    # Columns in another order plus the target: features are picked by name.
    order = list(reversed(names)) + ["target"]
    data = np.concatenate([x[:, ::-1], np.zeros((len(x), 1), np.float32)], axis=1)
    _write_csv(tmp_path / "new.csv", data, order)
    assert _predict(w, w.table_run, tmp_path / "new.csv", extra=("--batch-size", "4")) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = registry.load_model(f"runs:/{w.table_run}/model").predict(x)
    assert [line.split(" ")[0] for line in lines] == [str(i) for i in range(1, len(x) + 1)]
    got = np.array([float(line.split(" ")[1]) for line in lines])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_csv_missing_feature_column(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    names = [n for n in w.table.meta.feature_names if n != "f2"]
    _write_csv(tmp_path / "partial.csv", np.ones((3, len(names)), np.float32), names)
    assert _predict(w, w.table_run, tmp_path / "partial.csv") == 2
    line = error_line(capsys)
    assert "partial.csv" in line and "f2" in line


def test_png_images_predict_as_they_train(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prepare reads PNG; predict used to take only .jpg/.jpeg, so a PNG dataset trained but
    could not be predicted on."""
    w = world
    source = w.raw / w.cache.meta.test_sources[0]
    png = tmp_path / "one.png"
    assert cv2.imwrite(str(png), cv2.imread(str(source), cv2.IMREAD_GRAYSCALE))
    assert _predict(w, w.image_run, png, source) == 0
    png_line, jpg_line = capsys.readouterr().out.splitlines()
    assert png_line.split(" ")[0] == str(png)
    assert png_line.split(" ")[1] == jpg_line.split(" ")[1]


def test_a_value_beyond_float32_is_an_error_not_nan(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world
    names = w.table.meta.feature_names
    rows = [",".join(names), ",".join(["1e39"] + ["0.5"] * (len(names) - 1))]
    (tmp_path / "huge.csv").write_text("\n".join(rows) + "\n")
    assert _predict(w, w.table_run, tmp_path / "huge.csv") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = [x for x in captured.err.splitlines() if x.startswith("error:")]
    assert "huge.csv:2" in line and "float32" in line


class _NanModel:
    """A stand-in whose outputs are not finite (the real reader refuses such inputs, so a real
    model cannot be driven there from a file; this checks the output guard itself)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x),), np.nan, dtype=np.float32)


def test_a_non_finite_output_is_an_error_naming_the_row() -> None:
    from pipeline.errors import UserError
    from pipeline.registry.inference import _predict_finite

    x = np.ones((3, 2), np.float32)
    with pytest.raises(UserError, match=r"^rows\.csv:1: the model's output is not a finite"):
        _predict_finite(_NanModel(), x, batch_size=2, keys=["rows.csv:1", "rows.csv:2", "x"])


def test_check_model_accepts_the_projects_own_models(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"runs:/{world.image_run}/model"
    args = ["--check-model", uri, "--params", str(world.root / "params.yaml")]
    assert predict.main(args) == 0
    assert "pt2 PyTorch model" in capsys.readouterr().out


def test_a_class_per_folder_tree_is_walked(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    w = world  # data/raw/tiny holds train/ and val/ folders of JPEGs
    assert _predict(w, w.image_run, w.raw) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = sorted(w.raw.rglob("*.jpg"))
    assert [line.split(" ")[0] for line in lines] == [str(p) for p in expected]
    assert len(lines) == 120


# --------------------------------------------------------------------------------------------
# Served over HTTP: the README's request, a real image, a real `mlflow models serve`
# --------------------------------------------------------------------------------------------
def _readme_request_lines() -> tuple[str, str]:
    """The README's two lines that ask the served model about an image (JSON, then curl)."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("make serve        #"):]
    block = block[: block.index("```")]
    (make_json,) = [line for line in block.splitlines() if line.startswith("python -c")]
    (ask,) = [line for line in block.splitlines() if line.startswith("curl ")]
    return make_json, ask


@pytest.mark.slow
def test_the_served_model_answers_the_readme_request_with_labels(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.servers import free_port, stop, wait_for_http

    w = world
    uri = f"runs:/{w.image_run}/model"
    image = w.raw / w.cache.meta.test_sources[0]
    # What `make serve` does first: the format check; then predict's own answer for the image.
    assert predict.main(["--check-model", uri, "--params", str(w.root / "params.yaml")]) == 0
    assert _predict(w, w.image_run, image) == 0
    _, expected_label, expected_p = capsys.readouterr().out.splitlines()[-1].split(" ")

    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{w.root / 'mlruns' / 'mlflow.db'}",
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", uri, "--env-manager", "local", "--host",
         "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", lambda: server.poll() is None,
                      why=lambda: (tmp_path / "serve.log").read_text(errors="replace")[-3000:])
        make_json, ask = _readme_request_lines()
        subprocess.run(make_json.replace("data/raw/digits/val/00000.jpg", str(image)),
                       shell=True, check=True, cwd=tmp_path, env=env)
        done = subprocess.run(ask.replace("5001", str(port)), shell=True, check=True,
                              cwd=tmp_path, env=env, capture_output=True, text=True)
    finally:
        stop(server)
    (answer,) = json.loads(done.stdout)["predictions"]
    names = list(w.cache.meta.class_names)
    assert list(answer) == ["label", *names]  # the label, then each class's probability
    assert answer["label"] == expected_label  # what `predict` prints for the same file
    assert answer[expected_label] == pytest.approx(float(expected_p), abs=1e-4)
    assert sum(answer[c] for c in names) == pytest.approx(1.0, abs=1e-5)
