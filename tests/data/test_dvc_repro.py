"""A real ``dvc repro fetch prepare`` in a temporary copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.cache import load_cache

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    # `python` in dvc.yaml's commands must be this interpreter (the project's venv).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONPATH", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


@pytest.mark.slow
def test_dvc_repro_fetch_prepare(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(
        REPO / "pipeline", project / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("params.yaml", "dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, project / name)
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], project)
    _run([*dvc, "init", "-q"], project)

    out = _run([*dvc, "repro", "fetch", "prepare"], project)
    assert "Running stage 'fetch'" in out and "Running stage 'prepare'" in out
    digits = load_cache(project / "data" / "cache" / "digits")
    diabetes = load_cache(project / "data" / "cache" / "diabetes")
    assert digits.meta.n_train + digits.meta.n_test == 1797
    assert digits.train_x.shape[1:] == (1, 28, 28)
    assert diabetes.meta.n_train + diabetes.meta.n_test == 442
    assert diabetes.meta.task == "regression"

    out = _run([*dvc, "repro", "fetch", "prepare"], project)
    assert "Running stage" not in out
    assert "didn't change" in out or "up to date" in out

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["seed"] = params["prepare"]["seed"] + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([*dvc, "repro", "fetch", "prepare"], project)
    assert "Running stage 'prepare'" in out
    assert "Running stage 'fetch'" not in out
    reseeded = load_cache(project / "data" / "cache" / "digits").meta
    assert reseeded.split_seed == params["prepare"]["seed"]
    assert reseeded.fingerprint != digits.meta.fingerprint
