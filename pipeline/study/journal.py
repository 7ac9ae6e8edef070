"""The study journal file, checked before Optuna reads it and before every append.

Optuna's ``JournalFileBackend`` appends one JSON record per line. A process killed mid-write
leaves the last line cut short (or a complete record without its newline). Optuna skips such a
line when it reads, but appends the next record right after it: the two become one broken line
in the middle of the file, and every later read fails. So:

- :func:`check_journal` (when a study is opened) reads every line. A damaged last line is set
  aside: its bytes go to ``<journal>.torn-<time>`` and the file is cut back to its last
  complete record (one warning line). A complete last record without its newline gets the
  newline. A line in the middle that is a cut-off record with a whole record glued after it
  (what an earlier version left after appending onto a torn tail) is split the same way.
  Any other damaged line stops the command with one line naming the file and the line.
- :func:`checked_lock`: the lock Optuna takes for every append first repairs the tail the same
  way, so nothing is ever appended to a damaged file, even when another worker was killed
  mid-write while this search runs.

Nothing a reader has seen is dropped: Optuna never applies a line without its newline, nor one
that is not JSON.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileSymlinkLock

from pipeline.atomic import write_bytes_atomic
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

TORN_SUFFIX = ".torn-"  # <journal>.torn-<UTC time>-<pid>: what was cut off, byte for byte
_RECORD_START = b'{"op_code":'  # how Optuna writes every record (json.dumps, compact)
_BLOCK = 1 << 16


def _record(line: bytes) -> dict[str, Any] | None:
    """The record a line (without its newline) holds, or None when it is not one."""
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) and "op_code" in value else None


def _set_aside(path: Path, cut: bytes) -> Path:
    """Save the bytes about to be cut from ``path`` beside it; return where."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}-{os.getpid()}")
    write_bytes_atomic(aside, cut)
    return aside


def _last_line(path: Path) -> tuple[int, bytes]:
    """(offset, bytes) of the file's last line, its newline included when it has one."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 1))
        pos = size - 1 if fh.read(1) == b"\n" else size  # search before the final newline
        start = 0
        while pos > 0:
            step = min(_BLOCK, pos)
            fh.seek(pos - step)
            found = fh.read(step).rfind(b"\n")
            if found >= 0:
                start = pos - step + found + 1
                break
            pos -= step
        fh.seek(start)
        return start, fh.read()


def repair_tail(path: Path) -> bool:
    """Set aside a damaged last line, or complete a last record without its newline.

    Call it only while holding the journal's lock. Returns whether the file was changed.
    """
    if not path.exists():
        return False
    start, line = _last_line(path)
    if not line or (line.endswith(b"\n") and _record(line[:-1]) is not None):
        return False
    if not line.endswith(b"\n") and _record(line) is not None:
        with open(path, "ab") as fh:
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        logger.warning("%s: its last record lacked the final newline; added it", path)
        return True
    aside = _set_aside(path, line)
    os.truncate(path, start)
    logger.warning(
        "%s: its last record was cut short (%d bytes at byte %d, as a crash mid-write leaves "
        "it); moved them to %s and continued from the record before", path, len(line), start,
        aside.name,
    )
    return True


def _split_glued(line: bytes) -> int | None:
    """Where a whole record starts after a cut-off one in ``line``, or None."""
    at = line.find(_RECORD_START, 1)
    while at > 0:
        if _record(line[at:]) is not None:
            return at
        at = line.find(_RECORD_START, at + 1)
    return None


def _check_lines(path: Path, *, repair: bool = True) -> None:
    """Every complete line must be a record: split the glued ones, refuse anything else.

    The last line is left to :func:`repair_tail` when it is incomplete, or when it is the
    file's last and holds no glued record. Without ``repair`` (a folder this process cannot
    write: a reader such as the report page) a glued line is refused too.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # complete lines; the remainder is the tail's business
    kept, cut = [], []
    for number, line in enumerate(lines, start=1):
        if _record(line) is not None:
            kept.append(line)
            continue
        at = _split_glued(line)
        if at is None and number == len(lines) and data.endswith(b"\n"):
            kept.append(line)  # a damaged last line: set aside by repair_tail
            continue
        if at is not None and not repair:
            raise UserError(
                f"{path}:{number}: a record cut short by a crash has another glued to it; run "
                "a search on the study from an account that can write its folder to repair it"
            )
        if at is None:
            raise UserError(
                f"{path}:{number}: damaged study record ({len(line) + 1} bytes that are not "
                "an Optuna journal record, before the file's end); Optuna cannot read the "
                "study past it: restore the file from a backup, or move it aside to start the "
                "study afresh (its MLflow runs stay)"
            )
        cut.append(line[:at] + b"\n")
        kept.append(line[at:])
        logger.warning("%s:%d: a record cut short by a crash had the next one glued to it; "
                       "split them and set the cut one aside", path, number)
    if cut:
        _set_aside(path, b"".join(cut))
        mode = path.stat().st_mode
        rest = data[data.rfind(b"\n") + 1 :] if lines else data
        write_bytes_atomic(path, b"".join(line + b"\n" for line in kept) + rest)
        os.chmod(path, mode)


def checked_lock(path: Path) -> JournalFileSymlinkLock:
    """The lock Optuna takes to append to ``path``; taking it repairs the tail first."""
    return _TailCheckingLock(str(path))


class _TailCheckingLock(JournalFileSymlinkLock):
    """Optuna's own lock for the file (a symbolic link beside it), plus :func:`repair_tail`."""

    def __init__(self, filepath: str, grace_period: int | None = 30) -> None:
        super().__init__(filepath, grace_period=grace_period)
        self._journal = Path(filepath)

    def acquire(self) -> bool:
        super().acquire()
        try:
            repair_tail(self._journal)
        except BaseException:
            self.release()
            raise
        return True


def check_journal(path: Path) -> None:
    """Check and repair the journal before Optuna opens it (see the module docstring).

    Raises:
        UserError: a damaged record in the middle of the file, naming the file and line.
    """
    if not path.exists():
        return
    lock = JournalFileSymlinkLock(str(path))  # the one every append takes
    try:
        lock.acquire()
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        _check_lines(path, repair=False)  # a reader that cannot write: Optuna reads past a
        return  # torn last line, and nothing appends
    try:
        _check_lines(path)
        repair_tail(path)
    finally:
        lock.release()
