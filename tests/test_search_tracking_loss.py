"""The MLflow tracking server lost mid-search (slow: a real ``mlflow server``, ``kill -9``).

The study (a journal file) stays reachable: the trial keeps its result, the search stops with
one line, the report is written; once the server is back ``--reconcile`` closes the runs left
open and a rerun completes the study.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, wait_for_running_trial
from tests.servers import kill, start_mlflow_server, stop
from tests.test_search import load_study, proj

__all__ = ["proj"]

pytestmark = pytest.mark.slow


def _search(proj: Path, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.search", "--params", str(proj / "params.yaml"),
         "--study", "tiny", *args], cwd=proj, env=_env(uri), text=True, capture_output=True,
        timeout=600,
    )


def _env(uri: str) -> dict[str, str]:
    # Give up on a dead server after one quick retry instead of MLflow's minutes of backoff.
    return {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}


def test_a_lost_tracking_server_stops_the_search_in_one_line(
    proj: Path, tmp_path: Path
) -> None:
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["train"].update(max_epochs=1500)
    raw["train"]["early_stopping"]["patience"] = 1500  # a trial long enough to kill inside
    (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    log = tmp_path / "server.log"
    server, uri = start_mlflow_server(backend, artifacts=tmp_path / "artifacts", log=log)
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", "--params", str(proj / "params.yaml"),
         "--study", "tiny"], cwd=proj, env=_env(uri), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_for_running_trial(lambda: load_study(proj).trials, worker)
        kill(server)
        out, err = worker.communicate(timeout=600)
    finally:
        stop(server)
        if worker.poll() is None:
            worker.kill()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert worker.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and "tracking server is unreachable" in errors[0], err[-3000:]
    assert "--reconcile" in errors[0]
    study = load_study(proj)
    trial, *others = study.trials  # it finished; at most the next one began, and failed
    assert trial.state.name == "COMPLETE" and "pipeline.record_lost.0" in study.user_attrs
    assert len(others) <= 1 and all(t.state.name == "FAIL" for t in others)
    report = json.loads((proj / "reports" / "studies" / "tiny.json").read_text())
    assert report["counts"]["COMPLETE"] == 1
    assert report["best"] is None  # its run has no model: nothing promote could take

    # The server is back (same store): reconcile closes what was left open, then agrees.
    server, uri = start_mlflow_server(backend, artifacts=tmp_path / "artifacts", log=log)
    try:
        fixed = _search(proj, uri, "--reconcile")
        assert fixed.returncode == 0, fixed.stderr[-3000:]
        assert "its record was lost" in fixed.stdout and "parent run" in fixed.stdout
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("tiny-digits")
        runs = client.search_runs([exp.experiment_id])
        assert not [r for r in runs if r.info.status == "RUNNING"]
        (lost,) = [r for r in runs if r.info.run_id == trial.user_attrs["mlflow_run_id"]]
        assert lost.info.status == "FAILED" and lost.data.tags["optuna.state"] == "COMPLETE"
        assert "record was not completed" in lost.data.tags["pipeline.error"]
        again = _search(proj, uri, "--reconcile")
        assert "reconcile: Optuna and MLflow agree" in again.stdout, again.stdout

        # A rerun completes the study's budget; the best now has a model.
        raw["train"].update(max_epochs=3)
        (proj / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        rerun = _search(proj, uri)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        stop(server)
    finished = [t for t in load_study(proj).trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    report = json.loads((proj / "reports" / "studies" / "tiny.json").read_text())
    assert report["best"] is not None and report["best"]["number"] != 0
