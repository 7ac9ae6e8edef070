"""The cyclic garbage collector's settings for the project's processes, in one place.

A command imports torch, MLflow and their kin: a great many long-lived objects that the
collector walks again at every full collection during start-up and once more while the
interpreter shuts down (BENCHMARKS.md, "Fixed costs": what that costs a command).

- :func:`for_command`, when :mod:`pipeline.cli` is imported (every command imports it first,
  ``tests/test_layout.py`` checks): the young generation is collected after
  ``_YOUNG_THRESHOLD`` new objects instead of Python's 700, so full collections during
  start-up are rare; and what is alive at exit is frozen, left out of the shutdown collections
  (the process's memory goes back to the system whole).
- :func:`settle`, before a command's long work (a search's trials, a training run's epochs):
  one full collection, then everything alive (the libraries) is frozen, so the full
  collections during the work walk only what the work makes. The young threshold stays: cycles
  are still collected, in fewer, larger batches (a search's peak memory with it and with
  Python's own thresholds: BENCHMARKS.md, "Fixed costs").
"""

from __future__ import annotations

import atexit
import gc

_YOUNG_THRESHOLD = 50_000
_PYTHON_THRESHOLDS = gc.get_threshold()  # before any change: Python's own
_frozen_at_exit = False


def for_command() -> None:
    """Collect rarely while a command starts, and freeze what is alive at exit (idempotent)."""
    global _frozen_at_exit
    _young, *older = _PYTHON_THRESHOLDS
    gc.set_threshold(_YOUNG_THRESHOLD, *older)
    if not _frozen_at_exit:
        atexit.register(gc.freeze)
        _frozen_at_exit = True


def settle() -> None:
    """Before long work: the start-up's garbage collected, what is left frozen."""
    gc.collect()
    gc.freeze()
