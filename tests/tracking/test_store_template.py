"""A new SQLite store made from the empty one kept per MLflow version is the store MLflow makes."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient

from pipeline.tracking import store_template
from pipeline.tracking.store import _prepare_sqlite_store


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(store_template.ENV_CACHE, str(folder))
    return folder


def _schema(db: Path) -> dict[str, object]:
    """Tables with their columns and indexes, the schema revision and the experiments (not the
    tables' SQL text: MLflow's migrations write CHECK lists in a set's order, which differs
    from one process to the next)."""
    with sqlite3.connect(db) as con:
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        tables = {name: (con.execute(f"PRAGMA table_info('{name}')").fetchall(),
                         sorted(r[1:] for r in con.execute(f"PRAGMA index_list('{name}')")))
                  for name in names}
        revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = con.execute("SELECT name, artifact_location FROM experiments").fetchall()
    return {"tables": tables, "revision": revision, "experiments": experiments}


def _open(db: Path) -> None:
    _prepare_sqlite_store(f"sqlite:///{db}", artifacts=None, anchor=db.parent)


def test_a_store_from_the_template_is_the_one_mlflow_makes(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    made_by_mlflow = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{made_by_mlflow}").search_experiments()
    _open(tmp_path / "first.db")  # makes the template, then the store from it
    assert store_template.template_path().parent == cache
    assert store_template.template_path().is_file()
    with sqlite3.connect(store_template.template_path()) as con:  # the schema, no experiment
        assert con.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)

    import mlflow.store.db.utils as db_utils

    def no_migrations(engine: object) -> None:
        raise AssertionError("a store made from the template runs no migrations")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    _open(tmp_path / "second.db")
    expected = _schema(made_by_mlflow)
    assert expected["experiments"][0][0] == "Default"  # MLflow's own Default experiment
    assert _schema(tmp_path / "first.db") == expected
    assert _schema(tmp_path / "second.db") == expected
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'second.db'}")
    assert client.get_experiment(client.create_experiment("works")).name == "works"


@pytest.mark.parametrize("damage", ["not a database", "another schema version", "not empty",
                                    "writable by others"])
def test_a_template_that_fails_its_check_is_not_used(
    tmp_path: Path, cache: Path, damage: str, caplog: pytest.LogCaptureFixture,
) -> None:
    assert store_template.keep_template()
    template = store_template.template_path()
    assert cache.stat().st_mode & 0o777 == 0o700  # the cache folder is private
    if damage == "not a database":
        template.write_bytes(b"garbage" * 100)
    elif damage == "writable by others":
        template.chmod(0o666)
    else:
        with sqlite3.connect(template) as con:
            if damage == "another schema version":
                con.execute("UPDATE alembic_version SET version_num = 'feedc0ffee00'")
            else:
                con.execute("INSERT INTO experiments (name, lifecycle_stage) "
                            "VALUES ('planted', 'active')")
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking.store_template"):
        _open(tmp_path / "store.db")
    assert "not used (removed where it can be" in caplog.text
    assert not template.exists()  # the next new store makes it anew
    made_by_mlflow = tmp_path / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{made_by_mlflow}").search_experiments()
    assert _schema(tmp_path / "store.db") == _schema(made_by_mlflow)  # MLflow made this one
    assert not list(tmp_path.glob(".*.new"))
    _open(tmp_path / "next.db")
    assert store_template._usable(template)


def test_a_database_whose_path_reads_as_uri_syntax_is_checked_in_place(
    tmp_path: Path, cache: Path,
) -> None:
    from pipeline.tracking.store import check_database

    assert store_template.keep_template()
    folder = tmp_path / "we?ird #100%"
    folder.mkdir()
    shutil.copyfile(store_template.template_path(), folder / "copy.db")
    assert store_template._usable(folder / "copy.db")  # read where it is, read-only
    check_database(folder / "copy.db")  # whole: no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "we?ird #100%"]  # no stray
    assert sorted(p.name for p in folder.iterdir()) == ["copy.db"]


def test_a_template_that_cannot_be_made_leaves_nothing_and_costs_only_the_migrations(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def half_made(engine: sqlalchemy.engine.Engine) -> None:
        with engine.begin() as con:
            con.execute(sqlalchemy.text("CREATE TABLE half (x INTEGER)"))
        raise sqlalchemy.exc.OperationalError("migrate", {}, Exception("disk I/O error"))

    monkeypatch.setattr(store_template, "_initialize_tables", half_made)
    assert not store_template.keep_template()
    assert list(cache.iterdir()) == []  # no half-made template, staged or final
    _open(tmp_path / "store.db")  # MLflow makes it itself
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store.db'}").search_experiments()


@pytest.mark.parametrize("where", ["a file in the way", "no home folder"])
def test_no_cache_costs_only_the_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
) -> None:
    if where == "a file in the way":
        blocked = tmp_path / "a-file"
        blocked.write_text("")
        monkeypatch.setenv(store_template.ENV_CACHE, str(blocked / "cache"))
    else:
        monkeypatch.delenv(store_template.ENV_CACHE, raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)

        def no_home() -> Path:
            raise RuntimeError("Could not determine home directory.")

        monkeypatch.setattr(Path, "home", no_home)
    assert not store_template.start_new_store(tmp_path / "store.db")
    _open(tmp_path / "store.db")
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'store.db'}").search_experiments()
