"""Model logging: the requirements written with the model, and MLflow's package check skipped
only for our own pins."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import mlflow.utils.environment
import mlflow.utils.requirements_utils
import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig, Params
from pipeline.data.cache import CacheMeta, load_cache
from pipeline.tracking import configure, experiment, log_model, pip_requirements
from pipeline.tracking.models import skip_dependency_check_for_own_pins
from pipeline.training import build_model
from tests.tracking.test_runs import empty_store_template


@pytest.fixture(autouse=True)
def fast_store(project: Path) -> Iterator[None]:
    shutil.copyfile(empty_store_template(), project / "mlruns" / "mlflow.db")
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def no_package_scan(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (instead of running) MLflow's scan of every installed distribution."""
    scans: list[str] = []

    def scan() -> dict[str, list[str]]:
        scans.append("scan")
        return {}

    monkeypatch.setattr(mlflow.utils.requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(mlflow.utils.requirements_utils.importlib_metadata,
                        "packages_distributions", scan)
    return scans


def test_logged_requirements_are_our_pins_and_no_package_scan_runs(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
    no_package_scan: list[str],
) -> None:
    folder, meta = image_cache()
    cache = load_cache(folder)
    torch.manual_seed(0)
    net = build_model(ModelConfig(hidden_layers=1, width=8), meta).eval()
    configure(params)
    with mlflow.start_run(experiment_id=experiment("models", params)):
        info = log_model(net, meta, example=np.asarray(cache.train_x[:2], dtype=np.float32))
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    written = (local / "requirements.txt").read_text().split()
    assert written == pip_requirements()
    assert written[0] == f"mlflow=={mlflow.__version__}"
    assert written[1] == f"torch=={torch.__version__.split('+')[0]}"
    assert no_package_scan == []  # neither on save nor on the validating load


def test_other_requirements_still_get_mlflows_check(no_package_scan: list[str]) -> None:
    skip_dependency_check_for_own_pins()
    skip_dependency_check_for_own_pins()  # idempotent: one wrapper, not two
    check = mlflow.utils.environment.warn_dependency_requirement_mismatches
    inner = check.__wrapped__  # type: ignore[attr-defined]
    assert not getattr(inner, "_skips_own_pins", False)
    check(pip_requirements())
    assert no_package_scan == []
    check(["scikit-learn==0.0.1"])
    assert no_package_scan == ["scan"]


# --------------------------------------------------------------------------------------------
# Loading never unpickles
# --------------------------------------------------------------------------------------------
MARKER = "PIPELINE_TEST_UNPICKLED"


class _Booby(torch.nn.Linear):
    """Writes a file when it is unpickled: proof that loading ran the model's own code."""

    def __setstate__(self, state: dict) -> None:
        import os

        Path(os.environ[MARKER]).write_text("ran")
        super().__setstate__(state)


class _BoobyPyfunc(mlflow.pyfunc.PythonModel):
    def __setstate__(self, state: dict) -> None:
        import os

        Path(os.environ[MARKER]).write_text("ran")
        self.__dict__.update(state)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return model_input


def _refused(uri: str, marker: Path, reason: str) -> None:
    from pipeline.errors import UserError
    from pipeline.tracking.models import load_model

    with pytest.raises(UserError, match=reason) as info:
        load_model(uri)
    assert "pt2" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists(), "the model's code ran while loading"


def test_pickle_models_are_refused_before_their_code_runs(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv(MARKER, str(marker))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow's default
    configure(params)
    with mlflow.start_run(experiment_id=experiment("models", params)):
        torch_pickle = mlflow.pytorch.log_model(
            _Booby(2, 2), name="pickled", serialization_format="pickle", pip_requirements=[]
        )
        cloudpickle = mlflow.pyfunc.log_model(
            name="pyfunc", python_model=_BoobyPyfunc(), pip_requirements=[]
        )
    # Proof that the booby trap works: MLflow's own default loader springs it.
    mlflow.pyfunc.load_model(cloudpickle.model_uri)
    assert marker.read_text() == "ran"
    marker.unlink()
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    _refused(torch_pickle.model_uri, marker, r"refused: its weights are pickled")
    _refused(cloudpickle.model_uri, marker, r"refused: it has no PyTorch flavor")


def test_the_projects_pt2_models_load_with_pickle_off(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
    no_package_scan: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from pipeline.tracking.models import load_model

    folder, meta = image_cache()
    cache = load_cache(folder)
    net = build_model(ModelConfig(hidden_layers=1, width=8), meta).eval()
    configure(params)
    x = np.asarray(cache.train_x[:3], dtype=np.float32)
    with mlflow.start_run(experiment_id=experiment("models", params)):
        info = log_model(net, meta, example=x)
    # A fresh process that only loads (predict, evaluate) has MLflow's own check in place.
    from pipeline.tracking.models import _CHECK_CALLERS, _DEPENDENCY_CHECK

    for module in _CHECK_CALLERS:
        check = getattr(module, _DEPENDENCY_CHECK)
        monkeypatch.setattr(module, _DEPENDENCY_CHECK, getattr(check, "__wrapped__", check))
    model = load_model(info.model_uri)
    assert no_package_scan == []  # our own pins: MLflow's scan of installed packages skipped
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    served = model.predict(x)
    assert list(served.columns) == ["label", *meta.class_names] and len(served) == 3


def test_a_model_bundling_code_is_refused() -> None:
    from pipeline.tracking.models import unsafe_format

    ok = {"pytorch": {}, "python_function": {"loader_module": "mlflow.pytorch"}}
    assert unsafe_format(ok) is None
    assert "bundles Python code" in str(unsafe_format({**ok, "pytorch": {"code": "code"}}))
    assert "sklearn" in str(unsafe_format({**ok, "sklearn": {}}))


# --------------------------------------------------------------------------------------------
# The served classifier: a models-from-code pyfunc that only ever runs the project's own file
# --------------------------------------------------------------------------------------------
def test_the_served_classifier_code_is_a_file_the_project_knows() -> None:
    import hashlib

    from pipeline.tracking.models import LABELLED_CODE, LABELLED_CODE_SHA256

    # Changing labelled_model.py means adding its new digest (and keeping the old ones, which
    # the models logged before still carry).
    assert hashlib.sha256(LABELLED_CODE.read_bytes()).hexdigest() in LABELLED_CODE_SHA256


_BOOBY_CODE = """
import os, pathlib
pathlib.Path(os.environ["PIPELINE_TEST_UNPICKLED"]).write_text("ran")
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

class M(PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input

set_model(M())
"""


def _classifier(params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]]) -> tuple[
        str, Path, CacheMeta, np.ndarray]:
    folder, meta = image_cache()
    cache = load_cache(folder)
    net = build_model(ModelConfig(hidden_layers=1, width=8), meta).eval()
    configure(params)
    x = np.asarray(cache.train_x[:3], dtype=np.float32)
    with mlflow.start_run(experiment_id=experiment("models", params)):
        info = log_model(net, meta, example=x, name="trial-0")
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    return info.model_uri, local, meta, x


def test_a_models_from_code_pyfunc_runs_only_the_projects_own_file(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Someone else's code file, or ours with one byte changed, is refused before it runs."""
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv(MARKER, str(marker))
    uri, local, _, _ = _classifier(params, image_cache)
    copy = tmp_path / "copy"
    shutil.copytree(local, copy)
    code = copy / "labelled_model.py"
    code.write_text(code.read_text() + "\n# edited\n")
    _refused(str(copy), marker, r"refused: its labelled_model.py is not a file this project")
    code.write_text(_BOOBY_CODE)
    _refused(str(copy), marker, r"is not a file this project shipped")
    # Renamed, it is not even considered ours: the name check comes first.
    other = tmp_path / "other"
    with mlflow.start_run(experiment_id=experiment("models", params)):
        booby = tmp_path / "booby.py"
        booby.write_text(_BOOBY_CODE.replace('pathlib.Path(os.environ["PIPELINE_TEST_UNPICKLED"])'
                                             '.write_text("ran")', ""))
        mlflow.pyfunc.save_model(str(other), python_model=str(booby), pip_requirements=[])
    _refused(str(other), marker, r"its code 'booby.py' is not this project's labelled_model.py")


def test_the_served_classifier_network_must_be_a_pt2_pytorch_model(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "ran.txt"
    monkeypatch.setenv(MARKER, str(marker))
    _, local, _, _ = _classifier(params, image_cache)
    copy = tmp_path / "copy"
    shutil.copytree(local, copy)
    network = copy / "artifacts" / "network"
    shutil.rmtree(network)
    mlflow.pytorch.save_model(_Booby(2, 2), str(network), serialization_format="pickle",
                              pip_requirements=[])
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow's default
    _refused(str(copy), marker, r"refused: its weights are pickled")


def test_the_served_classifier_answers_with_labels_and_loads_with_pickle_off(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    import os

    from pipeline.tracking.models import load_model, unsafe_format

    uri, local, meta, x = _classifier(params, image_cache)
    flavors = mlflow.models.get_model_info(uri).flavors
    assert set(flavors) == {"python_function"} and unsafe_format(flavors) is None
    assert "python_model" not in flavors["python_function"]  # nothing cloudpickled
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pth"))
    model = load_model(uri)
    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    served = model.predict(x)
    names = list(meta.class_names)
    assert list(served.columns) == ["label", *names]
    proba = served[names].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(served["label"]) == [names[k] for k in proba.argmax(axis=1)]
    schema = model.metadata.get_output_schema()
    assert schema.input_names() == ["label", *names]
    assert schema.input_types()[0].name == "string"
