"""Where runs go: the tracking store's URI, artifact locations, experiments, MLflow's chatter.

The default store is a SQLite database inside the project's ``mlruns/`` folder with artifacts
beside it (MLflow ≥ 3.13 refuses the old plain-file store); ``MLFLOW_TRACKING_URI`` overrides it
(e.g. ``http://host:5000`` for a shared ``mlflow server``).

A local store is checked when a command opens it: its folders must be writable, a damaged
database is one line naming it (``PRAGMA quick_check``), and a store that was moved or copied
with its project is relocated. MLflow keeps absolute artifact locations (experiments, runs,
logged models, model versions); when the experiments say they were made in another project
folder than the one the store now lives in, every location under that old folder is rewritten
to the same place under this one, so a moved project keeps loading its models and a copy never
writes into the original (:func:`relocate`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.atomic import check_writable
from pipeline.config import Params
from pipeline.errors import UserError, caused_by, first_line
from pipeline.secrets import redact
from pipeline.tracking import store_template

logger = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
_LOCAL_SCHEMES = ("sqlite", "file", "")
# Third-party loggers that are chatty at INFO (MLflow logs each created run's URL and emoji
# lines; alembic each migration): the stage summaries say enough, their warnings stay.
_CHATTY_LOGGERS = ("mlflow", "alembic")


def quiet_mlflow() -> None:
    """The one place MLflow is made quiet: INFO chatter off, no per-file progress bars, no
    telemetry (no network from a laptop run), no "View run ... at" lines that MLflow writes to
    stdout for every run it ends on a tracking server (the command's output is ours).

    Idempotent; a level set explicitly to WARNING or above (or ``-v``'s DEBUG on the root
    logger, which leaves these loggers alone) is kept.
    """
    for name in _CHATTY_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.WARNING:
            lg.setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _absolute_uri(uri: str, root: Path) -> str:
    """Make a relative ``sqlite:///`` or ``file:`` URI absolute against the project root."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return f"sqlite:///{path if path.is_absolute() else root / path}"
    if uri.startswith("file:"):
        path = Path(urlsplit(uri).path)
        return (path if path.is_absolute() else root / path).as_uri()
    if "://" not in uri:  # a bare path
        path = Path(uri)
        return (path if path.is_absolute() else root / path).as_uri()
    return uri


def configure(params: Params, *, ignore_env: bool = False) -> str:
    """Point MLflow at the tracking store and return its URI.

    ``MLFLOW_TRACKING_URI`` wins (unless ``ignore_env``: a dry run must never write to the
    user's store); otherwise ``params.mlflow.tracking_uri`` with relative paths resolved
    against the project root. A local store's folders are created and probed for write
    access; a SQLite store is checked and relocated (see the module docstring).

    Raises:
        UserError: a store folder cannot be written, or the database is damaged.
    """
    quiet_mlflow()
    env = "" if ignore_env else os.environ.get(ENV_URI, "").strip()
    uri = env or _absolute_uri(params.mlflow.tracking_uri, params.root)
    check_writable(store_folders(params, uri, from_env=bool(env)))
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        artifacts = artifact_root(params, uri)
        anchor = (db.parent if env else params.root).resolve()  # as experiment() stores it
        _open_sqlite_store(uri, artifacts=artifacts and artifacts.resolve(), anchor=anchor)
    logger.debug("MLflow tracking URI: %s", redact(uri))
    return uri


def store_folders(params: Params, uri: str, *, from_env: bool = False) -> dict[Path, str]:
    """The folders a local store writes (the database's, or the file store's, and the artifact
    root), each with the setting that names it; empty for a tracking server."""
    what = f"the MLflow store ({ENV_URI if from_env else 'mlflow.tracking_uri'})"
    if uri.startswith("sqlite:///"):
        folders = {Path(uri[len("sqlite:///") :]).parent: what}
    elif uri.startswith("file:"):
        folders = {Path(unquote(urlsplit(uri).path)): what}
    else:
        return {}
    artifacts = artifact_root(params, uri)
    if artifacts is not None:
        folders.setdefault(artifacts, "the MLflow artifacts (mlflow.artifacts_dir)")
    return folders


def _open_sqlite_store(uri: str, *, artifacts: Path | None, anchor: Path) -> None:
    """Check a SQLite store (on every call: a command may run long), then create (or
    migrate) and relocate it once per process."""
    db = Path(uri[len("sqlite:///") :])
    if db.exists():
        check_database(db)
    _prepare_sqlite_store(uri, artifacts=artifacts, anchor=anchor)


@functools.cache  # once per store and process: later calls find it made
def _prepare_sqlite_store(uri: str, *, artifacts: Path | None, anchor: Path) -> None:
    """Create (or migrate) and relocate a SQLite store, under a lock beside it.

    Two processes that open a new store at once both run MLflow's migrations, and the second
    dies in alembic; the lock makes the second wait and find the schema made.
    """
    db = Path(uri[len("sqlite:///") :])
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            store_template.start_new_store(db)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        # Only a store that moved together with its artifacts: a database outside the
        # project, shared by several copies of it, keeps its locations.
        if artifacts is not None and _inside(db, anchor) and _inside(artifacts, anchor):
            relocate(db, artifacts=artifacts, anchor=anchor)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def check_database(db: Path) -> None:
    """Refuse a damaged SQLite database with one line naming it and what to do.

    ``PRAGMA quick_check`` reads every page (milliseconds for a project's store), so a
    database cut short or overwritten is found before a command works on it.

    Raises:
        UserError: the database is damaged.
    """
    try:
        with contextlib.closing(store_template.connect_read_only(db)) as con:
            found = [str(row[0]) for row in con.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.OperationalError as exc:  # locked by a writer, cannot be opened: not damage
        logger.debug("%s: not checked (%s)", db, exc)
        return
    except sqlite3.DatabaseError as exc:  # "file is not a database", "... malformed"
        found = [str(exc)]
    if found == ["ok"]:
        return
    raise UserError(
        f"{db}: the MLflow database is damaged ({found[0]}); restore it from a backup, or "
        f"move it aside (mv {db} {db}.damaged) and rerun to start an empty store (the runs' "
        "files stay in the artifact folder)"
    )


# Where MLflow's SQL store keeps absolute artifact locations (MLflow 3: experiments, runs,
# logged models, model versions).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def _local_path(location: str | None) -> str | None:
    if not location:
        return None
    if location.startswith("file://"):
        return unquote(urlsplit(location).path)
    return location if location.startswith("/") else None


def _old_anchors(con: sqlite3.Connection, rel: str) -> set[str]:
    """The folders the store's experiments were made in: an experiment that
    :func:`experiment` made lives at ``<anchor>/<rel>/<name>``."""
    found = set()
    for name, location in con.execute("SELECT name, artifact_location FROM experiments"):
        path = _local_path(location)
        if path is None or posixpath.basename(path) != name:
            continue
        parent = posixpath.dirname(path)
        if parent.endswith("/" + rel):
            found.add(parent[: -len(rel) - 1] or "/")
    return found


def relocate(db: Path, *, artifacts: Path, anchor: Path) -> int:
    """Rewrite the artifact locations of a store that moved (or was copied) with its folder.

    Args:
        db: the SQLite database (inside ``anchor``).
        artifacts: the artifact root of new experiments (inside ``anchor``).
        anchor: the folder that moves as a whole: the project root, or the database's folder
            for a store named by ``MLFLOW_TRACKING_URI``.

    Returns:
        How many locations were rewritten (0 when the store is where it was made).
    """
    anchor = anchor.resolve()
    rel = artifacts.resolve().relative_to(anchor).as_posix()
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
        for old in sorted(_old_anchors(con, rel) - {str(anchor)}):
            pairs = ((Path(old).as_uri() + "/", anchor.as_uri() + "/"),
                     (old.rstrip("/") + "/", str(anchor) + "/"))
            for (table, column), (before, after) in (
                (tc, pair) for tc in _LOCATION_COLUMNS if tc[0] in tables for pair in pairs
            ):
                changed += con.execute(
                    f"UPDATE {table} SET {column} = :after || substr({column}, :cut) "
                    f"WHERE substr({column}, 1, :n) = :before",
                    {"after": after, "before": before, "n": len(before), "cut": len(before) + 1},
                ).rowcount
            logger.warning("%s: this store was made in %s and now lives in %s; its artifact "
                           "locations were moved along", db, old, anchor)
    return changed


def is_local_store(uri: str | None = None) -> bool:
    """Whether the store is a local database/folder (we then choose artifact locations)."""
    scheme = urlsplit(uri or mlflow.get_tracking_uri()).scheme
    return scheme in _LOCAL_SCHEMES


def artifact_root(params: Params, uri: str | None = None) -> Path | None:
    """Where new experiments keep artifacts, or None when a tracking server decides.

    The configured store: ``<root>/<mlflow.artifacts_dir>``. A SQLite store named by
    ``MLFLOW_TRACKING_URI`` overrides that too: ``artifacts/`` beside its database file.
    """
    uri = uri or mlflow.get_tracking_uri()
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https", "databricks", "uc"):
        return None
    env = os.environ.get(ENV_URI, "").strip()
    if env and uri == env and uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).parent / "artifacts"
    return params.path(params.mlflow.artifacts_dir)


# The kind MLflow's API records for an experiment of training runs. MLflow 3.17's UI does not
# read it (it takes the view from the URL or the browser's saved toggle), hence :func:`ui_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `make ui` serves


def ui_url(experiment_id: str, base: str = UI_ADDRESS, view: str = "") -> str:
    """The experiment's runs table in the MLflow UI, in its "Model training" view.

    Without ``workflowType=machine_learning`` a fresh browser opens MLflow 3's GenAI view (an
    empty traces overview, no Model registry in the sidebar). ``view`` is a key from
    :func:`share_runs_view` (its sort order and columns); MLflow ignores a shared view when
    the URL carries its own sort, so the link holds one or the other.
    """
    url = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return url + (f"&{VIEW_PARAM}={view}" if view else "")


def ui_base() -> str:
    """Where users open the UI: the tracking server itself, or ``make ui`` for a local store."""
    uri = mlflow.get_tracking_uri()
    return redact(uri) if urlsplit(uri).scheme in ("http", "https") else UI_ADDRESS


# MLflow's UI loads a runs-table view (sort order, columns) saved as an experiment tag
# `mlflow.sharedViewState.<key>` when the URL names the key (MLflow 3.17's "Share" button).
VIEW_PARAM = "viewStateShareKey"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # the UI's column key: metrics.`best_val_loss`


def share_runs_view(
    experiment_id: str, *, order_by: str, ascending: bool, params: Sequence[str],
    metrics: Sequence[str],
) -> str:
    """Save a runs-table view of the experiment: sorted by the metric ``order_by``, with the
    given params and metrics as columns. Returns its key for :func:`ui_url`; the same view
    gets the same key, so a rerun rewrites one tag."""
    state = {
        "orderByKey": _column("metrics", order_by), "orderByAsc": ascending,
        "selectedColumns": [_column("params", p) for p in params]
        + [_column("metrics", m) for m in metrics],
    }
    text = json.dumps(state, sort_keys=True)
    key = "pipeline-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    MlflowClient().set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, text)
    return key


def experiment(name: str, params: Params) -> str:
    """The id of experiment ``name``, created (or restored, if deleted) when needed.

    A new experiment keeps its artifacts under :func:`artifact_root` ``/<name>`` (by default
    ``<root>/mlruns/artifacts/<name>``); a tracking server decides for itself.
    """
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
            logger.info("restored deleted MLflow experiment %r", name)
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(found.experiment_id)
    location = None
    root = artifact_root(params)
    if root is not None:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.resolve().as_uri()
    try:
        exp_id = client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except MlflowException:
        # Another process created it between our lookup and create.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)
    logger.info("created MLflow experiment %r", name)
    return str(exp_id)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) says the tracking server could not be reached.

    MLflow's REST client retries a refused connection, a timeout or a 5xx answer (its
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) and then raises an ``MlflowException`` whose context is
    the ``requests`` error: a lost server, as opposed to a request the server refused.
    """
    return caused_by(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                           requests.exceptions.RetryError))


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def unreachable_reason(exc: BaseException) -> str:
    """A few words for a lost server (``Connection refused``), not MLflow's 400-character
    message with the request's URL in it."""
    text = " ".join(str(exc).split())
    found = _ERRNO_TEXT.search(text)
    if found:
        return found.group(1).strip()
    return "timed out" if "timed out" in text.lower() else first_line(exc)[:200]


def active_run_id(run_id: str | None = None) -> str:
    """``run_id``, or the active run's id when it is None."""
    if run_id is not None:
        return run_id
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: start one or pass run_id")
    return run.info.run_id
