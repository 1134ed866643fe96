"""SqliteCallLog.close() against the reads and the write in flight.

The admin API's reads (`get`, `recent`) run in worker threads (asyncio.to_thread), each
on its thread's own connection; uvicorn cancels a request still running 10 s into a
shutdown, but its thread reads on, and the lifespan then closes the call log. Before,
close() closed every reader connection at once: a read between two statements met a
closed database (sqlite3.ProgrammingError escaped to the admin API), and a read inside a
statement (SQLite's step, the GIL released) crashed the process (a segmentation fault:
Python 3.11's sqlite3 reads the connection that close() has just cleared). The writer's
connection, left open when the writer did not finish in CLOSE_TIMEOUT, was never closed.
The interleavings are forced with hooks (between two statements, never inside one), not
timing.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.records import sqlite as sqlite_log
from app.records.calllog import CallLogError, CallRecord
from app.records.sqlite import SqliteCallLog
from tests.records.test_calllog import record
from tests.records.writer_support import held_batches
from tests.support import InThread

ROOT = Path(__file__).resolve().parents[2]

HANG = 30.0
"""Only a hang waits this long (a guard, not a measure)."""
EVENTS_QUERY = "SELECT at, kind, data FROM events"
"""get()'s second statement: a read stopped before it has its first one done."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Connection(sqlite3.Connection):
    """A call log's connection that tells `opened` of each statement before it runs
    (never inside one), and records that it was closed."""

    opened: Opened | None = None
    closed = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.opened is not None:
            self.opened.before(sql)
        return super().execute(sql, *args)

    def close(self) -> None:
        self.closed = True
        super().close()


@dataclass
class Opened:
    """Every connection a SqliteCallLog opened (the writer's first); `at_events` runs
    once, in the reading thread, ahead of the next get()'s second statement."""

    conns: list[Connection] = field(default_factory=list)
    at_events: Callable[[], None] | None = None

    def before(self, sql: str) -> None:
        if sql.startswith(EVENTS_QUERY) and self.at_events is not None:
            then, self.at_events = self.at_events, None
            then()

    def assert_all_closed(self) -> None:
        assert self.conns, "no connection was opened"
        assert all(conn.closed for conn in self.conns), "a connection was left open"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Opened:
    """The connections of the SqliteCallLogs opened from now on, as _connect makes them."""
    opened = Opened()

    def connect(self: SqliteCallLog) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, factory=Connection)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.opened = opened
        opened.conns.append(conn)
        return conn

    monkeypatch.setattr(SqliteCallLog, "_connect", connect)
    return opened


class Closer(InThread):
    """close() in a thread of its own, as the lifespan's to_thread runs it; `reached` is
    set once it has gone as far as it can without the read in flight: it returned, or it
    said it waits for the reads (calllog_close_waits)."""

    def __init__(self, log: SqliteCallLog) -> None:
        super().__init__(log.close, "close()", name="closer", hang=HANG)
        self.events: list[str] = []

    def heard(self, event: str) -> None:
        if threading.current_thread() is self.thread:
            self.events.append(event)
            if event == "calllog_close_waits":
                self.reached.set()


class Listening(logging.Handler):
    def __init__(self, closer: Closer) -> None:
        super().__init__(logging.DEBUG)
        self.closer = closer

    def emit(self, record: logging.LogRecord) -> None:
        self.closer.heard(str(getattr(record, "event", "")))


@pytest.fixture
def closer(tmp_path: Path, opened: Opened) -> Iterator[tuple[SqliteCallLog, Closer]]:
    """An open call log with one call recorded, and its close() ready to start."""
    log = SqliteCallLog(tmp_path / "calls.db")
    log.open()
    log.started(record("rtc_1"))
    log.event("rtc_1", "greeting")
    closer = Closer(log)
    handler = Listening(closer)
    logger = logging.getLogger("switchboard.calllog")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield log, closer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        if closer.thread.ident is None:  # not started by the test
            log.close()
        closer.thread.join(HANG)


