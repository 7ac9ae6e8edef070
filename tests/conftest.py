"""Shared fixtures: a shrunken project in tmp_path and tiny synthetic tensor caches."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.config import Params, load_params
from pipeline.data.cache import CacheMeta, write_cache

REPO = Path(__file__).resolve().parents[1]

# The shrink every test uses: tiny models, few epochs, CPU, everything inside tmp_path.
SMALL = {
    "device": "cpu",
    "model": {"width": 32, "hidden_layers": 1},
    "train": {"max_epochs": 3, "batch_size": 64},
}


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may write to the developer's own MLflow store or Optuna storage."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PIPELINE_STORAGE", raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A stage's ``main`` installs its own root handler (on the test's stderr); undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's params.yaml and studies/ in tmp_path, shrunk for tests.

    Every relative path in params.yaml (data, caches, mlruns, reports) resolves inside it.
    """
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    _deep_update(raw, SMALL)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if (REPO / "studies").is_dir():
        shutil.copytree(REPO / "studies", tmp_path / "studies", ignore=shutil.ignore_patterns(
            "*.db", "*.log", "*.journal"))
    (tmp_path / "mlruns").mkdir()
    return tmp_path


@pytest.fixture
def params(project: Path) -> Params:
    return load_params(project / "params.yaml")


def make_image_cache(
    folder: Path,
    *,
    n_train: int = 240,
    n_test: int = 60,
    classes: int = 3,
    channels: int = 1,
    size: int = 8,
    seed: int = 0,
    name: str = "tiny_images",
) -> CacheMeta:
    """A learnable image task: class k lights up horizontal band k of the image."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        rng.shuffle(y)
        x = rng.integers(0, 60, size=(n, channels, size, size)).astype(np.uint8)
        band = size // classes
        for i, k in enumerate(y):
            x[i, :, k * band : (k + 1) * band, :] += 150
        return x, y.astype(np.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    scaled = train_x.astype(np.float32) / 255.0
    names = [str(k) for k in range(classes)]
    meta = CacheMeta(
        name=name,
        task="classification",
        kind="image",
        input_shape=[channels, size, size],
        class_names=names,
        feature_names=[],
        target_name="label",
        n_train=n_train,
        n_test=n_test,
        counts={
            "train": {names[k]: int((train_y == k).sum()) for k in range(classes)},
            "test": {names[k]: int((test_y == k).sum()) for k in range(classes)},
        },
        mean=[float(scaled[:, c].mean()) for c in range(channels)],
        std=[float(scaled[:, c].std()) for c in range(channels)],
        target_mean=0.0,
        target_std=1.0,
        split_seed=seed,
        fingerprint=f"synthetic-images-{seed}",
        source_format="synthetic",
    )
    write_cache(
        folder,
        meta,
        {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y},
    )
    return meta


def make_tabular_cache(
    folder: Path,
    *,
    n_train: int = 160,
    n_test: int = 40,
    features: int = 5,
    seed: int = 0,
    name: str = "tiny_table",
) -> CacheMeta:
    """A regression task: a noisy linear function of the features, far from zero mean."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(loc=3.0, scale=2.0, size=(n, features)).astype(np.float32)
        y = (x @ w * 10 + 150 + rng.normal(scale=2.0, size=n)).astype(np.float32)
        return x, y

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    meta = CacheMeta(
        name=name,
        task="regression",
        kind="tabular",
        input_shape=[features],
        class_names=[],
        feature_names=[f"f{i}" for i in range(features)],
        target_name="target",
        n_train=n_train,
        n_test=n_test,
        counts={},
        mean=[float(v) for v in train_x.mean(axis=0)],
        std=[float(v) for v in train_x.std(axis=0)],
        target_mean=float(train_y.mean()),
        target_std=float(train_y.std()),
        split_seed=seed,
        fingerprint=f"synthetic-table-{seed}",
        source_format="synthetic",
    )
    write_cache(
        folder,
        meta,
        {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y},
    )
    return meta


@pytest.fixture
def image_cache(tmp_path: Path) -> Callable[..., tuple[Path, CacheMeta]]:
    """Factory: ``image_cache(**kwargs)`` writes a synthetic image cache; returns (dir, meta)."""

    def make(**kwargs: object) -> tuple[Path, CacheMeta]:
        folder = tmp_path / "cache" / str(kwargs.get("name", "tiny_images"))
        return folder, make_image_cache(folder, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def tabular_cache(tmp_path: Path) -> Callable[..., tuple[Path, CacheMeta]]:
    """Factory: ``tabular_cache(**kwargs)`` writes a synthetic regression cache."""

    def make(**kwargs: object) -> tuple[Path, CacheMeta]:
        folder = tmp_path / "cache" / str(kwargs.get("name", "tiny_table"))
        return folder, make_tabular_cache(folder, **kwargs)  # type: ignore[arg-type]

    return make


def wait_for_running_trial(
    load_trials: Callable[[], list[Any]], proc: Any, *, timeout: float = 120, poll: float = 0.3
) -> Any:
    """The first trial a worker process is training (RUNNING with its MLflow run), polled.

    ``load_trials`` reads the study (KeyError while it does not exist yet); ``proc`` must stay
    alive meanwhile.
    """
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            trials = load_trials()
        except KeyError:
            trials = []
        running = [t for t in trials if t.state.name == "RUNNING"
                   and t.user_attrs.get("mlflow_run_id")]
        if running:
            return running[0]
        time.sleep(poll)
    raise AssertionError("no trial started in time")


def race_for_trials(studies: list[Any], choice: Any, total: int) -> list[str]:
    """Each study object (one per would-be worker, its own storage) asks for a trial at the same
    moment under the budget's lock: "created" or "refused" per worker, sorted."""
    import functools
    import threading

    from pipeline.study.budget import BudgetReached, admitting
    from pipeline.study.storage import study_lock

    barrier = threading.Barrier(len(studies))
    outcomes: list[str] = []

    def worker(study: Any) -> None:
        lock = functools.partial(study_lock, choice, study._storage, study.study_name)
        with admitting(study, total, lock):
            barrier.wait()
            try:
                study.ask()
                outcomes.append("created")
            except BudgetReached:
                outcomes.append("refused")

    threads = [threading.Thread(target=worker, args=(s,)) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """A folder this process cannot write in. Root ignores permission bits, so as root the
    folder is made immutable (``chattr +i``: root cannot create files in it either)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root, and chattr +i does not work on this file system")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
