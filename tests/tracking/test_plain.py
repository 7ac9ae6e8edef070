"""Scoring through the plain network: the served pt2 archive's weights in the network this code
builds answer exactly what the served program answers, and anything else falls back to it."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from pipeline.config import ModelConfig, Params
from pipeline.data.cache import CacheMeta, load_cache
from pipeline.tracking import configure, experiment, log_model
from pipeline.tracking.models import load_model, load_scorer
from pipeline.tracking.plain import CONFIG_KEY, EXAMPLE_OUTPUT_KEY, PlainModel, read_weights
from pipeline.training import build_model
from tests.tracking.test_runs import (  # noqa: F401 - the store fixtures
    empty_store,
    fast_store,
)


def _logged(params: Params, folder: Path, meta: CacheMeta, cfg: ModelConfig | None,
            *, train: bool = True) -> tuple[str, np.ndarray, torch.nn.Module]:
    """A network with non-trivial weights (a few steps, so batch-norm statistics move), logged
    with ``cfg``; its URI, the test inputs and the network."""
    cache = load_cache(folder)
    torch.manual_seed(0)
    net = build_model(cfg or ModelConfig(), meta)
    x = torch.from_numpy(np.asarray(cache.train_x, dtype=np.float32) / 255.0)
    if train:
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):
            out = net(x)
            loss = out.square().mean() if meta.task != "classification" else \
                torch.nn.functional.cross_entropy(out, torch.from_numpy(cache.train_y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    configure(params)
    with mlflow.start_run(experiment_id=experiment("plain", params)):
        info = log_model(net, meta, example=np.asarray(cache.train_x[:2], dtype=np.float32),
                         config=cfg)
    return info.model_uri, np.asarray(cache.test_x, dtype=np.float32), net


def _served(uri: str, x: np.ndarray, meta: CacheMeta) -> np.ndarray:
    """What MLflow's pyfunc (the pt2 program that `mlflow models serve` runs) answers."""
    out = load_model(uri).predict(x)
    return out[list(meta.class_names)].to_numpy() if hasattr(out, "columns") else np.asarray(out)


