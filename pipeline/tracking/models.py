"""Logging a trained network as a servable MLflow model, and loading one without unpickling.

The network is always saved in MLflow's PyTorch flavor in the ``pt2`` format (torch.export):
it loads without our code and without unpickling. A classifier is logged as that network
inside a small "models from code" pyfunc (:mod:`pipeline.tracking.labelled_model`, a file of
this package stored with the model) that answers with the predicted class name beside the
class probabilities; a regressor is the PyTorch model itself. :func:`load_model` accepts
exactly these two shapes.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import mlflow
import mlflow.artifacts
import mlflow.pyfunc
import mlflow.pytorch
import mlflow.utils.environment
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PyFuncModel
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema
from torch import nn

import pipeline.tracking.labelled_model as labelled_model
from pipeline.config import ModelConfig
from pipeline.data.cache import CacheMeta
from pipeline.errors import UserError, first_line
from pipeline.tracking.plain import PlainModel, plain_metadata, plain_model
from pipeline.tracking.store import active_run_id
from pipeline.training.models import model_metadata, package_model

logger = logging.getLogger(__name__)

# MLflow checks a model's requirements against the installed packages when it saves or loads
# one; the first check scans every installed distribution's file list. It has no setting to
# skip that (MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK only gates a `pip install --dry-run`), so the
# check is skipped for exactly our own pins, which come from the running interpreter and so
# cannot mismatch; any other requirement list still gets MLflow's warning.
_DEPENDENCY_CHECK = "warn_dependency_requirement_mismatches"
_CHECK_CALLERS: tuple[ModuleType, ...] = (mlflow.utils.environment, mlflow.pyfunc)


def example_input(meta: CacheMeta, n: int = 2) -> np.ndarray:
    """Raw-valued float32 samples shaped like the real input, built from the cache statistics.

    Prefer real samples from the cache (``log_model(example=...)``); this is the fallback.
    """
    shape = [int(d) for d in meta.input_shape]
    scale = 255.0 if meta.kind == "image" else 1.0
    mean = np.asarray(meta.mean, dtype=np.float64) * scale
    std = np.asarray(meta.std, dtype=np.float64) * scale
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(size=(n, *shape))
    bshape = [1, -1] + [1] * (len(shape) - 1)
    x = noise * std.reshape(bshape) + mean.reshape(bshape)
    if meta.kind == "image":
        x = np.clip(np.round(x), 0, 255)
    return x.astype(np.float32)


def pip_requirements() -> list[str]:
    """Fixed requirements, so MLflow does not spend seconds inferring them on every log."""
    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]


def _skipping_own_pins(check: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    @functools.wraps(check)
    def checked(model_requirements: list[str]) -> None:
        if not set(model_requirements) <= set(pip_requirements()):
            check(model_requirements)

    checked._skips_own_pins = True  # type: ignore[attr-defined]
    return checked


def skip_dependency_check_for_own_pins() -> None:
    """Install :func:`_skipping_own_pins` in front of MLflow's requirement check (idempotent)."""
    for module in _CHECK_CALLERS:
        check = getattr(module, _DEPENDENCY_CHECK, None)
        if check is not None and not getattr(check, "_skips_own_pins", False):
            setattr(module, _DEPENDENCY_CHECK, _skipping_own_pins(check))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence known-harmless warnings MLflow and torch.export print while logging a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.export")
        yield


def _checked_example(example: np.ndarray | None, meta: CacheMeta) -> np.ndarray:
    if example is None:
        example = example_input(meta)
    example = np.array(example, dtype=np.float32, copy=True, order="C")  # writable, owned
    if list(example.shape[1:]) != [int(d) for d in meta.input_shape] or len(example) < 1:
        raise ValueError(
            f"log_model: example shape {example.shape} does not match input {meta.input_shape}"
        )
    return example


