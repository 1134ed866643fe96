"""The call log on SQLite (stdlib sqlite3), and the choice between it and the in-memory one.

Writes (`started`, `event`, `status`, `ended`) only append an operation to a queue: they
never block the event loop, and never wake anything. One writer thread owns the write
connection and commits what has queued up in one transaction (a batch). It runs when:

- the event loop is idle (`idle()`: the webhook endpoint calls it when no webhook is in
  flight any more), at most once per IDLE_GAP: the batch takes the core and the GIL while
  no call waits for them;
- a read or close() needs what is queued (they wake it at once);
- MAX_DELAY has passed since it last ran (a loop that is never idle, writes from outside
  the webhooks such as a call's end over its sideband, or no endpoint at all).

Before, the first write after a quiet moment woke the writer (a futex wake and a thread
switch on the service's one core, while that call's API request was in flight), and its
batch committed 20 ms later, in the middle of later calls. The timed wake-up also runs
when nothing is queued (MAX_DELAY apart): a wake-up the loop would have to pay for, on
its path, is what this avoids; one the writer pays for itself, a few times a second, is
not.

Reads (`get`, `recent`) run in worker threads (`asyncio.to_thread`), each with its own
connection; WAL mode lets them read while the writer writes. A read first waits for the
writes queued before it, so what was just written is what is read.

`open()` creates the schema, ends every call that a previous run left `active` or
`answered` (reason `unknown`: the process stopped before it saw the end) unless told not to
(`recover_open_calls=False`: a `serve --workers N` worker, whose siblings write to the same
file; the supervisor ran `end_calls_left_open()` once before starting them), and deletes the
calls older than the retention; the writer thread then repeats the deletion hourly.
A write the disk refuses (full, locked, an I/O error), or that fails for any other reason
than its own data (a damaged file, a defect), is held in memory with the ones after it and
tried again with a growing pause; a failure outside the writes is logged and the writer
goes on after a pause too: it only stops at close(). What waits is bounded (QUEUE_MAX not
yet taken, HELD_MAX held), counted when dropped, and shown by backlog(): queued, and
stalled once nothing has been written for STALLED_AFTER while writes wait (a writer
stuck, or stopped).

`close()` refuses new writes and reads, lets the writer write what is queued and the reads
in flight end, and only then are their connections closed (each by its owner when close()
gives up waiting): a connection closed under one of its statements crashes the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from app.records import calllog
from app.records.calllog import (
    DROP_REASONS,
    Backlog,
    CallApi,
    CallLog,
    CallLogError,
    CallRecord,
    CallStatus,
)
from app.records.storage import (
    RETENTION_INTERVAL,
    Clock,
    checked_retention,
    checked_status,
    encode_data,
    end_time,
    ended_data,
    events_from_rows,
    record_from_row,
    recovered_data,
    retention_cutoff,
)

logger = logging.getLogger("switchboard.calllog")

MEMORY: Final = ":memory:"
"""SWITCHBOARD_CALLS_DB value for a call log kept in memory only (lost at exit)."""

SCHEMA_VERSION: Final = 2
"""1: the first schema; 2: calls.api (a version-1 file gets the column at open)."""
MAX_BATCH: Final = 1000
"""Operations committed in one transaction at most."""
IDLE_GAP: Final = 0.05
"""An idle loop wakes the writer only this long after its last batch. A loop at 200
calls/s is idle between most calls: waking the writer each time would be a wake-up and a
commit per call again (as when each write woke it: a fifth of a call's CPU and most of its
tail latency). 50 ms: ~20 batches a second at most, of ~10 calls each at 200 calls/s."""
MAX_DELAY: Final = 0.2
"""The longest the writer sleeps: what is queued then is written even if the loop was
never idle. Also what a crash can lose (the records of the last 0.2 s at most; 20 ms
before), and how often a quiet writer wakes for nothing (5 times a second: it costs the
writer, not a call)."""
BARRIER_TIMEOUT: Final = 10.0
"""How long a read waits for the writes queued before it."""
CLOSE_TIMEOUT: Final = 30.0
"""How long close() waits for the writer to write what is queued and the reads in flight
to end, in all."""
HELD_MAX: Final = 10_000
"""Writes held in memory while the disk refuses them (full, I/O errors); past this many the
oldest are dropped, and counted (`switchboard_call_records_dropped_total`)."""
WRITER_CACHE_KIB: Final = 2000
"""Page cache of the writer's connection (SQLite's usual default, set so no build's default
decides): the only writer, its cache outlives transactions; full at 2 MB after ~4,000 calls
of bench/e2e's memory phase, 97-99% hits."""
READER_CACHE_KIB: Final = 256
"""Page cache of each reader connection, one per worker thread that ever read (the default
executor's: up to min(32, CPUs + 4)). A connection's cache is discarded when another one
commits, so a reader's serves one query (a call and its events, or a page of recent calls)
and need not grow to the 2 MB default."""
RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0
"""Pauses between two tries of the held writes: doubling from the first to the last."""
QUEUE_MAX: Final = 100_000
"""Writes queued for the writer at most (about 0.5 KB each): reached only if it takes none
(stuck in a statement, or stopped); a write past it is dropped and counted."""
DROP_LOG_INTERVAL: Final = 60.0
"""A full queue's drops are logged at most this often."""
_DATA_ERRORS: Final = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,  # a value it cannot bind
    ValueError,  # text it cannot encode (a lone surrogate)
    TypeError,
    OverflowError,
    RecursionError,  # event data nested too deep to encode
)
"""What a write raises for its own data: that one is dropped alone. Anything else (the
disk refusing, a damaged file, a defect) holds the writes, to be tried again."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS calls (
    call_id       TEXT PRIMARY KEY,
    started_at    REAL NOT NULL,
    route         TEXT NOT NULL,
    action        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'answered', 'ended')),
    caller        TEXT,
    called        TEXT,
    rules_version TEXT NOT NULL,
    ended_at      REAL,
    end_reason    TEXT,
    api           TEXT NOT NULL DEFAULT 'realtime'
);
CREATE INDEX IF NOT EXISTS calls_by_start ON calls (started_at);
CREATE INDEX IF NOT EXISTS calls_by_status ON calls (status, started_at);
CREATE INDEX IF NOT EXISTS calls_by_route ON calls (route, started_at);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    call_id TEXT NOT NULL,
    at      REAL NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_call ON events (call_id, at);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
PRAGMA user_version = {SCHEMA_VERSION};
"""

