"""Table-driven tests for the call logs: app.records.sqlite (on tmp_path databases),
app.records.memory and app.records.postgres (on a throwaway database), which must behave
alike. Time comes from an injected fake clock."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.records import build
from app.records.calllog import (
    CallApi,
    CallEvent,
    CallLog,
    CallLogError,
    CallRecord,
    CallStatus,
)
from app.records.memory import InMemoryCallLog
from app.records.postgres import PostgresCallLog
from app.records.sqlite import (
    MEMORY,
    ManagedCallLog,
    SqliteCallLog,
    build_call_log,
    end_calls_left_open,
)
from app.records.storage import DAY, RECOVERED_NOTE
from tests.records.writer_support import counted_batches

NOW = 1_750_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(
    call_id: str = "rtc_1",
    *,
    started_at: float = NOW,
    route: str = "support",
    action: str = "accept",
    outcome: str = "accepted",
    status: CallStatus = "active",
    end_reason: str | None = None,
    events: tuple[CallEvent, ...] = (),
    api: CallApi = "realtime",
) -> CallRecord:
    return CallRecord(
        call_id=call_id,
        started_at=started_at,
        route=route,
        action=action,
        outcome=outcome,
        status=status,
        caller="+1415*****23",
        called="+18005550100",
        rules_version="v1",
        end_reason=end_reason,
        api=api,
        events=events,
    )


@dataclass
class Logs:
    """Makes call logs of one kind on the same storage: `new` (SQLite, memory), `open`
    (any kind, PostgreSQL too)."""

    kind: str
    path: Path
    clock: FakeClock
    made: list[ManagedCallLog]
    url: str = ""
    made_async: list[PostgresCallLog] = field(default_factory=list)

    def new(self, **kwargs: Any) -> ManagedCallLog:
        log: ManagedCallLog
        if self.kind == "sqlite":
            log = SqliteCallLog(self.path, clock=self.clock, **kwargs)
        else:
            log = InMemoryCallLog(clock=self.clock, **kwargs)
        log.open()
        self.made.append(log)
        return log

    async def open(self, **kwargs: Any) -> CallLog:
        if self.kind != "postgres":
            return self.new(**kwargs)
        log = PostgresCallLog(self.url, clock=self.clock, **kwargs)
        await log.start()
        self.made_async.append(log)
        return log


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def logs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Logs]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else ""
    made: list[ManagedCallLog] = []
    logs = Logs(request.param, tmp_path / "calls.db", FakeClock(), made, url)
    yield logs
    for log in made:
        log.close()
    for pg_log in logs.made_async:
        await pg_log.aclose()


@pytest.fixture
def sqlite_logs(tmp_path: Path) -> Iterator[Logs]:
    made: list[ManagedCallLog] = []
    yield Logs("sqlite", tmp_path / "calls.db", FakeClock(), made)
    for log in made:
        log.close()


# --- started / event / status / ended ---------------------------------------------------

Step = Callable[[CallLog, FakeClock], None]


def started(**kwargs: Any) -> Step:
    return lambda log, clock: log.started(record(**kwargs))


def event(kind: str, data: dict[str, Any] | None = None, call_id: str = "rtc_1") -> Step:
    return lambda log, clock: log.event(call_id, kind, data)


def status(value: CallStatus) -> Step:
    return lambda log, clock: log.status("rtc_1", value)


def ended(reason: str) -> Step:
    return lambda log, clock: log.ended("rtc_1", reason)


def wait(seconds: float) -> Step:
    return lambda log, clock: clock.advance(seconds)


@dataclass(frozen=True)
class Expect:
    status: CallStatus
    end_reason: str | None = None
    duration: float | None = None
    outcome: str = "accepted"
    kinds: tuple[str, ...] = ()
    started_at: float = NOW
    api: CallApi = "realtime"


DECISION = CallEvent(NOW, "decision", {"route": "support", "matched": ["called"]})

ROUND_TRIPS: list[Any] = [
    pytest.param(
        [started(events=(DECISION,)), wait(2), event("greeting"), wait(60), ended("end_call")],
        Expect("ended", "end_call", 62.0, kinds=("decision", "greeting", "ended")),
        id="accepted-greeted-ended",
    ),
    pytest.param(
        [started(status="answered")],
        Expect("answered"),
        id="answered-stays-open",
    ),
    pytest.param(
        [started(), wait(5), ended("end_call"), wait(5), ended("operator")],
        Expect("ended", "end_call", 5.0, kinds=("ended",)),
        id="ended-twice-first-reason-wins",
    ),
    pytest.param(
        [started(), ended("dtmf"), status("active"), status("answered")],
        Expect("ended", "dtmf", 0.0, kinds=("ended",)),
        id="no-status-after-the-end",
    ),
    pytest.param(
        [started(), status("answered"), wait(3), status("active")],
        Expect("active"),
        id="status-changes-while-open",
    ),
    pytest.param(
        [started(), wait(4), status("ended"), wait(4), ended("max_duration"), ended("dtmf")],
        Expect("ended", "max_duration", 4.0, kinds=("ended", "ended")),
        id="status-ended-then-the-reason",
    ),
    pytest.param(
        [started(action="reject", outcome="rejected", status="ended", end_reason="rejected")],
        Expect("ended", "rejected", 0.0, outcome="rejected"),
        id="rejected-starts-ended",
    ),
    pytest.param(
        [
            started(outcome="upstream_error", status="ended", end_reason="upstream_error"),
            wait(1),
            started(started_at=NOW + 1, events=(DECISION,)),
        ],
        Expect("active", kinds=("decision",)),
        id="redelivery-acted-on-again-replaces-the-decision",
    ),
    pytest.param(
        [event("sideband_connected"), started()],
        Expect("active", kinds=("sideband_connected",)),
        id="event-before-start-is-kept",
    ),
    pytest.param(
        [started(api="live", events=(DECISION,)), wait(30), ended("end_call")],
        Expect("ended", "end_call", 30.0, kinds=("decision", "ended"), api="live"),
        id="live-call",
    ),
    pytest.param(
        [started(api="live"), wait(1), started(started_at=NOW + 1)],
        Expect("active"),
        id="redelivery-sets-the-api-of-the-latest-write",
    ),
    pytest.param(
        [started(), wait(1), started(started_at=NOW + 1, api="live")],
        Expect("active", api="live"),
        id="redelivery-on-the-other-api",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("steps", "expect"), ROUND_TRIPS)
async def test_round_trip(logs: Logs, steps: list[Step], expect: Expect) -> None:
    log = await logs.open()
    for step in steps:
        step(log, logs.clock)
    got = await log.get("rtc_1")
    assert got is not None
    assert (got.status, got.end_reason, got.outcome, got.api) == (
        expect.status,
        expect.end_reason,
        expect.outcome,
        expect.api,
    )
    assert got.duration == expect.duration
    assert got.started_at == expect.started_at
    assert tuple(e.kind for e in got.events) == expect.kinds
    assert (got.caller, got.called, got.rules_version) == ("+1415*****23", "+18005550100", "v1")


@pytest.mark.anyio
async def test_event_data_is_stored_as_json(logs: Logs) -> None:
    log = await logs.open()
    log.started(record())
    when = datetime(2025, 6, 1, tzinfo=UTC)
    log.event("rtc_1", "tool_call", {"name": "transfer", "args": {"to": ["sales", 2]}, "t": when})
    log.event("rtc_1", "warning")
    got = await log.get("rtc_1")
    assert got is not None
    first, second = got.events
    assert dict(first.data) == {
        "name": "transfer",
        "args": {"to": ["sales", 2]},
        "t": str(when),  # what JSON cannot hold is kept as text
    }
    assert (first.at, second.kind, dict(second.data)) == (NOW, "warning", {})


@pytest.mark.anyio
async def test_unknown_call(logs: Logs) -> None:
    log = await logs.open()
    log.ended("rtc_nope", "end_call")
    log.status("rtc_nope", "answered")
    assert await log.get("rtc_nope") is None
    assert await log.recent() == []


# --- recent ----------------------------------------------------------------------------

CALLS: list[tuple[str, int, str, str, CallApi]] = [
    # id, minutes after NOW, route, status, api
    ("rtc_a", 0, "support", "ended", "realtime"),
    ("rtc_b", 1, "sales", "active", "live"),
    ("rtc_c", 2, "support", "answered", "realtime"),
    ("rtc_d", 3, "support", "active", "realtime"),
    ("rtc_e", 3, "sales", "ended", "live"),
]

RECENT: list[Any] = [
    pytest.param({}, ["rtc_d", "rtc_e", "rtc_c", "rtc_b", "rtc_a"], id="newest-first"),
    pytest.param({"limit": 2}, ["rtc_d", "rtc_e"], id="limit"),
    pytest.param({"status": "active"}, ["rtc_d", "rtc_b"], id="status"),
    pytest.param({"route": "sales"}, ["rtc_e", "rtc_b"], id="route"),
    pytest.param({"since": NOW + 120}, ["rtc_d", "rtc_e", "rtc_c"], id="since-inclusive"),
    pytest.param(
        {"status": "ended", "route": "support", "since": NOW}, ["rtc_a"], id="all-filters"
    ),
    pytest.param({"route": "nope"}, [], id="no-match"),
    pytest.param({"api": "live"}, ["rtc_e", "rtc_b"], id="api"),
    pytest.param({"api": "realtime", "status": "ended"}, ["rtc_a"], id="api-and-status"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("filters", "expected"), RECENT)
async def test_recent(logs: Logs, filters: dict[str, Any], expected: list[str]) -> None:
    log = await logs.open()
    for call_id, minutes, route, call_status, api in CALLS:
        log.started(record(call_id, started_at=NOW + 60 * minutes, route=route, api=api))
        log.event(call_id, "decision")
        if call_status == "ended":
            log.ended(call_id, "end_call")
        elif call_status == "answered":
            log.status(call_id, "answered")
    got = await log.recent(**filters)
    assert [r.call_id for r in got] == expected
    apis = {call[0]: call[4] for call in CALLS}
    assert [r.api for r in got] == [apis[r.call_id] for r in got]
    assert all(r.events == () for r in got), "recent() leaves the events out"


# --- restart, retention, close ----------------------------------------------------------


@pytest.mark.anyio
async def test_restart_ends_the_calls_left_open(sqlite_logs: Logs) -> None:
    first = sqlite_logs.new()
    first.started(record("rtc_active"))
    sqlite_logs.clock.advance(30)
    first.event("rtc_active", "greeting")
    first.started(record("rtc_answered", status="answered"))
    first.started(record("rtc_done"))
    sqlite_logs.clock.advance(10)
    first.ended("rtc_done", "end_call")
    first.close()  # the process stops with two calls in progress

    sqlite_logs.clock.advance(3600)
    second = sqlite_logs.new()
    active = await second.get("rtc_active")
    assert active is not None
    assert (active.status, active.end_reason) == ("ended", "unknown")
    assert active.ended_at == NOW + 30, "the last moment the call was seen"
    assert active.events[-1] == CallEvent(
        NOW + 3640, "ended", {"reason": "unknown", "note": RECOVERED_NOTE}
    )
    answered = await second.get("rtc_answered")
    assert answered is not None
    assert (answered.status, answered.end_reason, answered.duration) == ("ended", "unknown", 0)
    done = await second.get("rtc_done")
    assert done is not None
    assert (done.end_reason, [e.kind for e in done.events]) == ("end_call", ["ended"])
    assert await second.recent(status="active") == []
    # A later end for a recovered call changes nothing: the first end won.
    second.ended("rtc_active", "end_call")
    again = await second.get("rtc_active")
    assert again is not None and again.end_reason == "unknown"


@pytest.mark.anyio
async def test_a_worker_opening_without_recovery_leaves_the_others_calls_open(
    sqlite_logs: Logs,
) -> None:
    # `serve --workers 2`: a worker that uvicorn restarted opened the file its sibling was
    # writing to and ended the sibling's live calls (`unknown`). Workers open it without
    # the recovery now; the supervisor ran it once before starting them.
    live = sqlite_logs.new()
    live.started(record("rtc_active"))
    live.started(record("rtc_answered", status="answered"))
    assert await live.get("rtc_active") is not None  # written
    restarted = build.build_call_log(  # the real clock: NOW is more than 30 days ago
        str(sqlite_logs.path), 36500, database_url=None, recover_open_calls=False
    )
    assert isinstance(restarted, SqliteCallLog)
    restarted.open()
    sqlite_logs.made.append(restarted)
    for log in (restarted, live):
        calls = await log.recent()
        assert [(r.call_id, r.status, r.end_reason) for r in calls] == [
            ("rtc_active", "active", None),
            ("rtc_answered", "answered", None),
        ]


@pytest.mark.anyio
async def test_the_supervisor_ends_the_calls_left_open_before_the_workers_open(
    sqlite_logs: Logs,
) -> None:
    first = sqlite_logs.new()
    first.started(record("rtc_active"))
    first.started(record("rtc_done"))
    first.ended("rtc_done", "end_call")
    first.close()  # the service stops with a call in progress
    sqlite_logs.clock.advance(60)
    assert end_calls_left_open(str(sqlite_logs.path), clock=sqlite_logs.clock) == 1
    assert end_calls_left_open(str(sqlite_logs.path), clock=sqlite_logs.clock) == 0, "done"
    worker = sqlite_logs.new(recover_open_calls=False)
    active = await worker.get("rtc_active")
    assert active is not None
    assert (active.status, active.end_reason, active.ended_at) == ("ended", "unknown", NOW)
    assert active.events[-1] == CallEvent(
        NOW + 60, "ended", {"reason": "unknown", "note": RECOVERED_NOTE}
    )
    assert end_calls_left_open(MEMORY) == 0  # nothing outlives a process there


def test_the_supervisor_refuses_a_call_database_it_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "calls.db").write_bytes(b"not a database" * 100)
    with pytest.raises(CallLogError, match="cannot use the call database"):
        build.end_calls_left_open(str(tmp_path / "calls.db"))


@pytest.mark.anyio
async def test_retention_at_open_deletes_old_calls_and_their_events(sqlite_logs: Logs) -> None:
    first = sqlite_logs.new(retention_days=30)
    first.started(record("rtc_old", started_at=NOW - 31 * DAY, events=(DECISION,)))
    first.event("rtc_old", "greeting")
    first.started(record("rtc_kept", started_at=NOW - 29 * DAY))
    first.event("rtc_kept", "greeting")
    first.event("rtc_orphan", "warning")  # never started: ages out by its own time
    first.close()

    def events() -> list[str]:
        with sqlite3.connect(sqlite_logs.path) as db:
            return [row[0] for row in db.execute("SELECT call_id FROM events ORDER BY id")]

    second = sqlite_logs.new(retention_days=30)
    assert await second.get("rtc_old") is None
    kept = await second.get("rtc_kept")
    assert kept is not None
    assert [e.kind for e in kept.events] == ["greeting", "ended"]  # ended at the restart
    assert events() == ["rtc_kept", "rtc_orphan", "rtc_kept"]
    second.close()

    sqlite_logs.clock.advance(31 * DAY)
    third = sqlite_logs.new(retention_days=30)
    assert await third.recent() == []
    assert events() == []


@pytest.mark.anyio
async def test_retention_runs_periodically(logs: Logs) -> None:
    log = await logs.open(retention_days=1, retention_interval=0.05)
    log.started(record("rtc_1", started_at=NOW))
    assert await log.get("rtc_1") is not None
    logs.clock.advance(DAY + 1)
    deadline = time.monotonic() + 5
    # The memory log expires on a write (its tick): one before each look. Written only
    # after a look, rtc_new was never written when the periodic run came first (load).
    log.started(record("rtc_new", started_at=logs.clock.now))
    while await log.get("rtc_1") is not None:
        assert time.monotonic() < deadline, "the expired call was never deleted"
        await asyncio.sleep(0.06)
        log.started(record("rtc_new", started_at=logs.clock.now))
    assert await log.get("rtc_new") is not None


def test_close_writes_what_is_queued(sqlite_logs: Logs) -> None:
    log = sqlite_logs.new()
    for n in range(500):
        log.started(record(f"rtc_{n}"))
        log.event(f"rtc_{n}", "greeting", {"n": n})
        log.ended(f"rtc_{n}", "end_call")
    log.close()
    log.close()  # twice is fine
    log.started(record("rtc_late"))  # after close: dropped, not raised
    with sqlite3.connect(sqlite_logs.path) as db:
        assert db.execute("SELECT count(*) FROM calls WHERE status = 'ended'").fetchone() == (500,)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (1000,)
        assert db.execute("SELECT count(*) FROM calls WHERE call_id = 'rtc_late'").fetchone() == (
            0,
        )


@pytest.mark.anyio
async def test_reads_need_an_open_log(tmp_path: Path) -> None:
    log = SqliteCallLog(tmp_path / "calls.db")
    with pytest.raises(CallLogError, match="not open"):
        await log.get("rtc_1")
    log.open()
    log.open()  # idempotent
    log.close()
    with pytest.raises(CallLogError, match="closed"):
        await log.recent()
    with pytest.raises(CallLogError, match="closed"):
        log.open()


@pytest.mark.anyio
async def test_concurrent_writers(logs: Logs) -> None:
    log = await logs.open()

    async def one_call(n: int) -> None:
        call_id = f"rtc_{n:03}"
        log.started(record(call_id, started_at=NOW + n))
        for k in range(10):
            log.event(call_id, "transcript", {"k": k})
            await asyncio.sleep(0)
        log.ended(call_id, "end_call")
        log.ended(call_id, "operator")

    async def reader() -> int:
        reads = 0
        for _ in range(20):
            await log.recent(limit=1000)
            reads += 1
            await asyncio.sleep(0)
        return reads

    *_, reads = await asyncio.gather(*(one_call(n) for n in range(100)), reader())
    assert reads == 20
    calls = await log.recent(limit=1000)
    assert len(calls) == 100
    assert {(c.status, c.end_reason) for c in calls} == {("ended", "end_call")}
    sample = await log.get("rtc_042")
    assert sample is not None
    assert [dict(e.data).get("k") for e in sample.events[:10]] == list(range(10))
    assert [e.kind for e in sample.events[10:]] == ["ended"]


def test_writes_do_not_wait_for_the_disk(sqlite_logs: Logs) -> None:
    log = sqlite_logs.new()
    start = time.perf_counter()
    for n in range(2000):
        log.event("rtc_1", "transcript", {"n": n})
    assert time.perf_counter() - start < 0.5  # queued: ~µs each, no commit per write


def test_writes_arriving_one_by_one_are_committed_in_batches(
    sqlite_logs: Logs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server writes one record per call, a millisecond or so apart. Before: the writer
    # thread woke (and took the GIL from the event loop) and committed once per record.
    log = sqlite_logs.new()
    assert isinstance(log, SqliteCallLog)
    batches = counted_batches(log, monkeypatch)
    for n in range(60):
        log.started(record(f"rtc_{n}"))
        time.sleep(0.001)
    log.close()
    assert sum(batches) == 60
    assert len(batches) <= 15, batches


# --- the database itself ----------------------------------------------------------------


def test_database_is_in_wal_mode_with_its_indexes(sqlite_logs: Logs) -> None:
    sqlite_logs.new()
    with sqlite3.connect(sqlite_logs.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    assert {"calls_by_start", "calls_by_status", "calls_by_route", "events_by_call"} <= indexes


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "calls.db"


def not_a_database(tmp_path: Path) -> Path:
    (tmp_path / "calls.db").write_bytes(b"not a database\n" * 100)
    return tmp_path / "calls.db"


OPEN_ERRORS: list[Any] = [
    pytest.param(under_a_file, "cannot open the call database", id="parent-is-a-file"),
    pytest.param(not_a_database, "cannot use the call database", id="not-sqlite"),
]


@pytest.mark.parametrize(("make_path", "message"), OPEN_ERRORS)
def test_open_errors_say_which_file(
    tmp_path: Path, make_path: Callable[[Path], Path], message: str
) -> None:
    path = make_path(tmp_path)
    log = SqliteCallLog(path)
    with pytest.raises(CallLogError, match=message) as caught:
        log.open()
    assert str(path) in str(caught.value)
    log.close()


# The schema of the first release (user_version 1), as it created a file.
SCHEMA_V1 = """
CREATE TABLE calls (
    call_id TEXT PRIMARY KEY, started_at REAL NOT NULL, route TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'answered', 'ended')),
    caller TEXT, called TEXT, rules_version TEXT NOT NULL, ended_at REAL, end_reason TEXT
);
CREATE INDEX calls_by_start ON calls (started_at);
CREATE INDEX calls_by_status ON calls (status, started_at);
CREATE INDEX calls_by_route ON calls (route, started_at);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, call_id TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_by_call ON events (call_id, at);
CREATE INDEX events_by_time ON events (at);
PRAGMA user_version = 1;
"""


@pytest.mark.anyio
async def test_a_version_1_file_gets_the_api_column_and_keeps_its_calls(
    sqlite_logs: Logs,
) -> None:
    with sqlite3.connect(sqlite_logs.path) as db:
        db.executescript(SCHEMA_V1)
        db.execute(
            "INSERT INTO calls VALUES ('rtc_old', ?, 'support', 'accept', 'accepted', 'ended', "
            "NULL, NULL, 'v1', ?, 'end_call')",
            (NOW - 60, NOW - 30),
        )
        db.execute(
            "INSERT INTO events (call_id, at, kind, data) VALUES ('rtc_old', ?, 'x', '{}')",
            (NOW - 60,),
        )
    db.close()
    log = sqlite_logs.new()
    old = await log.get("rtc_old")
    assert old is not None
    assert (old.api, old.end_reason, old.duration) == ("realtime", "end_call", 30.0)
    assert [e.kind for e in old.events] == ["x"]
    log.started(record("rtc_new", api="live"))
    assert [(r.call_id, r.api) for r in await log.recent()] == [
        ("rtc_new", "live"),
        ("rtc_old", "realtime"),
    ]
    log.close()
    with sqlite3.connect(sqlite_logs.path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    db.close()
    assert version == 2
    again = sqlite_logs.new()  # opens as a current file: no second ALTER
    assert [r.call_id for r in await again.recent(api="live")] == ["rtc_new"]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(CallLogError, match="schema version 99 is newer"):
        SqliteCallLog(path).open()


def test_parent_directories_are_made(tmp_path: Path) -> None:
    log = SqliteCallLog(tmp_path / "a" / "b" / "calls.db")
    log.open()
    log.close()
    assert (tmp_path / "a" / "b" / "calls.db").is_file()


@pytest.mark.anyio
async def test_an_unknown_status_is_refused_and_changes_nothing(logs: Logs) -> None:
    log = await logs.open()
    log.started(record())
    with pytest.raises(ValueError, match="unknown call status 'ringing'"):
        log.status("rtc_1", "ringing")  # type: ignore[arg-type]
    found = await log.get("rtc_1")
    assert found is not None and found.status == "active"


@pytest.mark.parametrize(
    ("db", "kind"), [(MEMORY, InMemoryCallLog), ("calls.db", SqliteCallLog)], ids=["memory", "file"]
)
def test_build_call_log(db: str, kind: type) -> None:
    log = build_call_log(db, 7)
    assert isinstance(log, kind) and isinstance(log, ManagedCallLog)
    assert log.retention_days == 7  # type: ignore[attr-defined]


def test_retention_must_be_a_day_or_more(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SqliteCallLog(tmp_path / "calls.db", retention_days=0)
    with pytest.raises(ValueError, match="at least 1"):
        InMemoryCallLog(retention_days=0)
