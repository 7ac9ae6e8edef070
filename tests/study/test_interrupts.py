"""Ctrl-C during a search: held while a record is written, at once otherwise; always agreeing.

The unit tests send a real SIGINT to this process; the end-to-end ones to a real search process
at the awkward moments (training, the model being logged), then read Optuna and MLflow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.study.interrupts import Interrupts
from tests.conftest import REPO
from tests.test_search import load_study, mlflow_runs, proj

__all__ = ["proj"]


def _sigint() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs between bytecodes of the main thread


def test_outside_a_record_ctrl_c_raises_at_once() -> None:
    interrupts = Interrupts()
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        _sigint()
    assert interrupts.requested


def test_inside_a_record_the_first_ctrl_c_waits_and_a_second_one_does_not() -> None:
    interrupts = Interrupts()
    with interrupts.installed():
        with interrupts.shield():
            _sigint()
            finished = True  # the record went on
        assert finished and interrupts.requested and interrupts.held
        with pytest.raises(KeyboardInterrupt), interrupts.shield():
            _sigint()


def test_the_previous_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with Interrupts().installed():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) == before


# A search whose first epoch or model log announces itself on stderr and then waits 3 s, so
# the test can press Ctrl-C exactly there. Records are written in the search's own process
# ("inline"): with the recorder process (the default) Ctrl-C never lands inside one.
_SLOW = """
import sys, time
import pipeline.tracking.records as records
from pipeline.training import engine
where = sys.argv[1]
import pipeline.study.trial_runs as trial_runs  # records written here, where the patch is
init = trial_runs.MlflowTrialTracker.__init__
def inline(self, *args, **kwargs):
    init(self, *args, **{**kwargs, "writer": "inline"})
trial_runs.MlflowTrialTracker.__init__ = inline
def slow(original, label):
    def wrapper(*args, **kwargs):
        print(label, file=sys.stderr, flush=True)
        time.sleep(3)
        return original(*args, **kwargs)
    return wrapper
if where == "model":
    records.log_model = slow(records.log_model, "@@ MODEL")
else:
    engine.Trainer.run_epoch = slow(engine.Trainer.run_epoch, "@@ EPOCH")
from pipeline.search import main
sys.exit(main(sys.argv[2:]))
"""


def _search_with_ctrl_c(proj: Path, where: str, presses: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW, where, "--params", str(proj / "params.yaml"),
         "--study", "tiny", "--n-trials", "2"],
        cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    err = []
    for line in proc.stderr:  # wait until it is inside the slow part
        err.append(line)
        if line.startswith("@@"):
            break
    time.sleep(0.5)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    out, rest = proc.communicate(timeout=120)
    return proc.returncode, "".join(err) + rest


def _agreement(proj: Path) -> list[tuple[str, str, str]]:
    """(Optuna state, run status, run's optuna.state tag) per trial; asserts one run each."""
    trials = load_study(proj).trials
    _, _, children = mlflow_runs(proj)
    runs = {r.info.run_id: r for r in children}
    assert len(runs) == len(trials)
    return [(t.state.name, runs[t.user_attrs["mlflow_run_id"]].info.status,
             runs[t.user_attrs["mlflow_run_id"]].data.tags["optuna.state"]) for t in trials]


def test_ctrl_c_while_the_model_is_logged_waits_for_the_record(proj: Path) -> None:
    code, err = _search_with_ctrl_c(proj, "model", presses=1)
    assert code == 130 and "Traceback" not in err, err
    assert "stopping once this record is written" in err
    # The trial finished and its whole record (model included) is written; no new trial.
    assert _agreement(proj) == [("COMPLETE", "FINISHED", "COMPLETE")]
    _, parents, _ = mlflow_runs(proj)
    assert [p.info.status for p in parents] == ["KILLED"]


def test_ctrl_c_twice_while_the_model_is_logged_fails_the_trial_everywhere(proj: Path) -> None:
    code, err = _search_with_ctrl_c(proj, "model", presses=2)
    assert code == 130 and "Traceback" not in err, err
    assert _agreement(proj) == [("FAIL", "FAILED", "FAIL")]
    _, _, (run,) = mlflow_runs(proj)
    assert "interrupted" in run.data.tags["pipeline.error"]


def test_ctrl_c_while_training_prints_no_traceback(proj: Path) -> None:
    code, err = _search_with_ctrl_c(proj, "epoch", presses=1)
    assert code == 130 and "Traceback" not in err and "failed with value" not in err, err
    assert _agreement(proj) == [("FAIL", "FAILED", "FAIL")]