CONFIGS = {
    "mlp": ModelConfig(hidden_layers=2, width=16),
    "mlp-bn-dropout-gelu-shrinking": ModelConfig(
        hidden_layers=3, width=32, width_schedule="shrinking", activation="gelu",
        batch_norm=True, dropout=0.3),
    "cnn": ModelConfig(arch="cnn", conv_blocks=2, conv_channels=4),
    "cnn-bn-dropout": ModelConfig(arch="cnn", conv_blocks=3, conv_channels=4, batch_norm=True,
                                  dropout=0.2, activation="silu"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_plain_network_answers_what_the_served_program_answers(
    name: str, params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    folder, meta = image_cache(channels=1, size=8, classes=3)
    uri, x, _ = _logged(params, folder, meta, CONFIGS[name])
    scorer = load_scorer(uri)
    assert isinstance(scorer, PlainModel)
    got = scorer.predict(x)
    served = _served(uri, x, meta)
    assert got.shape == served.shape == (len(x), 3)
    np.testing.assert_allclose(got, served, rtol=1e-5, atol=1e-7)
    assert (got.argmax(axis=1) == served.argmax(axis=1)).all()


def test_a_regressor_too(params: Params,
                         tabular_cache: Callable[..., tuple[Path, CacheMeta]]) -> None:
    folder, meta = tabular_cache()
    uri, x, _ = _logged(params, folder, meta, ModelConfig(hidden_layers=2, width=8,
                                                          batch_norm=True))
    scorer = load_scorer(uri)
    assert isinstance(scorer, PlainModel)
    served = _served(uri, x, meta)
    assert scorer.predict(x).shape == served.shape == (len(x),)
    np.testing.assert_allclose(scorer.predict(x), served, rtol=1e-5, atol=1e-4)


def test_the_weights_are_the_archives_own(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    """Read as raw storage, never unpickled: equal to the state dict torch.export saved."""
    folder, meta = image_cache()
    uri, _, net = _logged(params, folder, meta, CONFIGS["mlp-bn-dropout-gelu-shrinking"])
    archive = next(Path(mlflow.artifacts.download_artifacts(uri)).rglob("model.pt2"))
    weights = read_weights(archive)
    program = torch.export.load(str(archive))
    assert set(weights) == set(program.state_dict)
    for key, value in program.state_dict.items():
        assert torch.equal(weights[key], value), key
    assert torch.equal(weights["net.1.weight"], net.state_dict()["1.weight"])


def _edit_metadata(uri: str, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A local copy of the model with its MLmodel metadata edited."""
    copy = tmp_path / "copy"
    shutil.copytree(mlflow.artifacts.download_artifacts(uri), copy)
    mlmodel = copy / "MLmodel"
    raw = yaml.safe_load(mlmodel.read_text())
    edit(raw["metadata"])
    mlmodel.write_text(yaml.safe_dump(raw))
    return copy


def test_a_network_that_answers_otherwise_is_scored_through_the_program(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Code that builds the network differently now (here: another activation named in the
    config) no longer reproduces the logged answer: the program scores, with a warning."""
    folder, meta = image_cache()
    uri, x, _ = _logged(params, folder, meta, CONFIGS["mlp"])

    def other_code(md: dict) -> None:
        md[CONFIG_KEY]["activation"] = "tanh"

    copy = _edit_metadata(uri, tmp_path, other_code)
    with caplog.at_level(logging.WARNING):
        scorer = load_scorer(str(copy))
    assert not isinstance(scorer, PlainModel)
    assert "does not answer its logged example" in caplog.text
    np.testing.assert_allclose(np.asarray(scorer.predict(x)[list(meta.class_names)]),
                               _served(uri, x, meta), rtol=1e-6)


@pytest.mark.parametrize("edit", ["no config", "unknown key", "other shapes"])
def test_models_it_cannot_rebuild_are_scored_through_the_program(
    edit: str, params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
    tmp_path: Path,
) -> None:
    folder, meta = image_cache()
    uri, x, _ = _logged(params, folder, meta, CONFIGS["mlp"])

    def change(md: dict) -> None:
        if edit == "no config":  # a model logged before these keys existed
            del md[CONFIG_KEY], md[EXAMPLE_OUTPUT_KEY]
        elif edit == "unknown key":
            md[CONFIG_KEY]["heads"] = 4
        else:  # a strict load refuses weights of other shapes
            md[CONFIG_KEY]["width"] = 17

    scorer = load_scorer(str(_edit_metadata(uri, tmp_path, change)))
    assert not isinstance(scorer, PlainModel)
    assert list(scorer.predict(x).columns) == ["label", *meta.class_names]


class _Trap:
    """Unpickling this writes a file: proof that something unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "ran"))


def test_a_pickled_weight_is_never_unpickled(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]], tmp_path: Path,
) -> None:
    """An archive whose weight is a pickle: the plain reader refuses it without reading it, and
    the program loader (MLflow, pickle switched off) refuses the model; nothing unpickles it."""
    from pipeline.errors import UserError
    from pipeline.tracking.plain import NotPlain

    folder, meta = image_cache()
    uri, _, _ = _logged(params, folder, meta, CONFIGS["mlp"])
    copy = tmp_path / "copy"
    shutil.copytree(mlflow.artifacts.download_artifacts(uri), copy)
    archive = next(copy.rglob("model.pt2"))
    with zipfile.ZipFile(archive) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    (config_name,) = [n for n in entries if n.endswith("model_weights_config.json")]
    config = json.loads(entries[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    marker = tmp_path / "ran.txt"
    entries[config_name] = json.dumps(config).encode()
    entries[config_name.replace("model_weights_config.json", first["path_name"])] = \
        pickle.dumps(_Trap(marker))
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    with pytest.raises(NotPlain, match="pickled"):
        read_weights(archive)
    with pytest.raises(UserError, match="refused: its weights are pickled"):
        load_scorer(str(copy))
    assert not marker.exists()


def test_without_a_config_the_model_logs_as_before(
    params: Params, image_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    folder, meta = image_cache()
    uri, x, _ = _logged(params, folder, meta, None, train=False)
    md = mlflow.models.get_model_info(uri).metadata
    assert CONFIG_KEY not in md and EXAMPLE_OUTPUT_KEY not in md
    assert not isinstance(load_scorer(uri), PlainModel)