def log_model(
    net: nn.Module,
    meta: CacheMeta,
    *,
    name: str = "model",
    example: np.ndarray | None = None,
    validate: bool = True,
    run_id: str | None = None,
    experiment_id: str | None = None,
    params: dict[str, str] | None = None,
    config: ModelConfig | None = None,
) -> ModelInfo:
    """Log the servable :func:`package_model` of ``net`` to the active run (``pt2`` format).

    Args:
        net: the trained network (it is copied to the CPU; the original is not touched).
        meta: the cache metadata (normalisation statistics, names, shape) packaged with it.
        name: the model's name in the run.
        example: raw-valued float32 input ``[n, *input_shape]``; real samples are best.
            Defaults to two samples built from the cache statistics.
        validate: let MLflow load the saved model back and run the example through it. A
            failure there is only a warning, so searches, whose logged models the tests load
            and compare, turn it off.
        run_id: the run to log to; default the active run. Naming the run spares a search the
            fluent ``start_run``/``end_run`` round trips for each trial.
        experiment_id: the run's experiment, when ``run_id`` is given (looked up if omitted).
        params: the model's params in MLflow's model list, when ``run_id`` is given (MLflow
            copies the active run's params otherwise).
        config: the ``model`` section that built ``net``. Stored with the model (and the
            network's answer to the example), it lets :func:`load_scorer` score the served
            weights through the plain network (:mod:`pipeline.tracking.plain`).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` loads it with ``mlflow.pyfunc.load_model``).
    """
    skip_dependency_check_for_own_pins()
    named_run = run_id is not None
    run_id = active_run_id(run_id)
    packaged = package_model(copy.deepcopy(net).cpu(), meta)
    example = _checked_example(example, meta)
    with torch.no_grad():
        output = packaged(torch.from_numpy(example)).numpy()
    signature = model_signature(example, output, meta)
    metadata = {**model_metadata(meta), **plain_metadata(config, output)}
    model_id = None
    if named_run:
        # MLflow files a model logged to a named (not active) run under the process's current
        # experiment, where `runs:/<run>/model` does not find it: create it in the run's own.
        # (From here on MLflow marks the model FAILED if logging it fails.)
        client = MlflowClient()
        if experiment_id is None:
            experiment_id = client.get_run(run_id).info.experiment_id
        model_id = client.create_logged_model(
            experiment_id, name=name, source_run_id=run_id, params=params
        ).model_id
    common = {"input_example": example, "pip_requirements": pip_requirements(),
              "metadata": metadata, "run_id": run_id, "model_id": model_id}
    with _quiet():
        if meta.task != "classification":
            return mlflow.pytorch.log_model(packaged, name=name, serialization_format="pt2",
                                            signature=signature, validate_serving_input=validate,
                                            **common)
        with tempfile.TemporaryDirectory() as tmp:
            network = Path(tmp) / labelled_model.NETWORK
            mlflow.pytorch.save_model(
                packaged, str(network), serialization_format="pt2", signature=signature,
                input_example=example, pip_requirements=pip_requirements(),
                metadata=metadata)
            return mlflow.models.Model.log(
                artifact_path=None, name=name, flavor=mlflow.pyfunc,
                python_model=str(LABELLED_CODE), artifacts={labelled_model.NETWORK: str(network)},
                signature=labelled_signature(signature), flavor_name="pyfunc.ModelFromCode",
                **common)


def model_signature(example: np.ndarray, output: np.ndarray, meta: CacheMeta) -> ModelSignature:
    """The input tensor's spec, and outputs named for what they are: one column per class name
    (the probabilities, in the model's column order) or the target's name.

    This is the network's own signature; a classifier is served with :func:`labelled_signature`.
    """
    names = list(meta.class_names) if meta.task == "classification" else [meta.target_name]
    dtype = "float" if output.dtype == np.float32 else "double"
    return ModelSignature(inputs=infer_signature(example).inputs,
                          outputs=Schema([ColSpec(dtype, name) for name in names]))


def labelled_signature(network: ModelSignature) -> ModelSignature:
    """The served classifier's signature: the network's input, and as output the predicted
    class name (``label``) before the network's probability columns (named by class)."""
    assert network.outputs is not None
    outputs = [ColSpec("string", labelled_model.LABEL), *network.outputs.inputs]
    return ModelSignature(inputs=network.inputs, outputs=Schema(outputs))


def warm_up_export() -> None:
    """Pay torch.export's one-off start-up (lazy imports) on a toy module.

    Called on the logging thread when a search starts, so it overlaps the first trial's
    training instead of delaying that trial's record.
    """
    try:
        with _quiet():
            torch.export.export(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (torch.zeros(2, 2),))
    except Exception:  # only a warm-up: the real export reports real problems
        logger.debug("torch.export warm-up failed", exc_info=True)


