"""params.yaml parsing: every bad value names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ImageFolderDataset,
    JpegLabelsDataset,
    load_params,
    parse_set_option,
)
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_load_with_typed_sections() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.root == REPO
    assert isinstance(params.datasets["digits"].source, JpegLabelsDataset)
    assert params.datasets["digits"].source.image.size == (28, 28)
    assert params.model.width == 256 and params.model.hidden_layers == 2
    assert isinstance(params.train.lr, float)


def test_dataset_overrides_apply_only_to_their_dataset() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.for_dataset("diabetes").train.batch_size == 32
    assert params.for_dataset("diabetes").dataset == "diabetes"
    assert params.for_dataset("digits").train.batch_size == params.train.batch_size


def test_overrides_are_revalidated_and_leave_the_original_alone() -> None:
    params = load_params(REPO / "params.yaml")
    changed = params.with_overrides({"train.lr": 0.05, "model.batch_norm": True})
    assert changed.train.lr == 0.05 and changed.model.batch_norm is True
    assert params.train.lr == 0.001 and params.model.batch_norm is False
    with pytest.raises(UserError, match=r"model\.width: expected a value in \[1, 65536\], got 0"):
        params.with_overrides({"model.width": 0})


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("model.dropout", -0.1, r"params\.yaml:\d+: model\.dropout: expected a value in \[0, 1\)"),
        ("model.dropout", 1.0, r"params\.yaml:\d+: model\.dropout: expected a value in \[0, 1\)"),
        ("train.optimizer", "adagrad", r"train\.optimizer: expected one of 'sgd', 'adam'"),
        ("model.batch_norm", "yes", r"model\.batch_norm: expected true or false, got 'yes'"),
        ("train.batch_size", 2.5, r"train\.batch_size: expected an integer, got 2\.5"),
        ("search.fold_batching", "yes",
         r"params\.yaml:\d+: search\.fold_batching: expected one of 'auto' or true or false, "
         r"got 'yes'"),
        ("search.fold_batching", 1, r"search\.fold_batching: expected .*, got 1$"),
    ],
)
def test_bad_values_name_key_and_expectation(
    tmp_path: Path, raw: dict, dotted: str, value: object, message: str
) -> None:
    section, key = dotted.split(".")
    raw[section][key] = value
    with pytest.raises(UserError, match=message):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize("value", ["auto", True, False])
def test_fold_batching_takes_auto_or_a_bool(tmp_path: Path, raw: dict, value: object) -> None:
    raw["search"]["fold_batching"] = value
    assert load_params(write(tmp_path, raw)).search.fold_batching == value


def test_typo_key_suggests_the_right_one(tmp_path: Path, raw: dict) -> None:
    raw["train"]["learning_rate"] = raw["train"].pop("lr")
    with pytest.raises(UserError, match=r"train\.learning_rate: unknown key"):
        load_params(write(tmp_path, raw))
    raw["train"]["lr"] = raw["train"].pop("learning_rate")
    raw["modle"] = raw.pop("model")
    with pytest.raises(UserError, match=r"modle: unknown key \(did you mean 'model'\?\)"):
        load_params(write(tmp_path, raw))


def test_unknown_dataset_format_lists_formats(tmp_path: Path, raw: dict) -> None:
    raw["datasets"]["digits"]["format"] = "jpeg"
    with pytest.raises(UserError, match=r"digits\.format: unknown dataset format 'jpeg'"):
        load_params(write(tmp_path, raw))


def test_dataset_keys_are_checked_per_format(tmp_path: Path, raw: dict) -> None:
    raw["datasets"]["folder"] = {"format": "image_folder", "root": "x", "target": "y"}
    with pytest.raises(UserError, match=r"datasets\.folder\.target: unknown key"):
        load_params(write(tmp_path, raw))
    del raw["datasets"]["folder"]["target"]
    assert isinstance(load_params(write(tmp_path, raw)).datasets["folder"].source,
                      ImageFolderDataset)


def test_overrides_must_name_known_keys_and_datasets(tmp_path: Path, raw: dict) -> None:
    raw["overrides"]["diabetes"]["train.lrate"] = 0.1
    with pytest.raises(UserError, match=r"overrides\.diabetes\.train\.lrate: not a key"):
        load_params(write(tmp_path, raw))
    del raw["overrides"]["diabetes"]["train.lrate"]
    raw["overrides"]["mnist"] = {"train.lr": 0.1}
    with pytest.raises(UserError, match=r"overrides\.mnist: no dataset of that name"):
        load_params(write(tmp_path, raw))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nmodel: {width: 3\n")
    with pytest.raises(UserError, match=r"params\.yaml:\d+: not valid YAML"):
        load_params(path)


def test_set_option_parses_yaml_values() -> None:
    assert parse_set_option("train.lr=0.01") == ("train.lr", 0.01)
    assert parse_set_option("model.batch_norm=true") == ("model.batch_norm", True)
    assert parse_set_option("model.arch=cnn") == ("model.arch", "cnn")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_set_option("train.lr")


def test_paths_resolve_from_the_project_root(tmp_path: Path, raw: dict) -> None:
    params = load_params(write(tmp_path, raw))
    assert params.cache_dir("digits") == tmp_path / "data" / "cache" / "digits"
    assert params.path("/abs/x") == Path("/abs/x")


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://optuna:s3cret@db.example/optuna",
    "postgresql://db.example/optuna?user=optuna&password=s3cret",
])
def test_storage_password_in_params_is_refused(tmp_path: Path, raw: dict, url: str) -> None:
    raw["search"]["storage"] = url
    with pytest.raises(UserError, match="search.storage: the URL holds a password") as info:
        load_params(write(tmp_path, raw))
    assert "s3cret" not in str(info.value)
    raw["search"]["storage"] = "postgresql+psycopg://optuna@db.example/optuna"
    assert load_params(write(tmp_path, raw)).search.storage == raw["search"]["storage"]


def test_user_errors_print_one_line_without_colour(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline import cli

    def body() -> int:
        raise UserError("model.pt: cannot load\n\x1b[31mWeightsUnpickler error\x1b[0m:\n  detail")

    assert cli.run(body) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == "error: model.pt: cannot load WeightsUnpickler error: detail\n"