_SELECT_CALLS = (
    "SELECT call_id, started_at, route, action, outcome, status, caller, called, "
    "rules_version, ended_at, end_reason, api FROM calls "
)
# Version 1 -> 2. Every call recorded before knew only the Realtime API.
_ADD_API = "ALTER TABLE calls ADD COLUMN api TEXT NOT NULL DEFAULT 'realtime'"
# Again for the same call (a redelivery acted on again): the new decision and outcome
# replace the old ones, the first start time stays, and the events add up.
_UPSERT_CALL = (
    "INSERT INTO calls (call_id, started_at, route, action, outcome, status, caller, called, "
    "rules_version, ended_at, end_reason, api) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (call_id) DO UPDATE SET "
    "started_at = min(calls.started_at, excluded.started_at), "
    "route = excluded.route, action = excluded.action, outcome = excluded.outcome, "
    "status = excluded.status, caller = excluded.caller, called = excluded.called, "
    "rules_version = excluded.rules_version, ended_at = excluded.ended_at, "
    "end_reason = excluded.end_reason, api = excluded.api"
)

_Op = Callable[[sqlite3.Connection], None]
_NEVER: Final = float("inf")


class CallLogClosed(CallLogError):
    """The call log is closed, or closing: a read (or open()) after close() began."""


@dataclass(eq=False, slots=True)
class _Reader:
    """A worker thread's reader connection (opened at its first read), and whether a read
    is using it now; both guarded by the call log's _state_lock."""

    conn: sqlite3.Connection | None = None
    busy: bool = False


@runtime_checkable
class ManagedCallLog(CallLog, Protocol):
    """A call log with a lifetime: create_app opens it at start-up and closes it last."""

    def open(self) -> None:
        """Blocking (disk I/O): run it in a thread from async code. Idempotent."""
        ...

    def close(self) -> None:
        """Blocking: write what is queued, release the files. Safe to call twice."""
        ...