# --------------------------------------------------------------------------------------------
# Loading: the one way the project's commands load a model
# --------------------------------------------------------------------------------------------
# MLflow's own switch, read by its pytorch flavor (and others) at load time; with it off,
# MLflow also checks that a pt2 archive holds no pickle payload before torch loads it.
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
_SAFE_FLAVORS = {"pytorch", "python_function"}
# The served classifier's code file as this project has shipped it (SHA-256 of its bytes): a
# model-from-code runs its file when it loads, so only these exact files are accepted. When
# labelled_model.py changes, add the new digest and keep the old ones (older models use them).
LABELLED_CODE = Path(labelled_model.__file__)
LABELLED_CODE_SHA256 = frozenset({
    "0e8da86b1b42f4eb9f19e8f538ffd6e47eb2da706a6666716016cec5e5544876",
    # predict's model_input without a type hint:
    "d2e2a5aecbecba9def33f30994ae25e8e1dc8ccd80988e6c42b80e6f2d1c2cc2",
})
_FROM_CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
_PT2_FILE = "model.pt2"  # the program's file in the PyTorch flavor's data folder (MLflow's name)


def refuse_pickle() -> None:
    """Switch MLflow's pickle deserialization off for this process and its children."""
    os.environ[PICKLE_SWITCH] = "false"


def unsafe_format(flavors: dict[str, dict]) -> str | None:
    """Why a model with these MLmodel flavors could run code on load, or None when it cannot
    (judging from the MLmodel file alone; :func:`unsafe_files` checks the files).

    Two shapes pass. The PyTorch flavor behind MLflow's pytorch pyfunc loader: whether its
    weights are ``pt2`` or a pickle shows only in its files, so that part is MLflow's own
    check (with :data:`PICKLE_SWITCH` off it refuses pickled weights and pickle payloads in a
    ``pt2``). And the project's served classifier: a model-from-code pyfunc whose code is
    ``labelled_model.py`` and whose one artifact is that PyTorch model.
    """
    extra = sorted(set(flavors) - _SAFE_FLAVORS)
    if extra:
        return f"its flavors {extra} load with pickle or run the model's own code"
    # MLflow puts a model's bundled code folder on sys.path when it loads it: code that runs.
    if any(flavors.get(f, {}).get("code") for f in _SAFE_FLAVORS):
        return "it bundles Python code (a 'code' folder MLflow would put on sys.path)"
    pyfunc = flavors.get("python_function", {})
    if "pytorch" not in flavors:
        return _unsafe_labelled(pyfunc)
    loader = pyfunc.get("loader_module")
    if loader != "mlflow.pytorch":
        return f"its pyfunc loader is {loader!r}, not mlflow.pytorch"
    return None


_MISSING_FILES = ("No such artifact", "Failed to download artifacts", "No such file")


def _load_error(uri: str, exc: BaseException) -> UserError:
    """One line for a model that cannot be read; when its files are gone from the artifact
    store (deleted, or a project copied without them), where MLflow looked and what to do."""
    said = first_line(exc)
    if not (isinstance(exc, FileNotFoundError) or any(m in said for m in _MISSING_FILES)):
        return UserError(f"cannot load model {uri!r}: {said}")
    where = ""
    with contextlib.suppress(Exception):  # only to say where; the error is the missing files
        where = f" at {_artifact_location(uri)}"
    return UserError(
        f"cannot load model {uri!r}: its files are missing from the artifact store{where} "
        f"({said}); restore that folder from a backup (or from the project it was copied "
        "from), or train and promote a new model"
    )


def _artifact_location(uri: str) -> str:
    """Where the files of the model behind ``uri`` are (or were) kept: a run's model is a
    logged model of its own (MLflow 3), not a folder of the run's artifacts."""
    if uri.startswith("models:"):
        return str(ModelsArtifactRepository.get_underlying_uri(uri))
    run_id, _, name = uri[len("runs:/"):].partition("/")
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    for model in client.search_logged_models(experiment_ids=[experiment_id],
                                             filter_string=f"name = '{name}'"):
        if model.source_run_id == run_id:
            return str(model.artifact_location)
    return str(RunsArtifactRepository.get_underlying_uri(uri))


def _unsafe_labelled(pyfunc: dict) -> str | None:
    """Why a pyfunc without the PyTorch flavor is not the project's served classifier."""
    code = str(pyfunc.get("model_code_path") or "")
    if pyfunc.get("loader_module") != _FROM_CODE_LOADER or not code:
        return "it has no PyTorch flavor"
    if Path(code).name != LABELLED_CODE.name or "python_model" in pyfunc:
        return f"its code {Path(code).name!r} is not this project's {LABELLED_CODE.name}"
    artifacts = pyfunc.get("artifacts") or {}
    expected = f"artifacts/{labelled_model.NETWORK}"
    if set(artifacts) != {labelled_model.NETWORK} or \
            artifacts[labelled_model.NETWORK].get("path") != expected:
        return f"its artifacts are not one PyTorch model at {expected}"
    return None


