"""Real HTTP servers for the slow tests: ``mlflow server`` on 127.0.0.1 and waiting for one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.pgserver import free_port

__all__ = ["free_port", "kill", "mlflow_server", "start_mlflow_server", "stop", "wait_for_http"]


def wait_for_http(url: str, alive: Callable[[], bool], *, timeout: float = 180,
                  why: Callable[[], str] = lambda: "") -> None:
    """Poll ``url`` until it answers 200; fail if ``alive()`` turns false or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert alive(), f"the server at {url} stopped: {why()}"
        assert time.monotonic() < deadline, f"no answer from {url}: {why()}"
        time.sleep(0.5)


def start_mlflow_server(backend: str, *, artifacts: Path, log: Path, port: int | None = None,
                        env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``mlflow server`` on 127.0.0.1 (one worker) over ``backend``, proxying ``artifacts``;
    returns the process and its base URL once ``/health`` answers."""
    port = port or free_port()
    venv_bin = Path(sys.executable).parent  # mlflow starts uvicorn by name: the venv first
    out = log.open("ab")
    server = subprocess.Popen(
        [str(venv_bin / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
         "--workers", "1"],
        env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", **(env or {})},
        stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: uvicorn is a child that must go with it
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/health", lambda: server.poll() is None,
                  why=lambda: log.read_text(errors="replace")[-3000:])
    return server, base


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server and every process of its group (uvicorn's worker too)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's group, then SIGKILL if it does not end within 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill(proc)


@contextmanager
def mlflow_server(backend: str, *, artifacts: Path, log: Path) -> Iterator[str]:
    """:func:`start_mlflow_server` for the duration of the block; yields the base URL."""
    server, base = start_mlflow_server(backend, artifacts=artifacts, log=log)
    try:
        yield base
    finally:
        stop(server)