def build_call_log(
    db: str, retention_days: int, *, clock: Clock = time.time, recover_open_calls: bool = True
) -> ManagedCallLog:
    """SWITCHBOARD_CALLS_DB -> the call log: `:memory:` keeps it in memory, else SQLite."""
    if db == MEMORY:
        from app.records.memory import InMemoryCallLog

        return InMemoryCallLog(retention_days=retention_days, clock=clock)
    return SqliteCallLog(
        db, retention_days=retention_days, clock=clock, recover_open_calls=recover_open_calls
    )


def end_calls_left_open(db: str, *, clock: Clock = time.time) -> int:
    """End the calls a previous run left open in SWITCHBOARD_CALLS_DB, without opening the
    log: `serve --workers N`'s supervisor, once, before any worker starts. Blocking; raises
    CallLogError as open() does. Returns how many were ended."""
    if db == MEMORY:
        return 0  # nothing outlives a process there
    return SqliteCallLog(db, clock=clock).end_calls_left_open()


def _log_recovered(count: int) -> None:
    if count:
        logger.warning(
            "calls left open by the previous run marked ended (unknown)",
            extra={"event": "calllog_recovered", "calls": count},
        )


class SqliteCallLog:
    """CallLog on one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: str | Path,
        *,
        retention_days: int = 30,
        clock: Clock = time.time,
        retention_interval: float = RETENTION_INTERVAL,
        idle_gap: float = IDLE_GAP,
        max_delay: float = MAX_DELAY,
        recover_open_calls: bool = True,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        """`recover_open_calls`: open() ends the calls left open, the file being this
        process's alone; False where other live processes write to it too."""
        self.path = Path(path)
        self.retention_days = checked_retention(retention_days)
        self._clock = clock
        self._retention_interval = retention_interval
        self._idle_gap = idle_gap
        self._max_delay = max_delay
        self._recover_open_calls = recover_open_calls
        # Writes, a read's barrier (set once what is before it is written), close()'s stop
        # (None). Appended under _state_lock, taken by the writer (deque is thread-safe).
        self._queue: deque[_Op | threading.Event | None] = deque()
        self._queue_max = queue_max
        self._queue_full = 0  # writes _submit dropped (under _state_lock)
        self._full_logged_at = -DROP_LOG_INTERVAL
        self._wake = threading.Event()  # the writer's: set by idle(), a read, close()
        self._idle_from = 0.0  # monotonic: when idle() may wake the writer again
        self._wakes = 0  # the writer's wake-ups, timed or not (tests count them)
        self._state_lock = threading.Lock()  # orders writes and reads against close()
        self._reads_done = threading.Condition(self._state_lock)
        self._opened = False
        self._closed = False
        self._dropped = 0
        self._writer: threading.Thread | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._local = threading.local()  # .reader: this worker thread's _Reader
        self._readers: list[_Reader] = []
        self._reads = 0  # in flight: close() closes their connections once they end
        self._readers_released = False  # by close(): a read still running closes its own
        # The writer thread's: writes the disk refused, in order, tried again until it
        # takes them (disk full, I/O error); read by backlog() from other threads.
        self._held: deque[_Op] = deque()
        self._retry_at = 0.0
        self._retry_pause = RETRY_FIRST
        self._lost = dict.fromkeys(DROP_REASONS, 0)
        self._stopping = False  # the writer took close()'s stop marker
        # Monotonic: the writer's last moment with nothing held (read by backlog()).
        self._caught_up_at = time.monotonic()

    # --- lifetime ---------------------------------------------------------------------

    def open(self) -> None:
        with self._state_lock:
            if self._closed:
                raise CallLogClosed("the call log is closed")
            if self._opened:
                return
            conn = self._open_prepared()
            try:
                deleted = self._expire(conn)
                recovered = self._recover(conn) if self._recover_open_calls else 0
            except sqlite3.Error as exc:
                conn.close()
                raise CallLogError(f"cannot use the call database {self.path}: {exc}") from exc
            self._write_conn = conn
            self._caught_up_at = time.monotonic()
            self._writer = threading.Thread(
                target=self._write_loop, name="switchboard-calllog", daemon=True
            )
            self._writer.start()
            self._opened = True
        _log_recovered(recovered)
        logger.info(
            "call log opened",
            extra={
                "event": "calllog_opened",
                "path": str(self.path),
                "retention_days": self.retention_days,
                "expired_calls": deleted,
            },
        )

    def end_calls_left_open(self) -> int:
        """End the calls a previous run left open, on a connection of its own, and leave
        the log unopened (see the module function). Blocking."""
        conn = self._open_prepared()
        try:
            recovered = self._recover(conn)
        except sqlite3.Error as exc:
            raise CallLogError(f"cannot use the call database {self.path}: {exc}") from exc
        finally:
            conn.close()
        _log_recovered(recovered)
        return recovered

    def close(self) -> None:
        """The writer writes what was queued and closes its connection; the reads in flight
        end before their connections are closed (one closed under a statement crashed
        the process: Python's sqlite3 reads the connection that close() has just cleared).
        Past CLOSE_TIMEOUT, what still runs is logged, and closes its connection itself
        when it ends."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True  # no write is queued and no read starts after this
            writer = self._writer
            if writer is not None:
                self._queue.append(None)  # after every write accepted so far
                self._wake.set()
        give_up = time.monotonic() + CLOSE_TIMEOUT
        if writer is None or self._join_writer(writer, give_up):
            self._drop_unwritten()  # none, unless it never ran or stopped on a defect
        self._release_readers(give_up)

    @staticmethod
    def _join_writer(writer: threading.Thread, give_up: float) -> bool:
        """True once the writer has stopped; False if it still runs at `give_up`."""
        writer.join(max(0.0, give_up - time.monotonic()))
        if writer.is_alive():
            # Its connection stays its own: it closes it once done (_write_loop).
            logger.error(
                "the call log writer did not finish in time; queued writes may be lost",
                extra={"event": "calllog_close_timeout"},
            )
            return False
        return True

    def _drop_unwritten(self) -> None:
        """What is still queued with no writer to write it (closed before it was opened,
        or the writer stopped on a defect): counted as dropped at the shutdown, logged;
        the reads waiting for it let go."""
        dropped = len(self._take_queued())
        if dropped:
            self._lost["shutdown"] += dropped
            logger.error(
                "call log closed with writes no writer took: dropped",
                extra={"event": "calllog_dropped", "dropped": dropped},
            )

    def _take_queued(self) -> list[_Op]:
        """Empty the queue: its writes, in order; the reads waiting on a barrier let go."""
        ops: list[_Op] = []
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                return ops
            if isinstance(item, threading.Event):
                item.set()
            elif item is not None:
                ops.append(item)

    def _release_readers(self, give_up: float) -> None:
        """The reader connections closed once no read uses them (none starts now), waiting
        for the reads in flight until `give_up`; a read still running then closes its own
        connection when it ends (_reading)."""
        with self._state_lock:
            reads = self._reads
        if reads:
            logger.info(
                "call log close waits for the reads in flight",
                extra={"event": "calllog_close_waits", "reads": reads},
            )
        with self._reads_done:
            self._reads_done.wait_for(
                lambda: self._reads == 0, max(0.0, give_up - time.monotonic())
            )
            self._readers_released = True
            conns: list[sqlite3.Connection] = []
            for reader in self._readers:
                if not reader.busy and reader.conn is not None:
                    conns.append(reader.conn)
                    reader.conn = None
            still = self._reads
        for conn in conns:
            conn.close()
        if still:
            logger.error(
                "call log reads still running at the close timeout: each closes its "
                "connection when it ends",
                extra={"event": "calllog_close_timeout", "reads": still},
            )

    def _open_prepared(self) -> sqlite3.Connection:
        """The write connection, on a file whose schema is this version's."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise CallLogError(
                f"cannot open the call database {self.path}: {exc} "
                "(SWITCHBOARD_CALLS_DB must be a writable path)"
            ) from exc
        try:
            self._prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise CallLogError(f"cannot use the call database {self.path}: {exc}") from exc
        return conn

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: one thread uses a connection at a time, but close() may
        # come from another one.
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    @staticmethod
    def _bound_cache(conn: sqlite3.Connection, kib: int) -> None:
        # Not in _connect: it reads the file's header (a file that is no database fails
        # here, as something that cannot be used, not opened).
        conn.execute(f"PRAGMA cache_size = -{kib}")

    def _prepare(self, conn: sqlite3.Connection) -> None:
        self._bound_cache(conn, WRITER_CACHE_KIB)
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this Switchboard's ({SCHEMA_VERSION})"
            )
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        if 0 < version < SCHEMA_VERSION:
            self._upgrade(conn)
        conn.executescript(_SCHEMA)

    @staticmethod
    def _upgrade(conn: sqlite3.Connection) -> None:
        """An older file's schema brought to this version, in one transaction (a crash
        half-way leaves the old version, tried again at the next open)."""
        conn.execute("BEGIN IMMEDIATE")
        with conn:  # commits, or rolls back on an error
            columns = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
            if columns and "api" not in columns:
                conn.execute(_ADD_API)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _recover(self, conn: sqlite3.Connection) -> int:
        """End the calls a previous run left open. Their end is not known: ended_at is the
        last moment the call was seen (its last event, or its start)."""
        now = self._clock()
        with conn:
            rows = conn.execute(
                "SELECT c.call_id, max(c.started_at, coalesce(max(e.at), c.started_at)) "
                "FROM calls c LEFT JOIN events e ON e.call_id = c.call_id "
                "WHERE c.status IN ('active', 'answered') GROUP BY c.call_id"
            ).fetchall()
            note = encode_data(recovered_data())
            for call_id, last_seen in rows:
                conn.execute(
                    "UPDATE calls SET status = 'ended', ended_at = ?, end_reason = 'unknown' "
                    "WHERE call_id = ?",
                    (last_seen, call_id),
                )
                conn.execute(
                    "INSERT INTO events (call_id, at, kind, data) VALUES (?, ?, 'ended', ?)",
                    (call_id, now, note),
                )
        return len(rows)

    def _expire(self, conn: sqlite3.Connection) -> int:
        """Delete the calls started before the retention, and their events."""
        cutoff = retention_cutoff(self._clock(), self.retention_days)
        with conn:
            conn.execute(
                "DELETE FROM events WHERE call_id IN "
                "(SELECT call_id FROM calls WHERE started_at < ?)",
                (cutoff,),
            )
            deleted = conn.execute("DELETE FROM calls WHERE started_at < ?", (cutoff,)).rowcount
            # Events of no call (written for an id that never started) age out too.
            conn.execute("DELETE FROM events WHERE at < ?", (cutoff,))
        return deleted

    # --- writes: queued, never blocking -------------------------------------------------

    def _submit(self, op: _Op) -> None:
        with self._state_lock:
            closed = self._closed
            if not closed and len(self._queue) < self._queue_max:
                self._queue.append(op)  # no wake-up: the writer comes when the loop is idle
                return
            if closed:
                self._dropped += 1
                count = self._dropped
            else:
                # The writer takes nothing: memory stays bounded, and the writes already
                # queued keep each call's story whole up to here.
                self._queue_full += 1
                count = self._queue_full
        if closed:
            if count == 1:
                logger.warning(
                    "call log write after close dropped", extra={"event": "calllog_dropped"}
                )
            return
        now = time.monotonic()
        if now - self._full_logged_at >= DROP_LOG_INTERVAL:
            self._full_logged_at = now
            logger.error(
                "call log queue full (the writer takes nothing): writes dropped",
                extra={
                    "event": "calllog_dropped",
                    "reason": "queue_full",
                    "dropped_total": count,
                    "queue_max": self._queue_max,
                },
            )

    def started(self, record: CallRecord) -> None:
        ended_at = end_time(record, self._clock())
        row = (
            record.call_id,
            record.started_at,
            record.route,
            record.action,
            record.outcome,
            record.status,
            record.caller,
            record.called,
            record.rules_version,
            ended_at,
            record.end_reason,
            record.api,
        )
        events = [(record.call_id, e.at, e.kind, dict(e.data)) for e in record.events]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_CALL, row)
            conn.executemany(
                "INSERT INTO events (call_id, at, kind, data) VALUES (?, ?, ?, ?)",
                [(c, at, kind, encode_data(data)) for c, at, kind, data in events],
            )

        self._submit(op)

    def event(self, call_id: str, kind: str, data: Mapping[str, Any] | None = None) -> None:
        at = self._clock()
        copied = dict(data or {})

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO events (call_id, at, kind, data) VALUES (?, ?, ?, ?)",
                (call_id, at, kind, encode_data(copied)),
            )

        self._submit(op)

    def status(self, call_id: str, status: CallStatus) -> None:
        if status == "ended":
            self._end(call_id, None)
            return
        status = checked_status(status)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE calls SET status = ? WHERE call_id = ? AND status != 'ended'",
                (status, call_id),
            )

        self._submit(op)

    def ended(self, call_id: str, reason: str) -> None:
        self._end(call_id, reason)

    def _end(self, call_id: str, reason: str | None) -> None:
        at = self._clock()

        def op(conn: sqlite3.Connection) -> None:
            # The first end wins: its time, and the first reason given.
            changed = conn.execute(
                "UPDATE calls SET status = 'ended', ended_at = coalesce(ended_at, ?), "
                "end_reason = ? WHERE call_id = ? "
                "AND (status != 'ended' OR (end_reason IS NULL AND ? IS NOT NULL))",
                (at, reason, call_id, reason),
            ).rowcount
            if changed:
                conn.execute(
                    "INSERT INTO events (call_id, at, kind, data) VALUES (?, ?, 'ended', ?)",
                    (call_id, at, encode_data(ended_data(reason))),
                )

        self._submit(op)

    def idle(self) -> None:
        """The event loop has nothing in flight: the writer writes what is queued now,
        unless it wrote less than IDLE_GAP ago (it then comes by MAX_DELAY, or at the next
        idle moment after the gap). Called on the loop after every webhook: cheap when
        there is nothing to do, and no wake-up then."""
        if self._queue and time.monotonic() >= self._idle_from and not self._wake.is_set():
            self._wake.set()

    # --- the writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._write_conn
        assert conn is not None
        try:
            self._write_until_stopped(conn)
        except Exception:  # a defect: said here, and close() reports what it left queued
            logger.exception(
                "the call log writer stopped on an error: writes are no longer written",
                extra={"event": "calllog_writer_failed"},
            )
        finally:
            # Here, not in close(): closed under a batch, it could crash the process; and
            # a close() that gave up waiting leaves it to the writer.
            conn.close()

    def _write_until_stopped(self, conn: sqlite3.Connection) -> None:
        next_expiry = time.monotonic() + self._retention_interval
        pause = RETRY_FIRST  # after a failure outside the writes
        while not self._stopping:
            now = time.monotonic()
            wake = min(next_expiry, now + self._max_delay)
            if self._held:
                wake = min(wake, self._retry_at)
            self._wake.wait(max(0.0, wake - now))
            # Cleared before taking the queue: a set() from now on is for what it has not
            # taken, and makes the next wait return at once.
            self._wake.clear()
            self._wakes += 1
            gap_from = self._idle_from
            self._idle_from = _NEVER  # an idle loop does not call it back while it writes
            took = False
            try:
                took = self._write_queued(conn)
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + self._retention_interval
                    self._expire_logged(conn)
            except Exception:
                # A defect: the writer goes on (what it took is held, _batch), after a
                # doubling pause, so that it neither stops writing nor spins.
                logger.exception(
                    "the call log writer failed: it goes on after a pause",
                    extra={"event": "calllog_writer_failed", "pause": pause},
                )
                self._wake.wait(pause)
                pause = min(RETRY_MAX, pause * 2)
            else:
                pause = RETRY_FIRST
                if not self._held:
                    self._caught_up_at = time.monotonic()
            self._idle_from = time.monotonic() + self._idle_gap if took else gap_from
        # Anything that slipped in after the stop marker (nothing should: close() orders it).
        leftovers = self._take_queued()
        if leftovers:
            self._hold(leftovers) if self._held else self._apply(conn, leftovers)
        if self._held:
            self._replay(conn)
        if self._held:
            self._lost["shutdown"] += len(self._held)
            logger.error(
                "call log closed with writes the disk did not take: dropped",
                extra={"event": "calllog_dropped", "dropped": len(self._held)},
            )
            self._held.clear()

    def _expire_logged(self, conn: sqlite3.Connection) -> None:
        try:
            deleted = self._expire(conn)
        except sqlite3.Error as exc:
            logger.error(
                "call log retention failed",
                extra={"event": "calllog_write_failed", "error": str(exc)},
            )
        else:
            if deleted:
                logger.info(
                    "expired calls deleted", extra={"event": "calllog_expired", "calls": deleted}
                )

    def _write_queued(self, conn: sqlite3.Connection) -> bool:
        """What is queued now, written in order (MAX_BATCH operations a transaction), the
        reads that waited for it let go; what comes meanwhile waits for the next wake-up.
        Sets _stopping at the stop marker; returns whether anything was taken."""
        ops: list[_Op] = []
        barriers: list[threading.Event] = []
        taken = len(self._queue)
        try:
            for _ in range(taken):
                item = self._queue.popleft()
                if item is None:
                    self._stopping = True  # the last: close() queues nothing after it
                    break
                if isinstance(item, threading.Event):
                    barriers.append(item)
                    continue
                ops.append(item)
                if len(ops) >= MAX_BATCH:
                    self._batch(conn, ops, stop=False)
                    ops = []
                    self._release(barriers)
            self._batch(conn, ops, self._stopping)
        finally:
            self._release(barriers)  # also after a failure: the reads go on (held writes too)
        return taken > 0

    def _batch(self, conn: sqlite3.Connection, ops: list[_Op], stop: bool) -> None:
        if self._held:
            self._hold(ops)  # after the held ones: a call's writes keep their order
            if stop or time.monotonic() >= self._retry_at:
                self._replay(conn)
        elif ops:
            try:
                self._apply(conn, ops)
            except Exception:
                # A defect past the writes (they catch what the connection raises): kept,
                # written twice at worst rather than lost.
                self._hold(ops)
                raise

    @staticmethod
    def _release(barriers: list[threading.Event]) -> None:
        for barrier in barriers:
            barrier.set()
        barriers.clear()

    def _apply(self, conn: sqlite3.Connection, ops: list[_Op]) -> None:
        """Write them; a refusal of the disk (full, I/O error) holds the operations from
        there on, to be tried again (_replay)."""
        written, refusal = self._write(conn, ops)
        if refusal is not None:
            self._hold(ops[written:])
            self._refused(refusal)

    def _write(self, conn: sqlite3.Connection, ops: Sequence[_Op]) -> tuple[int, Exception | None]:
        """One transaction; if it fails for its data, one per operation, so that a bad one
        (data that cannot be stored) loses only itself. Stops at any other failure (the
        disk refusing, a damaged file, a defect): returns how many operations, from the
        first, are done with (written or rejected), and that failure if there was one."""
        try:
            with conn:
                for op in ops:
                    op(conn)
            return len(ops), None
        except _DATA_ERRORS:
            pass  # one of them cannot be stored: found below
        except Exception as exc:
            return 0, exc
        for i, op in enumerate(ops):
            try:
                with conn:
                    op(conn)
            except _DATA_ERRORS as exc:
                self._reject(exc)
            except Exception as exc:
                return i, exc
        return len(ops), None

    def _hold(self, ops: list[_Op]) -> None:
        self._held.extend(ops)
        over = len(self._held) - HELD_MAX
        if over > 0:
            for _ in range(over):
                self._held.popleft()  # the oldest: the newest calls matter most now
            self._lost["queue_full"] += over

    def _refused(self, exc: Exception) -> None:
        first = self._retry_at == 0.0
        self._retry_at = time.monotonic() + self._retry_pause
        self._retry_pause = min(RETRY_MAX, self._retry_pause * 2)
        if first:
            # The disk's refusals are expected (full, locked); anything else is a damaged
            # file or a defect, and its traceback says which.
            expected = isinstance(exc, sqlite3.OperationalError)
            logger.error(
                "call log writes refused by the disk: held in memory and tried again"
                if expected
                else "call log writes failed: held in memory and tried again",
                exc_info=None if expected else exc,
                extra={
                    "event": "calllog_write_failed" if expected else "calllog_writer_failed",
                    "error": str(exc),
                    "path": str(self.path),
                    "held": len(self._held),
                },
            )

    def _replay(self, conn: sqlite3.Connection) -> None:
        """Try the held writes again, oldest first, a batch at a time; each leaves the
        front of the queue once written (or refused for its data), not before."""
        replayed = 0
        while self._held:
            batch = list(itertools.islice(self._held, MAX_BATCH))
            written, refusal = self._write(conn, batch)
            for _ in range(written):
                self._held.popleft()
            replayed += written
            if refusal is not None:
                self._refused(refusal)
                return
        self._retry_at, self._retry_pause = 0.0, RETRY_FIRST
        logger.warning(
            "call log writes taken again by the disk",
            extra={
                "event": "calllog_recovered_writes",
                "written": replayed,
                "dropped": self._lost["queue_full"],
            },
        )

    def _reject(self, exc: Exception) -> None:
        self._lost["rejected"] += 1
        logger.error(
            "call log write failed",
            extra={"event": "calllog_write_failed", "error": str(exc), "path": str(self.path)},
        )

    def backlog(self) -> Backlog:
        # Queued too: behind a writer that takes nothing, they are what waits.
        waiting = len(self._queue) + len(self._held)
        dropped = dict(self._lost)
        dropped["queue_full"] += self._queue_full
        writer = self._writer
        stopped = writer is not None and not writer.is_alive() and not self._closed
        stalled_for = time.monotonic() - self._caught_up_at if waiting else 0.0
        stalled = stalled_for >= calllog.STALLED_AFTER
        return Backlog(
            queued=waiting,
            dropped=dropped,
            available=not (self._held or stopped or stalled),
            stalled_for=stalled_for,
        )

    # --- reads: in worker threads -------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """This thread's reader connection, opened at its first read."""
        reader = self._thread_reader()
        if reader.conn is None:
            conn = self._connect()
            self._bound_cache(conn, READER_CACHE_KIB)
            conn.isolation_level = None  # explicit BEGIN: one snapshot per read
            reader.conn = conn  # a read's (busy): close() leaves it alone
        return reader.conn

    def _thread_reader(self) -> _Reader:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = _Reader()
            with self._state_lock:
                self._readers.append(reader)
        return reader

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """One read on this thread's connection, once the writes queued before it are
        committed (read-your-writes). close() closes no connection a read is using: it
        waits for the read, or leaves the connection to it (closed here, at its end)."""
        reader = self._thread_reader()
        barrier = threading.Event()
        with self._state_lock:
            if self._closed:
                raise CallLogClosed("the call log is closed")
            if not self._opened:
                raise CallLogError("the call log is not open")
            reader.busy = True
            self._reads += 1
            self._queue.append(barrier)
        self._wake.set()
        try:
            self._catch_up(barrier)
            yield self._reader()
        finally:
            self._done_reading(reader)

    def _catch_up(self, barrier: threading.Event) -> None:
        if not barrier.wait(BARRIER_TIMEOUT):
            logger.warning(
                "call log read did not wait for pending writes (writer busy)",
                extra={"event": "calllog_slow"},
            )

    def _done_reading(self, reader: _Reader) -> None:
        with self._reads_done:
            reader.busy = False
            self._reads -= 1
            self._reads_done.notify_all()
            orphan = None
            if self._readers_released:
                # close() gave up waiting for this read and closed the idle connections.
                orphan, reader.conn = reader.conn, None
        if orphan is not None:
            orphan.close()

    async def get(self, call_id: str) -> CallRecord | None:
        return await asyncio.to_thread(self._get, call_id)

    def _get(self, call_id: str) -> CallRecord | None:
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                row = conn.execute(_SELECT_CALLS + "WHERE call_id = ?", (call_id,)).fetchone()
                if row is None:
                    return None
                events = conn.execute(
                    "SELECT at, kind, data FROM events WHERE call_id = ? ORDER BY at, id",
                    (call_id,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
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
        return await asyncio.to_thread(self._recent, status, route, since, limit, api)

    def _recent(
        self,
        status: CallStatus | None,
        route: str | None,
        since: float | None,
        limit: int,
        api: CallApi | None,
    ) -> list[CallRecord]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if route is not None:
            where.append("route = ?")
            args.append(route)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        if api is not None:
            where.append("api = ?")
            args.append(api)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._reading() as conn:
            rows = conn.execute(
                _SELECT_CALLS + clause + "ORDER BY started_at DESC, call_id LIMIT ?",
                (*args, max(0, limit)),
            ).fetchall()
        return [record_from_row(row) for row in rows]
