"""The garbage collector set for a command's process: rare collections, its start-up frozen
before long work, the objects alive at exit left out of the shutdown."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

from pipeline import gc_policy
from tests.conftest import REPO

# Registered before pipeline.cli is imported, so it runs after the policy's own exit handler.
_PROBE = """
import atexit, gc
atexit.register(lambda: print(gc.get_threshold()[0], gc.get_freeze_count() > 0))
print(gc.get_threshold()[0])
import pipeline.cli
held = [[i] for i in range(1000)]  # objects alive at exit
"""


def test_a_command_collects_rarely_and_freezes_what_is_alive_at_exit() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == "700"  # Python's own threshold, before the command's plumbing loads
    assert out[1] == f"{gc_policy._YOUNG_THRESHOLD} True"


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_collects_the_start_up_and_freezes_the_rest() -> None:
    gc_policy.for_command()
    assert gc.get_threshold()[0] == gc_policy._YOUNG_THRESHOLD
    garbage, alive = _Cycle(), _Cycle()
    gone = weakref.ref(garbage)
    del garbage
    frozen = gc.get_freeze_count()
    try:
        gc_policy.settle()
        assert gone() is None  # collected, not frozen for good
        assert gc.get_freeze_count() > frozen  # what is alive (`alive` among it) is frozen
        later = _Cycle()
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None  # garbage made after settling is collected as usual
    finally:
        gc.unfreeze()
    assert alive.me is alive
