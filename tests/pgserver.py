"""PostgreSQL for tests: throwaway databases on the machine's server (127.0.0.1:5432), and
throwaway servers (initdb in a temporary directory, a free port) that a test may stop and
start again to see what an outage does. Skips (with the reason) only where the server
binaries do not exist. (Redis: tests/redis_server.py and the fixtures in tests/conftest.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from tests.support import free_port as free_port  # re-exported: tests import it from here

SHARED_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are (the newest installed version), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += ["/usr/local/bin", "/usr/bin"]
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


async def admin_async(admin_url: str, statement: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def admin(database_url: str, statement: str) -> None:
    """Run one statement, from sync code (also from inside a running event loop: an async
    fixture may need a sync one). Never from an async test: it blocks the loop, and with it
    the call log's writer, which may hold the lock the statement waits for."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, admin_async(database_url, statement)).result()


def reachable(admin_url: str) -> bool:
    try:
        admin(admin_url, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def create_database(admin_url: str) -> str:
    """A new, empty database (switchboard_test_<random>) on that server: its URL."""
    name = f"switchboard_test_{uuid.uuid4().hex[:12]}"
    admin(admin_url, f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(database_url: str) -> None:
    admin_url, name = database_url.rsplit("/", 1)
    admin(admin_url + "/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server:
    """A PostgreSQL server of our own: `start()`, `stop()` (an outage), `start()` again."""

    def __init__(self, bin_path: Path) -> None:
        self.bin = bin_path
        self.root = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.running = False
        self._as_postgres = os.geteuid() == 0  # postgres refuses to run as root
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync", "--locale=C",
        )  # fmt: skip

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def url(self, database: str = "postgres") -> str:
        return url(self.port, database)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-F -c full_page_writes=off"  # no fsync: a stop loses nothing, a host crash would
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w",
            "-t", "30", "start",
        )  # fmt: skip
        self.running = True

    def stop(self) -> None:
        """Immediate: connections are cut, as when the server or its host dies."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def throwaway_server() -> Iterator[Server]:
    """A server of our own, started, and destroyed at the end (skips the test where
    initdb/pg_ctl are not installed)."""
    found = bin_dir()
    if found is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl): PostgreSQL tests skipped")
    server = Server(found)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


# --- fixtures (import them into a conftest.py or a test module) ----------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """A throwaway server of this session (initdb once), for the tests that stop it."""
    with throwaway_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_session_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this session: on the machine's server when it answers, else on a
    throwaway one. Dropped at the end."""
    if reachable(SHARED_URL):
        database = create_database(SHARED_URL)
    else:
        server: Server = request.getfixturevalue("pg_server")
        database = create_database(server.url())
    try:
        yield database
    finally:
        drop_database(database)


@pytest.fixture
def pg_url(pg_session_url: str) -> str:
    """The session's database, its call records deleted (the schema stays)."""
    admin(
        pg_session_url,
        "DO $$ BEGIN IF to_regclass('calls') IS NOT NULL THEN "
        "DELETE FROM calls; DELETE FROM call_events; END IF; END $$",
    )
    return pg_session_url


@pytest.fixture
def pg_empty_url(pg_session_url: str) -> str:
    """The session's database without any table: nothing migrated yet."""
    admin(pg_session_url, "DROP TABLE IF EXISTS calls, call_events, switchboard_schema_migrations")
    return pg_session_url
