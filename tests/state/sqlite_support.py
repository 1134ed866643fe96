"""Helpers for the SQLite state store's tests."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.state.sqlite import SqliteState


@contextlib.contextmanager
def started_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[sqlite3.Connection]]:
    """A started SqliteState, and every connection it opened (as `_connect` made them)."""
    opened: list[sqlite3.Connection] = []
    connect = SqliteState._connect

    def recording(self: SqliteState) -> sqlite3.Connection:
        conn = connect(self)
        opened.append(conn)
        return conn

    monkeypatch.setattr(SqliteState, "_connect", recording)
    with sleeping_state(tmp_path / "state.db"):
        yield opened


@contextlib.contextmanager
def sleeping_state(path: Path) -> Iterator[SqliteState]:
    """A started SqliteState whose maintenance thread stays asleep (a long lease) while the
    test works on its connections."""
    state = SqliteState(path, horizon_seconds=3600, lease_seconds=600)
    state.start()
    try:
        yield state
    finally:
        state.stop()
