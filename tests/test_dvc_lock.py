"""The committed ``dvc.lock`` matches the code and params (issue 27: a fresh clone's
``dvc status`` was not clean, although the README says the lock matches).

``dvc status`` compares every stage's recorded hashes with the working tree. Data that is not
in git (``data/``, the caches, reports) is absent from a fresh clone and is left out here; what
git holds (the code, ``params.yaml``, the study files, the commands) must match the lock. After
changing any of it, regenerate the lock with ``dvc repro`` (or ``dvc commit`` once the outputs
are current) and commit it with the change.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def stale_entries(status: dict[str, list[object]], tracked: set[str]) -> list[str]:
    """What ``dvc status --json`` says differs from the lock for files git holds."""
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command", a stage not in the lock, ...
                if change != "always changed":
                    stale.append(f"{stage}: {change}")
                continue
            assert isinstance(change, dict)
            for path, state in dict(change.get("changed deps", {})).items():
                if isinstance(state, dict):  # params: {key: "modified" | "new" | "deleted"}
                    stale += [f"{stage}: {path}: {key} {s}" for key, s in state.items()]
                elif path in tracked:
                    stale.append(f"{stage}: {path} {state}")
    return stale


def test_stale_entries_reads_dvc_status() -> None:
    status = {
        "prepare": [{"changed deps": {"data/raw/digits": "deleted",
                                      "pipeline/atomic.py": "modified"}},
                    {"changed outs": {"data/cache": "not in cache"}}],
        "search@capacity": [{"changed deps": {"params.yaml": {"search.cv_folds": "modified"}}},
                            "changed command"],
    }
    assert stale_entries(status, {"pipeline/atomic.py", "params.yaml"}) == [
        "prepare: pipeline/atomic.py modified",
        "search@capacity: params.yaml: search.cv_folds modified",
        "search@capacity: changed command",
    ]


@pytest.mark.slow
def test_the_committed_lock_matches_the_code() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stale = stale_entries(json.loads(done.stdout or "{}"), tracked)
    assert not stale, (
        "dvc.lock does not match the committed code and params; run `dvc repro` and commit "
        "dvc.lock:\n  " + "\n  ".join(stale)
    )
