"""Shared plumbing for the stage commands: logging set-up and user-error handling."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable

from tqdm.contrib.logging import _TqdmLoggingHandler

from pipeline import gc_policy
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


# Every command imports this module before the libraries it works with load.
gc_policy.for_command()
