"""Malformed ``params.yaml``, study files and ``--set`` values, through the commands' runner.

The contract, for every input: it loads (it was valid after all) or the command exits 2 with one
``error:`` line naming the file (``--set KEY`` for a command-line value) and no traceback.
Inputs: random bytes, the shipped file cut at any byte, a value swapped for an extreme number
or odd text, odd encodings (UTF-16, BOM, NUL, CR/CRLF, Latin-1).

The default run has a fixed seed and a small example budget; ``-m slow`` runs many more.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import cli
from pipeline.config import load_params, parse_set_option
from pipeline.study.spec import load_study

REPO = Path(__file__).resolve().parents[2]
PARAMS = (REPO / "params.yaml").read_bytes()
STUDY = (REPO / "studies" / "capacity.yaml").read_bytes()
FAST = settings(
    derandomize=True,
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
SLOW = settings(FAST, max_examples=800)

_ODD_VALUES = [
    "1e309", "-1e309", ".inf", ".nan", "1e-400", "99999999999999999999999999999", "-0",
    "0x10", "1_000", "'1'", "null", "[]", "{}", "yes", "~", "!!python/object:os.system ls",
    "&a 1", "*a", "\"\\x00\"", "2024-13-45", "1,234", "é", "\t", "''",
]


def _contract(body: Callable[[], object], name: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.run(lambda: (body(), 0)[1])
    text = err.getvalue()
    assert "Traceback" not in text, text
    if code == 0:
        return
    assert code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert name in lines[0], text


def _variants(valid: bytes) -> st.SearchStrategy[bytes]:
    text = valid.decode()
    cut = st.integers(0, len(valid)).map(lambda i: valid[:i])
    swap = st.tuples(
        st.sampled_from([i for i, c in enumerate(text) if c == ":"]), st.sampled_from(_ODD_VALUES)
    ).map(lambda t: _swap_value(text, *t).encode())
    encoded = st.sampled_from([
        valid.decode().encode("utf-16"),
        b"\xef\xbb\xbf" + valid,
        valid.replace(b"\n", b"\r\n"),
        valid.replace(b"\n", b"\r"),
        valid[: len(valid) // 2] + b"\x00" + valid[len(valid) // 2 :],
        valid.replace(b"# ", "# é ".encode("latin-1")),
    ])
    return st.one_of(cut, swap, encoded, st.binary(max_size=200))


def _swap_value(text: str, colon: int, value: str) -> str:
    end = text.find("\n", colon)
    end = len(text) if end < 0 else end
    return f"{text[: colon + 1]} {value}{text[end:]}"


def _params_property(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    _contract(lambda: load_params(path), "params.yaml")


def _study_property(tmp_path: Path, data: bytes) -> None:
    folder = tmp_path / "studies"
    folder.mkdir(exist_ok=True)
    (folder / "s.yaml").write_bytes(data)
    params = load_params(REPO / "params.yaml")
    _contract(lambda: load_study("s", folder, params), "s.yaml")


def _set_property(key: str, value: str) -> None:
    params = load_params(REPO / "params.yaml")

    def body() -> object:
        dotted, parsed = parse_set_option(f"{key}={value}")
        return params.with_overrides({dotted: parsed}, origin=f"--set {dotted}")

    _contract(body, "--set")


_KEYS = st.sampled_from(["train.lr", "model.width", "model.batch_norm", "train.optimizer",
                         "seed", "model.dropout", "train.early_stopping.patience", "nope.key"])
_VALUES = st.one_of(st.sampled_from(_ODD_VALUES), st.text(max_size=20))


@FAST
@given(data=_variants(PARAMS))
def test_params_fuzz(tmp_path: Path, data: bytes) -> None:
    _params_property(tmp_path, data)


@FAST
@given(data=_variants(STUDY))
def test_study_fuzz(tmp_path: Path, data: bytes) -> None:
    _study_property(tmp_path, data)


@FAST
@given(key=_KEYS, value=_VALUES)
def test_set_fuzz(key: str, value: str) -> None:
    _set_property(key, value)


@pytest.mark.slow
@SLOW
@given(data=_variants(PARAMS))
def test_params_fuzz_long(tmp_path: Path, data: bytes) -> None:
    _params_property(tmp_path, data)


@pytest.mark.slow
@SLOW
@given(data=_variants(STUDY))
def test_study_fuzz_long(tmp_path: Path, data: bytes) -> None:
    _study_property(tmp_path, data)


@pytest.mark.slow
@SLOW
@given(key=_KEYS, value=_VALUES)
def test_set_fuzz_long(key: str, value: str) -> None:
    _set_property(key, value)