@pytest.mark.anyio
async def test_close_waits_for_the_read_in_flight_then_closes_its_connection(
    closer: tuple[SqliteCallLog, Closer], opened: Opened
) -> None:
    """close() comes while a read is between its two statements. Before, it closed the
    read's connection there: the second statement met a closed database (had the read
    been inside a statement, the process crashed). Now close() waits for the read, which
    returns the call, and only then closes the connections; a read that comes meanwhile
    is refused with CallLogError, not queued behind the close."""
    log, close = closer
    late: list[BaseException] = []

    def late_read() -> None:
        try:
            log._get("rtc_1")
        except BaseException as exc:  # reported by the test
            late.append(exc)

    def closing() -> None:
        close.thread.start()
        assert close.reached.wait(HANG), "close() neither returned nor waited for the read"
        other = threading.Thread(target=late_read)
        other.start()
        other.join(HANG)

    opened.at_events = closing
    try:
        got = await log.get("rtc_1")
    except sqlite3.ProgrammingError as exc:
        pytest.fail(f"the read met a closed connection: {exc}")
    finally:
        close.join()
    assert isinstance(got, CallRecord)
    assert (got.call_id, [e.kind for e in got.events]) == ("rtc_1", ["greeting"])
    assert len(late) == 1 and isinstance(late[0], CallLogError), late
    assert "closed" in str(late[0])
    opened.assert_all_closed()


@pytest.mark.anyio
async def test_a_read_past_the_close_timeout_closes_its_own_connection(
    closer: tuple[SqliteCallLog, Closer],
    opened: Opened,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read still running when CLOSE_TIMEOUT is over: close() says so and returns
    without closing that read's connection; the read finishes with its result and closes
    the connection itself. Before, close() closed it under the read."""
    log, close = closer
    monkeypatch.setattr(sqlite_log, "CLOSE_TIMEOUT", 0.2)

    def closed_meanwhile() -> None:
        close.thread.start()
        close.join()  # returns: the read does not go on before

    opened.at_events = closed_meanwhile
    try:
        got = await log.get("rtc_1")
    except sqlite3.ProgrammingError as exc:
        pytest.fail(f"the read met a closed connection: {exc}")
    assert isinstance(got, CallRecord) and got.call_id == "rtc_1"
    assert "calllog_close_timeout" in close.events, "close() did not say it gave up"
    opened.assert_all_closed()


def test_a_writer_past_the_close_timeout_closes_its_connection_when_done(
    tmp_path: Path, opened: Opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is still in a batch when CLOSE_TIMEOUT is over: close() leaves the
    write connection to it (closing it under the batch could crash the process); the
    writer writes the batch and what was queued, then closes the connection. Before, the
    connection was never closed."""
    monkeypatch.setattr(sqlite_log, "CLOSE_TIMEOUT", 0.2)
    log = SqliteCallLog(tmp_path / "calls.db", max_delay=0.01)
    log.open()
    writer = log._writer
    assert writer is not None
    entered, release = held_batches(log, monkeypatch, HANG)
    log.started(record("rtc_1"))
    assert entered.wait(HANG)
    log.ended("rtc_1", "end_call")  # queued behind the batch in flight
    try:
        log.close()  # gives up after CLOSE_TIMEOUT: the writer is still in its batch
        assert writer.is_alive()
        assert not opened.conns[0].closed, "the write connection was closed under the batch"
    finally:
        release.set()
    writer.join(HANG)
    assert not writer.is_alive()
    opened.assert_all_closed()
    with sqlite3.connect(tmp_path / "calls.db") as db:
        assert db.execute("SELECT status, end_reason FROM calls").fetchall() == [
            ("ended", "end_call")
        ]


def test_close_during_a_statement_of_a_read_does_not_crash_the_process(tmp_path: Path) -> None:
    """close() while a read is inside a statement (tests/records/close_in_statement.py, in
    a process of its own). Before, the process crashed there (-11, SIGSEGV): close()
    cleared the connection that Python's sqlite3 reads once SQLite's step returns."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.records.close_in_statement", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2 * HANG,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "read rtc_1\n"), done.stderr


def test_writes_queued_behind_a_writer_that_died_are_reported_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer thread stops on a defect (an exception its loop does not take, in its
    last steps: a defect in a batch no longer stops it, tests/records/
    test_sqlite_writer_errors.py): close() counts what is still queued as dropped at the
    shutdown and says so, and the writer's end is logged with its traceback. Before, both
    were lost without a word (the traceback on stderr only)."""
    log = SqliteCallLog(tmp_path / "calls.db", max_delay=0.01)

    def defect(conn: sqlite3.Connection) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(log, "_write_until_stopped", defect)
    with caplog.at_level(logging.INFO, logger="switchboard.calllog"):
        log.open()
        writer = log._writer
        assert writer is not None
        writer.join(HANG)  # it stops at once
        assert not writer.is_alive()
        log.started(record("rtc_2"))
        log.ended("rtc_2", "end_call")
        log.close()
    assert log.backlog().dropped["shutdown"] == 2
    events = [str(getattr(r, "event", "")) for r in caplog.records]
    assert "calllog_writer_failed" in events
    assert "calllog_dropped" in events
