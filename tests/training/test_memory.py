"""The memory estimate before training: counted on the meta device, compared with what is free."""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.training import memory
from pipeline.training.memory import check_fits, estimate, optimizer_states
from pipeline.training.models import build_model
from tests.conftest import REPO, make_image_cache, make_tabular_cache
from tests.tracking.test_runs import empty_store_template

CPU = torch.device("cpu")


@pytest.mark.parametrize("model", [
    ModelConfig(width=48, hidden_layers=2, batch_norm=True, dropout=0.2),
    ModelConfig(arch="cnn", conv_blocks=2, conv_channels=4),
    ModelConfig(arch="resnet18"),
])
def test_parameters_are_those_of_the_real_model(tmp_path: Path, model: ModelConfig) -> None:
    meta = make_image_cache(tmp_path / "c", channels=3, size=32, n_train=20, n_test=10)
    found = estimate(model, TrainConfig(batch_size=16), meta, device=CPU)
    assert found.parameters == sum(p.numel() for p in build_model(model, meta).parameters())
    assert found.activations > 16 * 3 * 32 * 32 * 4  # at least the input batch, in float32
    assert found.data == 0  # on the CPU the data stays where it is


def test_the_total_counts_weights_gradients_optimizer_and_activations(tmp_path: Path) -> None:
    meta = make_tabular_cache(tmp_path / "t", features=10)
    model = ModelConfig(width=100, hidden_layers=1)
    adam = estimate(model, TrainConfig(optimizer="adam", batch_size=8), meta, device=CPU,
                    models=5)
    params = (10 * 100 + 100) + (100 * 1 + 1)
    assert adam.parameters == params and adam.optimizer_states == 2
    assert adam.total == 5 * (params * 4 * 4 + adam.activations)
    assert optimizer_states(TrainConfig(optimizer="sgd", momentum=0.0)) == 0
    assert optimizer_states(TrainConfig(optimizer="sgd", momentum=0.9)) == 1
    assert optimizer_states(TrainConfig(optimizer="rmsprop", momentum=0.9)) == 2


def test_a_model_that_cannot_fit_is_one_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    meta = make_image_cache(tmp_path / "c", size=28, n_train=20, n_test=10)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 * 10**9)
    with pytest.raises(UserError) as caught:
        check_fits(ModelConfig(width=65536), TrainConfig(), meta, device=CPU, models=5)
    params = (784 + 1) * 65536 + (65536 + 1) * 65536 + (65536 + 1) * 3
    assert re.fullmatch(
        rf"model: training needs about \d+\.\d GB but cpu has 2\.0 GB available \({params:,} "
        r"parameters × 4 bytes × 4 for weights, gradients and adam's 2 state\(s\), for each "
        r"of 5 folds trained at once, plus \d+ MB of activations at train\.batch_size 256\); "
        r"expected a smaller model \(model\.width, model\.hidden_layers, "
        r"model\.conv_channels\) or batch \(model\.width is 65536\)", str(caught.value))
    check_fits(ModelConfig(width=64), TrainConfig(), meta, device=CPU, models=5)  # fits
    # A weights file is read for its values only: the estimate needs none.
    resnet = dataclasses.replace(ModelConfig(arch="resnet18"), weights="missing.pt")
    assert estimate(resnet, TrainConfig(), make_image_cache(tmp_path / "rgb", channels=3),
                    device=CPU).parameters > 10**7


def _limit_address_space() -> None:
    # Whatever the code under test does, it cannot take the machine's memory (the code before
    # this estimate allocated the 17 GB layer and failed only after start-up).
    resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))


@pytest.mark.slow  # a process of its own, under a memory limit: ~10 s of start-up
def test_train_refuses_a_width_that_cannot_fit_before_allocating(project: Path) -> None:
    make_image_cache(project / "data" / "cache" / "digits", name="digits", n_train=120)
    shutil.copyfile(empty_store_template(), project / "mlruns" / "mlflow.db")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.train", "--params", str(project / "params.yaml"),
         "--set", "model.width=65536", "--set", "model.hidden_layers=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=_limit_address_space,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in done.stderr and len(errors) == 1, done.stderr
    assert re.match(r"error: model: training needs about \d+\.\d GB but cpu has ", errors[0])
    assert not (project / "checkpoints" / "train-digits").exists() or not any(
        (project / "checkpoints" / "train-digits").iterdir())
