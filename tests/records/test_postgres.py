"""The PostgreSQL call log's own behaviour (the shared contract is in test_calllog.py):
migrations, replicas writing the same calls, data PostgreSQL cannot store, refused writes,
timeouts, and outages of a real server (a throwaway one, stopped and started again)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from app.ops.metrics import Metrics
from app.records import build
from app.records.build import build_call_log, close_call_log, open_call_log
from app.records.calllog import CallEvent, CallLogError, CallRecord
from app.records.memory import InMemoryCallLog
from app.records.migrate import (
    Migration,
    MigrationError,
    check_order,
    load_migrations,
)
from app.records.postgres import (
    _CALL_ID_ARG,
    _WRITE_NAMES,
    CallLogUnavailable,
    PostgresCallLog,
    _runs,
    end_calls_left_open,
    pg_json,
    pg_text,
)
from app.records.sqlite import SqliteCallLog
from app.records.storage import DAY, RECOVERED_NOTE
from tests.pgserver import Server, admin_async, create_database, drop_database, free_port, url

NOW = float(int(time.time())) - 3600  # within the retention of the logs on the real clock
LATEST = len(load_migrations())
APPLIED = [(1, "calls_and_events"), (2, "calls_api")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(call_id: str = "rtc_1", **changes: Any) -> CallRecord:
    fields: dict[str, Any] = {
        "call_id": call_id,
        "started_at": NOW,
        "route": "support",
        "action": "accept",
        "outcome": "accepted",
        "status": "active",
        "caller": "+1415*****23",
        "called": "+18005550100",
        "rules_version": "v1",
    }
    fields.update(changes)
    return CallRecord(**fields)


# Small timers: an outage is noticed and retried within tenths of a second.
FAST: dict[str, Any] = {"timeout": 1.0, "retry_min": 0.02, "retry_max": 0.1, "close_timeout": 2.0}


@pytest.fixture
async def open_logs() -> AsyncIterator[Callable[..., Any]]:
    made: list[PostgresCallLog] = []

    async def open_log(database_url: str, **kwargs: Any) -> PostgresCallLog:
        log = PostgresCallLog(database_url, **{**FAST, **kwargs})
        await log.start()
        made.append(log)
        return log

    yield open_log
    for log in made:
        await log.aclose()


async def fetch(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def eventually(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def written(log: PostgresCallLog) -> None:
    await eventually(lambda: log.backlog().queued == 0, "the queue written")


# --- migrations -------------------------------------------------------------------------


def test_migration_files_are_numbered_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "calls_and_events"
    assert "CREATE TABLE calls" in migrations[0].sql
    with pytest.raises(MigrationError, match="expected 0002, found 0003_later"):
        check_order([Migration(1, "first", ""), Migration(3, "later", "")])


@pytest.mark.anyio
async def test_start_creates_the_schema(pg_empty_url: str, open_logs: Any) -> None:
    log = await open_logs(pg_empty_url)
    assert log.backlog().available and log.schema_version == LATEST
    rows = await fetch(pg_empty_url, "SELECT version, name FROM switchboard_schema_migrations")
    assert rows == APPLIED
    indexes = {
        r[0] for r in await fetch(pg_empty_url, "SELECT indexname FROM pg_indexes")
    }  # fmt: skip
    assert {"calls_by_start", "calls_by_status", "calls_by_route", "call_events_by_call"} <= (
        indexes
    )


@pytest.mark.anyio
async def test_replicas_starting_together_migrate_once(
    pg_empty_url: str, open_logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "switchboard.calllog")
    logs = await asyncio.gather(*(open_logs(pg_empty_url) for _ in range(6)))
    assert all(log.backlog().available for log in logs)
    assert not [r for r in caplog.records if r.__dict__.get("event") == "calllog_unavailable"]
    applied = [
        r.__dict__["migrations_applied"] for r in caplog.records if hasattr(r, "schema_version")
    ]
    everything = list(range(1, LATEST + 1))
    assert sorted(applied) == [[]] * 5 + [everything], "one migrates, the others wait and see"
    rows = await fetch(pg_empty_url, "SELECT version FROM switchboard_schema_migrations")
    assert [r[0] for r in rows] == everything


@pytest.mark.anyio
async def test_a_new_migration_is_applied_and_an_older_release_carries_on(
    pg_empty_url: str, open_logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first = await open_logs(pg_empty_url)
    assert first.schema_version == LATEST
    note = Migration(LATEST + 1, "call_notes", "ALTER TABLE calls ADD note text")
    newer = await open_logs(pg_empty_url, migrations=(*load_migrations(), note))
    assert newer.schema_version == LATEST + 1
    rows = await fetch(pg_empty_url, "SELECT version, name FROM switchboard_schema_migrations")
    assert rows == [*APPLIED, (LATEST + 1, "call_notes")]

    # A replica of the previous release (a rolling update) warns and keeps writing.
    caplog.set_level(logging.WARNING, "switchboard.calllog")
    older = await open_logs(pg_empty_url)
    assert older.schema_version == LATEST + 1 and older.backlog().available
    assert [r for r in caplog.records if r.__dict__.get("event") == "calllog_schema_newer"]
    older.started(record())
    got = await older.get("rtc_1")
    assert got is not None and got.route == "support"


@pytest.mark.anyio
async def test_calls_recorded_before_the_api_column_read_as_realtime(
    pg_empty_url: str, open_logs: Any
) -> None:
    # A database of the release before 0002 (only 0001 applied), with a call in it; that
    # release's writes do not name the api column.
    before = await open_logs(pg_empty_url, migrations=load_migrations()[:1])
    assert before.schema_version == 1
    await admin_async(
        pg_empty_url,
        "INSERT INTO calls (call_id, started_at, route, action, outcome, status, "
        f"rules_version) VALUES ('rtc_old', to_timestamp({NOW}), 'support', 'accept', "
        "'accepted', 'ended', 'v1')",
    )
    log = await open_logs(pg_empty_url)
    assert log.schema_version == LATEST
    old = await log.get("rtc_old")
    assert old is not None and (old.route, old.api) == ("support", "realtime")
    log.started(record("rtc_new", started_at=NOW + 1, api="live"))
    assert [(c.call_id, c.api) for c in await log.recent()] == [
        ("rtc_new", "live"),
        ("rtc_old", "realtime"),
    ]
    assert [c.call_id for c in await log.recent(api="live")] == ["rtc_new"]


@pytest.mark.anyio
async def test_a_database_emptied_while_serving_gets_its_schema_back(
    pg_url: str, open_logs: Any
) -> None:
    log = await open_logs(pg_url)
    log.started(record("rtc_1"))
    await log.get("rtc_1")
    # Restored from an empty backup, or a new instance behind the same address.
    await admin_async(pg_url, "DROP TABLE calls, call_events, switchboard_schema_migrations")
    log.started(record("rtc_2"))
    await written(log)
    assert [c.call_id for c in await log.recent()] == ["rtc_2"]


# --- several replicas, retries -------------------------------------------------------------


@pytest.mark.anyio
async def test_two_replicas_write_one_call(pg_url: str, open_logs: Any) -> None:
    a, b = await open_logs(pg_url), await open_logs(pg_url)
    decision = CallEvent(NOW, "decision", {"route": "support"})
    a.started(record(events=(decision,)))
    await a.get("rtc_1")  # written
    b.started(record(started_at=NOW + 1, events=(decision,)))  # the same call again
    b.event("rtc_1", "greeting")
    await b.get("rtc_1")
    a.ended("rtc_1", "end_call")
    await a.get("rtc_1")
    b.ended("rtc_1", "max_duration")  # too late: the first end won
    got = await b.get("rtc_1")
    assert got is not None
    assert (got.status, got.end_reason, got.started_at) == ("ended", "end_call", NOW)
    assert [e.kind for e in got.events] == ["decision", "decision", "greeting", "ended"]
    assert await fetch(pg_url, "SELECT count(*) FROM calls") == [(1,)]
    assert (await a.get("rtc_1")) == got, "every replica reads the same"


@pytest.mark.anyio
async def test_concurrent_ends_from_replicas_end_the_call_once(pg_url: str, open_logs: Any) -> None:
    logs = [await open_logs(pg_url) for _ in range(4)]
    for n in range(50):
        logs[0].started(record(f"rtc_{n}"))
    await logs[0].get("rtc_0")
    for log in logs:  # four replicas end each call at (about) the same moment
        for n in range(50):
            log.ended(f"rtc_{n}", "end_call")
    await asyncio.gather(*(written(log) for log in logs))
    ends = await fetch(
        pg_url, "SELECT call_id, count(*) FROM call_events WHERE kind = 'ended' GROUP BY 1"
    )
    assert len(ends) == 50 and {r[1] for r in ends} == {1}


@pytest.mark.anyio
async def test_a_batch_written_again_adds_nothing(pg_url: str, open_logs: Any) -> None:
    """The writer retries a batch whose commit it did not see confirmed (the connection
    dropped during COMMIT): writing it twice must equal writing it once."""
    log = await open_logs(pg_url)
    log.started(record(events=(CallEvent(NOW, "decision", {}),)))
    log.event("rtc_1", "greeting")
    log.status("rtc_1", "answered")
    log.ended("rtc_1", "end_call")
    batch = list(log._pending)
    before = await log.get("rtc_1")
    await log._write(batch)
    assert await log.get("rtc_1") == before
    assert await fetch(pg_url, "SELECT count(*) FROM call_events") == [(3,)]


# --- data -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("plain", "plain"),
        ("nul\x00inside", "nul\ufffdinside"),
        ("lone \udc80 surrogate", "lone ? surrogate"),
        ("ünïcødé ☎", "ünïcødé ☎"),
    ],
    ids=["plain", "nul", "surrogate", "unicode"],
)
def test_pg_text(given: str, stored: str) -> None:
    assert pg_text(given) == stored


@pytest.mark.anyio
async def test_what_postgresql_cannot_store_is_stored_anyway(pg_url: str, open_logs: Any) -> None:
    log = await open_logs(pg_url)
    odd = "rtc_\x00\udc80"
    log.started(record(odd, caller="+1\x00", route="r\x00"))
    data = {"nan": float("nan"), "inf": [float("-inf")], "nul": "a\x00b", "\x00key": "\\u0000"}
    log.event(odd, "tool\x00call", data)
    got = await log.get(odd)  # the same text for the lookup as for the write
    assert got is not None
    assert (got.call_id, got.caller, got.route) == ("rtc_\ufffd?", "+1\ufffd", "r\ufffd")
    assert got.events[0].kind == "tool\ufffdcall"
    assert dict(got.events[0].data) == {
        "nan": "nan",
        "inf": ["-inf"],
        "nul": "a\ufffdb",
        "\ufffdkey": "\\u0000",  # a backslash and 'u0000' as text: kept as they are
    }
    assert log.backlog().dropped["rejected"] == 0
    odd_keys: dict[Any, str] = {(1, 2): "tuple key"}  # JSON cannot hold it: kept as text
    assert pg_json(odd_keys) == '{"value": "{(1, 2): \'tuple key\'}"}'


@pytest.mark.anyio
async def test_a_refused_write_loses_only_itself(
    pg_url: str, open_logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    log = await open_logs(pg_url)
    await log.get("rtc_none")  # the schema is there
    await admin_async(
        pg_url, "ALTER TABLE call_events ADD CONSTRAINT no_poison CHECK (kind <> 'poison')"
    )
    try:
        log.started(record())
        log.event("rtc_1", "greeting")
        log.event("rtc_1", "poison")
        log.ended("rtc_1", "end_call")
        got = await log.get("rtc_1")
    finally:
        await admin_async(pg_url, "ALTER TABLE call_events DROP CONSTRAINT no_poison")
    assert got is not None
    assert [e.kind for e in got.events] == ["greeting", "ended"]
    assert log.backlog().dropped == {"queue_full": 0, "rejected": 1, "shutdown": 0}
    failed = [r for r in caplog.records if r.__dict__.get("event") == "calllog_write_failed"]
    assert len(failed) == 1 and failed[0].__dict__["write"] == "event"
    assert "no_poison" in failed[0].__dict__["error"]


@pytest.mark.anyio
async def test_a_write_that_cannot_be_encoded_is_refused_without_raising(
    pg_url: str, open_logs: Any
) -> None:
    log = await open_logs(pg_url)
    nothing: Any = None  # a caller's bug: counted, never raised
    log.started(record("rtc_bad", route=nothing))
    log.event("rtc_bad", nothing)
    log.started(record("rtc_good"))
    assert [c.call_id for c in await log.recent()] == ["rtc_good"]
    assert log.backlog().dropped["rejected"] == 2


# --- time limits --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_database_that_does_not_answer_times_out(pg_url: str, open_logs: Any) -> None:
    log = await open_logs(pg_url, timeout=0.3)
    log.started(record())
    await log.get("rtc_1")
    locker = await asyncpg.connect(pg_url)
    try:
        # Another session holds the table: every statement on it waits.
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
        log.ended("rtc_1", "end_call")  # returns at once: queued
        started = time.monotonic()
        with pytest.raises(CallLogUnavailable, match="did not answer: timed out"):
            await log.recent()
        assert time.monotonic() - started < 3, "the read gave up at its time limit"
        await eventually(lambda: not log.backlog().available, "the writer gave up too")
        assert log.backlog().queued == 1
        await lock.rollback()
    finally:
        await locker.close()
    await written(log)
    got = await log.get("rtc_1")
    assert got is not None and got.end_reason == "end_call"


@pytest.mark.anyio
async def test_a_batch_too_slow_for_the_time_limit_is_split(pg_url: str, open_logs: Any) -> None:
    """A server slow enough that a full batch runs out of time every time: the writer
    must not retry the same batch forever, smaller ones get through."""
    log = await open_logs(pg_url, timeout=0.25)
    log.started(record())
    await log.get("rtc_1")
    await admin_async(
        pg_url,
        "CREATE FUNCTION slow_event() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(0.01); RETURN NEW; END $$; "
        "CREATE TRIGGER slow BEFORE INSERT ON call_events "
        "FOR EACH ROW EXECUTE FUNCTION slow_event()",
    )
    try:
        for n in range(50):  # 0.5 s as one batch
            log.event("rtc_1", "transcript", {"n": n})
        await eventually(lambda: log.backlog().queued == 0, "the queue written", 15)
    finally:
        await admin_async(pg_url, "DROP TRIGGER slow ON call_events; DROP FUNCTION slow_event()")
    got = await log.get("rtc_1")
    assert got is not None
    assert [dict(e.data)["n"] for e in got.events] == list(range(50)), "in order, once each"
    assert log.backlog().dropped["rejected"] == 0


def test_a_batch_runs_few_statements_and_keeps_each_calls_order() -> None:
    log = PostgresCallLog("postgresql://nobody@127.0.0.1:1/none")  # never started
    for n in range(100):
        log.started(record(f"rtc_{n}", events=(CallEvent(NOW, "decision", {}),)))
        log.event(f"rtc_{n}", "greeting")
        log.status(f"rtc_{n}", "answered")
        log.ended(f"rtc_{n}", "end_call")
    log.started(record("rtc_0", outcome="again"))  # a redelivery acted on again: last
    runs = list(_runs(list(log._pending)))
    assert len(runs) <= 6, "hundreds of calls, a handful of executemany runs"
    per_call: dict[str, list[str]] = {}
    for sql, rows in runs:
        for args in rows:
            per_call.setdefault(args[_CALL_ID_ARG[sql]], []).append(_WRITE_NAMES[sql])
    assert per_call["rtc_7"] == ["started", "event", "event", "status", "ended"]
    assert per_call["rtc_0"] == ["started", "event", "event", "status", "ended", "started"]


# --- start-up, outages, shutdown (a server of our own) ----------------------------------


@pytest.fixture
def server(pg_server: Server) -> Server:
    if not pg_server.running:
        pg_server.start()
    return pg_server


@pytest.fixture
def server_db(server: Server) -> Any:
    database = create_database(server.url())
    yield database
    if not server.running:
        server.start()
    drop_database(database)


def metric(metrics: Metrics, line: str) -> float:
    text = metrics.render()[0].decode()
    for row in text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{line} not in the metrics")


@pytest.mark.anyio
async def test_an_outage_queues_the_records_and_writes_them_when_it_ends(
    server: Server, server_db: str, open_logs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "switchboard.calllog")
    log = await open_logs(server_db, queue_max=12)
    metrics = Metrics()
    metrics.watch_call_log(log)
    log.started(record("rtc_before"))
    assert await log.get("rtc_before") is not None

    server.stop()
    started = time.monotonic()
    for n in range(5):  # routing goes on: each write returns at once
        log.started(record(f"rtc_{n}", started_at=NOW + n))
        log.ended(f"rtc_{n}", "end_call")
    log.event("rtc_before", "late")
    assert time.monotonic() - started < 0.1
    await eventually(lambda: not log.backlog().available, "the outage noticed")
    with pytest.raises(CallLogUnavailable):
        await log.get("rtc_0")
    for n in range(5, 8):  # 11 writes queued so far: room for one more
        log.started(record(f"rtc_{n}", started_at=NOW + n))
    assert log.backlog().queued == 12
    assert log.backlog().dropped["queue_full"] == 2
    assert metric(metrics, "switchboard_call_records_queued") == 12
    assert metric(metrics, 'switchboard_call_records_dropped_total{reason="queue_full"}') == 2
    assert metric(metrics, "switchboard_call_records_database_up") == 0

    server.start()
    await written(log)
    calls = await log.recent()
    newest_first = ["rtc_5", "rtc_4", "rtc_3", "rtc_2", "rtc_1", "rtc_0", "rtc_before"]
    assert [c.call_id for c in calls] == newest_first
    assert {c.end_reason for c in calls[1:-1]} == {"end_call"}
    before = await log.get("rtc_before")
    assert before is not None and [e.kind for e in before.events] == ["late"]
    assert metric(metrics, "switchboard_call_records_database_up") == 1
    assert metric(metrics, "switchboard_call_records_queued") == 0
    events = [r.__dict__.get("event") for r in caplog.records]
    assert events.count("calllog_unavailable") == 1, "logged once per outage"
    assert events.count("calllog_available") == 1
    assert events.count("calllog_dropped") == 1, "drops logged at most once a minute"


@pytest.mark.anyio
async def test_unreachable_at_start_then_the_database_comes(
    server: Server, server_db: str, open_logs: Any
) -> None:
    server.stop()
    started = time.monotonic()
    log = await open_logs(server_db)
    assert time.monotonic() - started < 3, "start-up does not wait for the database"
    assert not log.backlog().available and log.schema_version == 0
    log.started(record())
    log.ended("rtc_1", "end_call")
    with pytest.raises(CallLogUnavailable):
        await log.recent()
    server.start()
    await written(log)
    assert log.schema_version == LATEST
    got = await log.get("rtc_1")
    assert got is not None and got.end_reason == "end_call"


@pytest.mark.anyio
async def test_nothing_listening_at_all(open_logs: Any) -> None:
    log = await open_logs(url(free_port(), "switchboard"), close_timeout=0.3)
    log.started(record())
    with pytest.raises(CallLogUnavailable, match="did not answer"):
        await log.get("rtc_1")
    assert log.backlog().queued == 1


@pytest.mark.anyio
async def test_close_gives_up_on_a_database_that_is_away(
    server: Server, server_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = PostgresCallLog(server_db, **{**FAST, "close_timeout": 0.3})
    await log.start()
    server.stop()
    for n in range(3):
        log.started(record(f"rtc_{n}"))
    started = time.monotonic()
    await log.aclose()
    assert time.monotonic() - started < 2
    assert log.backlog().dropped["shutdown"] == 3 and log.backlog().queued == 0
    assert [r for r in caplog.records if r.__dict__.get("event") == "calllog_close_timeout"]
    log.started(record("rtc_late"))  # after close: dropped, not raised
    assert log.backlog().dropped["shutdown"] == 4
    with pytest.raises(CallLogError, match="closed"):
        await log.get("rtc_0")


@pytest.mark.anyio
async def test_close_writes_what_is_queued(pg_url: str) -> None:
    log = PostgresCallLog(pg_url, **FAST)
    with pytest.raises(CallLogError, match="not open"):
        await log.get("rtc_1")
    await log.start()
    await log.start()  # idempotent
    for n in range(300):
        log.started(record(f"rtc_{n}"))
        log.event(f"rtc_{n}", "greeting", {"n": n})
        log.ended(f"rtc_{n}", "end_call")
    await log.aclose()
    await log.aclose()  # twice is fine
    assert await fetch(pg_url, "SELECT count(*) FROM calls WHERE status = 'ended'") == [(300,)]
    assert await fetch(pg_url, "SELECT count(*) FROM call_events") == [(600,)]
    with pytest.raises(CallLogError, match="closed"):
        await log.start()


@pytest.mark.anyio
async def test_close_cancelled_as_the_pool_closes_ends_cancelled(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's asyncio.wait_for returns the result of what it waits for when the
    cancellation comes as that completes. aclose() bounded the pool's close with it, so a
    cancellation of the task closing the log (the service's shutdown, cancelled) that came
    then was dropped: that task went on as if never cancelled. The seam cancels it exactly
    then."""
    log = PostgresCallLog(pg_url, **FAST)
    await log.start()
    close = asyncpg.Pool.close
    closing: list[asyncio.Task[None]] = []

    async def closed_then_cancelled(self: asyncpg.Pool) -> None:
        await close(self)
        closing[0].cancel()

    monkeypatch.setattr(asyncpg.Pool, "close", closed_then_cancelled)
    closing.append(asyncio.create_task(log.aclose()))
    with pytest.raises(asyncio.CancelledError):
        await closing[0]
    assert closing[0].cancelled()


