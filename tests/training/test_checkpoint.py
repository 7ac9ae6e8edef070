"""Checkpoints: atomic writes, weights_only loading, refusing another configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.data.cache import CacheMeta, load_cache
from pipeline.errors import UserError
from pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from pipeline.training.engine import Trainer, make_split
from pipeline.training.models import build_model


@pytest.fixture
def trainer(image_cache: Callable[..., tuple[Path, CacheMeta]]) -> Trainer:
    folder, meta = image_cache(n_train=60)
    cache = load_cache(folder)
    split = make_split(cache, np.arange(40), np.arange(40, 60))
    torch.manual_seed(0)
    net = build_model(ModelConfig(hidden_layers=1, width=8, batch_norm=True), meta)
    t = Trainer(model=net, cfg=TrainConfig(batch_size=16, max_epochs=3), meta=meta, split=split,
                device=torch.device("cpu"), seed=0)
    t.run_epoch()
    return t


def test_round_trip_with_weights_only(trainer: Trainer, tmp_path: Path) -> None:
    path = save_checkpoint(trainer.state_dict(), tmp_path / "a" / "last.pt",
                           meta={"train.lr": 0.001})
    raw = torch.load(path, weights_only=True)  # no pickled objects inside
    assert raw["meta"] == {"train.lr": 0.001}
    state = load_checkpoint(path, meta={"train.lr": 0.001})
    assert state["epoch"] == 1 and len(state["history"]) == 1
    torch.testing.assert_close(state["model"]["1.weight"], trainer.model.state_dict()["1.weight"])
    assert list(tmp_path.joinpath("a").iterdir()) == [path]  # no temp files left


def test_failed_write_keeps_the_old_checkpoint(trainer: Trainer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(trainer.state_dict(), tmp_path / "ck" / "last.pt")
    before = path.read_bytes()
    trainer.run_epoch()

    def broken_save(obj: object, fh: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(trainer.state_dict(), path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_other_configuration_is_refused(trainer: Trainer, tmp_path: Path) -> None:
    path = save_checkpoint(trainer.state_dict(), tmp_path / "last.pt",
                           meta={"train.lr": 0.001, "fingerprint": "abc"})
    with pytest.raises(UserError, match=r"train\.lr: checkpoint 0\.001 vs now 0\.01"):
        load_checkpoint(path, meta={"train.lr": 0.01, "fingerprint": "abc"})


def test_foreign_or_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a checkpoint written by this pipeline"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": "pipeline-checkpoint-1", "meta": {}}, tmp_path / "empty.pt")
    with pytest.raises(UserError, match="holds no trainer state"):
        load_checkpoint(tmp_path / "empty.pt")


def test_load_state_restores_trainer(trainer: Trainer, tmp_path: Path) -> None:
    path = save_checkpoint(trainer.state_dict(), tmp_path / "last.pt")
    expected = [trainer.run_epoch() for _ in range(2)]
    state = load_checkpoint(path)
    trainer.load_state_dict(state)
    assert trainer.epoch == 1 and not trainer.done
    again = [trainer.run_epoch() for _ in range(2)]
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in (*expected, *again)]
    assert strip[:2] == strip[2:]


def test_a_file_holding_python_objects_is_refused_in_one_safe_line(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save({"format": "pipeline-checkpoint-1", "trainer": Path("x")}, path)
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: refused") and "\n" not in message
    assert "weights_only" not in message and len(message) - len(str(path)) < 160
