"""How a study starts: the params.yaml configuration first, then an earlier study's best."""

from __future__ import annotations

import contextlib

import optuna
import pytest

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.study.spec import ParamSpace
from pipeline.study.starts import (
    ADJUSTED_ATTR,
    BASELINE_ATTR,
    WARM_ATTR,
    baseline_values,
    fit_values,
    queue_baseline,
    warm_start,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = (
    ParamSpace("model.arch", "categorical", choices=("mlp", "cnn")),
    ParamSpace("model.width", "int", low=16, high=64, log=True, when=(("model.arch", ("mlp",)),)),
    ParamSpace("model.conv_channels", "int", low=8, high=32, when=(("model.arch", ("cnn",)),)),
    ParamSpace("train.weight_decay", "float", low=1e-6, high=1e-2, log=True),
    ParamSpace("train.batch_size", "categorical", choices=(32, 64)),
)


def no_lock() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def test_the_baseline_is_params_yaml_moved_into_the_space(params: Params) -> None:
    # The test params: an MLP of width 32, weight decay 0, batch 64.
    values, moved = baseline_values(SPACE, params)
    assert values == {"model.arch": "mlp", "model.width": 32, "train.weight_decay": 1e-6,
                      "train.batch_size": 64}
    assert moved == ["train.weight_decay: 0.0 -> 1e-06"]  # a log range cannot hold 0
    cnn, moved = fit_values(SPACE, {"model.arch": "cnn", "model.conv_channels": 50,
                                    "train.batch_size": 128}, params.flat())
    assert cnn["model.conv_channels"] == 32 and "model.width" not in cnn
    assert cnn["train.batch_size"] == 32  # not a choice: the first choice
    assert "model.conv_channels: 50 -> 32" in moved


def test_a_new_study_queues_the_baseline_once(params: Params) -> None:
    study = optuna.create_study()
    assert queue_baseline(study, SPACE, params, no_lock)
    assert not queue_baseline(study, SPACE, params, no_lock)  # a study with trials: never
    (first,) = study.get_trials(deepcopy=False)
    assert first.state.name == "WAITING" and first.user_attrs[BASELINE_ATTR] is True
    assert "train.weight_decay" in first.user_attrs[ADJUSTED_ATTR]


def test_warm_start_queues_the_best_earlier_configurations_once(params: Params) -> None:
    earlier = optuna.create_study(study_name="full-digits")
    for value, width in ((0.5, 16), (0.2, 24), (0.9, 40), (0.3, 48), (0.4, 60)):
        earlier.add_trial(optuna.create_trial(
            params={"model.arch": "mlp", "model.width": width, "train.batch_size": 32},
            distributions={"model.arch": optuna.distributions.CategoricalDistribution(
                ["mlp", "cnn"]), "model.width": optuna.distributions.IntDistribution(8, 64),
                "train.batch_size": optuna.distributions.CategoricalDistribution([32, 64])},
            value=value))
    study = optuna.create_study()
    queue_baseline(study, SPACE, params, no_lock)
    queued = warm_start(study, earlier, SPACE, params, no_lock)
    assert [v["model.width"] for v in queued] == [24, 48, 60]  # the best three, best first
    assert all(v["train.weight_decay"] == 1e-6 for v in queued)  # missing: the default
    trials = study.get_trials(deepcopy=False)
    assert [t.user_attrs.get(WARM_ATTR) for t in trials] == [
        None, "full-digits#1", "full-digits#3", "full-digits#4"]
    assert warm_start(study, earlier, SPACE, params, no_lock) == []  # never twice
    with pytest.raises(UserError, match="has no complete trial"):
        warm_start(study, optuna.create_study(study_name="empty"), SPACE, params, no_lock)
