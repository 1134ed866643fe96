"""The call log on PostgreSQL (asyncpg, a connection pool), shared by every replica.

Writes (`started`, `event`, `status`, `ended`) only append to a queue in memory: they never
wait for the database, and never fail a call. One writer task takes what has queued up
(up to MAX_BATCH writes) and writes it in one transaction, as a few pipelined executemany
runs (see `_runs`). A batch that runs out of time is halved for the next try, so that a
slow server still gets the writes, fewer at a time. While the database cannot be
reached, the writes wait in the queue and the writer tries again (backing off from
`retry_min` to `retry_max` seconds); the queue holds at most `queue_max` writes, and a
write that finds it full is dropped and counted (`backlog().dropped["queue_full"]`).

Every statement is idempotent, so that a batch whose commit was not confirmed can be
written again, and two replicas can write the same call: the call id is the primary key
(`ON CONFLICT` upserts), events carry an id chosen here (`ON CONFLICT DO NOTHING`), and
the end of a call is an UPDATE that only the first end passes.

Only data can make the database refuse a write (SQLSTATE classes 22 and 23): then the
batch is written again one write at a time (savepoints), and only the refused write is
dropped (`rejected`). Anything else (connection lost, timeout, disk full, shut down...)
means "not now": the batch stays queued.

Reads (`get`, `recent`) wait for the writes queued before them (read-your-writes) unless
the database is away, and raise CallLogUnavailable when it cannot answer in time.

`start()` creates the pool and tries once to migrate the schema (app.records.migrate);
when the database is unreachable the service starts anyway and the writer keeps trying
(routing does not need the records). Expired calls are deleted by every replica
periodically (SKIP LOCKED chunks: replicas do not wait for each other). The calls left
open by a previous run are ended at start-up (`unknown`, as the SQLite log does) only
when this is the only replica (`recover_open_calls`): with replicas, another one may own
them (the live-call registry carries them on). `serve --workers N` ends them once, in its
supervisor (`end_calls_left_open`), not in its workers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.records.calllog import (
    DROP_REASONS,
    Backlog,
    CallApi,
    CallLogError,
    CallRecord,
    CallStatus,
)
from app.records.migrate import Migration, load_migrations, migrate
from app.records.storage import (
    RETENTION_INTERVAL,
    Clock,
    checked_retention,
    checked_status,
    end_time,
    ended_data,
    events_from_rows,
    record_from_row,
    recovered_data,
    retention_cutoff,
)

logger = logging.getLogger("switchboard.calllog")

QUEUE_MAX: Final = 100_000
"""Writes kept in memory while the database is away (about 0.5 KB each)."""
TIMEOUT: Final = 5.0
"""Seconds for any one database operation (connect, a batch, a read)."""
SCHEMA_TIMEOUT: Final = 60.0
"""Seconds for the migrations (they may wait for another replica's)."""
CLOSE_TIMEOUT: Final = 10.0
"""How long aclose() keeps trying to write what is queued."""
RETRY_MIN: Final = 0.1
RETRY_MAX: Final = 5.0
POOL_SIZE: Final = 4
MAX_BATCH: Final = 500
"""Writes committed in one transaction at most."""
EXPIRE_CHUNK: Final = 5000
"""Rows deleted by one retention statement (short transactions)."""
DROP_LOG_INTERVAL: Final = 60.0
"""Drops are logged on the first one, then at most this often."""

_POISON_CLASSES: Final = ("22", "23")  # data exception, integrity constraint violation

# Times travel as unix seconds (float8), like CallRecord's.
_SELECT_CALLS: Final = (
    "SELECT call_id, extract(epoch FROM started_at)::float8, route, action, outcome, status, "
    "caller, called, rules_version, extract(epoch FROM ended_at)::float8, end_reason, api "
    "FROM calls "
)
_SELECT_EVENTS: Final = (
    "SELECT extract(epoch FROM at)::float8, kind, data::text FROM call_events "
    "WHERE call_id = $1 ORDER BY at, id"
)
# Again for the same call (a redelivery acted on again, or the same batch written twice):
# the new decision and outcome replace the old ones, the first start time stays.
_UPSERT_CALL: Final = (
    "INSERT INTO calls (call_id, started_at, route, action, outcome, status, caller, called, "
    "rules_version, ended_at, end_reason, api) VALUES ($1, to_timestamp($2::float8), $3, $4, "
    "$5, $6, $7, $8, $9, to_timestamp($10::float8), $11, $12) "
    "ON CONFLICT (call_id) DO UPDATE SET "
    "started_at = least(calls.started_at, excluded.started_at), "
    "route = excluded.route, action = excluded.action, outcome = excluded.outcome, "
    "status = excluded.status, caller = excluded.caller, called = excluded.called, "
    "rules_version = excluded.rules_version, ended_at = excluded.ended_at, "
    "end_reason = excluded.end_reason, api = excluded.api"
)
_INSERT_EVENT: Final = (
    "INSERT INTO call_events (event_id, call_id, at, kind, data) "
    "VALUES ($1::uuid, $2, to_timestamp($3::float8), $4, $5::jsonb) "
    "ON CONFLICT (event_id) DO NOTHING"
)
_SET_STATUS: Final = "UPDATE calls SET status = $2 WHERE call_id = $1 AND status <> 'ended'"
# The first end wins: its time, and the first reason given. The row lock orders two
# replicas ending the same call; the second one's UPDATE matches nothing.
_END_CALL: Final = (
    "WITH changed AS ("
    "UPDATE calls SET status = 'ended', ended_at = coalesce(ended_at, to_timestamp($2::float8)), "
    "end_reason = $3::text WHERE call_id = $1 "
    "AND (status <> 'ended' OR (end_reason IS NULL AND $3::text IS NOT NULL)) "
    "RETURNING call_id) "
    "INSERT INTO call_events (event_id, call_id, at, kind, data) "
    "SELECT $4::uuid, call_id, to_timestamp($2::float8), 'ended', $5::jsonb FROM changed "
    "ON CONFLICT (event_id) DO NOTHING"
)
_EXPIRE_CALLS: Final = (
    "WITH old AS (SELECT call_id FROM calls WHERE started_at < to_timestamp($1::float8) "
    "LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "gone_events AS (DELETE FROM call_events e USING old WHERE e.call_id = old.call_id), "
    "gone AS (DELETE FROM calls c USING old WHERE c.call_id = old.call_id RETURNING 1) "
    "SELECT count(*) FROM gone"
)
# A single replica's restart: the calls its previous run left open are over, their end
# unknown; ended_at is the last moment the call was seen (its last event, or its start).
_RECOVER: Final = (
    "WITH left_open AS (SELECT c.call_id, greatest(c.started_at, max(e.at)) AS last_seen "
    "FROM calls c LEFT JOIN call_events e ON e.call_id = c.call_id "
    "WHERE c.status IN ('active', 'answered') AND c.started_at < to_timestamp($1::float8) "
    "GROUP BY c.call_id), "
    "ended AS (UPDATE calls SET status = 'ended', ended_at = left_open.last_seen, "
    "end_reason = 'unknown' FROM left_open WHERE calls.call_id = left_open.call_id "
    "AND calls.status <> 'ended' RETURNING calls.call_id), "
    "noted AS (INSERT INTO call_events (event_id, call_id, at, kind, data) "
    "SELECT gen_random_uuid(), call_id, to_timestamp($1::float8), 'ended', $2::jsonb "
    "FROM ended RETURNING 1) "
    "SELECT count(*) FROM noted"
)
# Events of no call (written for an id that never started) age out by their own time.
_EXPIRE_EVENTS: Final = (
    "WITH old AS (SELECT id FROM call_events WHERE at < to_timestamp($1::float8) "
    "LIMIT $2 FOR UPDATE SKIP LOCKED), "
    "gone AS (DELETE FROM call_events e USING old WHERE e.id = old.id RETURNING 1) "
    "SELECT count(*) FROM gone"
)

_WRITE_NAMES: Final = {
    _UPSERT_CALL: "started",
    _INSERT_EVENT: "event",
    _SET_STATUS: "status",
    _END_CALL: "ended",
}
_CALL_ID_ARG: Final = {_UPSERT_CALL: 0, _INSERT_EVENT: 1, _SET_STATUS: 0, _END_CALL: 0}

_Statement = tuple[str, tuple[Any, ...]]
_Write = tuple[_Statement, ...]
"""What one call of started/event/status/ended writes: kept or dropped as a whole."""
_State = Literal["new", "open", "closing", "closed"]


class CallLogUnavailable(CallLogError):
    """The database did not answer a read (unreachable, or not in time)."""


class PostgresCallLog:
    """CallLog on PostgreSQL; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        retention_days: int = 30,
        clock: Clock = time.time,
        retention_interval: float = RETENTION_INTERVAL,
        queue_max: int = QUEUE_MAX,
        timeout: float = TIMEOUT,
        schema_timeout: float = SCHEMA_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
        retry_min: float = RETRY_MIN,
        retry_max: float = RETRY_MAX,
        pool_size: int = POOL_SIZE,
        migrations: tuple[Migration, ...] | None = None,
        recover_open_calls: bool = False,
    ) -> None:
        """`recover_open_calls`: this is the only replica (no shared live-call registry),
        so the calls still open at start-up were left by its previous run: end them
        (`unknown`), as the SQLite log does. Never with replicas: others own those calls."""
        if queue_max < 1:
            raise ValueError("queue_max must be at least 1")
        self.retention_days = checked_retention(retention_days)
        self.queue_max = queue_max
        self._url = url
        self._clock = clock
        self._retention_interval = retention_interval
        self._timeout = timeout
        self._schema_timeout = schema_timeout
        self._close_timeout = close_timeout
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._pool_size = pool_size
        self._migrations = load_migrations() if migrations is None else migrations
        self._state: _State = "new"
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._batch_limit = MAX_BATCH
        """Writes a batch takes; halved by a batch that ran out of time, then grown back."""
        self._accepted = 0
        """Writes queued since start-up; `_settled` of them are written or dropped."""
        self._settled = 0
        self._schema_ready = False
        self._available = False
        self._outage_logged = False
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._drop_logged: dict[str, float] = {}
        self.schema_version = 0
        self._recover_open_calls = recover_open_calls
        self._started_at: float | None = None

    @property
    def where(self) -> str:
        """The database, for logs: host, port and name, never the password."""
        return database_where(self._url)

    # --- lifetime ---------------------------------------------------------------------

    async def start(self) -> None:
        """Create the pool and try once to bring the schema up to date; then the writer
        runs. An unreachable database does not stop the start (logged, retried)."""
        if self._state == "open":
            return
        if self._state != "new":
            raise CallLogError("the call log is closed")
        self._pool = asyncpg.create_pool(
            self._url,
            min_size=0,  # connect on demand: an unreachable database is not an error here
            max_size=self._pool_size,
            timeout=self._timeout,  # connecting
            command_timeout=self._timeout,
            server_settings={"application_name": "switchboard"},
        )
        await self._pool
        self._state = "open"
        self._started_at = self._clock()
        try:  # one short try: start-up never waits longer for the database than this
            async with asyncio.timeout(self._timeout):
                await self._ensure_schema()
        except Exception as exc:
            await self._unavailable(exc)
        self._task = asyncio.create_task(self._run(), name="switchboard-calllog-postgres")

    async def aclose(self) -> None:
        """Write what is queued (for up to `close_timeout` seconds), then close the pool.
        What the database did not take by then is counted as dropped (`shutdown`)."""
        if self._state in ("closing", "closed"):
            return
        if self._state == "new":
            self._state = "closed"
            self._drop("shutdown", len(self._pending))
            self._pending.clear()
            return
        self._state = "closing"
        self._wake.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=self._close_timeout)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                lost = len(self._pending)
                self._pending.clear()
                logger.error(
                    "the call records database did not take the queued writes in time; "
                    "they are lost",
                    extra={"event": "calllog_close_timeout", "writes": lost},
                )
                self._drop("shutdown", lost)
        self._state = "closed"
        if self._pool is not None:
            try:
                # timeout(), not wait_for(): Python 3.11's wait_for drops a cancellation of
                # this task that comes as the close completes.
                async with asyncio.timeout(self._timeout):
                    await self._pool.close()
            except TimeoutError:
                self._pool.terminate()
        async with self._progress:
            self._progress.notify_all()

    # --- writes: queued, never blocking -------------------------------------------------

    def started(self, record: CallRecord) -> None:
        try:
            write = self._started(record)
        except Exception as exc:  # a record that cannot be written must not fail the call
            self._refused_early("started", record.call_id, exc)
            return
        self._submit(write)

    def _started(self, record: CallRecord) -> _Write:
        ended_at = end_time(record, self._clock())
        call_id = pg_text(record.call_id)
        row = (
            call_id,
            record.started_at,
            pg_text(record.route),
            pg_text(record.action),
            pg_text(record.outcome),
            record.status,
            None if record.caller is None else pg_text(record.caller),
            None if record.called is None else pg_text(record.called),
            pg_text(record.rules_version),
            ended_at,
            None if record.end_reason is None else pg_text(record.end_reason),
            record.api,
        )
        events = tuple(
            (_INSERT_EVENT, (uuid.uuid4(), call_id, e.at, pg_text(e.kind), pg_json(e.data)))
            for e in record.events
        )
        return ((_UPSERT_CALL, row), *events)

    def event(self, call_id: str, kind: str, data: Mapping[str, Any] | None = None) -> None:
        try:
            args = (uuid.uuid4(), pg_text(call_id), self._clock(), pg_text(kind), pg_json(data))
        except Exception as exc:
            self._refused_early("event", call_id, exc)
            return
        self._submit(((_INSERT_EVENT, args),))

    def _refused_early(self, write: str, call_id: object, exc: Exception) -> None:
        logger.error(
            "call log write refused: it cannot be stored",
            extra={
                "event": "calllog_write_failed",
                "error": describe_error(exc),
                "write": write,
                "call_id": str(call_id)[:256],
            },
        )
        self._drop("rejected")

    def status(self, call_id: str, status: CallStatus) -> None:
        if status == "ended":
            self._end(call_id, None)
            return
        status = checked_status(status)
        self._submit(((_SET_STATUS, (pg_text(call_id), status)),))

    def ended(self, call_id: str, reason: str) -> None:
        self._end(call_id, reason)

    def _end(self, call_id: str, reason: str | None) -> None:
        reason = None if reason is None else pg_text(reason)
        data = pg_json(ended_data(reason))
        args = (pg_text(call_id), self._clock(), reason, uuid.uuid4(), data)
        self._submit(((_END_CALL, args),))

    def _submit(self, write: _Write) -> None:
        if self._state == "closed":
            self._drop("shutdown")
        elif len(self._pending) >= self.queue_max:
            self._drop("queue_full")
        else:
            self._pending.append(write)
            self._accepted += 1
            self._wake.set()

    def _drop(self, reason: str, count: int = 1) -> None:
        if count <= 0:
            return
        self._dropped[reason] += count
        now = time.monotonic()
        last = self._drop_logged.get(reason)
        if last is None or now - last >= DROP_LOG_INTERVAL:
            self._drop_logged[reason] = now
            logger.error(
                "call records dropped",
                extra={
                    "event": "calllog_dropped",
                    "reason": reason,
                    "dropped_total": self._dropped[reason],
                    "queue_max": self.queue_max,
                },
            )

    def backlog(self) -> Backlog:
        return Backlog(
            queued=len(self._pending), dropped=dict(self._dropped), available=self._available
        )

    # --- the writer task ----------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._retry_min
        next_expiry = time.monotonic()  # once the schema is there, then periodically
        while True:
            try:
                if not self._schema_ready:
                    async with asyncio.timeout(self._schema_timeout):
                        await self._ensure_schema()
                if self._state == "open" and time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + self._retention_interval
                    await self._expire()
                if self._pending:
                    await self._write_batch()
                    self._now_available()
                    delay = self._retry_min
                    continue
            except Exception as exc:  # every failure is "not now": the writes stay queued
                if isinstance(exc, asyncpg.UndefinedTableError):
                    self._schema_ready = False  # an empty database took its place: migrate
                await self._unavailable(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            if self._state != "open":
                return  # closing, and everything is written
            self._wake.clear()
            try:
                async with asyncio.timeout(max(0.0, next_expiry - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _ensure_schema(self) -> None:
        """Migrate (and recover); the caller bounds the time."""
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            result = await migrate(conn, self._migrations)
            recovered = await self._recover(conn)
        self._schema_ready = True
        self.schema_version = result.version
        if result.newer:
            logger.warning(
                "the call records database has a newer schema than this Switchboard knows; "
                "carrying on (migrations keep the previous release working)",
                extra={"event": "calllog_schema_newer", "schema_version": result.version},
            )
        self._now_available()
        if recovered:
            logger.warning(
                "calls left open by the previous run marked ended (unknown)",
                extra={"event": "calllog_recovered", "calls": recovered},
            )
        logger.info(
            "call log opened",
            extra={
                "event": "calllog_opened",
                "backend": "postgresql",
                "database": self.where,
                "schema_version": result.version,
                "migrations_applied": list(result.applied),
                "retention_days": self.retention_days,
            },
        )

    async def _recover(self, conn: asyncpg.Connection | PoolConnectionProxy) -> int:
        if not self._recover_open_calls or self._started_at is None:
            return 0
        note = pg_json(recovered_data())
        self._recover_open_calls = False  # once (idempotent anyway: only older calls)
        try:
            count: int = await conn.fetchval(_RECOVER, self._started_at, note)
        except BaseException:
            self._recover_open_calls = True
            raise
        return count

    async def _expire(self) -> None:
        """Delete the calls started before the retention with their events, in chunks."""
        assert self._pool is not None
        cutoff = retention_cutoff(self._clock(), self.retention_days)
        deleted = 0
        for statement in (_EXPIRE_CALLS, _EXPIRE_EVENTS):
            while True:
                async with asyncio.timeout(self._timeout):
                    async with self._pool.acquire() as conn:
                        count: int = await conn.fetchval(statement, cutoff, EXPIRE_CHUNK)
                if statement is _EXPIRE_CALLS:
                    deleted += count
                if count < EXPIRE_CHUNK:
                    break
        if deleted:
            logger.info(
                "expired calls deleted", extra={"event": "calllog_expired", "calls": deleted}
            )

    async def _write_batch(self) -> None:
        batch = list(itertools.islice(self._pending, self._batch_limit))
        try:
            await self._write(batch)
        except TimeoutError:
            # A batch the database cannot take in time would never pass: smaller ones do
            # (a slow server), down to one write at a time; then it is an outage.
            self._batch_limit = max(1, len(batch) // 2)
            raise
        except Exception as exc:
            if not is_refused(exc):
                raise
            for write, error in await self._write_one_by_one(batch):
                logger.error(
                    "call log write refused by the database",
                    extra={
                        "event": "calllog_write_failed",
                        "error": describe_error(error),
                        "write": _WRITE_NAMES.get(write[0][0], "?"),
                        "call_id": write[0][1][_CALL_ID_ARG[write[0][0]]],
                    },
                )
                self._drop("rejected")
        for _ in batch:
            self._pending.popleft()
        self._settled += len(batch)
        self._batch_limit = min(MAX_BATCH, self._batch_limit * 2)
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: list[_Write]) -> None:
        assert self._pool is not None
        async with asyncio.timeout(self._timeout):
            async with self._pool.acquire() as conn, conn.transaction():
                for sql, rows in _runs(batch):
                    await conn.executemany(sql, rows)

    async def _write_one_by_one(self, batch: list[_Write]) -> list[tuple[_Write, Exception]]:
        """The batch again, each write in its own savepoint; returns the refused ones."""
        assert self._pool is not None
        refused: list[tuple[_Write, Exception]] = []
        async with asyncio.timeout(self._timeout):
            async with self._pool.acquire() as conn, conn.transaction():
                for write in batch:
                    try:
                        async with conn.transaction():
                            for sql, args in write:
                                await conn.execute(sql, *args)
                    except Exception as exc:
                        if not is_refused(exc):
                            raise
                        refused.append((write, exc))
        return refused

    def _now_available(self) -> None:
        if self._available:
            return
        self._available = True
        if self._outage_logged:
            self._outage_logged = False
            logger.info(
                "call records database available again",
                extra={
                    "event": "calllog_available",
                    "database": self.where,
                    "queued": len(self._pending),
                },
            )

    async def _unavailable(self, exc: BaseException) -> None:
        self._available = False
        if not self._outage_logged:  # once per outage
            self._outage_logged = True
            logger.error(
                "call records database unavailable; records are queued in memory",
                extra={
                    "event": "calllog_unavailable",
                    "database": self.where,
                    "error": describe_error(exc),
                    "queued": len(self._pending),
                    "queue_max": self.queue_max,
                },
            )
        async with self._progress:
            self._progress.notify_all()  # reads stop waiting for the writer

    # --- reads -------------------------------------------------------------------------

    async def _catch_up(self) -> asyncpg.Pool:
        """Wait (briefly) for the writes queued before this read, unless the database is
        away; a read must not hang on an outage."""
        if self._state == "new":
            raise CallLogError("the call log is not open")
        if self._state == "closed" or self._pool is None:
            raise CallLogError("the call log is closed")
        target = self._accepted
        if self._available and self._settled < target:
            try:
                async with asyncio.timeout(self._timeout), self._progress:
                    await self._progress.wait_for(
                        lambda: self._settled >= target or not self._available
                    )
            except TimeoutError:
                logger.warning(
                    "call log read did not wait for pending writes (writer busy)",
                    extra={"event": "calllog_slow"},
                )
        return self._pool

    async def get(self, call_id: str) -> CallRecord | None:
        pool = await self._catch_up()
        key = pg_text(call_id)
        try:
            async with (
                asyncio.timeout(self._timeout),
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                row = await conn.fetchrow(_SELECT_CALLS + "WHERE call_id = $1", key)
                if row is None:
                    return None
                events = await conn.fetch(_SELECT_EVENTS, key)
        except Exception as exc:
            raise self._read_failed(exc) from exc
        return record_from_row(row, events_from_rows(events))

    async def recent(
        self,
        *,
        status: CallStatus | None = None,
        route: str | None = None,
        since: float | None = None,
        limit: int = 100,
        api: CallApi | None = None,
    ) -> list[CallRecord]:
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("status = ${}", status),
            ("route = ${}", None if route is None else pg_text(route)),
            ("started_at >= to_timestamp(${}::float8)", since),
            ("api = ${}", api),
        ):
            if value is not None:
                args.append(value)
                where.append(clause.format(len(args)))
        args.append(max(0, limit))
        sql = (
            _SELECT_CALLS
            + (f"WHERE {' AND '.join(where)} " if where else "")
            + f"ORDER BY started_at DESC, call_id LIMIT ${len(args)}"
        )
        pool = await self._catch_up()
        try:
            async with asyncio.timeout(self._timeout), pool.acquire() as conn:
                rows = await conn.fetch(sql, *args)
        except Exception as exc:
            raise self._read_failed(exc) from exc
        return [record_from_row(row) for row in rows]

    def _read_failed(self, exc: Exception) -> CallLogUnavailable:
        error = describe_error(exc)
        return CallLogUnavailable(f"the call records database did not answer: {error}")


def _runs(batch: Sequence[_Write]) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """The batch's statements as a few executemany runs (each pipelined: not one round
    trip per row). Writes of different calls touch different rows and commute; those of
    one call must keep their order. So each statement is ranked by its place among its
    call's statements in the batch (1st, 2nd...), and the statements of the same place
    and the same SQL run together: a call's statements stay in order, and a batch of
    hundreds of calls takes about as many runs as one call has statements."""
    place: dict[str, int] = {}
    ranked: list[tuple[int, str, int, tuple[Any, ...]]] = []
    for order, (sql, args) in enumerate(itertools.chain.from_iterable(batch)):
        call_id = args[_CALL_ID_ARG[sql]]
        nth = place.get(call_id, 0)
        place[call_id] = nth + 1
        ranked.append((nth, sql, order, args))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]))
    for (_, sql), group in itertools.groupby(ranked, key=lambda r: (r[0], r[1])):
        yield sql, [args for *_, args in group]


async def end_calls_left_open(
    url: str, *, time_limit: float = TIMEOUT, clock: Clock = time.time
) -> int:
    """End the calls a previous run left open, as a single replica's start does, on a
    connection of its own: `serve --workers N`'s supervisor, once, before any worker starts.
    A database that is away does not stop the start (as with start()): logged, and those
    calls stay open. `time_limit`: of each operation but the migrations. Returns how
    many were ended."""
    started_at = clock()
    try:
        conn = await asyncpg.connect(
            url, timeout=time_limit, server_settings={"application_name": "switchboard"}
        )
        try:
            async with asyncio.timeout(SCHEMA_TIMEOUT):
                await migrate(conn, load_migrations())
            async with asyncio.timeout(time_limit):
                count: int = await conn.fetchval(_RECOVER, started_at, pg_json(recovered_data()))
        finally:
            await conn.close(timeout=time_limit)
    except Exception as exc:  # whatever failed, the workers start; their records queue
        logger.error(
            "call records database unavailable; the calls left open by the previous run "
            "are not ended",
            extra={
                "event": "calllog_unavailable",
                "database": database_where(url),
                "error": describe_error(exc),
            },
        )
        return 0
    if count:
        logger.warning(
            "calls left open by the previous run marked ended (unknown)",
            extra={"event": "calllog_recovered", "calls": count},
        )
    return count


def database_where(url: str) -> str:
    """The database, for logs: host, port and name, never the password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
    except ValueError:
        return "postgresql"


def is_refused(exc: BaseException) -> bool:
    """The database refused this data (it would again): not an outage."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _POISON_CLASSES
    return isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, OSError)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_NUL_ESCAPE: Final = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def pg_text(value: str) -> str:
    """Text PostgreSQL can store: no NUL character, no lone surrogate (each becomes
    U+FFFD or '?'); anything else as it is."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def pg_json(data: Mapping[str, Any] | None) -> str:
    """Event data as jsonb takes it: like the SQLite log's JSON (what JSON does not know
    as text), with NaN and infinities as text and NUL characters replaced."""
    value = dict(data or {})
    try:
        text = json.dumps(value, default=str, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), default=str, ensure_ascii=False)
    except TypeError:  # keys JSON cannot hold: keep the data, as text
        text = json.dumps({"value": str(value)}, ensure_ascii=False)
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(lambda m: m[1] + "\\ufffd", text)
    return pg_text(text)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
