"""The SQLite store's memory stays bounded: its WAL under writes that never pause, and
each connection's page cache.

A write starts the WAL over from its beginning only when a checkpoint had copied every
frame by the time the write began. Under steady load the event loop commits every few
milliseconds while the maintenance thread's PASSIVE checkpoint runs, so some frames were
always left: the WAL (and its -shm index, mapped in the process's memory: 32 KB per 4,096
frames) grew ~50 KB a call for as long as the load lasted (bench/e2e's memory phase: a
440 MB WAL and +416 KB of RSS over 10,000 calls).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from app.state import sqlite as state_sqlite
from app.state.sqlite import SqliteState
from tests.state.sqlite_support import started_connections

LIMIT = 64
PAGE = 4096


class _CommitDuringPass:
    """The maintenance connection, with a commit of the loop landing while its PASSIVE
    pass runs: the pass cannot copy that commit's frames (modelled by a reader pinned at
    the snapshot before it, let go as the pass ends)."""

    def __init__(self, conn: sqlite3.Connection, pinned: sqlite3.Connection) -> None:
        self._conn = conn
        self._pinned = pinned

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self._conn.execute(sql, *args)
        if "PASSIVE" in sql:
            rows = cursor.fetchall()
            self._pinned.execute("COMMIT")
            return _Rows(rows)  # type: ignore[return-value]
        return cursor


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def fetchone(self) -> Any:
        return self._rows[0]

    def fetchall(self) -> list[Any]:
        return self._rows


def _write(conn: sqlite3.Connection, n: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR REPLACE INTO owners (owner, beat) VALUES (?, ?)",
        [(f"{n:08d}-{i:02d}-" + "x" * 400, 1.0) for i in range(20)],
    )
    conn.execute("COMMIT")


def test_the_wal_starts_over_under_writes_that_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_sqlite, "WAL_RESTART_FRAMES", LIMIT, raising=False)
    # A long lease: the maintenance thread stays asleep; the test runs its checkpoints.
    state = SqliteState(tmp_path / "state.db", horizon_seconds=3600, lease_seconds=600)
    state.start()
    loop_conn = state._conn
    assert loop_conn is not None
    maintenance = state._connect()
    pinned = state._connect()
    wal = Path(f"{state.path}-wal")
    largest = 0
    try:
        for n in range(100):
            _write(loop_conn, 2 * n)
            pinned.execute("BEGIN")
            pinned.execute("SELECT count(*) FROM owners").fetchall()  # the pass's snapshot
            _write(loop_conn, 2 * n + 1)  # committed while the pass runs
            state_sqlite._checkpoint(_CommitDuringPass(maintenance, pinned))  # type: ignore[arg-type]
            largest = max(largest, os.path.getsize(wal))
    finally:
        pinned.close()
        maintenance.close()
        state.stop()
    # A round writes ~19 frames: the WAL starts over past the limit, and grows at most a
    # round beyond it (82 frames measured). Before, it held every round: ~7.7 MB.
    assert largest < (LIMIT + 40) * (PAGE + 24), largest


def test_every_connection_bounds_its_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set per connection, not left to the SQLite build's compiled-in default."""
    monkeypatch.setattr(state_sqlite, "CACHE_KIB", 1234, raising=False)
    with started_connections(tmp_path, monkeypatch) as opened:
        assert len(opened) == 2  # the event loop's and the maintenance thread's
        assert [c.execute("PRAGMA cache_size").fetchone()[0] for c in opened] == [-1234] * 2
