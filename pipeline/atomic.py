"""Files written whole or not at all, and the folders they go to checked before work starts.

- :func:`atomic_open`: a temporary file beside the target, then a rename. A crash or Ctrl-C
  mid-write leaves the previous file (or none), never half of a new one.
- :func:`write_set`: several files as one unit (``evaluate``'s metrics, evaluation and plots):
  each is staged in full in a folder, a manifest written last marks the set complete, then the
  files are renamed into place. A write killed before the manifest is discarded by the next
  one; a write killed while renaming is finished by it (:func:`recover_sets`).
- :func:`check_writable`: every command probes the folders it will write before its work
  starts (by creating and removing a file: permission bits alone do not tell, root ignores
  them, and a read-only mount or an immutable folder refuses root too), and sweeps the
  temporary files a killed earlier run left there.

Temporary names carry their maker, ``.<name>.tmp-<host>-<pid>-<random>``: one whose process is
gone (on this host) is stale. So is one in the unowned format of earlier versions
(``.<name>.<random>.tmp``) untouched for :data:`UNOWNED_STALE_S`. The same rule sweeps the
cache's staging folders (:mod:`pipeline.data.cache`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

# An unowned temporary file or folder (made before names carried their owner) untouched this
# long is taken as stale: no write takes anywhere near as long between two of its steps.
UNOWNED_STALE_S = 3600.0
_OWNED_TEMP = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<owner>[A-Za-z0-9_.]+-\d+)-[A-Za-z0-9_]+$")
_UNOWNED_TEMP = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
_SET = "write-set"  # the staging folders of write_set: .write-set.tmp-<owner>-<random>
_MANIFEST = "MANIFEST.json"


# --------------------------------------------------------------------------------------------
# Who made a temporary file, and whether it is gone
# --------------------------------------------------------------------------------------------
def owner() -> str:
    """``<host>-<pid>``, with the host name reduced to characters safe in a file name."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def is_stale(path: Path, made_by: str | None, now: float | None = None) -> bool:
    """Whether the temporary ``path`` made by ``made_by`` (``<host>-<pid>``, None for the
    unowned format) is left over from a process that is gone (see the module docstring)."""
    if made_by is None:
        try:
            return (now or time.time()) - path.lstat().st_mtime > UNOWNED_STALE_S
        except FileNotFoundError:
            return False
    host, _, pid = made_by.rpartition("-")
    here, _, _ = owner().rpartition("-")
    return host == here and int(pid) != os.getpid() and not pid_alive(int(pid))


def temp_name(target: str) -> str:
    """The prefix of a temporary file or folder for ``target``, owned by this process."""
    return f".{target}.tmp-{owner()}-"


# --------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it is synced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_name(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_json_atomic(path: Path | str, data: Any, *, sort_keys: bool = False) -> None:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=sort_keys)
        fh.write("\n")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files that killed writes left directly in ``folder``; return them.

    Only names this module makes are touched, and only stale ones (:func:`is_stale`).
    """
    removed = []
    now = time.time()
    try:
        entries = sorted(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        owned = _OWNED_TEMP.match(entry.name)
        unowned = None if owned else _UNOWNED_TEMP.match(entry.name)
        if (owned is None and unowned is None) or entry.is_dir() or entry.is_symlink():
            continue
        if is_stale(entry, owned.group("owner") if owned else None, now):
            entry.unlink(missing_ok=True)
            logger.warning("removed %s, left by a killed write", entry)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------------
# Write access, checked up front
# --------------------------------------------------------------------------------------------
def check_writable(folders: Mapping[Path, str]) -> None:
    """Make sure each folder exists and this process can create files in it; sweep the
    temporary files a killed earlier run left there.

    Args:
        folders: folder -> what goes there and the setting that says so, for the message
            (``"the evaluation reports (evaluate.reports_dir)"``).

    Raises:
        UserError: one line naming the first folder that cannot be written, and why.
    """
    for folder, what in folders.items():
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=temp_name("write-probe"), dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise UserError(
                f"{folder}: not writable ({why}); expected a folder this user can write, for "
                f"{what}"
            ) from None
        remove_stale_temps(folder)
        recover_sets(folder)


# --------------------------------------------------------------------------------------------
# Several files as one unit
# --------------------------------------------------------------------------------------------
def write_set(base: Path, files: Mapping[Path, bytes], *, remove: Iterable[Path] = ()) -> None:
    """Write ``files`` (and delete ``remove``), all inside ``base``, as one unit.

    Every file is staged and synced first; the manifest written last is the point after which
    the set counts as written: a kill before it leaves the old files, a kill after it (while
    renaming, a few microseconds) is finished by the next :func:`recover_sets` on ``base``.
    """
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    recover_sets(base)
    targets = [Path(p) for p in files]
    for path in [*targets, *map(Path, remove)]:
        if not path.resolve().is_relative_to(base.resolve()):
            raise ValueError(f"write_set: {path} is not inside {base}")
    staging = Path(tempfile.mkdtemp(prefix=temp_name(_SET), dir=base))
    try:
        moves = []
        for i, (path, data) in enumerate(files.items()):
            write_bytes_atomic(staging / str(i), data)
            moves.append([str(i), os.path.relpath(path, base)])
        manifest = {"moves": moves, "remove": [os.path.relpath(p, base) for p in remove]}
        write_json_atomic(staging / _MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _apply(staging, base)


def _apply(staging: Path, base: Path) -> None:
    """Rename a complete set's files into place and delete what it removes (idempotent)."""
    manifest = json.loads((staging / _MANIFEST).read_text())
    for name, rel in manifest["moves"]:
        if (staging / name).exists():
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, base / rel)
    for rel in manifest["remove"]:
        (base / rel).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover_sets(base: Path) -> list[Path]:
    """Finish or discard the sets that killed writes left in ``base``; return their folders.

    A set with its manifest was complete: its remaining files are renamed into place. One
    without was cut off while staging: it is removed and the old files stay.
    """
    found = []
    pattern = re.compile(rf"^\.{_SET}\.tmp-(?P<owner>[A-Za-z0-9_.]+-\d+)-[A-Za-z0-9_]+$")
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(Path(base).iterdir()):
            match = pattern.match(entry.name)
            if match is None or not entry.is_dir() or not is_stale(entry, match["owner"]):
                continue
            if (entry / _MANIFEST).is_file():
                _apply(entry, Path(base))
                logger.warning("%s: finished the set of files a killed write left in %s",
                               base, entry.name)
            else:
                shutil.rmtree(entry, ignore_errors=True)
                logger.warning("%s: removed %s, a set of files a killed write left unfinished",
                               base, entry.name)
            found.append(entry)
    return found
