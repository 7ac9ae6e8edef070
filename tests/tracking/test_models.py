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
    assert np.asarray(model.predict(x)).shape[0] == 3


def test_a_model_bundling_code_is_refused() -> None:
    from pipeline.tracking.models import unsafe_format

    ok = {"pytorch": {}, "python_function": {"loader_module": "mlflow.pytorch"}}
    assert unsafe_format(ok) is None
    assert "bundles Python code" in str(unsafe_format({**ok, "pytorch": {"code": "code"}}))
    assert "sklearn" in str(unsafe_format({**ok, "sklearn": {}}))
