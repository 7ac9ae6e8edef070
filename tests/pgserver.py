"""A throwaway PostgreSQL server on 127.0.0.1 (Debian's ``postgresql`` binaries), for the slow
tests and the worker benchmark.

A cluster in a temporary folder (``initdb``, ``pg_ctl``) on a free loopback port; as root it runs
as the ``postgres`` user. Over TCP it checks the password (scram-sha-256), so a URL that mangles
the password fails to connect; over its Unix socket (``Server.admin``) it trusts.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def pg_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL server binaries, or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # /usr/local/bin/initdb may be a lone symlink
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A PostgreSQL server on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, address: str, control: Callable[..., None],
                 admin: Callable[..., str]) -> None:
        self.address = address
        self.control = control
        self.admin = admin  # admin("createdb", "x"), admin("pg_dump", "x") -> stdout

    def __str__(self) -> str:
        return self.address

    def stop(self) -> None:
        self.control("stop", "-m", "immediate")

    def start(self) -> None:
        self.control("start")


@contextmanager
def postgres_server(password: str) -> Iterator[Server]:
    """A running server whose ``postgres`` role has ``password``, with a database ``optuna``."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb); apt-get install postgresql")
    as_postgres: list[str] = []
    # Outside pytest's 0700 tmp tree, so the postgres user can reach it.
    data = Path(tempfile.mkdtemp(prefix="pg-test-", dir="/tmp"))
    if os.geteuid() == 0:
        shutil.chown(data, user="postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=60)

    def control(action: str, *extra: str) -> None:
        pg(str(binaries / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "-w", *extra, action)

    def admin(tool: str, *args: str) -> str:
        done = subprocess.run([*as_postgres, str(binaries / tool), "-h", str(data), "-p",
                               str(port), "-U", "postgres", *args],
                              check=True, capture_output=True, timeout=120)
        return done.stdout.decode(errors="replace")

    password_file = data / "password"
    password_file.write_text(password + "\n")
    if as_postgres:
        shutil.chown(password_file, user="postgres")
    try:
        pg(str(binaries / "initdb"), "-D", str(data / "db"), "--auth-local=trust",
           "--auth-host=scram-sha-256", f"--pwfile={password_file}", "-U", "postgres")
        password_file.unlink()
        control("start")
        admin("createdb", "optuna")
        yield Server(f"127.0.0.1:{port}", control, admin)
    finally:
        subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(data / "db"), "-m",
                        "fast", "-w", "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(data, ignore_errors=True)
