"""Search workers on a real PostgreSQL server (slow: starts a server): two workers sharing one
study, a worker killed with ``kill -9``, the database stopped mid-trial, and all of it at once
with three workers and an ``mlflow server`` on the same PostgreSQL.

The server is a throwaway cluster in a temporary folder (``initdb``, ``pg_ctl``) on a free
loopback port; as root it runs as the ``postgres`` user. Over TCP it checks the password
(scram-sha-256), one with ``#``, ``/`` and ``?`` in it (which naive URL parsing gets wrong); the
tests check that it never reaches logs, MLflow, reports, artifacts, the databases or ``ps``. It
is given the way users are told to give it: in ``PIPELINE_STORAGE`` to the workers (``--storage``
refuses passwords) and in ``PGPASSWORD`` to ``mlflow server``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.study.storage import StorageChoice, open_storage
from tests.conftest import make_image_cache, race_for_trials, wait_for_running_trial
from tests.pgserver import Server, pg_bin, postgres_server
from tests.servers import start_mlflow_server, stop

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


@pytest.fixture
def postgres() -> Iterator[Server]:
    """A running PostgreSQL server; yields it (``str()`` is ``127.0.0.1:PORT``)."""
    if pg_bin() is None:
        reason = "no PostgreSQL server binaries (initdb); apt-get install postgresql"
        if os.environ.get("PIPELINE_REQUIRE_POSTGRES") == "1":  # set by .ci/run: never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    with postgres_server(PASSWORD) as server:
        yield server


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


def test_workers_starting_at_once_create_exactly_the_total_on_postgres(
    postgres: Server,
) -> None:
    """Eight storages (as eight workers would) ask at the same moment: the advisory lock admits
    exactly the total."""
    url = f"postgresql+psycopg://postgres:{PASSWORD}@{postgres}/optuna"
    choice = StorageChoice("rdb", url, "test")
    optuna.create_study(study_name="race", storage=open_storage(choice))
    studies = [optuna.load_study(study_name="race", storage=open_storage(choice))
               for _ in range(8)]
    assert race_for_trials(studies, choice, 3) == ["created"] * 3 + ["refused"] * 5
    assert len(optuna.load_study(study_name="race", storage=url).trials) == 3


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
    check = _search(project, env, "--reconcile")
    out, err = check.communicate(timeout=300)
    assert check.returncode == 0 and "Optuna and MLflow agree" in out, err[-3000:]


# --------------------------------------------------------------------------------------------
# Everything at once: 3 workers, an MLflow server on PostgreSQL, kill -9, an outage
# --------------------------------------------------------------------------------------------
BUDGET = 6
STATUS_OF = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def _mlflow_server(postgres: Server, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``mlflow server`` on the ``mlflow`` database, the password only in its environment."""
    postgres.admin("createdb", "mlflow")
    return start_mlflow_server(f"postgresql+psycopg://postgres@{postgres}/mlflow",
                               artifacts=root / "artifacts", log=root / "mlflow-server.log",
                               env={"PGPASSWORD": PASSWORD})


