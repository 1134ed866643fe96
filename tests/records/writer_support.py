"""The SQLite call log's writer thread, watched: its batches counted, or held mid-batch."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest

from app.records.sqlite import SqliteCallLog

HANG = 10.0
"""Seconds a test waits for the writer before it calls it hung."""


def counted_batches(log: SqliteCallLog, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batch the writer writes from now on (the list fills as it writes)."""
    batches: list[int] = []
    apply = log._apply

    def counting(conn: sqlite3.Connection, ops: list[Any]) -> None:
        batches.append(len(ops))
        apply(conn, ops)

    monkeypatch.setattr(log, "_apply", counting)
    return batches


def held_batches(
    log: SqliteCallLog, monkeypatch: pytest.MonkeyPatch, hang: float = HANG
) -> tuple[threading.Event, threading.Event]:
    """(entered, release): the writer's next batch sets `entered`, then waits for `release`
    (at most `hang` seconds) before it writes."""
    entered, release = threading.Event(), threading.Event()
    apply = log._apply

    def slow(conn: sqlite3.Connection, ops: list[Any]) -> None:
        entered.set()
        assert release.wait(hang)
        apply(conn, ops)

    monkeypatch.setattr(log, "_apply", slow)
    return entered, release
