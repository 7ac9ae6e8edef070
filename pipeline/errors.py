"""The one exception type that means "the user gave us something wrong"."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, a config key, a CLI value.

    Stage ``main`` functions print the message on one line (no traceback) and exit non-zero.
    The message must say where (file, line or key), what was found and what was expected.
    """
