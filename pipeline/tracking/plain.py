"""Scoring a logged model through its plain network: the served ``pt2`` archive's own weights in
the module this project builds, without torch.export's loader.

What ``mlflow models serve`` serves is the ``pt2`` program (:mod:`pipeline.tracking.models`).
Loading that program goes through ``torch.export.load``, whose deserializer imports
``torch._dynamo`` and replays the graph's symbolic shapes: seconds per process (BENCHMARKS.md,
"Fixed costs of every command"). Scoring does not need the program, only what it computes, so
:func:`plain_model` rebuilds the network from the ``model_config`` stored with the model, loads
the archive's weights into it (read as raw bytes: the archive's weight files are plain tensor
storage; a weight that the archive pickled is refused, nothing is unpickled), and accepts it
only when:

- its parameter and buffer names and shapes are exactly the archive's (a strict load), and
- on the model's logged input example it answers what the network answered when the model was
  logged (``example_output``, written by ``log_model`` from the module it exported).

Otherwise (a model logged before these keys existed, a network whose code has changed since,
a ResNet, whose rebuild would import torchvision) it returns None, and the caller loads the
served program itself. ``tests/tracking/test_plain.py`` checks that both answer the same.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models import Model
from torch import nn
from torch._export.serde.schema import Layout, ScalarType

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.training.models import build_model, meta_from_metadata, package_model

logger = logging.getLogger(__name__)

# The metadata keys log_model writes for this path.
CONFIG_KEY = "model_config"  # the ``model`` section of params that built the network
EXAMPLE_OUTPUT_KEY = "example_output"  # the network's answer to the logged input example
# Networks built by this project's own code. A ResNet is torchvision's: rebuilding one imports
# torchvision, which costs more than loading its pt2 program.
REBUILT_ARCHS = ("mlp", "cnn")
# How close the rebuilt network must answer the logged example: the same weights through the
# same operations differ only by float rounding (oneDNN or MKL kernels); a network built
# differently answers differently by orders of magnitude more.
RTOL, ATOL = 1e-4, 1e-6

_DTYPES = {
    ScalarType.FLOAT: torch.float32, ScalarType.DOUBLE: torch.float64,
    ScalarType.HALF: torch.float16, ScalarType.BFLOAT16: torch.bfloat16,
    ScalarType.LONG: torch.int64, ScalarType.INT: torch.int32, ScalarType.BOOL: torch.bool,
}
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"  # of the program named "model"


def plain_metadata(config: ModelConfig | None, example_output: np.ndarray) -> dict[str, Any]:
    """What ``log_model`` stores with a model for :func:`plain_model`: the ``model`` section
    that built the network and the network's answer to the input example (nothing without a
    config)."""
    if config is None:
        return {}
    return {CONFIG_KEY: asdict(config),
            EXAMPLE_OUTPUT_KEY: np.asarray(example_output, dtype=np.float64).tolist()}


class NotPlain(Exception):
    """Why a model cannot be scored through its plain network (the caller loads the program)."""


@dataclass(frozen=True)
class PlainModel:
    """A logged model's network with the served archive's weights, answering as its pyfunc
    does for scoring: ``predict(x)`` gives probabilities ``[N, K]`` or predictions ``[N]``."""

    metadata: Model  # the logged model's MLmodel (``metadata.metadata``: what log_model wrote)
    network: nn.Module  # the packaged network (raw values in), in eval mode

    def predict(self, x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.inference_mode():
            return self.network(batch).numpy()


def plain_model(mlmodel: Model, folder: Path, archive: Path) -> PlainModel | None:
    """The model in ``folder`` (a local copy; its MLmodel already read) as a :class:`PlainModel`,
    with the weights of the ``pt2`` ``archive``; None, with the reason logged, when it cannot
    be one (the caller then loads the program)."""
    try:
        return PlainModel(mlmodel, _rebuilt(mlmodel, folder, archive))
    except NotPlain as why:
        logger.debug("scoring %s through its pt2 program: %s", folder, why)
        return None


def _rebuilt(mlmodel: Model, folder: Path, archive: Path) -> nn.Module:
    md = mlmodel.metadata or {}
    if CONFIG_KEY not in md or EXAMPLE_OUTPUT_KEY not in md:
        raise NotPlain("logged without model_config/example_output")
    config = _config(md[CONFIG_KEY])
    if config.arch not in REBUILT_ARCHS:
        raise NotPlain(f"a {config.arch} is rebuilt by torchvision")
    try:
        meta = meta_from_metadata(md)
        net = package_model(build_model(config, meta), meta)
        net.load_state_dict(read_weights(archive), strict=True)
    except (UserError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise NotPlain(f"its network cannot be rebuilt ({exc})") from None
    _check_example(net, mlmodel, folder, md[EXAMPLE_OUTPUT_KEY])
    return net


def _config(raw: Any) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    if not isinstance(raw, dict) or not set(raw) <= known:
        raise NotPlain(f"model_config {raw!r} is not a model section this code knows")
    return ModelConfig(**raw)


def _check_example(net: nn.Module, mlmodel: Model, folder: Path, expected: Any) -> None:
    """The rebuilt network must answer the logged example as the exported network did."""
    example = mlmodel.load_input_example(str(folder))
    if example is None:
        raise NotPlain("no input example to check the rebuilt network on")
    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    with torch.inference_mode():
        got = net(x).numpy()
    want = np.asarray(expected, dtype=np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=RTOL, atol=ATOL):
        logger.warning(
            "%s: the network rebuilt by this code does not answer its logged example as the "
            "served program does (the model code changed since it was logged); scoring "
            "through the pt2 program instead", folder)
        raise NotPlain("the rebuilt network disagrees with the logged example output")


def read_weights(archive: Path) -> dict[str, torch.Tensor]:
    """The state dict stored in a ``pt2`` archive, read as raw tensor storage (never unpickled).

    Raises:
        NotPlain: the archive is not one this reader knows, or a weight in it is pickled.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.endswith("/" + _WEIGHTS_CONFIG)]
            if len(names) != 1:
                raise NotPlain(f"{archive.name} holds {len(names)} weight configs, not one")
            root = names[0][: -len(_WEIGHTS_CONFIG)]
            config = json.loads(zf.read(names[0]))["config"]
            storages: dict[str, torch.Tensor] = {}
            return {fqn: _tensor(zf, root, entry, storages) for fqn, entry in config.items()}
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise NotPlain(f"{archive.name} cannot be read as raw weights ({exc})") from None


def _tensor(zf: zipfile.ZipFile, root: str, entry: dict[str, Any],
            storages: dict[str, torch.Tensor]) -> torch.Tensor:
    """One weight: a strided view of its storage file (shared by views of one storage)."""
    meta = entry["tensor_meta"]
    if entry.get("use_pickle", True):
        raise NotPlain(f"weight {entry['path_name']} is pickled")
    dtype = _DTYPES.get(ScalarType(meta["dtype"]))
    if dtype is None or meta["layout"] != Layout.Strided or meta["device"]["type"] != "cpu":
        raise NotPlain(f"weight {entry['path_name']} is not a dense CPU tensor this reader knows")
    path = entry["path_name"]
    if path not in storages:
        data = bytearray(zf.read(f"{root}data/weights/{path}"))
        storages[path] = (torch.frombuffer(data, dtype=dtype) if data
                          else torch.empty(0, dtype=dtype))
    sizes = [int(s["as_int"]) for s in meta["sizes"]]
    strides = [int(s["as_int"]) for s in meta["strides"]]
    return storages[path].as_strided(sizes, strides, int(meta["storage_offset"]["as_int"]))
