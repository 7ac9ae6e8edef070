"""Many workers and faults on one study: a total budget, no repeats, kill -9 cleaned up.

Real processes, a real journal file and a real MLflow SQLite store in tmp_path; the PostgreSQL
versions of the same paths are in ``test_search_postgres.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, wait_for_running_trial
from tests.test_search import TINY, load_study, mlflow_runs, proj, report, search

__all__ = ["proj"]  # the fixture, shared with test_search


def _write_study(proj: Path, **changes: Any) -> None:
    study = {**TINY, **changes}
    (proj / "studies" / "tiny.yaml").write_text(yaml.safe_dump(study, sort_keys=False))


def _set_params(proj: Path, **train: Any) -> None:
    path = proj / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(train)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_the_budget_is_the_studys_total(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert search(proj) == 0  # the study's 3
    assert len(load_study(proj).trials) == 3
    assert search(proj) == 0  # already there: nothing trained
    assert len(load_study(proj).trials) == 3
    out = capsys.readouterr().out
    assert "0 new trial(s)" in out
    assert search(proj, "--n-trials", "1") == 0  # --n-trials adds
    assert len(load_study(proj).trials) == 4
    assert search(proj, "--n-trials", "0") == 0  # only checks the study
    assert len(load_study(proj).trials) == 4
    assert report(proj)["n_trials"] == 4


def test_a_repeated_configuration_is_not_trained_again(proj: Path) -> None:
    _write_study(proj, space={"model.batch_norm": {"type": "categorical", "choices": [False]}},
                 pruner={"type": "none"})
    assert search(proj, "--n-trials", "2") == 0
    first, second = load_study(proj).trials
    assert second.user_attrs["pipeline.duplicate_of"] == 0
    assert second.value == first.value
    assert second.user_attrs["mlflow_run_id"] == first.user_attrs["mlflow_run_id"]
    _, _, children = mlflow_runs(proj)
    assert len(children) == 1  # one training run: the second trial reused it
    assert report(proj)["trials"][1]["duplicate_of"] == 0

    # Other base settings (here the epochs): the same configuration is trained again.
    _set_params(proj, max_epochs=2)
    assert search(proj, "--n-trials", "1") == 0
    third = load_study(proj).trials[2]
    assert "pipeline.duplicate_of" not in third.user_attrs
    assert third.user_attrs["pipeline.settings"] != first.user_attrs["pipeline.settings"]
    assert len(mlflow_runs(proj)[2]) == 2


def test_a_password_on_the_command_line_is_refused(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://user:p#ss@127.0.0.1:5432/db"
    assert search(proj, "--storage", url) == 2
    err = capsys.readouterr().err
    assert "p#ss" not in err and "PIPELINE_STORAGE" in err and "ps" in err


def _worker(proj: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",
                                                            "PIPELINE_STORAGE")}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.search", "--params", str(proj / "params.yaml"),
         "--study", "tiny", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_running_trial(proj: Path, proc: subprocess.Popen[str], timeout: float) -> Any:
    def trials() -> list[Any]:
        if not (proj / "studies" / "tiny-digits.journal").exists():
            raise KeyError("no journal yet")  # opening it would create it
        return load_study(proj).trials

    return wait_for_running_trial(trials, proc, timeout=timeout)


def test_kill_9_mid_trial_is_cleaned_up_by_the_next_search(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _set_params(proj, max_epochs=5000, early_stopping={"patience": 5000, "min_delta": 0.0,
                                                       "restore_best": True})
    _write_study(proj, pruner={"type": "none"})
    proc = _worker(proj, "--n-trials", "2")
    try:
        victim = _wait_for_running_trial(proj, proc, timeout=120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    client, parents, children = mlflow_runs(proj)
    assert [r.info.status for r in children] == ["RUNNING"]  # what MLflow leaves behind

    assert search(proj, "--n-trials", "0") == 0  # any later search cleans up
    out = capsys.readouterr().out
    assert "of a worker that died" in out
    trials = load_study(proj).trials
    dead, retry = trials[victim.number], trials[-1]
    assert dead.state.name == "FAIL" and "stopped without finishing" in dead.user_attrs[
        "pipeline.error"]
    assert retry.state.name == "WAITING" and retry.params == dead.params
    assert retry.user_attrs["pipeline.retry_of"] == dead.number
    client, parents, children = mlflow_runs(proj)
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == "FAIL"
    assert "stopped without finishing" in run.data.tags["pipeline.error"]
    killed_parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert killed_parent.info.status == "KILLED"
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    assert report(proj)["counts"].get("RUNNING", 0) == 0

    # The retry runs first and links the run it replaces.
    _set_params(proj, max_epochs=3)
    assert search(proj, "--n-trials", "1") == 0
    trials = load_study(proj).trials
    assert trials[retry.number].state.name in ("COMPLETE", "PRUNED")
    new_run = client.get_run(trials[retry.number].user_attrs["mlflow_run_id"])
    assert new_run.data.tags["pipeline.retry_of_trial"] == str(dead.number)
    assert new_run.data.tags["pipeline.retry_of_run"] == run.info.run_id
    assert search(proj, "--n-trials", "0") == 0  # nothing more to clean: idempotent
    assert len(load_study(proj).trials) == len(trials)
    capsys.readouterr()
    assert search(proj, "--reconcile") == 0
    assert "reconcile: Optuna and MLflow agree" in capsys.readouterr().out


def test_reconcile_makes_mlflow_agree_with_optuna(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(proj, "--n-trials", "2") == 0
    client, _, children = mlflow_runs(proj)
    first, second = sorted(children, key=lambda r: int(r.data.tags["optuna.trial_number"]))
    client.update_run(first.info.run_id, status="RUNNING")  # as a crash would leave it
    client.set_tag(second.info.run_id, "optuna.state", "RUNNING")
    capsys.readouterr()
    assert search(proj, "--reconcile") == 0
    out = capsys.readouterr().out
    assert "trial 0: " in out and "its run was RUNNING: ended" in out
    assert "trial 1: tag optuna.state was 'RUNNING'" in out
    assert client.get_run(first.info.run_id).info.status in ("FINISHED", "FAILED")
    assert search(proj, "--reconcile") == 0
    assert "Optuna and MLflow agree" in capsys.readouterr().out
    assert search(proj, "--reconcile", "--n-trials", "1") == 2


def test_trials_are_shared_out_among_workers() -> None:
    from pipeline.study.pool import shares, worker_options
    from pipeline.study.setup import SearchOptions

    assert shares(7, 3) == [3, 2, 2] and shares(None, 2) == [None, None]
    options = SearchOptions(study="s", params_path=Path("p.yaml"), timeout_s=9.0, n_trials=5,
                            workers=3)
    each = worker_options(options)
    assert [o.n_trials for o in each] == [2, 2, 1]
    assert all(o.workers == 1 and o.timeout_s == 9.0 and o.study == "s" for o in each)
    # They travel as data: what a worker process reads back is what was meant.
    assert [SearchOptions.from_json(o.to_json()) for o in each] == each
    assert worker_options(SearchOptions(study="s", n_trials=1, workers=2))[0].n_trials == 1
    assert len(worker_options(SearchOptions(study="s", n_trials=1, workers=2))) == 1


@pytest.mark.slow
def test_workers_option_runs_processes_to_the_total(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_study(proj, budget={"n_trials": 5}, sampler={"type": "tpe", "seed": 0})
    assert search(proj, "--workers", "2") == 0
    out = capsys.readouterr().out
    trials = load_study(proj).trials
    assert len(trials) == 5  # exactly the total, however the two processes raced
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    _, parents, children = mlflow_runs(proj)
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
    assert len(children) == len(trials)
    assert f"{len(trials)} in the study" in out


@pytest.mark.slow
def test_two_workers_at_once_on_a_fresh_project_never_repeat(proj: Path) -> None:
    """Started together: no MLflow schema race, no repeated configurations, total respected."""
    _write_study(proj, budget={"n_trials": 6}, sampler={"type": "tpe", "seed": 0})
    procs = [_worker(proj) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any("Traceback" in o for o in outputs), outputs
    trials = load_study(proj).trials
    assert len(trials) == 6  # exactly the total: new trials are admitted under one lock
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(configs)) == len(configs)
    _, parents, children = mlflow_runs(proj)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)


@pytest.mark.slow
def test_three_workers_stay_apart_and_find_what_one_finds(proj: Path) -> None:
    """TPE's constant liar (running trials repel the sampler) with per-trial seeded streams:
    3 workers on one study end, after the same number of trials, within noise of one worker's
    best, with no configuration trained twice and nothing left RUNNING."""
    import optuna

    def study_file(sampler: dict[str, Any]) -> None:
        _write_study(proj, budget={"n_trials": 9}, sampler=sampler, pruner={"type": "none"},
                     space={"model.width": {"type": "int", "low": 4, "high": 32},
                            "train.lr": {"type": "float", "low": 1e-3, "high": 0.1,
                                         "log": True}})

    study_file({"type": "tpe", "seed": 0, "n_startup_trials": 3})
    sampler = optuna.samplers.TPESampler()
    assert sampler._constant_liar  # Optuna's default since 5.0: what workers rely on
    assert search(proj) == 0
    one = load_study(proj)
    values = [t.value for t in one.trials if t.value is not None]
    one_best = one.best_value
    (proj / "studies" / "tiny-digits.journal").rename(proj / "studies" / "one.journal")
    assert search(proj, "--workers", "3") == 0
    three = load_study(proj)
    trials = three.trials
    assert len(trials) == 9
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(configs)) == len(configs)  # no configuration twice
    assert "pipeline.duplicate_of" not in str([t.user_attrs for t in trials])
    assert all(t.state.name == "COMPLETE" for t in trials)  # nothing RUNNING or lost
    # Within noise: a quarter of the spread of the values one worker saw.
    spread = max(values) - min(values)
    assert three.best_value <= one_best + 0.25 * spread
    _, parents, children = mlflow_runs(proj)
    assert not [r for r in parents + children if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_workers_climb_one_set_of_rungs(proj: Path) -> None:
    """The rung pruner is asynchronous: two worker processes compare each trial with every
    trial that reached the rung before it, whichever worker ran it."""
    rungs = {"type": "rungs", "reduction_factor": 2, "min_samples": 10,
             "rungs": [{"data": 0.5, "epochs": 1}, {"data": 1.0, "epochs": 1}]}
    _write_study(proj, budget={"n_trials": 8}, pruner=rungs)
    _set_params(proj, max_epochs=4)
    assert search(proj, "--workers", "2") == 0
    trials = load_study(proj).trials
    assert len(trials) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.user_attrs["pipeline.worker"] for t in trials}) == 2  # both took trials
    baseline = [t for t in trials if t.user_attrs.get("pipeline.baseline")]
    assert len(baseline) == 1 and baseline[0].state.name == "COMPLETE"
    assert all("rung" in t.user_attrs for t in trials)
    for t in trials:
        if t.state.name == "PRUNED":
            assert max(t.intermediate_values) in (1, 2)  # stopped at a rung's end
            # Someone (on either worker) had done better at that rung by then.
            step = max(t.intermediate_values)
            rivals = [u.intermediate_values[step] for u in trials
                      if u.number != t.number and step in u.intermediate_values
                      and u.datetime_start < t.datetime_complete]
            assert min(rivals) < t.intermediate_values[step]
    _, parents, children = mlflow_runs(proj)
    assert not [r for r in parents + children if r.info.status == "RUNNING"]
