"""The training engine: learning, early stopping, LR schedule, resume, determinism, hooks."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from pipeline.config import EarlyStoppingConfig, LrScheduleConfig, ModelConfig, TrainConfig
from pipeline.data.cache import CacheMeta, load_cache
from pipeline.data.splits import holdout_split
from pipeline.training.engine import (
    Split,
    Trainer,
    TrainingDiverged,
    _batch_bounds,
    fit,
    make_split,
)
from pipeline.training.models import build_model, package_model

CPU = torch.device("cpu")
SMALL_MODEL = ModelConfig(hidden_layers=1, width=16)


def load_split(folder: Path) -> tuple[Split, CacheMeta]:
    cache = load_cache(folder)
    tr, va = holdout_split(np.asarray(cache.train_y), fraction=0.25, seed=0,
                           classification=cache.meta.task == "classification")
    return make_split(cache, tr, va), cache.meta


@pytest.fixture
def images(image_cache: Callable[..., tuple[Path, CacheMeta]]) -> tuple[Split, CacheMeta]:
    folder, _ = image_cache()
    return load_split(folder)


@pytest.fixture
def table(tabular_cache: Callable[..., tuple[Path, CacheMeta]]) -> tuple[Split, CacheMeta]:
    folder, _ = tabular_cache()
    return load_split(folder)


def make_trainer(data: tuple[Split, CacheMeta], *, model: ModelConfig = SMALL_MODEL,
                 seed: int = 0, **train: object) -> Trainer:
    split, meta = data
    torch.manual_seed(seed)
    net = build_model(model, meta)
    cfg = TrainConfig(**{"batch_size": 32, "max_epochs": 5, **train})  # type: ignore[arg-type]
    return Trainer(model=net, cfg=cfg, meta=meta, split=split, device=CPU, seed=seed)


def scripted_val_losses(trainer: Trainer, losses: list[float]) -> None:
    """Replace validation with a script, so early stopping / LR decisions are known."""
    it: Iterator[float] = iter(losses)
    trainer.evaluate = lambda: {"val/loss": next(it), "val/accuracy": 0.5}  # type: ignore


def without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in history]


def weights(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------------------------
def test_make_split_keeps_uint8_images(images: tuple[Split, CacheMeta]) -> None:
    split, meta = images
    assert split.x_train.dtype == torch.uint8 and split.y_train.dtype == torch.int64
    assert tuple(split.x_train.shape[1:]) == tuple(meta.input_shape)
    assert len(split.x_train) + len(split.x_val) == meta.n_train


def test_learns_the_image_task(images: tuple[Split, CacheMeta]) -> None:
    trainer = make_trainer(images, max_epochs=15, lr=0.01)
    history = fit(trainer)
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert set(history[0]) == {"epoch", "train/loss", "train/accuracy", "val/loss",
                               "val/accuracy", "lr", "time_s"}
    assert history[-1]["val/accuracy"] >= 0.9
    assert history[-1]["train/accuracy"] > history[0]["train/accuracy"]
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert trainer.done and trainer.epoch == len(history)


def test_train_accuracy_counts_the_training_batches(images: tuple[Split, CacheMeta]) -> None:
    split, meta = images
    n = len(split.x_train) // 32 * 32  # whole batches only: none is dropped
    same = Split(x_train=split.x_train[:n], y_train=split.y_train[:n],
                 x_val=split.x_train[:n], y_val=split.y_train[:n])
    # No learning (lr 0, plain SGD) and no dropout: training-mode predictions equal eval-mode
    # ones, so the training part's accuracy must equal validation on the same samples.
    trainer = make_trainer((same, meta), max_epochs=1, lr=0.0, optimizer="sgd", momentum=0.0)
    row = trainer.run_epoch()
    assert 0.0 < row["val/accuracy"] < 1.0
    assert row["train/accuracy"] == pytest.approx(row["val/accuracy"], abs=1e-6)


def test_regression_metrics_are_in_target_units(table: tuple[Split, CacheMeta]) -> None:
    split, meta = table
    trainer = make_trainer(table, max_epochs=3,
                           early_stopping=EarlyStoppingConfig(restore_best=False))
    row = fit(trainer)[-1]
    assert set(row) == {"epoch", "train/loss", "val/loss", "val/mae", "val/rmse", "lr", "time_s"}
    net = trainer.final_model()
    with torch.no_grad():
        pred = package_model(net, meta)(split.x_val.float())
    err = pred - split.y_val
    assert row["val/mae"] == pytest.approx(err.abs().mean().item(), rel=1e-4)
    assert row["val/rmse"] == pytest.approx(err.square().mean().sqrt().item(), rel=1e-4)
    # val/loss is the MSE on standardised targets.
    assert row["val/loss"] == pytest.approx(row["val/rmse"] ** 2 / meta.target_std**2, rel=1e-4)


def test_early_stopping_stops_and_restores_best(images: tuple[Split, CacheMeta]) -> None:
    trainer = make_trainer(images, max_epochs=20,
                           early_stopping=EarlyStoppingConfig(patience=2))
    scripted_val_losses(trainer, [1.0, 0.5, 0.6, 0.7, 0.1])
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    history = fit(trainer, on_epoch=lambda row: snapshots.update(
        {int(row["epoch"]): weights(trainer.model)}))
    assert len(history) == 4 and trainer.done and trainer.stop_reason == "early_stopping"
    assert trainer.best_epoch == 2 and trainer.best_val_loss == 0.5
    assert not torch.equal(snapshots[2]["1.weight"], snapshots[4]["1.weight"])
    final = trainer.final_model()
    assert not final.training
    for key, value in weights(final).items():
        assert torch.equal(value, snapshots[2][key])


def test_early_stopping_min_delta_and_no_restore(images: tuple[Split, CacheMeta]) -> None:
    trainer = make_trainer(images, max_epochs=20, early_stopping=EarlyStoppingConfig(
        patience=2, min_delta=0.1, restore_best=False))
    scripted_val_losses(trainer, [1.0, 0.95, 0.92])  # improvements smaller than min_delta
    last: dict[str, torch.Tensor] = {}
    fit(trainer, on_epoch=lambda row: last.update(weights(trainer.model)))
    assert trainer.epoch == 3 and trainer.best_epoch == 1
    for key, value in weights(trainer.final_model()).items():
        assert torch.equal(value, last[key])  # last weights kept


def test_stops_at_max_epochs(images: tuple[Split, CacheMeta]) -> None:
    trainer = make_trainer(images, max_epochs=2)
    fit(trainer)
    assert trainer.epoch == 2 and trainer.stop_reason == "max_epochs"
    with pytest.raises(RuntimeError, match="already done"):
        trainer.run_epoch()


def test_reduce_lr_on_plateau_lowers_lr(images: tuple[Split, CacheMeta]) -> None:
    schedule = LrScheduleConfig(patience=1, factor=0.5, min_lr=0.002)
    trainer = make_trainer(images, max_epochs=8, lr=0.01, lr_schedule=schedule,
                           early_stopping=EarlyStoppingConfig(patience=100))
    scripted_val_losses(trainer, [1.0] * 8)
    lrs = [row["lr"] for row in fit(trainer)]
    # Epoch 1 sets the best; epochs 2, 3 do not improve -> cut after epoch 3 (patience 1), etc.
    assert lrs[:3] == [0.01] * 3
    assert lrs[3:5] == [pytest.approx(0.005)] * 2
    assert lrs[5:7] == [pytest.approx(0.0025)] * 2
    assert lrs[7] == pytest.approx(0.002)  # floored at min_lr
    off = make_trainer(images, max_epochs=4, lr=0.01,
                       lr_schedule=LrScheduleConfig(enabled=False, patience=0))
    scripted_val_losses(off, [1.0] * 4)
    assert {row["lr"] for row in fit(off)} == {0.01}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_each_optimizer_trains(images: tuple[Split, CacheMeta], optimizer: str) -> None:
    trainer = make_trainer(images, max_epochs=2, optimizer=optimizer, weight_decay=1e-4,
                           lr=0.01)
    history = fit(trainer)
    assert all(math.isfinite(r["train/loss"]) for r in history)


def test_same_seed_same_metrics_and_weights(images: tuple[Split, CacheMeta]) -> None:
    model = ModelConfig(hidden_layers=2, width=16, dropout=0.3, batch_norm=True)
    runs = [make_trainer(images, model=model, seed=7) for _ in range(2)]
    histories = [without_time(fit(t)) for t in runs]
    assert histories[0] == histories[1]
    for a, b in zip(weights(runs[0].model).values(), weights(runs[1].model).values(), strict=True):
        assert torch.equal(a, b)
    other = make_trainer(images, model=model, seed=8)
    assert without_time(fit(other)) != histories[0]


def test_trainers_in_lockstep_do_not_disturb_each_other(
    images: tuple[Split, CacheMeta],
) -> None:
    """k-fold advances several trainers in turn; each must match a solo run."""
    model = ModelConfig(hidden_layers=1, width=16, dropout=0.5)
    solo = [without_time(fit(make_trainer(images, model=model, seed=s))) for s in (1, 2)]
    pair = [make_trainer(images, model=model, seed=s) for s in (1, 2)]
    while not all(t.done for t in pair):
        for t in pair:
            t.run_epoch()
            torch.rand(3)  # unrelated use of the global RNG in between
    assert [without_time(t.history) for t in pair] == solo


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(image_cache: Callable[..., tuple[Path, CacheMeta]],
                                     tmp_path: Path) -> None:
    folder, _ = image_cache(channels=3, name="rgb")
    data = load_split(folder)
    model = ModelConfig(hidden_layers=2, width=16, dropout=0.3, batch_norm=True)
    train = {"max_epochs": 6, "hflip": True, "lr_schedule": LrScheduleConfig(patience=0),
             "early_stopping": EarlyStoppingConfig(patience=4)}

    straight = make_trainer(data, model=model, seed=3, **train)
    expected = without_time(fit(straight))

    ckpt = tmp_path / "ckpt" / "last.pt"

    def stop_after_3(row: dict[str, float]) -> None:
        if row["epoch"] == 3:
            raise Interrupt

    first = make_trainer(data, model=model, seed=3, **train)
    with pytest.raises(Interrupt):
        fit(first, on_epoch=stop_after_3, checkpoint=ckpt)
    # A fresh process: different initial weights and global RNG, same config.
    torch.manual_seed(999)
    resumed = make_trainer(data, model=model, seed=3, **train)
    resumed.model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters")
                        else None)
    history = fit(resumed, checkpoint=ckpt, resume=True)
    assert without_time(history) == expected
    assert resumed.best_epoch == straight.best_epoch
    for a, b in zip(weights(resumed.final_model()).values(),
                    weights(straight.final_model()).values(), strict=True):
        assert torch.equal(a, b)


def test_resume_without_checkpoint_starts_fresh(images: tuple[Split, CacheMeta],
                                                tmp_path: Path) -> None:
    trainer = make_trainer(images, max_epochs=2)
    fit(trainer, checkpoint=tmp_path / "none.pt", resume=True)
    assert trainer.epoch == 2 and (tmp_path / "none.pt").is_file()


def test_pruning_in_the_hook_propagates(images: tuple[Split, CacheMeta]) -> None:
    trainer = make_trainer(images, max_epochs=10)

    def prune(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise optuna.TrialPruned("pruned")

    with pytest.raises(optuna.TrialPruned):
        fit(trainer, on_epoch=prune)
    assert trainer.epoch == 2 and len(trainer.history) == 2 and not trainer.done
    net = trainer.final_model()
    assert type(net[1]) is nn.Linear  # no oneDNN wrapper leaks out of the epoch
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_divergence_raises(images: tuple[Split, CacheMeta]) -> None:
    trainer = make_trainer(images)
    with torch.no_grad():
        trainer.model[1].weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="train/loss is nan"):
        trainer.run_epoch()
    assert trainer.epoch == 0 and trainer.history == []


def test_hflip_is_ignored_for_grayscale(images: tuple[Split, CacheMeta],
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        trainer = make_trainer(images, hflip=True)
    assert "colour images only" in caplog.text and not trainer._flip


def test_hflip_changes_training_for_colour(
    image_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    folder, _ = image_cache(channels=3, name="rgb")
    data = load_split(folder)
    flipped = without_time(fit(make_trainer(data, max_epochs=2, hflip=True)))
    plain = without_time(fit(make_trainer(data, max_epochs=2)))
    assert flipped != plain


def test_batch_bounds_drop_a_trailing_single_sample() -> None:
    assert _batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert _batch_bounds(9, 4) == [(0, 4), (4, 8)]
    assert _batch_bounds(1, 4) == [(0, 1)]


def test_batch_norm_with_a_trailing_single_sample(images: tuple[Split, CacheMeta]) -> None:
    split, meta = images
    odd = dataclasses.replace(split, x_train=split.x_train[:33], y_train=split.y_train[:33])
    trainer = make_trainer((odd, meta), model=ModelConfig(hidden_layers=1, width=8,
                                                          batch_norm=True), max_epochs=1)
    fit(trainer)
    assert trainer.epoch == 1


def test_empty_validation_split_is_a_user_error(images: tuple[Split, CacheMeta]) -> None:
    from pipeline.errors import UserError

    split, meta = images
    empty = dataclasses.replace(split, x_val=split.x_val[:0], y_val=split.y_val[:0])
    with pytest.raises(UserError, match="val_fraction"):
        make_trainer((empty, meta))


def test_fast_and_default_linear_train_alike(images: tuple[Split, CacheMeta]) -> None:
    from pipeline.training._onednn import onednn_linear_available

    fast = make_trainer(images, max_epochs=3)
    fast.fast_linear = onednn_linear_available()  # the oneDNN route, whatever this CPU prefers
    slow = make_trainer(images, max_epochs=3)
    slow.fast_linear = False
    a, b = fit(fast), fit(slow)
    for ra, rb in zip(a, b, strict=True):
        assert ra["val/loss"] == pytest.approx(rb["val/loss"], rel=1e-3, abs=1e-4)


def test_the_linear_route_follows_the_cpu_vendor(images: tuple[Split, CacheMeta],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    from pipeline.training import _onednn

    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"
    amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: EPYC\n"
    assert _onednn.cpu_vendor(intel) == "GenuineIntel"
    assert _onednn.cpu_vendor("processor\t: 0\n") is None
    for text, routed in ((intel, False), (amd, True), ("", True)):
        (tmp_path / "cpuinfo").write_text(text)
        monkeypatch.setattr(_onednn, "_CPUINFO", str(tmp_path / "cpuinfo"))
        _onednn.onednn_preferred.cache_clear()
        assert _onednn.onednn_preferred() is routed
        assert make_trainer(images).fast_linear is (routed and
                                                    _onednn.onednn_linear_available())
    monkeypatch.setattr(_onednn, "_CPUINFO", str(tmp_path / "absent"))
    _onednn.onednn_preferred.cache_clear()
    assert _onednn.onednn_preferred()  # unknown: the route stays
    _onednn.onednn_preferred.cache_clear()  # this machine's answer for the tests after


# --------------------------------------------------------------------------------------------
# pipeline.training.runtime
# --------------------------------------------------------------------------------------------
def test_set_seed_repeats_every_generator() -> None:
    import random

    from pipeline.training.runtime import set_seed

    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_seed(5)
    first = draw()
    set_seed(5)
    assert draw() == first


def test_derive_seed_is_stable_and_distinct() -> None:
    from pipeline.training.runtime import derive_seed

    assert derive_seed(42, 3) == derive_seed(42, 3)
    seeds = {derive_seed(42, t, f) for t in range(20) for f in range(5)}
    assert len(seeds) == 100
    assert derive_seed(42, 1, 3) != derive_seed(42, 3, 1)
    assert all(0 <= s < 2**31 for s in seeds)


def test_resolve_device() -> None:
    from pipeline.errors import UserError
    from pipeline.training.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    assert resolve_device("auto").type in {expected, "mps", "cpu"} - {None}
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu9")
