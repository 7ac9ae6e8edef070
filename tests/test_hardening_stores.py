"""Issue 27 rows for the stores: a torn study journal, a damaged MLflow database, folders that
cannot be written, a project moved or copied. Each fault is made for real (files cut short,
an immutable folder or a process without root's permission override, ``cp -a`` and ``mv``),
and each test checks that the next run goes on with nothing lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pipeline import evaluate, promote, report, train
from pipeline.config import load_params
from pipeline.tracking import store
from tests.conftest import REPO, make_image_cache, read_only
from tests.test_search import mlflow_runs, search
from tests.test_search import proj as proj  # noqa: F401 - the fixture
from tests.tracking.test_runs import empty_store_template


def _one_error_line(err: str) -> str:
    """The one ``error:`` line on stderr (log lines may come before it), no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def _journal(proj: Path) -> Path:
    return proj / "studies" / "tiny-digits.journal"


def _trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    """The study as Optuna alone reads the file (no repair on the way)."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return optuna.load_study(study_name="tiny-digits", storage=storage).trials


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


# --------------------------------------------------------------------------------------------
# The study journal's last record torn
# --------------------------------------------------------------------------------------------
def test_a_torn_journal_record_is_set_aside_and_the_search_goes_on(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(proj, "--n-trials", "1") == 0
    path = _journal(proj)
    full = path.read_bytes()
    last = full.rfind(b"\n", 0, len(full) - 1) + 1
    torn = full[: last + (len(full) - last) // 2]  # a crash mid-write of the last record
    path.write_bytes(torn)
    capsys.readouterr()

    assert search(proj, "--n-trials", "1") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warned = [line for line in err.splitlines() if "was cut short" in line]
    assert len(warned) == 1 and str(path) in warned[0], err
    assert path.read_bytes().startswith(torn[:last])  # every whole record kept as it was
    (aside,) = path.parent.glob(path.name + ".torn-*")
    assert aside.read_bytes() == torn[last:]  # what was cut, byte for byte
    assert [t.state.name for t in _trials(path)] == ["COMPLETE", "COMPLETE"]
    # Every later command reads it: the report page, --reconcile, another search.
    assert report.main(["--params", str(proj / "params.yaml"), "--study", "tiny"]) == 0
    assert search(proj, "--reconcile") == 0
    _, parents, children = mlflow_runs(proj)
    assert {p.info.status for p in parents} == {"FINISHED"} and len(children) == 2


def test_a_journal_without_its_final_newline_loses_nothing(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(proj, "--n-trials", "1") == 0
    path = _journal(proj)
    full = path.read_bytes()
    path.write_bytes(full[:-1])
    assert search(proj, "--n-trials", "1") == 0
    assert "Traceback" not in capsys.readouterr().err
    assert path.read_bytes().startswith(full)  # the record completed, not set aside
    assert list(path.parent.glob(path.name + ".torn-*")) == []
    assert [t.state.name for t in _trials(path)] == ["COMPLETE", "COMPLETE"]


def _as_a_new_process() -> None:
    """Each command is a process of its own; in this one, forget what MLflow keeps per store
    URI (its engines hold the old database file open), as the next command's process would."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose()
    SqlAlchemyStore._engine_map.clear()
    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    store._prepare_sqlite_store.cache_clear()


