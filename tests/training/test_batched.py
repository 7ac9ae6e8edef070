"""Batched folds: each fold trains exactly as its own Trainer would; the rule that picks them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import EarlyStoppingConfig, LrScheduleConfig, ModelConfig, TrainConfig
from pipeline.data.cache import CacheMeta, load_cache
from pipeline.data.splits import kfold_splits
from pipeline.training import (
    BatchedFold,
    BatchedFolds,
    Split,
    Trainer,
    TrainingDiverged,
    build_model,
    can_batch_folds,
    derive_seed,
    fold_batching_wins,
    make_split,
)
from pipeline.training.batched import _equal_runs

CPU = torch.device("cpu")
Folds = tuple[list[Split], CacheMeta]


def kfold(folder: Path, k: int) -> Folds:
    cache = load_cache(folder)
    classification = cache.meta.task == "classification"
    folds = kfold_splits(np.asarray(cache.train_y), folds=k, seed=0, classification=classification)
    return [make_split(cache, tr, va) for tr, va in folds], cache.meta


def models(model: ModelConfig, meta: CacheMeta, seeds: list[int]) -> list[nn.Module]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)  # as Objective builds each fold's model
        out.append(build_model(model, meta))
    return out


def both_paths(data: Folds, model: ModelConfig, train: TrainConfig,
               ) -> tuple[list[Trainer], BatchedFolds]:
    """K Trainers and one BatchedFolds from identical models, seeds and splits (not run)."""
    splits, meta = data
    seeds = [derive_seed(11, i) for i in range(len(splits))]
    trainers = [Trainer(model=m, cfg=train, meta=meta, split=s, device=CPU, seed=seed)
                for m, s, seed in zip(models(model, meta, seeds), splits, seeds, strict=True)]
    group = BatchedFolds(models=models(model, meta, seeds), cfg=train, meta=meta,
                         splits=splits, device=CPU, seeds=seeds)
    return trainers, group


def run_lockstep(trainers: list[Trainer], group: BatchedFolds) -> None:
    while not all(t.done for t in trainers):
        for t in trainers:
            if not t.done:
                t.run_epoch()
    while not group.done:
        group.run_epoch()


def assert_same_training(trainers: list[Trainer], folds: list[BatchedFold]) -> None:
    for t, f in zip(trainers, folds, strict=True):
        assert (f.epoch, f.done, f.stop_reason, f.best_epoch) == (
            t.epoch, t.done, t.stop_reason, t.best_epoch)
        assert f.best_val_loss == pytest.approx(t.best_val_loss, rel=1e-4)
        assert len(f.history) == len(t.history)
        for got, want in zip(f.history, t.history, strict=True):
            assert got.keys() == want.keys()
            for key in want:
                if key != "time_s":
                    assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
        ours, theirs = f.final_model(), t.final_model()
        assert type(ours) is type(theirs) and not ours.training
        want_state = theirs.state_dict()
        for name, value in ours.state_dict().items():
            torch.testing.assert_close(value, want_state[name], rtol=1e-4, atol=1e-5)


@pytest.fixture
def images(image_cache: Callable[..., tuple[Path, CacheMeta]]) -> Folds:
    folder, _ = image_cache(n_train=203)  # 3 folds train on 135, 135 and 136 samples
    return kfold(folder, 3)


# --------------------------------------------------------------------------------------------
def test_classification_with_dropout_batch_norm_and_adam(images: Folds) -> None:
    model = ModelConfig(hidden_layers=2, width=16, dropout=0.3, batch_norm=True)
    train = TrainConfig(batch_size=32, max_epochs=3, optimizer="adam", lr=0.01)
    trainers, group = both_paths(images, model, train)
    run_lockstep(trainers, group)
    assert_same_training(trainers, group.folds)
    assert [len(f.history) for f in group.folds] == [3, 3, 3]


def test_regression_with_sgd_momentum_and_weight_decay(
    tabular_cache: Callable[..., tuple[Path, CacheMeta]],
) -> None:
    folder, _ = tabular_cache(n_train=97)
    model = ModelConfig(hidden_layers=2, width=16, activation="tanh", width_schedule="shrinking")
    train = TrainConfig(batch_size=16, max_epochs=4, optimizer="sgd", lr=0.01, momentum=0.9,
                        weight_decay=1e-3)
    trainers, group = both_paths(kfold(folder, 3), model, train)
    run_lockstep(trainers, group)
    assert_same_training(trainers, group.folds)
    assert {"val/mae", "val/rmse"} <= group.folds[0].history[-1].keys()


def test_unequal_folds_with_ragged_last_batches(images: Folds) -> None:
    splits, meta = images
    base = splits[0]

    def part(n_train: int, n_val: int, shift: int) -> Split:
        return Split(x_train=base.x_train[shift:shift + n_train],
                     y_train=base.y_train[shift:shift + n_train],
                     x_val=base.x_val[:n_val], y_val=base.y_val[:n_val])

    # Batches of 16: last batches of 6, none (a trailing single sample is dropped), an extra
    # full batch, and 11; the validation parts differ in size too.
    uneven = [part(70, 20, 0), part(65, 23, 3), part(81, 17, 7), part(75, 30, 1)]
    model = ModelConfig(hidden_layers=1, width=8, dropout=0.2, batch_norm=True)
    train = TrainConfig(batch_size=16, max_epochs=3, optimizer="adamw", lr=0.01,
                        weight_decay=0.01)
    trainers, group = both_paths((uneven, meta), model, train)
    run_lockstep(trainers, group)
    assert_same_training(trainers, group.folds)


def scripted(losses: list[float]) -> Iterator[dict[str, float]]:
    return iter({"val/loss": v, "val/accuracy": 0.5} for v in losses)


def test_folds_stop_and_change_lr_on_their_own(images: Folds) -> None:
    """Validation is scripted so each fold's decisions are known: fold 0 improves to the end,
    fold 1's LR schedule fires (an improvement below min_delta is bad for early stopping but
    not for the schedule), fold 2 stops early; training must still match the Trainers."""
    scripts = [
        [1.0, 0.9, 0.8, 0.7, 0.6, 0.5],
        [1.0, 0.9, 1.0, 1.0, 0.8, 0.7],
        [1.0, 0.99, 0.98, 0.97],
    ]
    train = TrainConfig(batch_size=32, max_epochs=6, lr=0.01,
                        early_stopping=EarlyStoppingConfig(patience=3, min_delta=0.05),
                        lr_schedule=LrScheduleConfig(patience=1, factor=0.5))
    trainers, group = both_paths(images, ModelConfig(hidden_layers=1, width=16), train)
    for t, script in zip(trainers, scripts, strict=True):
        it = scripted(script)
        t.evaluate = lambda it=it: next(it)  # type: ignore[method-assign]
    streams = [scripted(s) for s in scripts]
    group._evaluate = lambda folds: [next(streams[f.index]) for f in folds]  # type: ignore
    run_lockstep(trainers, group)
    assert_same_training(trainers, group.folds)
    f0, f1, f2 = group.folds
    assert [r["lr"] for r in f0.history] == [0.01] * 6
    assert [r["lr"] for r in f1.history] == [0.01] * 4 + [0.005] * 2
    assert (f2.stop_reason, f2.epoch, f2.best_epoch) == ("early_stopping", 4, 1)
    # A fold that is done left the stacks: its weights have their own storage.
    assert not group._active
    stored = {f.model[1].weight.untyped_storage().data_ptr() for f in group.folds}
    assert len(stored) == 3


def test_results_do_not_depend_on_the_other_folds(images: Folds) -> None:
    splits, meta = images
    model = ModelConfig(hidden_layers=1, width=16, dropout=0.5)
    train = TrainConfig(batch_size=32, max_epochs=2)
    _, three = both_paths((splits, meta), model, train)
    _, two = both_paths((splits[:2], meta), model, train)
    run_lockstep([], three)
    run_lockstep([], two)
    for a, b in zip(three.folds[:2], two.folds, strict=True):
        assert [r["val/loss"] for r in a.history] == pytest.approx(
            [r["val/loss"] for r in b.history], rel=1e-6)


def test_epoch_time_is_shared_by_the_folds_that_ran(images: Folds) -> None:
    _, group = both_paths(images, ModelConfig(hidden_layers=1, width=8), TrainConfig(
        batch_size=64, max_epochs=1))
    rows = group.run_epoch()
    times = [r["time_s"] for r in rows if r is not None]
    assert len(times) == 3 and times[0] > 0 and len(set(times)) == 1
    assert group.done
    with pytest.raises(RuntimeError, match="every fold is done"):
        group.run_epoch()


def test_a_diverged_fold_raises_after_the_folds_before_it(images: Folds) -> None:
    _, group = both_paths(images, ModelConfig(hidden_layers=1, width=8), TrainConfig(
        batch_size=64, max_epochs=3))
    with torch.no_grad():
        group.folds[1].model[1].weight.fill_(float("nan"))  # a view into the stack
    with pytest.raises(TrainingDiverged, match="training diverged in epoch 1: train/loss is nan"):
        group.run_epoch()
    assert [f.epoch for f in group.folds] == [1, 0, 0]


def test_only_mlps_on_cpu_or_cuda_are_batched(images: Folds) -> None:
    splits, meta = images
    cnn = ModelConfig(arch="cnn", conv_blocks=1, conv_channels=4)
    with pytest.raises(ValueError, match="build_mlp"):
        BatchedFolds(models=models(cnn, meta, [0, 1, 2]), cfg=TrainConfig(), meta=meta,
                     splits=splits, device=CPU, seeds=[0, 1, 2])
    mlp = ModelConfig(width=8)
    with pytest.raises(ValueError, match="not a CPU or CUDA device"):
        BatchedFolds(models=models(mlp, meta, [0, 1, 2]), cfg=TrainConfig(), meta=meta,
                     splits=splits, device="meta", seeds=[0, 1, 2])
    assert can_batch_folds(mlp, 2, CPU) and not can_batch_folds(mlp, 1, CPU)
    assert not can_batch_folds(cnn, 5, CPU)
    assert not can_batch_folds(mlp, 5, torch.device("mps"))


def digits_meta() -> CacheMeta:
    """The built-in digits' shape: 1,437 training images of 1x28x28, 10 classes."""
    return CacheMeta(
        name="digits", task="classification", kind="image", input_shape=[1, 28, 28],
        class_names=[str(c) for c in range(10)], feature_names=[], target_name="label",
        n_train=1437, n_test=360, counts={}, mean=[0.1], std=[0.3], target_mean=0.0,
        target_std=1.0, split_seed=0, fingerprint="x", source_format="jpeg_labels",
    )


