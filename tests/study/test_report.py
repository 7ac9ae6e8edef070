"""The study report's one-standard-error rule: the smallest model as good as the best."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from pipeline.study.report import (
    MODEL_NAME_ATTR,
    N_PARAMS_ATTR,
    Choice,
    from_study,
    one_standard_error,
    standard_error,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_standard_error_is_the_fold_spread_over_the_root_of_the_folds() -> None:
    assert standard_error(Choice(0, 0.3, value_std=0.04, folds=4)) == pytest.approx(0.02)
    assert standard_error(Choice(0, 0.3, value_std=None, folds=None)) == 0.0  # a holdout
    assert standard_error(Choice(0, 0.3, value_std=0.04, folds=1)) == 0.0


def test_the_smallest_within_one_standard_error_wins_ties_go_to_the_better_value() -> None:
    choices = [
        Choice(0, 0.300, 0.04, 4, n_params=5_000),  # best: threshold 0.32
        Choice(1, 0.320, 0.01, 4, n_params=1_000),  # exactly at the threshold: within
        Choice(2, 0.310, 0.01, 4, n_params=1_000),  # as small, better: the pick
        Choice(3, 0.330, 0.01, 4, n_params=100),  # smaller, outside
        Choice(4, 0.305, 0.01, 4, n_params=None),  # no count: cannot be picked
    ]
    rule = one_standard_error(choices, "minimize")
    assert rule is not None
    assert (rule.best.number, rule.pick.number) == (0, 2)
    assert rule.threshold == pytest.approx(0.32) and rule.standard_error == pytest.approx(0.02)
    assert rule.numbers()["best_n_params"] == 5_000 and rule.numbers()["n_params"] == 1_000


def test_maximize_looks_below_the_best_and_a_holdout_admits_only_ties() -> None:
    rule = one_standard_error([Choice(0, 0.95, 0.02, 4, 9_000), Choice(1, 0.945, 0.0, 4, 10)],
                              "maximize")
    assert rule is not None and rule.pick.number == 1 and rule.threshold == pytest.approx(0.94)
    holdout = one_standard_error([Choice(0, 0.30, None, 1, 9_000), Choice(1, 0.301, None, 1, 9)],
                                 "minimize")
    assert holdout is not None and holdout.pick.number == 0
    assert one_standard_error([Choice(0, math.nan)], "minimize") is None


def test_the_report_names_the_pick_with_the_numbers_that_justify_it() -> None:
    study = optuna.create_study()
    dist = {"model.width": IntDistribution(8, 1024, log=True)}
    for number, (width, value) in enumerate(((1024, 0.29), (32, 0.30), (16, 0.40))):
        study.add_trial(create_trial(
            params={"model.width": width}, distributions=dist, value=value,
            user_attrs={"value_std": 0.04, "folds": 4, N_PARAMS_ATTR: width * 100,
                        "mlflow_run_id": f"run{number}", MODEL_NAME_ATTR: f"trial-{number}"}))
    spec = SimpleNamespace(name="capacity", description="", direction="minimize",
                           metric="val/loss")
    report = from_study(study, study=spec, dataset="digits", storage="", fingerprint="f",
                        parent_run_id="p", experiment_id="1")
    assert report.best is not None and report.best["number"] == 0
    assert report.best["model_uri"] == "runs:/run0/trial-0"
    pick = report.smallest_within_1se
    assert pick is not None and pick["number"] == 1 and pick["n_params"] == 3_200
    assert pick["model_uri"] == "runs:/run1/trial-1"
    assert pick["rule"] == {"best_trial": 0, "best_value": 0.29, "best_value_std": 0.04,
                            "best_n_params": 102_400, "folds": 4,
                            "standard_error": pytest.approx(0.02),
                            "threshold": pytest.approx(0.31), "n_params": 3_200}
    assert report.trials[1][N_PARAMS_ATTR] == 3_200 and report.trials[1]["folds"] == 4
