"""The SQLite call log's writer on errors no one expects: it keeps the records and goes on,
and what waits is bounded and shown (backlog(), the metrics). Before, an error of the
connection other than the disk's refusal dropped every write as if its data were bad, one
outside the writes (the hourly retention) ended the writer thread, and the queue behind a
writer that took nothing grew without bound while the metrics said up, nothing queued."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from app.ops.metrics import Metrics
from app.records import calllog
from app.records import sqlite as sqlite_log
from app.records.sqlite import SqliteCallLog
from tests.records.test_sqlite_held_writes import (
    eventually,
    held,
    record,
    refuse_writes,
    stored,
)
from tests.records.writer_support import HANG, held_batches


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_log, "RETRY_FIRST", 0.02)
    monkeypatch.setattr(sqlite_log, "RETRY_MAX", 0.05)


class Flaky(sqlite3.Connection):
    """A connection whose statements raise `failure` while it is set (counted)."""

    failure: Exception | None = None
    failed = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._fail()
        return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._fail()
        return super().executemany(sql, *args)

    def _fail(self) -> None:
        if self.failure is not None:
            self.failed += 1
            raise self.failure


def flaky_log(
    path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[SqliteCallLog, Flaky]:
    """An open call log whose writer's connection is a Flaky one."""
    log = SqliteCallLog(path, **kwargs)
    made: list[Flaky] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(log.path, timeout=10.0, check_same_thread=False, factory=Flaky)
        made.append(conn)
        return conn

    monkeypatch.setattr(log, "_connect", connect)
    log.open()
    return log, made[0]


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {})


@pytest.mark.parametrize(
    "failure",
    [sqlite3.DatabaseError("database disk image is malformed"), RuntimeError("a defect")],
    ids=["database_error", "runtime_error"],
)
def test_an_unexpected_error_of_the_connection_keeps_the_records(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: Exception,
) -> None:
    """The writes are held (not rejected as bad data), the writer survives the error in its
    batches and in the retention it runs each tick here, and writes them all once the
    error stops. Before: all three rejected (or, for the RuntimeError, the thread ended in
    the retention)."""
    log, conn = flaky_log(tmp_path / "calls.db", monkeypatch, retention_interval=0.01)
    metrics = Metrics()
    metrics.watch_call_log(log)
    try:
        conn.failure = failure
        with caplog.at_level(logging.ERROR, logger="switchboard.calllog"):
            log.started(record(1))
            log.ended("rtc_1", "hung_up")
            log.started(record(2))
            eventually(lambda: held(log) == 3, "the writes held")
            eventually(lambda: conn.failed >= 10, "the writer to try again and again")
        assert log._writer is not None and log._writer.is_alive()
        assert not log.backlog().available
        assert sample(metrics, "switchboard_call_records_queued") == 3
        assert sample(metrics, "switchboard_call_records_database_up") == 0
        assert "calllog_writer_failed" in [getattr(r, "event", "") for r in caplog.records]
        conn.failure = None
        eventually(lambda: log.backlog().available, "the held writes written")
        assert stored(log, 1, 2)

        async def read() -> Any:
            return await log.get("rtc_1")

        found = asyncio.run(read())
        assert (found.status, found.end_reason) == ("ended", "hung_up")
        assert log.backlog().dropped == {"queue_full": 0, "rejected": 0, "shutdown": 0}
        assert sample(metrics, "switchboard_call_records_queued") == 0
    finally:
        conn.failure = None
        log.close()


def test_a_defect_in_a_batch_keeps_its_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error outside the statements (here the batch's own code) is logged, and the
    batch is written at the next try. Before: the writer thread ended on it."""
    log = SqliteCallLog(tmp_path / "calls.db", max_delay=0.01)
    log.open()
    apply = log._apply
    failures = [RuntimeError("a defect")]

    def defect(conn: sqlite3.Connection, ops: list[Any]) -> None:
        if failures:
            raise failures.pop()
        apply(conn, ops)

    monkeypatch.setattr(log, "_apply", defect)
    try:
        log.started(record(1))
        log.ended("rtc_1", "end_call")
        eventually(lambda: not failures and log.backlog().available, "the batch written")
        assert log._writer is not None and log._writer.is_alive()
        assert stored(log, 1)
    finally:
        log.close()
    assert sum(log.backlog().dropped.values()) == 0


def test_writes_behind_a_stuck_writer_are_shown_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that takes nothing (stuck in a statement): the writes wait, counted in
    `queued`, up to the bound; the ones past it are dropped, counted and logged; the call
    log is reported stalled past STALLED_AFTER. Before: queued 0, up, no bound."""
    monkeypatch.setattr(calllog, "STALLED_AFTER", 0.2)
    log = SqliteCallLog(tmp_path / "calls.db", max_delay=0.01, queue_max=5)
    log.open()
    metrics = Metrics()
    metrics.watch_call_log(log)
    entered, release = held_batches(log, monkeypatch)
    try:
        log.started(record(0))
        assert entered.wait(HANG)  # the writer is stuck in this batch
        with caplog.at_level(logging.ERROR, logger="switchboard.calllog"):
            for n in range(1, 9):
                log.started(record(n))
        backlog = log.backlog()
        assert (backlog.queued, backlog.dropped["queue_full"]) == (5, 3)
        assert sample(metrics, "switchboard_call_records_queued") == 5
        assert (
            metrics.registry.get_sample_value(
                "switchboard_call_records_dropped_total", {"reason": "queue_full"}
            )
            == 3
        )
        drops = [r for r in caplog.records if getattr(r, "event", "") == "calllog_dropped"]
        assert len(drops) == 1  # one line, not one per write
        eventually(lambda: log.backlog().stalled, "the call log reported stalled")
        assert sample(metrics, "switchboard_call_records_database_up") == 0
        release.set()
        eventually(lambda: log.backlog().queued == 0, "the queued writes written")
        assert log.backlog().available and not log.backlog().stalled
        assert stored(log, *range(6))
        assert not stored(log, 6) and not stored(log, 8)  # the newest ones were dropped
    finally:
        release.set()
        log.close()


def test_refused_writes_stall_the_call_log_past_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(calllog, "STALLED_AFTER", 0.3)
    log = SqliteCallLog(tmp_path / "calls.db")
    log.open()
    try:
        refuse_writes(log, True)
        log.started(record(1))
        eventually(lambda: held(log) == 1, "the write held")
        eventually(lambda: log.backlog().stalled, "the call log reported stalled")
        assert log.backlog().stalled_for >= 0.3
        refuse_writes(log, False)
        eventually(lambda: log.backlog().queued == 0, "the write written")
        assert not log.backlog().stalled and log.backlog().stalled_for == 0
    finally:
        log.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_thread_that_ended_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the thread ends anyway (an exception no handler takes: SystemExit here), the
    call log says so: not up, the writes waiting counted. Before: up, nothing queued."""
    log = SqliteCallLog(tmp_path / "calls.db")

    def ended(conn: sqlite3.Connection) -> None:
        raise SystemExit

    monkeypatch.setattr(log, "_write_until_stopped", ended)
    log.open()
    writer = log._writer
    assert writer is not None
    writer.join(HANG)
    metrics = Metrics()
    metrics.watch_call_log(log)
    log.started(record(1))
    log.ended("rtc_1", "hung_up")
    assert (log.backlog().queued, log.backlog().available) == (2, False)
    assert sample(metrics, "switchboard_call_records_queued") == 2
    assert sample(metrics, "switchboard_call_records_database_up") == 0
    log.close()
    assert log.backlog().dropped["shutdown"] == 2