# --- restarts -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("single_replica", [True, False], ids=["single-replica", "replicas"])
async def test_restart_of_a_single_replica_ends_the_calls_left_open(
    pg_url: str, open_logs: Any, single_replica: bool
) -> None:
    clock = [NOW]
    first = await open_logs(pg_url, clock=lambda: clock[0])
    first.started(record("rtc_active"))
    clock[0] += 30
    first.event("rtc_active", "greeting")
    first.started(record("rtc_answered", status="answered"))
    first.started(record("rtc_done"))
    clock[0] += 10
    first.ended("rtc_done", "end_call")
    await first.aclose()  # the process stops with two calls in progress

    clock[0] += 3600
    second = await open_logs(pg_url, clock=lambda: clock[0], recover_open_calls=single_replica)
    second.started(record("rtc_new", started_at=clock[0]))  # this run's: left alone
    active, answered, done, new = [
        await second.get(c) for c in ("rtc_active", "rtc_answered", "rtc_done", "rtc_new")
    ]
    assert active and answered and done and new
    assert (done.end_reason, [e.kind for e in done.events]) == ("end_call", ["ended"])
    assert new.status == "active"
    if not single_replica:  # another replica may own them: untouched
        assert (active.status, answered.status) == ("active", "answered")
        return
    assert (active.status, active.end_reason) == ("ended", "unknown")
    assert active.ended_at == NOW + 30, "the last moment the call was seen"
    assert active.events[-1] == CallEvent(
        NOW + 3640, "ended", {"reason": "unknown", "note": RECOVERED_NOTE}
    )
    assert (answered.status, answered.end_reason, answered.duration) == ("ended", "unknown", 0)
    second.ended("rtc_active", "end_call")  # the first end won
    again = await second.get("rtc_active")
    assert again is not None and again.end_reason == "unknown"


