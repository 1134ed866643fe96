"""A disk that refuses writes (full, I/O errors) loses no call record while it comes back:
the writes are held in memory, in order, tried again with a growing pause, and counted when
they must be dropped (too many held, or still held at shutdown)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.ops.metrics import Metrics
from app.records import sqlite as sqlite_log
from app.records.calllog import CallRecord
from app.records.sqlite import SqliteCallLog


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_log, "RETRY_FIRST", 0.02)
    monkeypatch.setattr(sqlite_log, "RETRY_MAX", 0.05)


def record(n: int) -> CallRecord:
    return CallRecord(
        call_id=f"rtc_{n}",
        started_at=time.time(),
        route="support",
        action="accept",
        outcome="accepted",
        status="answered",
        caller=None,
        called=None,
        rules_version="v1",
    )


def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def stored(log: SqliteCallLog, *ids: int) -> bool:
    async def read() -> bool:
        found = [await log.get(f"rtc_{n}") for n in ids]
        return all(r is not None for r in found)

    return asyncio.run(read())


def held(log: SqliteCallLog) -> int:
    """Writes the disk refused, held by the writer (backlog().queued counts the queued
    ones too)."""
    return len(log._held)


def limit_pages(log: SqliteCallLog, pages: int | None) -> None:
    """SQLite's own 'database or disk is full' (SQLITE_FULL), on demand: the file may not
    grow past `pages` (None: its size now)."""
    conn = log._write_conn
    assert conn is not None
    if pages is None:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")


def refuse_writes(log: SqliteCallLog, refuse: bool) -> None:
    """Every write refused (an OperationalError, as a full disk or an I/O error gives),
    whatever its size: a read-only connection."""
    conn = log._write_conn
    assert conn is not None
    conn.execute(f"PRAGMA query_only = {'ON' if refuse else 'OFF'}")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SqliteCallLog]:
    log = SqliteCallLog(tmp_path / "calls.db")
    log.open()
    yield log
    log.close()


def test_refused_writes_are_held_and_written_once_the_disk_takes_them(
    log: SqliteCallLog,
) -> None:
    log.started(record(0))
    assert stored(log, 0)
    limit_pages(log, None)
    for n in range(1, 301):
        log.started(record(n))
    eventually(lambda: held(log) > 0, "the refused writes to be held")
    assert log.backlog().available is False
    limit_pages(log, 1_000_000)  # space again
    eventually(lambda: log.backlog().available, "the held writes to be written")
    assert stored(log, *range(301))
    assert log.backlog().dropped == {"queue_full": 0, "rejected": 0, "shutdown": 0}


def test_held_writes_keep_their_order(log: SqliteCallLog) -> None:
    refuse_writes(log, True)
    log.started(record(1))
    log.ended("rtc_1", "hung_up")  # must not be applied before the call's start
    eventually(lambda: held(log) == 2, "both writes held")
    refuse_writes(log, False)
    eventually(lambda: log.backlog().available, "the held writes to be written")

    async def read() -> CallRecord | None:
        return await log.get("rtc_1")

    found = asyncio.run(read())
    assert found is not None and (found.status, found.end_reason) == ("ended", "hung_up")


def test_too_many_held_writes_drop_the_oldest_and_count_them(
    log: SqliteCallLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_log, "HELD_MAX", 5)
    metrics = Metrics()
    metrics.watch_call_log(log)
    refuse_writes(log, True)
    for n in range(1, 9):
        log.started(record(n))
    eventually(lambda: log.backlog().dropped["queue_full"] == 3, "three writes dropped")
    sample = metrics.registry.get_sample_value
    assert sample("switchboard_call_records_dropped_total", {"reason": "queue_full"}) == 3
    assert sample("switchboard_call_records_queued", {}) == 5
    refuse_writes(log, False)
    eventually(lambda: log.backlog().available, "the held writes to be written")
    assert stored(log, 4, 5, 6, 7, 8)  # the newest five


def unstorable() -> CallRecord:
    """A write SQLite refuses for its data (a lone surrogate cannot be encoded), not for
    the disk: only that one is lost."""
    return replace(record(2), call_id="rtc_\ud800")


def test_a_write_refused_for_its_data_loses_only_itself(log: SqliteCallLog) -> None:
    log.started(record(1))
    log.started(unstorable())
    log.started(record(3))
    eventually(lambda: stored(log, 1, 3), "the other writes to be written")
    assert log.backlog().dropped == {"queue_full": 0, "rejected": 1, "shutdown": 0}


def test_a_held_write_refused_for_its_data_loses_only_itself(log: SqliteCallLog) -> None:
    refuse_writes(log, True)
    log.started(record(1))
    log.started(unstorable())
    log.started(record(3))
    eventually(lambda: held(log) == 3, "the writes held")
    refuse_writes(log, False)
    eventually(lambda: log.backlog().available, "the held writes to be written")
    assert stored(log, 1, 3)
    assert log.backlog().dropped == {"queue_full": 0, "rejected": 1, "shutdown": 0}


def test_writes_still_held_at_shutdown_are_counted_as_dropped(tmp_path: Path) -> None:
    log = SqliteCallLog(tmp_path / "calls.db")
    log.open()
    refuse_writes(log, True)
    log.started(record(1))
    eventually(lambda: held(log) == 1, "the write held")
    log.close()
    assert log.backlog().dropped["shutdown"] == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem of 1 MiB (tmpfs), for a real ENOSPC; root only."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_no_record_once_space_returns(small_disk: Path) -> None:
    log = SqliteCallLog(small_disk / "calls.db")
    log.open()
    try:
        log.started(record(0))
        assert stored(log, 0)
        filler = small_disk / "filler"
        with filler.open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass  # the disk is full
        for n in range(1, 201):
            log.started(record(n))
        eventually(lambda: not log.backlog().available, "the disk to refuse the writes")
        filler.unlink()
        eventually(lambda: log.backlog().available, "the held writes to be written")
        assert stored(log, *range(201))
        assert sum(log.backlog().dropped.values()) == 0
    finally:
        log.close()
