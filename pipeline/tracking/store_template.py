"""A new SQLite tracking store, made from an empty one kept per MLflow version.

MLflow makes a new SQLite store by creating its first tables and then running every schema
migration since its first release, one by one (alembic), paid by the first command of every
new project, every clone and every ``make run`` from an empty ``mlruns/``, while an existing
store opens at once (BENCHMARKS.md, "Fixed costs"). The result of those migrations is
the same for every store of one MLflow version, so the first new store made with a version
also leaves an empty copy, made by MLflow's own table set-up, in the user's cache
(``$PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/pipeline``, else ``~/.cache/pipeline``); later new
stores start as that copy. The copy holds the schema only: MLflow adds its ``Default``
experiment, with this store's artifact location, when it opens the store. Each copy is checked
before it becomes the store: whole, without experiments, at the installed MLflow's schema
revision, and from a template only this user could have written (the cache folder is made
private); a copy that fails is not used, and the template is made anew by the next new store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import mlflow
import sqlalchemy
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_latest_schema_revision, _initialize_tables
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

ENV_CACHE = "PIPELINE_CACHE"


def cache_folder() -> Path:
    """Where the empty stores are kept.

    Raises:
        RuntimeError: no folder is named and the user has no home folder.
    """
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pipeline"


def template_path() -> Path:
    """The empty store of the installed MLflow version."""
    return cache_folder() / f"mlflow-{mlflow.__version__}-empty.db"


def connect_read_only(db: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite file ``db`` (its path as a ``file:`` URI, so that
    ``?``, ``#`` or ``%`` in a folder name are part of the path)."""
    return sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)


def start_new_store(db: Path) -> bool:
    """Make the new store ``db`` (which does not exist yet) as a checked copy of the empty store
    of this MLflow version, made first where the cache has none; False where there is none to
    copy (MLflow then makes the store itself)."""
    try:
        template = keep_template()
    except (OSError, RuntimeError) as exc:  # a cache folder that cannot be searched, no home
        logger.debug("no empty store to copy: %s", exc)
        return False
    if template is None:
        return False
    staged = db.with_name(f".{db.name}.new")
    try:
        shutil.copyfile(template, staged)
        if not (_trusted(template) and _usable(staged)):
            logger.warning("the cached empty MLflow store %s is damaged, not empty, of another "
                           "schema or writable by others; not used (removed where it can be, "
                           "the next new store makes it anew)", template)
            with contextlib.suppress(OSError):
                template.unlink()
            return False
        os.replace(staged, db)  # never a half-copied database under the store's name
    except OSError as exc:
        logger.debug("empty store %s not copied: %s", template, exc)
        return False
    finally:
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)
    return True


def _trusted(template: Path) -> bool:
    """Whether only this user could have written ``template``: every new store starts as it."""
    info = template.stat()
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _usable(db: Path) -> bool:
    """Whether ``db`` is whole, holds no experiment and is at the schema revision the installed
    MLflow expects."""
    try:
        with contextlib.closing(connect_read_only(db)) as con:
            whole = con.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
            experiments = con.execute("SELECT COUNT(*) FROM experiments").fetchone()
    except sqlite3.Error:
        return False
    return whole and revision == [(_get_latest_schema_revision(),)] and experiments == (0,)


def keep_template() -> Path | None:
    """The empty store of this MLflow version in the cache, made unless it is there; None where
    it cannot be made (a cache that cannot be written costs each new store its migrations,
    nothing else)."""
    template = template_path()
    if template.is_file():
        return template
    staged = template.with_name(f".{template.name}.{os.getpid()}.new")
    try:
        template.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged.unlink(missing_ok=True)
        engine = sqlalchemy.create_engine(f"sqlite:///{staged}")
        try:
            _initialize_tables(engine)  # what MLflow runs for a new store
        finally:
            engine.dispose()
        os.replace(staged, template)
    except (OSError, MlflowException, SQLAlchemyError) as exc:
        logger.debug("no empty store kept in %s: %s", template.parent, exc)
        with contextlib.suppress(OSError):
            staged.unlink(missing_ok=True)
        return None
    return template
