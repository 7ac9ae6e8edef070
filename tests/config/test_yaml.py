"""The one YAML reader: repeated keys refused with both lines, YAML 1.2 floats, plain names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import load_params, parse_set_option, parse_yaml
from pipeline.errors import UserError
from pipeline.study.spec import load_study

REPO = Path(__file__).resolve().parents[2]


def _copy_params(tmp_path: Path, edit) -> Path:
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(edit(text))
    return path


def test_a_repeated_key_is_refused_with_both_lines() -> None:
    text = "model:\n  width: 256\n  dropout: 0.1\n  width: 16\n"
    with pytest.raises(UserError, match=r"^p\.yaml:4: duplicate key 'width' \(first at line 2\)$"):
        parse_yaml(text, "p.yaml")


def test_a_repeated_key_in_params_yaml_stops_loading(tmp_path: Path) -> None:
    path = _copy_params(tmp_path, lambda t: t.replace("model:\n", "model:\n  width: 16\n", 1))
    message = r"params\.yaml:\d+: duplicate key 'width' \(first at line"
    with pytest.raises(UserError, match=message):
        load_params(path)


def test_a_repeated_key_in_a_study_file_stops_loading(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    text = (REPO / "studies" / "capacity.yaml").read_text()
    (studies / "dup.yaml").write_text(text + "\ndescription: again\n")
    with pytest.raises(UserError, match=r"dup\.yaml:\d+: duplicate key 'description'"):
        load_study("dup", studies, load_params(REPO / "params.yaml"))


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 0.001), ("1E5", 100000.0), ("-2.5e-4", -0.00025), ("1.0e-6", 1e-6), ("+.5", 0.5)],
)
def test_exponent_floats_read_as_numbers(text: str, value: float) -> None:
    data = parse_yaml(f"lr: {text}\n", "p.yaml").data
    assert data["lr"] == value and isinstance(data["lr"], float)


def test_lr_1e_3_in_params_and_on_the_command_line(tmp_path: Path) -> None:
    path = _copy_params(tmp_path, lambda t: t.replace("  lr: 0.001", "  lr: 1e-3", 1))
    assert "lr: 1e-3" in path.read_text()
    assert load_params(path).train.lr == 0.001
    assert parse_set_option("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_set_option("model.weights=[oops") == ("model.weights", "[oops")


def test_a_missing_section_key_is_named(tmp_path: Path) -> None:
    path = _copy_params(tmp_path, lambda t: t.replace("{patience: 5, ", "{", 1))
    with pytest.raises(UserError, match=r"patience: missing key"):
        load_params(path)


def test_field_defaults_equal_params_yaml() -> None:
    """params.yaml is the home of defaults; the dataclass defaults only mirror it."""
    params = load_params(REPO / "params.yaml")
    for section in ("fetch", "prepare", "model", "train", "search"):
        value = getattr(params, section)
        assert value == type(value)(), f"{section}: dataclass defaults differ from params.yaml"


@pytest.mark.parametrize("name", ["../../somewhere/x", "a/b", "x.yaml", "", "caf\u00e9 x"])
def test_study_names_are_plain(name: str) -> None:
    with pytest.raises(UserError, match=r"expected a plain study name"):
        load_study(name, REPO / "studies", load_params(REPO / "params.yaml"))


def test_a_dataset_name_that_could_leave_the_cache_is_refused(tmp_path: Path) -> None:
    def rename(text: str) -> str:
        evil = "  ../evil: {format: csv, path: x.csv, target: y}\n"
        return text.replace("datasets:\n", "datasets:\n" + evil, 1)

    path = _copy_params(tmp_path, rename)
    assert "../evil:" in path.read_text()
    with pytest.raises(UserError, match=r"expected a dataset name of letters, digits"):
        load_params(path)


def test_the_shipped_files_have_no_repeated_keys(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    load_params(tmp_path / "params.yaml")
    for path in sorted((REPO / "studies").glob("*.yaml")):
        parse_yaml(path.read_text(), path.name)
