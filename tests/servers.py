"""A throwaway PostgreSQL server for tests: a temporary directory, a free port, stopped at
the end. Skips (with the reason) only where the server binaries do not exist. (Redis:
tests/redis_server.py and the fixtures in tests/conftest.py.)"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_binary(name: str) -> str | None:
    for directory in POSTGRES_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


@dataclass
class PostgresServer:
    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        psql = postgres_binary("psql")
        assert psql is not None
        subprocess.run(
            [psql, self.url(), "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"'],
            check=True,
            capture_output=True,
        )
        return self.url(name)


def _as_postgres(command: list[str]) -> list[str]:
    """postgres refuses to run as root: run it as the postgres user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster (initdb, trust auth, no fsync) on a free port, in a temporary
    directory of its own (the postgres user must reach it: not under pytest's tmp_path)."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    directory = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
    data = directory / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    subprocess.run(
        _as_postgres([initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -h 127.0.0.1 -k {directory} -c fsync=off -c full_page_writes=off"
    subprocess.run(
        _as_postgres(
            [pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(directory / "log"), "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield PostgresServer(port, directory)
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)
