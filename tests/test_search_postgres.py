"""Search workers on a real PostgreSQL server (slow: starts a server): two workers sharing one
study, a worker killed with ``kill -9``, the database stopped mid-trial.

The server is a throwaway cluster in a temporary folder (``initdb``, ``pg_ctl``) on a free
loopback port; as root it runs as the ``postgres`` user. Authentication is ``trust``, but the
storage URL still carries a password with ``#``, ``/`` and ``?`` in it (which naive URL parsing
gets wrong), to check that it never reaches logs, MLflow or reports. It is given the way users
are told to give it, in ``PIPELINE_STORAGE``: ``--storage`` refuses passwords.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import make_image_cache, wait_for_running_trial

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret#PW/9?f2"
STUDY = {
    "description": "Two workers, one study.",
    "budget": {"n_trials": 3},
    "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
    "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    "cv": {"folds": 0},
    "space": {
        "model.width": {"type": "int", "low": 4, "high": 16},
        "train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
    },
}


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # /usr/local/bin/initdb may be a lone symlink
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A PostgreSQL server on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, address: str, control: Any) -> None:
        self.address = address
        self.control = control

    def __str__(self) -> str:
        return self.address

    def stop(self) -> None:
        self.control("stop", "-m", "immediate")

    def start(self) -> None:
        self.control("start")


@pytest.fixture
def postgres() -> Iterator[Server]:
    """A running PostgreSQL server; yields it (``str()`` is ``127.0.0.1:PORT``)."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        reason = "no PostgreSQL server binaries (initdb); apt-get install postgresql"
        if os.environ.get("PIPELINE_REQUIRE_POSTGRES") == "1":  # set by .ci/run: never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    as_postgres: list[str] = []
    # Outside pytest's 0700 tmp tree, so the postgres user can reach it.
    data = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(data, user="postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=60)

    def control(action: str, *extra: str) -> None:
        pg(str(pg_bin / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "-w", *extra, action)

    try:
        pg(str(pg_bin / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
        control("start")
        pg(str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
           "optuna")
        yield Server(f"127.0.0.1:{port}", control)
    finally:
        subprocess.run([*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(data / "db"), "-m",
                        "fast", "-w", "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_postgres_study(project: Path, postgres: Server) -> None:
    make_image_cache(project / "data" / "cache" / "digits", n_train=120, n_test=30,
                     name="digits")
    (project / "studies" / "pg.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    url = f"postgresql+psycopg://postgres:{PASSWORD}@{postgres}/optuna"
    # Create Optuna's and MLflow's tables once, as a deployment does (a database and an
    # `mlflow server` set up beforehand), so the workers race only for trials and runs.
    optuna.storages.RDBStorage(url)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    MlflowClient().search_experiments()
    env["PIPELINE_STORAGE"] = url
    cmd = [sys.executable, "-m", "pipeline.search", "--params", str(project / "params.yaml"),
           "--study", "pg", "--n-trials", "3"]
    workers = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=400) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
        assert PASSWORD not in out and PASSWORD not in err
        assert f"postgres:***@{postgres}" in out + err

    trials = optuna.load_study(study_name="pg-digits", storage=url).trials
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(6)) and len(set(numbers)) == 6
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)

    client = MlflowClient()
    exp = client.get_experiment_by_name("pg-digits")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 6
    assert not [r for r in runs if r.info.status == "RUNNING"]
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(configs)) == 6  # the two workers never drew the same configuration
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert PASSWORD not in key and PASSWORD not in value, key
    redacted = f"postgresql+psycopg://postgres:***@{postgres}/optuna"
    assert {p.data.params["storage"] for p in parents} == {redacted}
    assert PASSWORD.encode() not in (project / "mlruns" / "mlflow.db").read_bytes()

    report_text = (project / "reports" / "studies" / "pg.json").read_text()
    assert PASSWORD not in report_text
    report = json.loads(report_text)
    assert report["n_trials"] == 6 and report["storage"] == redacted


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------
def _setup(project: Path, postgres: Server, *, epochs: int) -> tuple[str, dict[str, str]]:
    make_image_cache(project / "data" / "cache" / "digits", n_train=120, n_test=30,
                     name="digits")
    study = {**STUDY, "pruner": {"type": "none"}}
    (project / "studies" / "pg.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    _epochs(project, epochs)
    url = f"postgresql+psycopg://postgres:{PASSWORD}@{postgres}/optuna"
    optuna.storages.RDBStorage(url)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
           "PIPELINE_STORAGE": url}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return url, env


def _epochs(project: Path, epochs: int) -> None:
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["train"]["max_epochs"] = epochs
    raw["train"]["early_stopping"]["patience"] = epochs
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _search(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", "--params", str(project / "params.yaml"),
         "--study", "pg", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _running_trial(url: str, proc: subprocess.Popen[str]) -> Any:
    return wait_for_running_trial(
        lambda: optuna.load_study(study_name="pg-digits", storage=url).trials, proc, poll=0.5
    )


def _runs() -> list[Any]:
    client = MlflowClient()
    exp = client.get_experiment_by_name("pg-digits")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_kill_9_of_a_postgres_worker_is_cleaned_up(project: Path, postgres: Server) -> None:
    url, env = _setup(project, postgres, epochs=5000)
    proc = _search(project, env, "--n-trials", "2")
    try:
        victim = _running_trial(url, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _epochs(project, 3)
    rerun = _search(project, env, "--n-trials", "1")
    out, err = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, err[-3000:]
    assert PASSWORD not in out + err
    trials = optuna.load_study(study_name="pg-digits", storage=url).trials
    assert trials[victim.number].state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("pipeline.retry_of") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    runs = _runs()
    assert not [r for r in runs if r.info.status == "RUNNING"]
    dead = MlflowClient().get_run(victim.user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and "stopped without finishing" in dead.data.tags[
        "pipeline.error"]
    new = MlflowClient().get_run(retry[0].user_attrs["mlflow_run_id"])
    assert new.data.tags["pipeline.retry_of_run"] == dead.info.run_id
    check = _search(project, env, "--reconcile")
    out, err = check.communicate(timeout=300)
    assert check.returncode == 0 and "Optuna and MLflow agree" in out, err[-3000:]


def test_the_database_stopped_mid_trial(project: Path, postgres: Server) -> None:
    url, env = _setup(project, postgres, epochs=5000)
    proc = _search(project, env, "--n-trials", "2")
    victim = _running_trial(url, proc)
    postgres.stop()
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        postgres.start()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost the study storage" in errors[0], err[-3000:]
    assert PASSWORD not in out + err and "postgres:***@" in errors[0]
    assert not [r for r in _runs() if r.info.status == "RUNNING"]

    # Back up: the next search fails the orphaned trial, retries it and goes on.
    _epochs(project, 3)
    rerun = _search(project, env, "--n-trials", "1")
    out, err = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="pg-digits", storage=url).trials
    assert trials[victim.number].state.name == "FAIL"
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert any(t.user_attrs.get("pipeline.retry_of") == victim.number
               and t.state.name == "COMPLETE" for t in trials)
