"""Where an Optuna study lives: resolve the storage setting and open it.

Precedence: ``--storage`` on the command line, then the ``PIPELINE_STORAGE`` environment
variable, then ``search.storage`` in ``params.yaml``, then the default: a journal file
``studies/<study>-<dataset>.journal`` (``JournalStorage(JournalFileBackend)``). The journal file
is safe for ``--n-jobs > 1`` and for several processes on one machine, where SQLite locks under
parallel writers (Optuna's FAQ).

A value containing ``://`` is an SQLAlchemy URL for Optuna's RDB storage
(``postgresql+psycopg://``, ``mysql://``, ``sqlite:///``); it gets heartbeats, so the trial of a
crashed worker is marked failed and retried (``RetryHeartbeatStaleTrialCallback``). Any other
value is a journal file path (relative paths from the project root). Passwords never leave this
module unredacted: :meth:`StorageChoice.display` is what logs, MLflow and reports see.

A journal file is checked before Optuna opens it, and its tail before every append
(:mod:`pipeline.study.journal`): a record cut short by a crash is set aside, never appended to.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy import make_url, text

from pipeline.atomic import check_writable
from pipeline.config import Params
from pipeline.errors import UserError, first_line
from pipeline.secrets import has_password, redact, redact_text
from pipeline.study.journal import check_journal, checked_lock

logger = logging.getLogger(__name__)

ENV_STORAGE = "PIPELINE_STORAGE"
JOURNAL_SUFFIX = ".journal"


@dataclass(frozen=True)
class StorageChoice:
    """The resolved storage: a journal file or an RDB URL, and where the setting came from."""

    kind: Literal["journal", "rdb", "memory"]
    target: str  # the file path (journal), the URL (rdb, secret inside!) or "" (memory)
    origin: str  # "--storage", "PIPELINE_STORAGE", "params.yaml: search.storage", "default"

    def display(self) -> str:
        """A form safe for logs, MLflow and reports (passwords replaced by ``***``)."""
        if self.kind == "memory":
            return "in-memory"
        return redact(self.target)


def default_journal(root: Path, studies_dir: str, study_name: str) -> Path:
    return Path(root) / studies_dir / f"{study_name}{JOURNAL_SUFFIX}"


def resolve_storage(
    cli_value: str | None,
    *,
    params_value: str | None,
    root: Path,
    studies_dir: str,
    study_name: str,
    params_source: str = "params.yaml",
) -> StorageChoice:
    """Pick the storage setting by precedence (see the module docstring)."""
    env_value = os.environ.get(ENV_STORAGE, "").strip() or None
    for value, origin in (
        (cli_value, "--storage"),
        (env_value, ENV_STORAGE),
        (params_value, f"{params_source}: search.storage"),
    ):
        if value is not None and str(value).strip():
            if origin == "--storage" and has_password(str(value)):
                raise UserError(
                    f"--storage {redact(str(value))}: the URL holds a password, which every "
                    "user of this machine can read on a command line (ps); put the URL in the "
                    f"{ENV_STORAGE} environment variable, or keep the password in a libpq "
                    "password file (~/.pgpass or PGPASSFILE) or in PGPASSWORD"
                )
            return _parse(str(value).strip(), origin=origin, root=root)
    path = default_journal(root, studies_dir, study_name)
    return StorageChoice(kind="journal", target=str(path), origin="default")


def _parse(value: str, *, origin: str, root: Path) -> StorageChoice:
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if not scheme or not scheme.replace("+", "").replace("_", "").isalnum():
            raise UserError(f"{origin}: {redact(value)!r} is not a storage URL")
        return StorageChoice(kind="rdb", target=value, origin=origin)
    path = Path(value).expanduser()
    path = path if path.is_absolute() else Path(root) / path
    return StorageChoice(kind="journal", target=str(path), origin=origin)


def check_search_folders(choice: StorageChoice, params: Params) -> None:
    """Probe, before a search starts, the folders it writes besides the tracking store (which
    :func:`pipeline.tracking.configure` probes): the journal's and the study reports'. A dry
    run (in-memory storage) writes neither.

    Raises:
        UserError: one line naming the folder that cannot be written.
    """
    if choice.kind == "memory":
        return
    folders = {params.path(params.search.reports_dir): "the study reports (search.reports_dir)"}
    if choice.kind == "journal":
        origin = "search.storage" if choice.origin == "default" else choice.origin
        folders[Path(choice.target).parent] = f"the study journal ({origin})"
    check_writable(folders)


def open_storage(
    choice: StorageChoice, *, heartbeat_interval_s: int = 60, grace_period_s: int = 180,
    max_retry: int = 2,
) -> Any:
    """The Optuna storage object for ``choice`` (journal, RDB with heartbeats, or in-memory).

    The heartbeat settings are ``search.*`` in params.yaml; on RDB storage Optuna's heartbeat
    fails and re-queues a silent trial, on every storage :mod:`pipeline.study.workers` does.

    Raises:
        UserError: the storage cannot be opened (message with the redacted URL).
    """

    if choice.kind == "memory":
        return optuna.storages.InMemoryStorage()
    if choice.kind == "journal":
        path = Path(choice.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            check_journal(path)
            return JournalStorage(JournalFileBackend(str(path), lock_obj=checked_lock(path)))
        except OSError as exc:
            raise UserError(
                f"{choice.origin}: cannot open the study journal {path}: {exc.strerror or exc}"
            ) from None
    if choice.target.startswith("sqlite:"):
        logger.info(
            "SQLite study storage: fine for one process; parallel writers (--n-jobs > 1, "
            "several workers) can hit 'database is locked' — prefer the default journal file"
        )
    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental in Optuna; they are what we want.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                choice.target,
                engine_kwargs=(
                    None if choice.target.startswith("sqlite:") else {"pool_pre_ping": True}
                ),
                heartbeat_interval=heartbeat_interval_s,
                grace_period=grace_period_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
    except Exception as exc:  # SQLAlchemy/driver errors: report them as the user's problem
        raise UserError(
            f"{choice.origin}: cannot open Optuna storage {choice.display()}: "
            f"{redact_text(first_line(exc), choice.target)}"
        ) from None


@contextlib.contextmanager
def study_lock(choice: StorageChoice, storage: Any, study_name: str) -> Iterator[None]:
    """A lock that every worker of ``study_name`` on this storage takes for the same moment:
    the budget's check-then-create (:mod:`pipeline.study.budget`).

    PostgreSQL: a transaction-level advisory lock (released with the transaction, so also when
    a worker dies holding it). A journal or SQLite file: ``flock`` on a file beside it, opened
    afresh each time so that threads of one process exclude each other too. In memory (one
    process): a thread lock. Other databases have no lock here (a concurrent start may then
    overshoot the total by one trial per worker).
    """
    if choice.kind == "memory":
        with _MEMORY_LOCK:
            yield
        return
    if choice.kind == "journal" or choice.target.startswith("sqlite:"):
        path = Path(choice.target) if choice.kind == "journal" else Path(
            make_url(choice.target).database or "optuna.db")
        with open(path.with_name(path.name + ".budget.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


_MEMORY_LOCK = threading.Lock()

