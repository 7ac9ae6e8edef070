"""The commands' shared plumbing: the garbage collector set for a short-lived process."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

# Registered before pipeline.cli is imported, so it runs after cli's own exit handler.
_PROBE = """
import atexit, gc
atexit.register(lambda: print(gc.get_threshold()[0], gc.get_freeze_count() > 0))
print(gc.get_threshold()[0])
import pipeline.cli
held = [[i] for i in range(1000)]  # objects alive at exit
"""


def test_a_command_collects_rarely_and_freezes_what_is_alive_at_exit() -> None:
    from pipeline import cli

    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == "700"  # Python's own threshold, before the command's plumbing loads
    assert out[1] == f"{cli._GC_YOUNG_THRESHOLD} True"
