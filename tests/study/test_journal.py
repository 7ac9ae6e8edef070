"""The study journal's tail: a record cut short is set aside, never appended to (real files).

Optuna's own backend writes the journals here; the checks run on real files cut at every byte
of their last two records.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pipeline.errors import UserError
from pipeline.study.journal import TORN_SUFFIX, check_journal, checked_lock
from pipeline.study.storage import StorageChoice, open_storage
from tests.conftest import read_only

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    for step in range(2):
        trial.report(x * step, step)
    trial.set_user_attr("note", "é ü \\n")  # non-ASCII and an escaped newline in a record
    return x * x


@pytest.fixture(scope="module")
def full_journal(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real journal: a study with three finished trials."""
    path = tmp_path_factory.mktemp("journal") / "s.journal"
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(_objective, n_trials=3)
    data = path.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") > 10
    return data


def _trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(path)))  # Optuna's own reader, unaided
    return optuna.load_study(study_name="s", storage=storage).trials


def _asides(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + TORN_SUFFIX + "*"))


def _lines_start(data: bytes, back: int) -> int:
    """Offset of the ``back``-th last line of ``data`` (which ends with a newline)."""
    at = len(data) - 1
    for _ in range(back):
        at = data.rfind(b"\n", 0, at)
    return at + 1


def _check_cut(folder: Path, prefix: bytes) -> None:
    """``prefix`` (a journal cut short) through check_journal, then one append: nothing lost,
    nothing appended onto a damaged line, Optuna reads every line."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    path = folder / "s.journal"
    path.write_bytes(prefix)
    check_journal(path)
    kept = path.read_bytes()
    aside = b"".join(p.read_bytes() for p in _asides(path))
    cut_at = prefix.rfind(b"\n") + 1
    if prefix.endswith(b"\n"):
        assert kept == prefix and aside == b""
    elif cut_at < len(prefix) and _is_record(prefix[cut_at:]):  # only the newline was missing
        assert kept == prefix + b"\n" and aside == b""
    else:
        assert kept == prefix[:cut_at] and aside == prefix[cut_at:]
    backend = JournalFileBackend(str(path), lock_obj=checked_lock(path))
    backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "t", "directions": [1]}])
    assert path.read_bytes() == kept + path.read_bytes()[len(kept):]  # appended, not glued
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line)["op_code"] >= 0 for line in lines[:-1])
    assert len(_trials(path)) == 3  # Optuna replays it all; the cut record was the last trial's


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_every_cut_in_the_last_two_records(full_journal: bytes, tmp_path: Path) -> None:
    """Cut at every byte of the last two records: recovered, nothing lost, never corrupted."""
    start = _lines_start(full_journal, 2)
    for cut in range(start, len(full_journal) + 1):
        _check_cut(tmp_path / "cut", full_journal[:cut])
    # Optuna itself reads the repaired file as the study it held before the cut record.
    _check_cut(tmp_path / "cut", full_journal[: len(full_journal) - 5])
    assert [t.state.name for t in _trials(tmp_path / "cut" / "s.journal")][:2] == ["COMPLETE"] * 2


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000), junk=st.binary(max_size=64))
def test_any_torn_tail_is_recovered(full_journal: bytes, tmp_path: Path, cut: int,
                                    junk: bytes) -> None:
    """A cut anywhere in the last two records, with any bytes a crash can leave after it
    (zeros, half a UTF-8 character, ...)."""
    start = _lines_start(full_journal, 2)
    prefix = full_journal[: start + cut % (len(full_journal) - start + 1)]
    if b"\n" in junk:
        junk = junk.replace(b"\n", b"")  # a new line would be damage inside the file
    _check_cut(tmp_path / "fuzz", prefix + junk)


def test_appending_through_the_lock_repairs_a_tail_torn_meanwhile(
    full_journal: bytes, tmp_path: Path
) -> None:
    """Another worker killed mid-write while this one runs: its next append sets the torn
    record aside first (the search's storage appends only through this lock)."""
    path = tmp_path / "s.journal"
    path.write_bytes(full_journal)
    storage = open_storage(StorageChoice("journal", str(path), "test"))
    study = optuna.load_study(study_name="s", storage=storage)
    with open(path, "ab") as fh:
        fh.write(full_journal[_lines_start(full_journal, 1):][:20])  # a torn record
    study.optimize(_objective, n_trials=1)
    assert len(_trials(path)) == 4
    torn = full_journal[_lines_start(full_journal, 1):][:20]
    assert [p.read_bytes() for p in _asides(path)] == [torn]


def test_a_record_glued_to_a_torn_one_is_split(full_journal: bytes, tmp_path: Path) -> None:
    """What earlier versions left: a record appended onto a torn one, in the file's middle."""
    path = tmp_path / "s.journal"
    torn = full_journal[: len(full_journal) - 7]
    path.write_bytes(torn)
    for step in ("a new trial", "a study attribute"):  # Optuna alone appends onto it
        plain = optuna.load_study(study_name="s",
                                  storage=JournalStorage(JournalFileBackend(str(path))))
        with contextlib.suppress(Exception):  # Optuna trips over the line it glued
            plain.optimize(_objective, n_trials=1) if step == "a new trial" else \
                plain.set_user_attr("k", "v")
    with pytest.raises(json.JSONDecodeError):
        _trials(path)
    check_journal(path)
    # The third trial's last record (its end) was the one cut; the glued one made a fourth.
    assert [t.state.name for t in _trials(path)] == ["COMPLETE"] * 2 + ["RUNNING"] * 2
    assert optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(
        str(path)))).user_attrs == {"k": "v"}
    assert _asides(path)[0].read_bytes() == torn[torn.rfind(b"\n") + 1:] + b"\n"


def test_damage_in_the_middle_is_refused_naming_the_line(full_journal: bytes,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    lines = full_journal.split(b"\n")
    lines[4] = b"\x00" * 30
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(UserError, match=rf"^{path}:5: damaged study record .*restore the file"):
        open_storage(StorageChoice("journal", str(path), "test"))
    assert path.read_bytes() == damaged and _asides(path) == []  # nothing touched


def test_a_clean_journal_is_left_alone(full_journal: bytes, tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    path.write_bytes(full_journal)
    mtime = path.stat().st_mtime_ns
    check_journal(path)
    assert path.read_bytes() == full_journal and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.journal"]


def test_a_reader_that_cannot_write_the_folder_still_opens_the_study(
    full_journal: bytes, tmp_path: Path
) -> None:
    """The report page on a study folder it may only read: checked, not repaired."""
    folder = tmp_path / "studies"
    folder.mkdir()
    path = folder / "s.journal"
    path.write_bytes(full_journal[:-9])  # torn: Optuna reads past it
    with read_only(folder):
        storage = open_storage(StorageChoice("journal", str(path), "test"))
        assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3
    assert path.read_bytes() == full_journal[:-9]