@pytest.mark.anyio
async def test_a_worker_of_a_single_replica_leaves_the_other_workers_calls_open(
    pg_url: str, open_logs: Any
) -> None:
    # `serve --workers 2` on one node: a worker that uvicorn restarted ended the calls live
    # on its sibling (all started before its own start). Workers never recover now.
    live = await open_logs(pg_url)
    live.started(record("rtc_active"))
    await written(live)
    worker = build_call_log(
        "unused.db", 30, database_url=pg_url, single_replica=True, recover_open_calls=False
    )
    await open_call_log(worker)
    try:
        active = await worker.get("rtc_active")
        assert active is not None and (active.status, active.end_reason) == ("active", None)
    finally:
        await close_call_log(worker)


@pytest.mark.anyio
async def test_the_supervisor_ends_the_calls_left_open_on_postgresql(
    pg_url: str, open_logs: Any
) -> None:
    clock = [NOW]
    first = await open_logs(pg_url, clock=lambda: clock[0])
    first.started(record("rtc_active"))
    await first.aclose()  # the service stops with a call in progress
    clock[0] += 60
    assert await end_calls_left_open(pg_url, clock=lambda: clock[0]) == 1
    assert await end_calls_left_open(pg_url, clock=lambda: clock[0]) == 0, "done"
    worker = await open_logs(pg_url, clock=lambda: clock[0])
    active = await worker.get("rtc_active")
    assert active is not None
    assert (active.status, active.end_reason, active.ended_at) == ("ended", "unknown", NOW)
    assert active.events[-1] == CallEvent(
        NOW + 60, "ended", {"reason": "unknown", "note": RECOVERED_NOTE}
    )


