"""The one exception type that means "the user gave us something wrong"."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, a config key, a CLI value.

    Stage ``main`` functions print the message on one line (no traceback) and exit non-zero.
    The message must say where (file, line or key), what was found and what was expected.
    """


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server could not be reached (after MLflow's own retries): the
    search stops starting trials and says so in one line; the study keeps its results."""


def caused_by(exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...]
              ) -> bool:
    """Whether ``exc`` or any exception in its chain (``__cause__``, else ``__context__``) is one
    of ``types``: libraries wrap the error that says what really happened."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, types):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def first_line(exc: BaseException) -> str:
    """The first line of a library's error (MLflow's ``message`` when it has one), or its type:
    what a one-line ``UserError`` quotes."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
