"""The whole chain under a real ``dvc repro``: fetch -> prepare -> search -> promote -> evaluate.

Runs in a temporary copy of the project (pipeline/, studies/, params.yaml, dvc.yaml,
pyproject.toml; fresh git and DVC repositories) with a tiny study, then checks the registry's
champion, the reports, that a second ``dvc repro`` does nothing, and that ``mlflow models serve``
serves the champion. Slow: about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

STUDY = "e2e"
TINY_STUDY = {
    "description": "end-to-end test study: two short trials",
    "metric": "val/loss",
    "direction": "minimize",
    "budget": {"n_trials": 2, "timeout_s": 120},
    "sampler": {"type": "tpe", "seed": 1},
    "pruner": {"type": "none"},
    "cv": {"folds": 0},
    "space": {"model.width": {"type": "int", "low": 16, "high": 64, "log": True}},
}


@dataclass
class Chain:
    root: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str]


def _run(cmd: list[str], root: Path, env: dict[str, str], timeout: float = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("e2e")
    shutil.copytree(REPO / "pipeline", root / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "studies", root / "studies",
                    ignore=shutil.ignore_patterns("*.db", "*.journal", "*.log", "*.lock"))
    for name in ("params.yaml", "dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    (root / "studies" / f"{STUDY}.yaml").write_text(yaml.safe_dump(TINY_STUDY))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["device"] = "cpu"
    params["search"]["studies"] = [STUDY]
    params["train"]["max_epochs"] = 3
    params["model"]["width"] = 32
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_STORAGE")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONPATH"] = str(root)  # the copy's pipeline package, not the checkout's
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    first = _run(["dvc", "repro"], root, env)
    yield Chain(root, env, first)


def test_repro_builds_a_champion(chain: Chain) -> None:
    root = chain.root
    record = json.loads((root / "reports" / "promote" / f"{STUDY}.json").read_text())
    assert record["decision"]["alias"] == "champion"
    assert record["champion"]["uri"] == "models:/pipeline-digits@champion"
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert 0.5 < metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(record["candidate"]["test_metrics"]["accuracy"])
    assert (root / "reports" / "plots" / "confusion.csv").is_file()
    # The search stage wrote the study's report page, every picture beside it.
    page = root / "reports" / "studies" / f"{STUDY}-page"
    assert (page / "index.html").is_file() and (page / "leaderboard.png").is_file()
    assert "page: " in chain.first.stdout + chain.first.stderr

    # The champion alias lives in the project's own MLflow store.
    probe = (
        "import mlflow; from mlflow import MlflowClient; "
        f"mlflow.set_tracking_uri('sqlite:///{root}/mlruns/mlflow.db'); "
        "v = MlflowClient().get_model_version_by_alias('pipeline-digits', 'champion'); "
        "print(v.version, v.tags['study'], v.tags['run_id'])"
    )
    out = _run([sys.executable, "-c", probe], root, chain.env).stdout.split()
    assert out == [record["champion"]["version"], STUDY, record["candidate"]["run_id"]]

    shown = _run(["dvc", "metrics", "show"], root, chain.env).stdout
    assert "accuracy" in shown
    _run(["dvc", "plots", "show", "-o", str(root / "dvc_plots")], root, chain.env)


def test_second_repro_does_nothing(chain: Chain) -> None:
    again = _run(["dvc", "repro"], chain.root, chain.env)
    assert "Running stage" not in again.stdout, again.stdout
    status = _run(["dvc", "status"], chain.root, chain.env).stdout
    assert "up to date" in status, status


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mlflow_serves_the_champion(chain: Chain) -> None:
    root = chain.root
    port = _free_port()
    env = dict(chain.env, MLFLOW_TRACKING_URI="sqlite:///mlruns/mlflow.db")
    cmd = ["mlflow", "models", "serve", "-m", "models:/pipeline-digits@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {server.stderr.read()[-3000:]}")
            time.sleep(1)
        x = np.load(root / "data" / "cache" / "digits" / "test_x.npy")[:3].astype(np.float32)
        y = np.load(root / "data" / "cache" / "digits" / "test_y.npy")[:3]
        body = json.dumps({"inputs": x.tolist()}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            answers = json.loads(resp.read())["predictions"]
        classes = [str(k) for k in range(10)]
        assert [list(a) for a in answers] == [["label", *classes]] * 3  # label, probabilities
        proba = np.asarray([[a[c] for c in classes] for a in answers])
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert [a["label"] for a in answers] == [classes[k] for k in proba.argmax(axis=1)]
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
        if metrics["accuracy"] > 0.9:  # a good champion gets most of three items right
            assert int((proba.argmax(axis=1) == y).sum()) >= 2
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