def test_the_supervisor_starts_without_a_database_and_leaves_replicas_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    away = url(free_port())
    assert build.end_calls_left_open("x.db", database_url=away, single_replica=False) == 0
    assert not caplog.records, "replicas: not even tried"
    caplog.set_level(logging.INFO, "switchboard.calllog")
    assert build.end_calls_left_open("x.db", database_url=away, timeout=1.0) == 0
    (line,) = [r for r in caplog.records if r.__dict__.get("event") == "calllog_unavailable"]
    assert "not ended" in line.getMessage()


# --- retention, build ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_retention_at_start_deletes_old_calls_and_their_events(
    pg_url: str, open_logs: Any
) -> None:
    clock = [NOW]
    first = await open_logs(pg_url, clock=lambda: clock[0])
    first.started(record("rtc_old", started_at=NOW - 31 * DAY))
    first.event("rtc_old", "greeting")
    first.started(record("rtc_kept", started_at=NOW - 29 * DAY))
    first.event("rtc_kept", "greeting")
    first.event("rtc_orphan", "warning")  # never started: ages out by its own time
    await written(first)
    await open_logs(pg_url, clock=lambda: clock[0])  # another replica starts
    count = "SELECT count(*) FROM calls WHERE call_id = 'rtc_old'"
    deadline = time.monotonic() + 5
    while (await fetch(pg_url, count))[0][0]:
        assert time.monotonic() < deadline, "the expired call was never deleted"
        await asyncio.sleep(0.02)
    rows = await fetch(pg_url, "SELECT call_id FROM call_events ORDER BY call_id")
    assert [r[0] for r in rows] == ["rtc_kept", "rtc_orphan"]

    clock[0] += 31 * DAY  # everything is old now, the orphan event by its own time too
    await open_logs(pg_url, clock=lambda: clock[0])
    left = "SELECT (SELECT count(*) FROM calls) + (SELECT count(*) FROM call_events)"
    while (await fetch(pg_url, left))[0][0]:
        assert time.monotonic() < deadline + 5, "expired rows were never deleted"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"database_url": "postgresql://db/x"}, PostgresCallLog),
        ({"database_url": None}, SqliteCallLog),
        ({"database_url": ""}, SqliteCallLog),
    ],
    ids=["postgresql", "sqlite", "empty-url"],
)
def test_build_call_log(kwargs: dict[str, Any], kind: type, tmp_path: Any) -> None:
    log = build_call_log(str(tmp_path / "calls.db"), 7, queue_max=500, **kwargs)
    assert isinstance(log, kind)
    assert log.retention_days == 7  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_open_and_close_any_call_log(pg_url: str, tmp_path: Any) -> None:
    for log in (
        build_call_log(str(tmp_path / "calls.db"), 7, database_url=pg_url),
        build_call_log(str(tmp_path / "calls.db"), 7),
        InMemoryCallLog(),
    ):
        await open_call_log(log)
        log.started(record())
        assert await log.get("rtc_1") is not None
        await close_call_log(log)