def unsafe_files(local: Path, flavors: dict[str, dict]) -> str | None:
    """For the served classifier (a local copy of it): why its files could run code other than
    ours, or None. Its code file must be one this project shipped, and its network a pt2
    PyTorch model (:func:`unsafe_format` on the network's own MLmodel)."""
    if "pytorch" in flavors:
        return None  # a PyTorch model: its weights are MLflow's to check when it loads
    code = local / Path(str(flavors["python_function"]["model_code_path"])).name
    if not code.is_file() or hashlib.sha256(code.read_bytes()).hexdigest() not in \
            LABELLED_CODE_SHA256:
        return f"its {code.name} is not a file this project shipped (its code would run)"
    network = local / "artifacts" / labelled_model.NETWORK
    try:
        inner = mlflow.models.Model.load(str(network)).flavors
    except (MlflowException, OSError) as exc:
        return f"its network cannot be read ({first_line(exc)})"
    return _inner_problem(unsafe_format(inner), inner)


def _inner_problem(problem: str | None, inner: dict[str, dict]) -> str | None:
    if problem is None and "pytorch" not in inner:
        return "its network is not a PyTorch model"
    return None if problem is None else f"its network: {problem}"


def _refusal(uri: str, problem: str) -> UserError:
    return UserError(
        f"model {uri!r} is refused: {problem}; this project loads only PyTorch models logged "
        "in the pt2 format (torch.export), which run no code when loaded"
    )


def check_format(uri: str) -> Path | None:
    """Refuse anything but this project's two model shapes (:func:`unsafe_format`), reading the
    MLmodel file first; for the served classifier, a local copy's files too
    (:func:`unsafe_files`). Returns that checked copy (None for a PyTorch model: its MLmodel
    file is all there is to check before MLflow's own pickle check at load time).

    Also switches pickle off for this process, so whatever loads the model next cannot unpickle.

    Raises:
        UserError: the model is missing, unreadable or could run code when loaded.
    """
    refuse_pickle()
    try:
        flavors = mlflow.models.get_model_info(uri).flavors
        problem = unsafe_format(flavors)
        local = None
        if problem is None and "pytorch" not in flavors:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
            problem = unsafe_files(local, flavors)
    except (MlflowException, OSError) as exc:
        raise _load_error(uri, exc) from None
    if problem:
        raise _refusal(uri, problem)
    return local


def load_model(uri: str) -> PyFuncModel:
    """Load a logged or registered model as a pyfunc (what ``mlflow models serve`` serves),
    never unpickling.

    The model is checked first (:func:`check_format`) and anything but the project's own shapes
    is refused before any of its files are deserialized or its code runs; the copy that was
    checked is the one loaded, and pickle stays switched off for the load itself.

    Raises:
        UserError: the model is missing, unreadable or not in the safe format.
    """
    local = check_format(uri)
    return _load_pyfunc(uri, str(local) if local is not None else uri)


def load_scorer(uri: str) -> PyFuncModel | PlainModel:
    """The model behind ``uri`` for scoring: its served weights in the plain network when it
    can be rebuilt (:func:`pipeline.tracking.plain.plain_model`: no torch.export loader),
    else the served pyfunc itself; checked, and never unpickled, as :func:`load_model`.

    Raises:
        UserError: the model is missing, unreadable or not in the safe format.
    """
    local = check_format(uri)
    try:
        local = local or Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        mlmodel = mlflow.models.Model.load(str(local))
        # A regressor is the PyTorch model; a classifier's network is its (checked) artifact.
        network = local if "pytorch" in mlmodel.flavors else local / "artifacts" / \
            labelled_model.NETWORK
        data = mlflow.models.Model.load(str(network)).flavors["pytorch"]["model_data"]
    except (MlflowException, OSError) as exc:
        raise _load_error(uri, exc) from None
    archive = network / data / _PT2_FILE
    return plain_model(mlmodel, local, archive) or _load_pyfunc(uri, str(local))


def _load_pyfunc(uri: str, where: str) -> PyFuncModel:
    """MLflow's pyfunc of the model at ``where`` (checked), named ``uri`` in errors."""
    # Loading checks the model's requirements against every installed package (a scan of
    # all their file lists); our own pins come from this interpreter and cannot mismatch.
    skip_dependency_check_for_own_pins()
    try:
        return mlflow.pyfunc.load_model(where)
    except MlflowException as exc:
        if "using pickle is disallowed" in str(exc) or "pickle-free" in str(exc):
            raise _refusal(uri, "its weights are pickled") from None
        raise _load_error(uri, exc) from None
    except OSError as exc:
        raise _load_error(uri, exc) from None
