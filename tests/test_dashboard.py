"""``make dashboard``: optuna-dashboard on 127.0.0.1 over the study's storage, with a storage URL
from ``PIPELINE_STORAGE`` that never reaches a command line (``ps`` shows those to everyone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.pgserver import free_port

REPO = Path(__file__).resolve().parents[1]
SECRET = "dash#board-pw"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_dashboard_serves_the_study_without_the_url_on_a_command_line(tmp_path: Path) -> None:
    # SQLite stands in for PostgreSQL here; the secret is in the URL's path the way a password is
    # in a PostgreSQL URL: anywhere in the URL, it must stay off the command line.
    url = f"sqlite:///{tmp_path / SECRET}.db"
    study = optuna.create_study(study_name="dash", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = free_port()
    proc = subprocess.Popen(
        ["make", "-s", "dashboard", f"DASHBOARD_PORT={port}"], cwd=REPO,
        env={**os.environ, "PIPELINE_STORAGE": url}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.3)
        assert b'"dash"' in page.read()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
        assert "optuna_dashboard" in ps.stdout and SECRET not in ps.stdout
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
