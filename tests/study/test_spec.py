"""Study files: each search-space type, the shipped studies, and every bad-file case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from pipeline.config import Params
from pipeline.errors import UserError
from pipeline.study._sampling import TrialSeededSampler
from pipeline.study.spec import (
    CvSpec,
    ParamSpace,
    check_metric_for_task,
    list_studies,
    load_study,
    make_pruner,
    make_sampler,
    parse_study,
    suggest,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("capacity", "optimizer", "regularization", "full")


def base() -> dict[str, Any]:
    return {
        "description": "a test study",
        "metric": "val/loss",
        "direction": "minimize",
        "budget": {"n_trials": 3},
        "sampler": {"type": "tpe", "seed": 1},
        "pruner": {"type": "median", "n_warmup_steps": 1},
        "cv": {"folds": "auto"},
        "space": {"model.width": {"type": "int", "low": 4, "high": 64, "log": True}},
    }


def write_study(folder: Path, name: str, raw: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def load(tmp_path: Path, raw: Any, params: Params | None = None):
    write_study(tmp_path / "studies", "s", raw)
    return load_study("s", tmp_path / "studies", params)


def test_shipped_studies_load_and_build_optuna_objects(params: Params) -> None:
    studies = list_studies(REPO / "studies")
    assert set(SHIPPED) <= set(studies)
    for name in SHIPPED:
        spec = load_study(name, REPO / "studies", params)
        assert spec.description == studies[name]
        assert spec.space and spec.budget.n_trials
        make_sampler(spec, default_seed=0)
        make_pruner(spec)
    full = {p.name for p in load_study("full", REPO / "studies", params).space}
    for name in ("capacity", "optimizer", "regularization"):
        assert {p.name for p in load_study(name, REPO / "studies", params).space} <= full
    capacity = {p.name: p for p in load_study("capacity", REPO / "studies", params).space}
    assert capacity["model.width"].log and capacity["model.width"].low <= 20
    assert capacity["model.width"].high >= 256


def test_each_space_type_is_parsed_and_suggested(tmp_path: Path, params: Params) -> None:
    raw = base()
    raw["space"] = {
        "model.hidden_layers": {"type": "int", "low": 1, "high": 4},
        "train.batch_size": {"type": "int", "low": 32, "high": 256, "step": 32},
        "model.width": {"type": "int", "low": 16, "high": 1024, "log": True},
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "train.weight_decay": {"type": "float", "low": 0, "high": 0.01},
        "model.batch_norm": {"type": "categorical", "choices": [True, False]},
        "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    }
    spec = load(tmp_path, raw, params)
    by = {p.name: p for p in spec.space}
    assert by["model.hidden_layers"] == ParamSpace("model.hidden_layers", "int", 1, 4, step=1)
    assert by["model.width"].log and by["train.lr"].log and by["train.lr"].step is None
    assert by["model.dropout"].grid_values() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert by["model.batch_norm"].choices == (True, False)

    study = optuna.create_study(sampler=make_sampler(spec, default_seed=0))
    for _ in range(5):
        trial = study.ask()
        values = suggest(trial, spec.space)
        assert 1 <= values["model.hidden_layers"] <= 4
        assert values["train.batch_size"] % 32 == 0
        assert 1e-4 <= values["train.lr"] <= 0.1
        assert values["model.batch_norm"] in (True, False)
        params.with_overrides(values)  # every draw is a valid config
        study.tell(trial, 1.0)
    fixed = optuna.trial.FixedTrial({"model.hidden_layers": 3, "train.batch_size": 64,
                                     "model.width": 20, "train.lr": 0.01, "model.dropout": 0.2,
                                     "train.weight_decay": 0.0, "model.batch_norm": True,
                                     "train.optimizer": "adam"})
    assert suggest(fixed, spec.space)["model.width"] == 20


def test_defaults_and_cv_resolution(tmp_path: Path, params: Params) -> None:
    raw = {"description": "minimal", "space": {"train.lr": {"type": "float", "low": 0.001,
                                                             "high": 0.1}}}
    spec = load(tmp_path, raw, params)
    assert spec.metric == "val/loss" and spec.direction == "minimize"
    assert spec.sampler.type == "tpe" and spec.sampler.seed is None
    assert spec.pruner.type == "none" and spec.dataset is None
    assert spec.study_name("digits") == "s-digits"
    assert isinstance(make_pruner(spec), optuna.pruners.NopPruner)
    sampler = make_sampler(spec, default_seed=7)
    assert isinstance(sampler, TrialSeededSampler) and sampler._seed == 7
    # (folds, holdout): K-fold below the threshold, else one holdout split
    threshold, folds = params.search.cv_threshold, params.search.cv_folds
    assert CvSpec("auto").resolve(threshold - 1, params) == (folds, None)
    assert CvSpec("auto").resolve(threshold, params) == (1, params.train.val_fraction)
    assert CvSpec(3, holdout=0.3).resolve(10, params) == (3, None)
    assert CvSpec(0, holdout=0.3).resolve(10, params) == (1, 0.3)
    assert CvSpec(0).resolve(10, params) == (1, params.train.val_fraction)
    accuracy = load(tmp_path, {**raw, "metric": "val/accuracy"}, params)
    assert accuracy.direction == "maximize"
    check_metric_for_task(accuracy, "classification")
    with pytest.raises(UserError, match="val/accuracy is not computed for regression"):
        check_metric_for_task(accuracy, "regression")


@pytest.mark.parametrize(
    ("sampler", "pruner", "cls"),
    [
        ({"type": "random", "seed": 3}, {"type": "percentile", "percentile": 25.0},
         optuna.pruners.PercentilePruner),
        ({"type": "tpe", "multivariate": True, "n_startup_trials": 2},
         {"type": "successive_halving", "min_resource": 1, "reduction_factor": 3},
         optuna.pruners.SuccessiveHalvingPruner),
        ({"type": "grid"}, {"type": "hyperband", "max_resource": 10},
         optuna.pruners.HyperbandPruner),
        ({"type": "tpe"}, {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1,
                           "interval_steps": 1, "n_min_trials": 1}, optuna.pruners.MedianPruner),
        ({"type": "tpe"}, {"type": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_samplers_and_pruners(tmp_path: Path, sampler: dict, pruner: dict, cls: type) -> None:
    raw = {**base(), "sampler": sampler, "pruner": pruner}
    spec = load(tmp_path, raw)
    assert isinstance(make_pruner(spec), cls)
    s = make_sampler(spec, default_seed=0)
    if isinstance(s, TrialSeededSampler):  # a fresh inner sampler per trial
        s = s._factory(s.trial_seed(0))
    expected = {"random": optuna.samplers.RandomSampler, "grid": optuna.samplers.GridSampler,
                "tpe": optuna.samplers.TPESampler}[sampler["type"]]
    assert isinstance(s, expected)


def test_grid_over_the_whole_space(tmp_path: Path) -> None:
    raw = {**base(), "sampler": {"type": "grid"}, "space": {
        "model.hidden_layers": {"type": "int", "low": 1, "high": 2},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        "model.batch_norm": {"type": "categorical", "choices": [True, False]},
    }}
    spec = load(tmp_path, raw)
    study = optuna.create_study(sampler=make_sampler(spec, default_seed=0))
    seen = set()
    study.optimize(lambda t: (seen.add(tuple(suggest(t, spec.space).values())), 0.0)[1],
                   n_trials=20)
    assert len(seen) == 2 * 3 * 2 == len(study.trials)  # the grid ends the study when exhausted


def _edit(change: dict[str, Any]) -> dict[str, Any]:
    raw = base()
    for dotted, value in change.items():
        node = raw
        parts = dotted.split("/")
        for part in parts[:-1]:
            node = node[part]
        if value is _DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"budgett": 3}, r"s\.yaml:\d+: budgett: unknown key \(did you mean 'budget'\?\)"),
        ({"description": _DELETE}, r"description: expected a one-line description"),
        ({"description": ""}, r"description: expected"),
        ({"space": {}}, r"space: expected a non-empty mapping"),
        ({"space": None}, r"space: expected a non-empty mapping"),
        ({"space": {"model.widht": {"type": "int", "low": 1, "high": 2}}},
         r"space\.model\.widht: not a key of params\.yaml \(did you mean 'model\.width'\?\)"),
        ({"space": {"model": {"type": "int", "low": 1, "high": 2}}},
         r"space\.model: not a key of params\.yaml"),
        ({"space": {"model.width": {"type": "integer", "low": 1, "high": 2}}},
         r"space\.model\.width\.type: expected int, float or categorical, got 'integer'"),
        ({"space": {"model.width": {"type": "int", "low": 64, "high": 4}}},
         r"s\.yaml:\d+: space\.model\.width: low \(64\) is greater than high \(4\)"),
        ({"space": {"model.width": {"type": "int", "low": 4.5, "high": 8}}},
         r"space\.model\.width\.low: expected an integer, got 4\.5"),
        ({"space": {"model.width": {"type": "int", "low": "4", "high": 8}}},
         r"space\.model\.width\.low: expected an integer, got '4'"),
        ({"space": {"model.width": {"type": "int", "low": 4}}},
         r"space\.model\.width\.high: required for type int"),
        ({"space": {"model.width": {"type": "int", "low": 4, "high": 8, "choices": [1]}}},
         r"space\.model\.width\.choices: unknown key"),
        ({"space": {"model.width": {"type": "int", "low": 4, "high": 8, "log": "yes"}}},
         r"space\.model\.width\.log: expected true or false"),
        ({"space": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}},
         r"space\.train\.lr\.low: a log range needs low > 0"),
        ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.5, "log": True,
                                 "step": 0.1}}},
         r"space\.train\.lr: log and step cannot be combined"),
        ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.5, "step": -1}}},
         r"space\.train\.lr\.step: expected a number > 0"),
        ({"space": {"model.batch_norm": {"type": "categorical", "choices": []}}},
         r"space\.model\.batch_norm\.choices: expected a non-empty list"),
        ({"space": {"model.batch_norm": {"type": "categorical", "choices": [True, True]}}},
         r"duplicate choices"),
        ({"space": {"model.batch_norm": {"type": "categorical", "choices": [[1]]}}},
         r"choices must be numbers, strings"),
        ({"space": {"mlflow.tracking_uri": {"type": "categorical", "choices": ["a", "b"]}}},
         r"s\.yaml:\d+: space\.mlflow\.tracking_uri: not a training setting; expected a "
         r"model\.\*, train\.\* or seed key"),
        ({"sampler": {"type": "cmaes"}},
         r"s\.yaml:\d+: sampler\.type: unknown sampler 'cmaes'; allowed: tpe, random, grid"),
        ({"sampler": {"type": "tpe", "seed": "x"}}, r"sampler\.seed: expected an integer"),
        ({"sampler": {"type": "random", "multivariate": True}},
         r"sampler\.multivariate: unknown key"),
        ({"sampler": {"type": "tpe", "n_startup_trials": -1}},
         r"sampler\.n_startup_trials: expected an integer ≥ 0, got -1"),
        ({"sampler": {"type": "grid"},
          "space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1}}},
         r"s\.yaml:\d+: space\.train\.lr: a grid sampler needs a finite set of values; give "
         r"this float range a step"),
        ({"pruner": {"type": "asha"}}, r"pruner\.type: unknown pruner 'asha'"),
        ({"pruner": {"n_warmup_steps": 2}}, r"pruner\.type: required"),
        ({"pruner": {"type": "median", "n_warmup_step": 2}},
         r"pruner\.n_warmup_step: unknown key \(did you mean 'n_warmup_steps'\?\)"),
        ({"pruner": {"type": "median", "n_warmup_steps": 1.5}},
         r"pruner\.n_warmup_steps: expected an integer, got 1\.5"),
        ({"pruner": {"type": "percentile"}}, r"pruner\.percentile: required"),
        ({"pruner": {"type": "percentile", "percentile": 150}},
         r"pruner\.percentile: Percentile must be between 0 and 100.*PercentilePruner"),
        ({"pruner": {"type": "hyperband", "max_resource": "all"}},
         r"pruner\.max_resource: .*should be integer or .auto.*HyperbandPruner"),
        ({"metric": "accuracy"}, r"metric: unknown metric 'accuracy' \(did you mean"),
        ({"direction": "maximize"}, r"direction: val/loss is better when lower"),
        ({"direction": "down"}, r"direction: expected minimize or maximize"),
        ({"budget": {"n_trials": 0}}, r"budget\.n_trials: expected an integer ≥ 1"),
        ({"budget": {"n_trials": None}}, r"budget: set n_trials or timeout_s"),
        ({"budget": {"timeout_s": -5}}, r"budget\.timeout_s: expected a number of seconds > 0"),
        ({"cv": {"folds": 1}}, r"cv\.folds: expected auto, 0 \(holdout\) or a number of folds"),
        ({"cv": {"folds": "all"}}, r"cv\.folds: expected auto"),
        ({"cv": {"holdout": 1.5}}, r"cv\.holdout: expected a validation fraction"),
        ({"cv": {"k": 3}}, r"cv\.k: unknown key"),
        ({"cv": [3]}, r"cv: expected a mapping"),
    ],
)
def test_bad_study_files_name_the_file_and_key(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError, match=message) as info:
        load(tmp_path, _edit(change))
    assert "s.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.width": {"type": "float", "low": 16, "high": 64}},
         r"space\.model\.width: the value 40\.0 is not accepted by .*params\.yaml"),
        ({"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}},
         r"space\.model\.dropout: the value 1\.5 is not accepted"),
        ({"train.optimizer": {"type": "categorical", "choices": ["adam", "lbfgs"]}},
         r"space\.train\.optimizer: the value 'lbfgs' is not accepted"),
        ({"model.batch_norm": {"type": "categorical", "choices": [0, 1]}},
         r"space\.model\.batch_norm: the value 0 is not accepted"),
    ],
)
def test_values_params_would_reject(
    tmp_path: Path, params: Params, space: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        load(tmp_path, {**base(), "space": space}, params)


def test_unknown_dataset_and_yaml_errors(tmp_path: Path, params: Params) -> None:
    with pytest.raises(UserError, match=r"dataset: 'mnist' is not declared under datasets"):
        load(tmp_path, {**base(), "dataset": "mnist"}, params)
    (tmp_path / "studies" / "broken.yaml").write_text("space: {model.width: [1, \n")
    with pytest.raises(UserError, match=r"broken\.yaml:\d+: not valid YAML"):
        load_study("broken", tmp_path / "studies")
    with pytest.raises(UserError, match=r"expected a mapping at the top level"):
        load(tmp_path, ["a", "list"])
    listed = list_studies(tmp_path / "studies")
    assert listed["broken"].startswith("(unreadable")


def test_unknown_study_lists_the_available_ones(tmp_path: Path) -> None:
    write_study(tmp_path / "studies", "capacity", base())
    write_study(tmp_path / "studies", "optimizer", base())
    with pytest.raises(UserError) as info:
        load_study("capacty", tmp_path / "studies")
    text = str(info.value)
    assert "unknown study 'capacty'" in text and "did you mean 'capacity'" in text
    assert "available studies: capacity, optimizer" in text


def test_summary_is_flat_strings(tmp_path: Path) -> None:
    spec = parse_study(base(), name="s", source="s.yaml")
    summary = spec.summary()
    assert summary["space.model.width"] == "int [4, 64] log"
    assert summary["study.pruner.n_warmup_steps"] == "1"
    assert all(isinstance(v, str) for v in summary.values())


# --------------------------------------------------------------------------------------------
# Conditional spaces: a value searched only when an earlier categorical has given values
# --------------------------------------------------------------------------------------------
ARCH_SPACE = {
    "model.arch": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "model.width": {"type": "int", "low": 16, "high": 64, "when": {"model.arch": "mlp"}},
    "model.conv_channels": {"type": "int", "low": 8, "high": 32,
                            "when": {"model.arch": ["cnn"]}},
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}


def test_a_conditional_value_is_drawn_only_when_its_condition_holds(
    tmp_path: Path, params: Params
) -> None:
    spec = load(tmp_path, {**base(), "space": ARCH_SPACE}, params)
    width = next(p for p in spec.space if p.name == "model.width")
    assert width.when == (("model.arch", ("mlp",)),)
    assert width.describe() == "int [16, 64] when model.arch=mlp"
    mlp = suggest(optuna.trial.FixedTrial({"model.arch": "mlp", "model.width": 32,
                                           "train.lr": 1e-3}), spec.space)
    assert mlp == {"model.arch": "mlp", "model.width": 32, "train.lr": 1e-3}
    cnn = suggest(optuna.trial.FixedTrial({"model.arch": "cnn", "model.conv_channels": 16,
                                           "train.lr": 1e-3}), spec.space)
    assert cnn == {"model.arch": "cnn", "model.conv_channels": 16, "train.lr": 1e-3}
    # TPE over the conditional space: every trial holds exactly the values its arch uses.
    study = optuna.create_study(sampler=make_sampler(spec, default_seed=0))
    for _ in range(12):
        trial = study.ask()
        values = suggest(trial, spec.space)
        study.tell(trial, 1.0 if values["model.arch"] == "mlp" else 0.5)
    for t in study.trials:
        extra = {"mlp": "model.width", "cnn": "model.conv_channels"}[t.params["model.arch"]]
        assert set(t.params) == {"model.arch", "train.lr", extra}
    assert {t.params["model.arch"] for t in study.trials} == {"mlp", "cnn"}


@pytest.mark.parametrize(
    ("width", "message"),
    [
        ({"when": {"model.arch": "rnn"}},
         r"s\.yaml:\d+: space\.model\.width\.when\.model\.arch: 'rnn' is not one of "
         r"model\.arch's choices \['mlp', 'cnn'\]"),
        ({"when": {"train.lr": 0.1}},
         r"s\.yaml:\d+: space\.model\.width\.when\.train\.lr: a condition needs a "
         r"categorical key"),
        ({"when": {"model.depth": "mlp"}},
         r"space\.model\.width\.when\.model\.depth: not a key searched above"),
        ({"when": {}}, r"space\.model\.width\.when: expected a mapping of a categorical key"),
        ({"when": "mlp"}, r"space\.model\.width\.when: expected a mapping, got 'mlp'"),
    ],
)
def test_bad_conditions_name_the_file_line_and_key(
    tmp_path: Path, params: Params, width: dict[str, Any], message: str
) -> None:
    space = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "model.arch": {"type": "categorical", "choices": ["mlp", "cnn"]},
             "model.width": {"type": "int", "low": 16, "high": 64, **width}}
    with pytest.raises(UserError, match=message):
        load(tmp_path, {**base(), "space": space}, params)


def test_a_condition_on_a_later_or_numeric_key_is_refused(tmp_path: Path) -> None:
    later = {"model.width": {"type": "int", "low": 16, "high": 64,
                             "when": {"model.arch": "mlp"}},
             "model.arch": {"type": "categorical", "choices": ["mlp", "cnn"]}}
    with pytest.raises(UserError, match=r"when\.model\.arch: not a key searched above"):
        load(tmp_path, {**base(), "space": later})
    numeric = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2},
               "model.width": {"type": "int", "low": 16, "high": 64, "when": {"train.lr": 1}}}
    with pytest.raises(UserError, match=r"a condition needs a categorical key; train\.lr is "
                                        r"float"):
        load(tmp_path, {**base(), "space": numeric})
    grid = {**base(), "sampler": {"type": "grid"},
            "space": {"model.arch": {"type": "categorical", "choices": ["mlp", "cnn"]},
                      "model.width": {"type": "categorical", "choices": [16, 32],
                                      "when": {"model.arch": "mlp"}}}}
    with pytest.raises(UserError, match=r"when: a grid sampler cannot search a conditional"):
        load(tmp_path, grid)


def test_one_study_file_fits_images_and_tables(tmp_path: Path, params: Params) -> None:
    from pipeline.study.spec import fit_to_data

    spec = load(tmp_path, {**base(), "space": ARCH_SPACE}, params)
    assert fit_to_data(spec, lambda arch: True) is spec  # images: everything is searched
    table = fit_to_data(spec, lambda arch: arch == "mlp")
    assert [p.name for p in table.space] == ["model.arch", "model.width", "train.lr"]
    assert table.space[0].choices == ("mlp",)
    with pytest.raises(UserError, match=r"model\.arch: none of \['mlp', 'cnn'\] can take"):
        fit_to_data(spec, lambda arch: False)