@pytest.mark.parametrize(
    ("layers", "width", "batch", "device", "wins"),
    [
        (2, 32, 256, "cpu", True),  # small: per-op overhead dominates, batching wins
        (2, 128, 32, "cpu", True),
        (3, 256, 1024, "cpu", True),
        (2, 1024, 256, "cpu", True),
        (2, 512, 1024, "cpu", False),  # stacking gains nothing, bmm loses to oneDNN's GEMMs
        (4, 1024, 1024, "cpu", False),
        (4, 1024, 1024, "cuda", True),  # on a GPU the K small kernels are launch-bound
        (2, 8192, 256, "cuda", False),
    ],
)
def test_fold_batching_rule(layers: int, width: int, batch: int, device: str,
                            wins: bool) -> None:
    model = ModelConfig(hidden_layers=layers, width=width)
    train = TrainConfig(batch_size=batch)
    assert fold_batching_wins(model, train, digits_meta(), 5, torch.device(device)) is wins


def test_fold_batching_rule_needs_a_batchable_setup() -> None:
    meta, train = digits_meta(), TrainConfig(batch_size=256)
    small = ModelConfig(hidden_layers=1, width=16)
    assert fold_batching_wins(small, train, meta, 5, CPU)
    assert not fold_batching_wins(small, train, meta, 1, CPU)
    assert not fold_batching_wins(dataclasses.replace(small, arch="cnn"), train, meta, 5, CPU)


def test_equal_runs_group_neighbouring_folds_of_one_batch_size() -> None:
    assert _equal_runs([16, 16, 16]) == [(0, 3, 16)]
    assert _equal_runs([6, 0, 16, 11, 11]) == [(0, 1, 6), (2, 3, 16), (3, 5, 11)]
    assert _equal_runs([0, 0]) == []
