"""Shared plumbing for the stage commands: logging set-up and user-error handling."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import re
import sys
from collections.abc import Callable

from tqdm.contrib.logging import _TqdmLoggingHandler

from pipeline.errors import UserError

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr; tqdm bars also draw on stderr, so log lines go through ``tqdm.write``."""

    handler = _TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Third-party libraries are chatty at INFO; keep their warnings. MLflow's own quieting is
    # `pipeline.tracking.quiet_mlflow`, applied wherever MLflow is configured.
    for name in ("optuna", "urllib3", "git", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A command imports torch, MLflow and their kin: ~750,000 objects the cyclic garbage collector
# walks again at every full collection (a search made 9 of them) and once more while the
# interpreter shuts down. Collecting the young generation after this many new container
# objects instead of 700 makes full collections rare; the objects still alive at exit are
# frozen (left out of the shutdown collections; the process's memory goes back to the system
# whole). Measured in BENCHMARKS.md ("Fixed costs"); garbage is still collected, only later.
_GC_YOUNG_THRESHOLD = 50_000
_gc_frozen_at_exit = False


def lighten_gc() -> None:
    """Make the garbage collector's fixed cost small for a command's process (idempotent).

    Called when this module is imported: every command imports it before anything heavy
    (``tests/test_layout.py`` checks), so the collector is set before torch and MLflow load.
    """
    global _gc_frozen_at_exit
    _young, *older = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *older)
    if not _gc_frozen_at_exit:
        atexit.register(gc.freeze)
        _gc_frozen_at_exit = True


def run(body: Callable[[], int | None]) -> int:
    """Run a stage body, turning user errors into one line on stderr and a non-zero exit code."""
    try:
        return body() or 0
    except UserError as exc:
        # One line, whatever a wrapped library error carried (newlines, colour codes).
        message = " ".join(_ANSI.sub("", str(exc)).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


lighten_gc()