def _running_by_live_worker(url: str, workers: list[subprocess.Popen[str]],
                            exclude: set[int]) -> tuple[Any, subprocess.Popen[str]]:
    """A trial in training and the worker process training it (by the pid in its lease)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name="pg-digits", storage=url)
        except KeyError:  # no worker has created the study yet
            time.sleep(0.3)
            continue
        pids = {key: lease.get("pid") for key, lease in study.user_attrs.items()
                if key.startswith("pipeline.worker.")}
        for trial in study.trials:
            lease = "pipeline.worker." + str(trial.user_attrs.get("pipeline.worker"))
            owner = [w for w in workers if w.pid == pids.get(lease) and w.poll() is None]
            if (trial.state.name == "RUNNING" and trial.user_attrs.get("mlflow_run_id")
                    and trial.number not in exclude and owner):
                return trial, owner[0]
        time.sleep(0.3)
    raise AssertionError("no trial in training")


def _no_password_in(texts: dict[str, str], folders: list[Path]) -> None:
    leaks = [name for name, text in texts.items() if PASSWORD in text]
    leaks += [str(f) for folder in folders for f in folder.rglob("*")
              if f.is_file() and PASSWORD.encode() in f.read_bytes()]
    assert not leaks, f"the password is in: {leaks}"


def test_three_workers_an_mlflow_server_a_kill_and_an_outage(
    project: Path, postgres: Server, tmp_path: Path
) -> None:
    url, env = _setup(project, postgres, epochs=1500)  # trials long enough to be killed
    study = {**yaml.safe_load((project / "studies" / "pg.yaml").read_text()),
             "budget": {"n_trials": BUDGET}}
    (project / "studies" / "pg.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    server, base = _mlflow_server(postgres, tmp_path)
    env["MLFLOW_TRACKING_URI"] = base
    mlflow.set_tracking_uri(base)
    texts: dict[str, str] = {}
    workers: list[subprocess.Popen[str]] = []
    try:
        workers += [_search(project, env) for _ in range(3)]  # each: up to the study's total
        victim, owner = _running_by_live_worker(url, workers, exclude=set())
        texts["ps"] = subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                     text=True, check=True).stdout
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert optuna.load_study(study_name="pg-digits", storage=url).trials[
            victim.number].state.name == "RUNNING"  # killed mid-trial
        _running_by_live_worker(url, workers, exclude={victim.number})
        postgres.stop()  # the database goes away mid-trial for a few seconds
        time.sleep(4)
        postgres.start()
        for i, worker in enumerate(w for w in workers if w is not owner):
            out, err = worker.communicate(timeout=600)
            texts[f"worker {i} out"], texts[f"worker {i} err"] = out, err
            assert "Traceback" not in err, err[-3000:]
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert (worker.returncode, len(errors)) in ((0, 0), (2, 1)), err[-3000:]

        _epochs(project, 3)  # the last worker finishes the budget quickly
        last = _search(project, env)
        out, err = last.communicate(timeout=600)
        texts["last out"], texts["last err"] = out, err
        assert last.returncode == 0, err[-3000:]
        assert "View run" not in out  # MLflow's per-run URL lines stay out of our output
        check = _search(project, env, "--reconcile")
        out, err = check.communicate(timeout=300)
        texts["reconcile"] = out + err
        assert check.returncode == 0 and "Optuna and MLflow agree" in out, err[-3000:]

        trials = optuna.load_study(study_name="pg-digits", storage=url).trials
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        # Exactly the total: new trials are admitted under one advisory lock.
        assert len(finished) == BUDGET, [t.state.name for t in trials]
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
        assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)
        assert trials[victim.number].state.name == "FAIL"
        retries = [t for t in trials if t.user_attrs.get("pipeline.retry_of") == victim.number]
        assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")

        client = MlflowClient()
        runs = client.search_runs(
            [client.get_experiment_by_name("pg-digits").experiment_id], max_results=1000)
        assert not [r for r in runs if r.info.status == "RUNNING"]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        by_trial: dict[int, list[Any]] = {}
        for run in children:
            by_trial.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
        assert sorted(by_trial) == [t.number for t in trials]
        for trial in trials:
            (run,) = by_trial[trial.number]
            assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
            assert (run.info.status, run.data.tags["optuna.state"]) == (
                STATUS_OF[trial.state.name], trial.state.name), trial.number
        assert by_trial[retries[0].number][0].data.tags["pipeline.retry_of_run"] == \
            victim.user_attrs["mlflow_run_id"]

        texts["optuna database"] = postgres.admin("pg_dump", "optuna")
        texts["mlflow database"] = postgres.admin("pg_dump", "mlflow")
        texts["mlflow server log"] = (tmp_path / "mlflow-server.log").read_text()
        assert "pipeline.worker." in texts["optuna database"]  # the dump is the real thing
        _no_password_in(texts, [project / "reports", tmp_path / "artifacts"])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        stop(server)