# --------------------------------------------------------------------------------------------
# A damaged MLflow database
# --------------------------------------------------------------------------------------------
def test_a_damaged_mlflow_database_is_one_line_naming_it(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert search(proj, "--n-trials", "1") == 0
    db = proj / "mlruns" / "mlflow.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    before = _hashes(proj)
    capsys.readouterr()
    params = ["--params", str(proj / "params.yaml")]
    for command in (lambda: search(proj, "--n-trials", "1"),
                    lambda: promote.main([*params, "--study", "tiny"]),
                    lambda: evaluate.main(params)):
        assert command() == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {db}: the MLflow database is damaged (")
        assert f"mv {db} {db}.damaged" in line
    assert _hashes(proj) == before  # nothing written anywhere
    # The way forward the line gives: the study goes on in a new store, its trials kept.
    db.rename(db.with_name("mlflow.db.damaged"))
    _as_a_new_process()
    assert search(proj, "--n-trials", "1") == 0
    assert [t.state.name for t in _trials(_journal(proj))] == ["COMPLETE", "COMPLETE"]


# --------------------------------------------------------------------------------------------
# Folders that cannot be written
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("folder", "what"), [
    ("mlruns", "the MLflow store (mlflow.tracking_uri)"),
    ("reports/studies", "the study reports (search.reports_dir)"),
    ("studies", "the study journal (search.storage)"),
])
def test_a_search_checks_its_folders_before_it_trains(
    proj: Path, capsys: pytest.CaptureFixture[str], folder: str, what: str
) -> None:
    with read_only(proj / folder):
        assert search(proj, "--n-trials", "1") == 2
        line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {proj / folder}: not writable (")
    assert line.endswith(f"expected a folder this user can write, for {what}")
    assert not _journal(proj).exists()  # nothing trained, nothing recorded
    assert search(proj, "--n-trials", "1") == 0  # writable again: the search runs
    assert [t.state.name for t in _trials(_journal(proj))] == ["COMPLETE"]


def test_evaluate_and_train_check_their_folders_first(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_image_cache(project / "data" / "cache" / "digits", name="digits", n_train=120)
    shutil.copyfile(empty_store_template(), project / "mlruns" / "mlflow.db")
    params = ["--params", str(project / "params.yaml")]
    with read_only(project / "reports"):
        assert evaluate.main(params) == 2
        line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {project / 'reports'}: not writable (")
    assert line.endswith("for the evaluation reports (evaluate.reports_dir)")
    with read_only(project / "checkpoints"):
        assert train.main(params) == 2
        line = _one_error_line(capsys.readouterr().err)
    assert line.endswith("for the training checkpoints (--checkpoint-dir)")
    with read_only(project / "mlruns"):
        assert train.main(params) == 2
        assert "for the MLflow store" in _one_error_line(capsys.readouterr().err)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    assert MlflowClient().get_experiment_by_name("train-digits") is None  # no run started


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_a_search_without_root_permission_override(proj: Path) -> None:
    """The issue's case as it was met: ``reports/`` read-only (mode 555) for a process that
    has no permission override (root without CAP_DAC_OVERRIDE; any other user)."""
    reports = proj / "reports" / "studies"
    reports.mkdir(parents=True)
    reports.chmod(0o555)
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    command = [sys.executable, "-m", "pipeline.search", "--params", str(proj / "params.yaml"),
               "--study", "tiny", "--n-trials", "1"]
    try:
        done = subprocess.run(drop * (os.geteuid() == 0) + command, capture_output=True,
                              text=True, timeout=300, cwd=REPO)
    finally:
        reports.chmod(0o755)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert line == (f"error: {reports}: not writable (Permission denied); expected a folder "
                    "this user can write, for the study reports (search.reports_dir)")
    assert not _journal(proj).exists()


# --------------------------------------------------------------------------------------------
# A project moved or copied
# --------------------------------------------------------------------------------------------
def _own_store() -> None:
    """Each command is a process of its own; in this one, MLflow's ``set_tracking_uri`` left
    the previous project's store in ``MLFLOW_TRACKING_URI``, which a command would obey."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def _model_output(params_path: Path, run_id: str) -> np.ndarray:
    from pipeline import tracking
    from pipeline.registry.gate import as_array
    from pipeline.tracking.models import load_model

    _own_store()
    tracking.configure(load_params(params_path))
    model = load_model(f"runs:/{run_id}/model")
    return as_array(model.predict(np.full((2, 1, 8, 8), 100, dtype=np.float32)), model)


def _train_run(params_path: Path) -> mlflow.entities.Run:
    _own_store()
    assert train.main(["--params", str(params_path)]) == 0
    client = MlflowClient()
    exp = client.get_experiment_by_name("train-digits")
    assert exp is not None
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]


def test_a_copied_or_moved_project_keeps_its_models_and_writes_only_into_itself(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    make_image_cache(project / "data" / "cache" / "digits", name="digits", n_train=120)
    shutil.copyfile(empty_store_template(), project / "mlruns" / "mlflow.db")
    first = _train_run(project / "params.yaml")
    expected = _model_output(project / "params.yaml", first.info.run_id)
    original = _hashes(project)

    copy = tmp_path_factory.mktemp("elsewhere") / "copy"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    np.testing.assert_allclose(_model_output(copy / "params.yaml", first.info.run_id), expected)
    second = _train_run(copy / "params.yaml")
    assert second.info.artifact_uri.startswith((copy / "mlruns" / "artifacts").resolve().as_uri())
    assert (copy / "mlruns" / "artifacts" / "train-digits" / second.info.run_id).is_dir()
    assert _hashes(project) == original  # the original is untouched

    moved = copy.with_name("moved")
    subprocess.run(["mv", str(copy), str(moved)], check=True)
    for run in (first, second):
        assert _model_output(moved / "params.yaml", run.info.run_id).shape == (2, 3)
    np.testing.assert_allclose(_model_output(moved / "params.yaml", first.info.run_id), expected)
    # The original still loads its own model, from its own folder.
    np.testing.assert_allclose(_model_output(project / "params.yaml", first.info.run_id),
                               expected)


def test_a_model_whose_files_are_gone_is_one_line_naming_where(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import predict

    make_image_cache(project / "data" / "cache" / "digits", name="digits", n_train=120)
    shutil.copyfile(empty_store_template(), project / "mlruns" / "mlflow.db")
    run = _train_run(project / "params.yaml")
    (model_id,) = [o.model_id for o in run.outputs.model_outputs]
    shutil.rmtree(project / "mlruns" / "artifacts" / "train-digits")  # the experiment's files
    where = project / "mlruns" / "artifacts" / "train-digits" / "models" / model_id / "artifacts"
    capsys.readouterr()
    uri = f"runs:/{run.info.run_id}/model"
    assert predict.main(["--params", str(project / "params.yaml"), "--check-model", uri]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot load model {uri!r}: its files are missing from the "
                           f"artifact store at {where.resolve().as_uri()} (")
    assert line.endswith("restore that folder from a backup (or from the project it was copied "
                         "from), or train and promote a new model")
