"""Exactly-once claims and rate limits on one SQLite file: the default, restart-safe state.

Every process on the data directory (a restart, `serve --workers N`, a second container on
the same volume during a deploy) opens the same file, so what one process claimed, another
sees, and a process killed mid-call leaves its claims for the next one to find.

Writes are batched on the event loop: an operation is queued and awaited; every operation
queued during one round of the loop runs in one short `BEGIN IMMEDIATE` transaction (one
commit), on the loop's thread. That costs less than a writer thread, whose every hand-off
takes the GIL from the event loop (measured: about 150 us of CPU a call with a thread,
about 100 us on the loop, at 32 calls in flight). The loop never sleeps on a lock: the
connection's busy timeout is 0, and a database another process is writing is tried again
after a pause (1 to 50 ms) until the callers' deadlines. WAL mode with synchronous=NORMAL:
a commit survives the process being killed, not necessarily a power cut of its last
moments; the loop's connection never checkpoints (the fsync is off the loop).

A claim in flight lives while its process does: each process keeps one row in `owners`
(its heartbeat), renewed every third of the lease by a maintenance thread with a connection
of its own, and a claim is held while its own lease (set when it was taken) or its owner's
heartbeat runs. Renewing one row per process, not every claim row in flight, costs the
same at any load (a per-claim renewal looked claims up by id: a scan of the whole table per
claim, every few seconds). The same thread checkpoints the WAL and deletes what expired
(claims past the horizon, rate-limit counts, heartbeats of processes gone). Times are the
host's wall clock (time.time()), shared by every process on it.

A call costs two transactions: the claim with what the router decided it does next
(`claim_acting`: the dialog taken, `acting` written; one read and writes of its keys) and
`finish` (one update). A key freed after a retryable failure whose request may have
taken effect stays as a `free` row carrying the `uncertain` flag, so the next claim reads
it with everything else in one statement.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import mmap
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from app.rules import RateLimit
from app.state.claims import (
    IN_PROGRESS,
    MAX_POLL,
    MIN_POLL,
    Answer,
    ClaimLost,
    Plan,
    StateUnavailable,
    Ticket,
    new_claim_id,
    new_owner_id,
    wait_for_answer,
)
from app.state.ratelimit import Twin

logger = logging.getLogger("switchboard.state")

T = TypeVar("T")
Clock = Callable[[], float]
_Op = Callable[[sqlite3.Connection], Any]

SCHEMA_VERSION: Final = 1
MAX_BATCH: Final = 500
SWEEP_INTERVAL: Final = 60.0
SWEEP_CHUNK: Final = 5000
CLOSE_TIMEOUT: Final = 10.0
LAST_WRITE_WAIT_MS: Final = 2000
"""How long stop()'s last write waits for another process's lock."""
MAX_LATE: Final = 10_000
"""Claims' last writes kept for the maintenance thread at most (the oldest given up)."""
HANDOVER_POLL: Final = 0.1
"""How often stop(), waiting for the loop to hand the connection over, checks that it
still runs (one that stopped never will)."""
BUSY_MIN_PAUSE: Final = 0.001
BUSY_MAX_PAUSE: Final = 0.05
MEMORY: Final = ":memory:"
BUSY_TIMEOUT_MS: Final = 10_000
WAL_RESTART_FRAMES: Final = 16_384
"""WAL frames (64 MB at 4 KB pages, ~1,500 calls at ~11 pages written a call) past which
the maintenance thread has the next write start the WAL over (a RESTART checkpoint): the
WAL file and its -shm index (32 KB mapped per 4,096 frames) stay bounded under load that
never pauses (~100-130 MB and 256 KB at saturation, in bench/e2e's memory phase)."""
CACHE_KIB: Final = 2000
"""Page cache of each connection (SQLite's usual default, set so no build's default decides):
the loop's connection refills it after every commit of another connection (the heartbeat,
every third of the lease), to the full 2 MB at ~90% hits in bench/e2e's memory phase."""
RESTART_WAIT_MS: Final = 20
"""How long that checkpoint waits for the write lock and for readers to leave the WAL
(tried again at the next tick)."""
READ_AHEAD_BYTES: Final = 4 * 2**20
"""How much of the WAL past the loop's next write is asked into the page cache, asked
again once half of it is written (2 MB ahead at least: ~200 ms of writes at 200 calls/s,
~70 ms at saturation, time for the disk to answer before the loop gets there)."""
WAL_HEADER_BYTES: Final = 32
FRAME_HEADER_BYTES: Final = 24
_MX_FRAME: Final = struct.Struct("=I")
"""mxFrame, at offset 16 of the WAL-index header at the start of the -shm file (native
byte order; sqlite.org/walformat.html): the frames in the WAL, where the next write goes."""
_fadvise = getattr(os, "posix_fadvise", None)  # not on macOS or Windows

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS claims (
    key      TEXT PRIMARY KEY,
    claim_id TEXT NOT NULL,
    owner    TEXT NOT NULL,
    phase    TEXT NOT NULL CHECK (phase IN ('claimed', 'acting', 'done', 'free')),
    lease    REAL NOT NULL,
    context  TEXT,
    status   INTEGER,
    body     TEXT,
    uncertain INTEGER NOT NULL DEFAULT 0,
    expires  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires);
CREATE TABLE IF NOT EXISTS rate_hits (
    key     TEXT PRIMARY KEY,
    hits    TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_hits_by_expiry ON rate_hits (expires);
CREATE TABLE IF NOT EXISTS rate_verdicts (
    call_id TEXT PRIMARY KEY,
    allowed INTEGER NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_verdicts_by_expiry ON rate_verdicts (expires);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY,
    beat  REAL NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = {SCHEMA_VERSION};
"""


class StateDatabaseError(Exception):
    """The state database cannot be opened or used (a configuration problem)."""


class LoopNotHandingOver(StateDatabaseError):
    """stop() waited CLOSE_TIMEOUT for the event loop that writes the batches (busy, or
    blocked) to hand the connection over: left open and in its hands, nothing dropped."""


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), default=str, ensure_ascii=False, separators=(",", ":"))


_Result = tuple["asyncio.Future[Any] | None", bool, Any]


class _Job:
    """`op(conn, *args)` in the next batch; `future` gets its result (None: nobody waits),
    by `deadline` (time.monotonic()) while the database is locked."""

    __slots__ = ("args", "deadline", "future", "op")

    def __init__(
        self,
        op: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any] | None,
        deadline: float,
    ) -> None:
        self.op = op
        self.args = args
        self.future = future
        self.deadline = deadline


class SqliteState:
    """The state database of this process: its connection, its batches, its leases."""

    def __init__(
        self,
        path: str | Path,
        *,
        horizon_seconds: float,
        lease_seconds: float = 5.0,
        timeout: float = 0.5,
        clock: Clock = time.time,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.path = str(path)
        self.horizon = float(horizon_seconds)
        self.lease = float(lease_seconds)
        self.timeout = float(timeout)
        self.owner = new_owner_id()
        self.clock = clock
        self._sweep_interval = sweep_interval
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Job] = []
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop that writes the batches (of the last one scheduled)."""
        self._busy_since: float | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._ahead: _WalReadAhead | None = None
        self._late: list[_Job] = []
        """Claims' last writes that did not land in time (see later()); under _lock."""

    # --- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        """Blocking (disk I/O): from async code, in a thread. Idempotent."""
        with self._lock:
            if self._conn is not None:
                return
            try:
                if self.path != MEMORY:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = self._connect()
                self._prepare(conn)
                self._beat(conn)  # before the first claim: this process is alive
                maintenance = self._connect() if self.path != MEMORY else conn
            except (OSError, sqlite3.Error) as exc:
                raise StateDatabaseError(
                    f"cannot use the state database {self.path}: {exc} "
                    "(SWITCHBOARD_STATE_DB must be a writable path)"
                ) from exc
            # The event loop never sleeps on a lock: a busy database is tried again later
            # (see _flush), and checkpoints (an fsync) are the maintenance thread's.
            conn.execute("PRAGMA busy_timeout = 0")
            if self.path != MEMORY:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
                self._ahead = _WalReadAhead.open(self.path, conn)
            self._conn = conn
            self._stopping.clear()
            self._maintenance = threading.Thread(
                target=self._maintain, args=(maintenance,), name="switchboard-state", daemon=True
            )
            self._maintenance.start()
        logger.info(
            "state database opened",
            extra={"event": "state_opened", "path": self.path, "store": "sqlite"},
        )

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: opened in a worker thread, then used by one thread only.
        conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        conn.isolation_level = None  # transactions are explicit
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # KiB; bounds this connection
        # Per connection, so the maintenance thread's too: at FULL its heartbeat's commit
        # fsynced while holding the write lock, and the loop's writes waited 10-40 ms.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this Switchboard's ({SCHEMA_VERSION})"
            )
        if self.path != MEMORY:
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal_mode is {mode})")
        conn.executescript(_SCHEMA)

    def stop(self) -> None:
        """Blocking; from any thread. The event loop that writes the batches hands the
        connection over first (between two of its callbacks: no batch is in its
        transaction then, and none starts after), then what was still queued is written
        here, and its callers get their results or StateUnavailable. Closing it under the
        loop's batch failed its COMMIT, and under one of its statements crashed the
        process (Python's sqlite3 reads the connection that close() has just cleared)."""
        with self._lock:
            if self._conn is None or self._stopping.is_set():
                return  # not started, or another stop() is closing it
            self._stopping.set()
            maintenance, self._maintenance = self._maintenance, None
        if maintenance is not None:
            maintenance.join(CLOSE_TIMEOUT)
        try:
            conn, jobs = self._on_loop(self._detach)
        except LoopNotHandingOver:
            self._stopping.clear()  # a later stop() tries again
            raise
        if conn is None:
            return
        try:
            self._write_last(conn, jobs)
        finally:
            conn.close()
            ahead, self._ahead = self._ahead, None
            if ahead is not None:
                ahead.close()

    def _detach(self) -> tuple[sqlite3.Connection | None, list[_Job]]:
        """On the batches' loop: the connection and what is queued, taken from them. An
        operation after this is refused (StateUnavailable), and no batch starts."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # a locked database's next try (_busy)
            self._flush_handle = None
        with self._lock:
            conn, self._conn = self._conn, None
        jobs, self._pending = self._pending, []
        return conn, jobs

    def _write_last(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """What was queued at the stop, written (waiting a little for another process's
        lock), its results given to the callers still waiting; a claim granted to one
        that left is released, as _flush does."""
        if not jobs:
            return
        with contextlib.suppress(sqlite3.Error):
            conn.execute(f"PRAGMA busy_timeout = {LAST_WRITE_WAIT_MS}")
        results = self._transaction(conn, jobs)
        if results is None:  # rolled back: each one alone
            results = self._each_alone(conn, jobs)
        try:
            gone = self._on_loop(functools.partial(_deliver, results))
        except LoopNotHandingOver:
            # Left for the loop to deliver when it runs again (the callers must not wait
            # forever); a claim granted to one gone by then runs out with its lease.
            logger.error(
                "results of the last write not delivered in time: the event loop is blocked",
                extra={"event": "state_results_late", "operations": len(jobs)},
            )
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop = self._loop
                if loop is not None:
                    loop.call_soon_threadsafe(_deliver, results)
            return
        if gone:
            released = self._transaction(conn, gone)
            if released is None or not all(ok for _, ok, _ in released):
                logger.error(
                    "claims of callers gone not released at the stop",
                    extra={"event": "state_release_failed", "claims": len(gone)},
                )
        unwritten = sum(1 for future, ok, _ in results if future is None and not ok)
        if unwritten:
            logger.error(
                "releases of claims not written at the stop: left to their leases",
                extra={"event": "state_release_failed", "claims": unwritten},
            )

    def _on_loop(self, task: Callable[[], T]) -> T:
        """`task()` where no batch can be in the middle of its transaction: on the event
        loop that writes them (as one of its callbacks), or here when that loop runs
        nothing now (none yet, stopped, closed) or this is its thread. LoopNotHandingOver
        when a loop that runs does not get to it in CLOSE_TIMEOUT (then it never does)."""
        loop = self._loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return task()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(_fulfil, done, task)
        except RuntimeError:  # closed meanwhile: it runs nothing any more
            return task()
        give_up = time.monotonic() + CLOSE_TIMEOUT
        while True:
            try:
                return done.result(HANDOVER_POLL)
            except concurrent.futures.TimeoutError:
                # A loop that stopped before our turn never runs it: here, then (once).
                if not loop.is_running() and done.cancel():
                    return task()
                if time.monotonic() > give_up and done.cancel():
                    raise LoopNotHandingOver(
                        f"the event loop did not hand the state database over in "
                        f"{CLOSE_TIMEOUT} s: left open"
                    ) from None

    @property
    def running(self) -> bool:
        return self._conn is not None

    # --- operations: batched on the event loop ----------------------------------------

    async def run(self, op: Callable[..., T], *args: Any, deadline: float | None) -> T:
        """Run `op(conn, *args)` in the next transaction. Every operation queued while the
        event loop runs one round goes into one transaction (one commit). StateUnavailable
        when the database stays locked by another process longer than the store timeout,
        or past `deadline` (monotonic; without one, ten store timeouts). The store timeout
        counts the lock only, not the time the operation waits for a busy event loop: an
        overloaded process is slow, not without its state.

        No timer per operation: an operation waits only for the next batch, unless the
        database is locked, and the retries of a locked database (_flush) fail the
        operations whose deadline passed (a timer per operation was a tenth of the
        store's cost on the loop)."""
        if self._conn is None:
            raise StateUnavailable("the state database is not open")
        now = time.monotonic()
        if deadline is None:
            deadline = now + self.timeout * 10
        elif deadline <= now:
            raise StateUnavailable("no time left for the state store")  # not written late
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Job(op, args, future, deadline))
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
            self._loop = loop  # the loop stop() asks for the connection
        return await future

    def _flush(self) -> None:
        self._flush_handle = None
        conn = self._conn
        jobs, self._pending = self._pending, []
        if conn is None:
            _refuse(jobs)
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            # Another process (or our maintenance thread) writes: try again shortly.
            self._busy(jobs)
            return
        self._busy_since = None
        results = self._in_transaction(conn, jobs)
        if results is None:  # rolled back: each one alone
            results = self._each_alone(conn, jobs)
        if self._ahead is not None:
            self._ahead.written()
        for future, ok, value in results:
            if future is None:
                continue
            if future.done():
                # The caller gave up (timeout): a claim granted after that is released.
                if ok and _granted(value):
                    self.abandon(value[1], value[2], orphan=value[3] == "acting")
            elif ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _busy(self, jobs: list[_Job]) -> None:
        """The database is locked: the jobs wait for the next try, except those whose
        deadline passed (StateUnavailable, dropped); all fail once it stayed locked over
        the store timeout."""
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        elif now - self._busy_since > self.timeout:
            self._busy_since = None
            jobs, self._pending = jobs + self._pending, []
            error = StateUnavailable(f"the state database stayed locked over {self.timeout} s")
            for job in jobs:
                if job.future is not None and not job.future.done():
                    job.future.set_exception(error)
            return
        waiting: list[_Job] = []
        for job in jobs:
            if job.future is not None and job.future.done():
                continue  # the caller is gone (cancelled)
            if job.future is not None and job.deadline <= now:
                job.future.set_exception(
                    StateUnavailable("the state database did not answer in time")
                )
                continue
            waiting.append(job)
        self._pending[:0] = waiting
        if not self._pending or self._flush_handle is not None:
            return
        pause = min(BUSY_MAX_PAUSE, max(BUSY_MIN_PAUSE, (now - self._busy_since) / 4))
        first = min((job.deadline for job in self._pending if job.future is not None), default=None)
        if first is not None:
            pause = max(0.0, min(pause, first - now))
        self._flush_handle = asyncio.get_running_loop().call_later(pause, self._flush)

    def _each_alone(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[_Result]:
        """The jobs of a batch rolled back, each in a transaction of its own."""
        results: list[_Result] = []
        for job in jobs:
            alone = self._transaction(conn, [job])
            results += alone or [(job.future, False, StateUnavailable("state database error"))]
        return results

    def _transaction(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[_Result] | None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = StateUnavailable(f"the state database is busy: {exc}")
            return [(job.future, False, error) for job in jobs]
        return self._in_transaction(conn, jobs)

    def _in_transaction(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[_Result] | None:
        """Run the jobs and commit: their results, or None when the batch had to be rolled
        back. An operation leaves nothing half-done when it raises ClaimLost (it undoes its
        own update first); anything else unexpected rolls the whole batch back."""
        results: list[_Result] = []
        try:
            for job in jobs:
                try:
                    results.append((job.future, True, job.op(conn, *job.args)))
                except (ClaimLost, StateUnavailable) as exc:
                    results.append((job.future, False, exc))
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            logger.error(
                "state database write failed",
                extra={"event": "state_write_failed", "error": str(exc)},
            )
            if len(jobs) == 1:
                if isinstance(exc, sqlite3.Error):
                    exc = StateUnavailable(f"state database error: {exc}")
                return [(jobs[0].future, False, exc)]
            return None
        return results

    def abandon(self, claim_id: str, keys: tuple[str, ...], *, orphan: bool = False) -> None:
        """Release a claim nobody waits for any more (in the next batch). `orphan`: it took
        over a dead process's `acting`, the only trace of a request that may have taken
        effect: left for the next claim to take over as that (freed, it was sent again)."""
        self._pending.append(_release(claim_id, keys, orphan=orphan))
        if self._flush_handle is None:
            self._loop = asyncio.get_running_loop()
            self._flush_handle = self._loop.call_soon(self._flush)

    # --- the maintenance thread ---------------------------------------------------------

    def _maintain(self, conn: sqlite3.Connection) -> None:
        """Renews this process's heartbeat (every third of the lease), deletes what
        expired, and checkpoints the WAL: on a connection of its own, off the event loop."""
        tick = min(self.lease / 3, self._sweep_interval)
        next_sweep = time.monotonic()
        while not self._stopping.wait(tick):
            self._guard(conn, self._write_late, "late write")
            self._guard(conn, self._beat, "heartbeat")
            if self.path != MEMORY:
                self._guard(conn, self._checkpoint, "checkpoint")
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self._sweep_interval
                self._guard(conn, self._sweep, "expiry")
        self._guard(conn, self._write_late, "late write")  # before the store closes
        if conn is not self._conn and self.path != MEMORY:
            with contextlib.suppress(sqlite3.Error):
                _checkpoint(conn)
            conn.close()

    def later(self, op: Callable[..., None], *args: Any) -> None:
        """`op(conn, *args)`, a claim's last write that did not land in time (the file
        locked), written by the maintenance thread once the file takes it, at the stop at
        the latest. Left undone, this process's heartbeat held the claim (`acting`) while
        it lived: every redelivery answered 503, then 'uncertain' after a graceful stop."""
        with self._lock:
            self._late.append(_Job(op, args, None, 0.0))
            del self._late[:-MAX_LATE]

    def _write_late(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            jobs, self._late = self._late, []
        if not jobs:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                job.op(conn, *job.args)
            conn.execute("COMMIT")
        except BaseException:
            with self._lock:
                self._late[:0] = jobs  # tried again at the next tick
            raise
        logger.info(
            "claims finished late",
            extra={"event": "state_finished_late", "store": "sqlite", "claims": len(jobs)},
        )

    def _guard(
        self, conn: sqlite3.Connection, task: Callable[[sqlite3.Connection], None], what: str
    ) -> None:
        if self.path == MEMORY:
            return  # one connection, the event loop's: nothing to renew or share
        try:
            task(conn)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            logger.warning(
                f"state database {what} failed",
                extra={"event": "state_maintenance_failed", "error": str(exc)},
            )

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        ahead = self._ahead
        if _checkpoint(conn) and ahead is not None:
            ahead.from_start()  # for the next write, which starts the WAL over

    def _beat(self, conn: sqlite3.Connection) -> None:
        """This process lives: its claims in flight hold for another lease. A replace, not
        an update: the row may have been swept while this process stalled."""
        conn.execute(
            "INSERT OR REPLACE INTO owners (owner, beat) VALUES (?, ?)",
            (self.owner, self.clock() + self.lease),
        )

    def _sweep(self, conn: sqlite3.Connection) -> None:
        now = self.clock()
        for statement in _SWEEPS:
            while not self._stopping.is_set():
                conn.execute("BEGIN IMMEDIATE")
                deleted = conn.execute(statement, (now, SWEEP_CHUNK)).rowcount
                conn.execute("COMMIT")
                if deleted < SWEEP_CHUNK:
                    break


def _granted(value: Any) -> bool:
    """`value` is a claim's ticket (what _claim and _claim_acting return for one)."""
    return isinstance(value, tuple) and bool(value) and value[0] == "ticket"


def _release(claim_id: str, keys: tuple[str, ...], *, orphan: bool) -> _Job:
    """The job that releases a claim nobody waits for (see SqliteState.abandon)."""
    if orphan:
        return _Job(_orphan, (keys, claim_id), None, 0.0)
    return _Job(_free, (keys, claim_id, False), None, 0.0)


def _deliver(results: list[_Result]) -> list[_Job]:
    """On the callers' loop: each result to its caller; the releases of the claims granted
    to callers that left (nobody will finish them)."""
    gone: list[_Job] = []
    for future, ok, value in results:
        if future is None:
            continue
        try:
            if future.done():
                raise RuntimeError("the caller is gone")
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        except RuntimeError:  # the caller gave up, or its loop is closed
            if ok and _granted(value):
                # Left, a claim_acting's `acting` (nothing sent) made the next delivery
                # answer 'uncertain', the call lost.
                gone.append(_release(value[1], value[2], orphan=value[3] == "acting"))
    return gone


def _refuse(jobs: list[_Job]) -> None:
    """Operations queued for a connection that is closed: their callers are told; a release
    (nobody waits for it) is logged, its claim left to its lease."""
    closed = StateUnavailable("the state database is closed")
    for job in jobs:
        if job.future is not None and not job.future.done():
            job.future.set_exception(closed)
    releases = sum(1 for job in jobs if job.future is None)
    if releases:
        logger.error(
            "releases of claims not written: the state database is closed",
            extra={"event": "state_release_failed", "claims": releases},
        )


def _fulfil(done: concurrent.futures.Future[T], task: Callable[[], T]) -> None:
    if not done.set_running_or_notify_cancel():
        return  # given up on: its caller ran the task itself
    try:
        done.set_result(task())
    except BaseException as exc:  # for the thread that waits
        done.set_exception(exc)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """True when every frame was copied: the next write starts the WAL over."""
    # PASSIVE: copies what it can without waiting for (or blocking) writers.
    _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames <= WAL_RESTART_FRAMES:
        return bool(frames) and copied == frames
    # A write starts the WAL over only if every frame had been copied when it began; under
    # load that never pauses the loop has always committed again by then, and the WAL (and
    # its -shm index, mapped in memory) grew ~50 KB a call without end. RESTART holds the
    # write lock while it copies what the pass above left (its few ms of commits) and
    # until no reader is on the WAL: the next write starts it over. A short wait: a reader
    # that stays (another process) is not waited for with the loop's writes stalled.
    conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
    try:
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return not busy and copied == frames


class _WalReadAhead:
    """Has the pages of the WAL that the event loop writes next read into the page cache
    ahead of it, without waiting for them.

    A WAL frame (24 bytes, then a page) is not page-aligned: each write covers part of a
    file page, and a page that is not cached is read from the disk first, by the writer,
    inside its commit, on the loop's thread. Once the WAL starts over (see _checkpoint),
    the loop writes over the frames of the last round, whose pages the checkpoint's fsync
    left clean for the kernel to let go meanwhile (memory pressure; this VM's DAMON pageout
    drops clean file pages whatever their last use). Measured at 200 calls/s: 50-110
    such reads per 20 s on the loop, up to 14 ms each (perf: sched_switch stacks in
    ext4_block_write_begin, pages of state.db-wal, each evicted by kdamond). Asked for
    here (POSIX_FADV_WILLNEED starts the reads and returns), they are in the cache when
    the loop gets there; pages still cached cost a lookup. Asked again only when the next
    write nears the end of what was asked, or went back (the WAL started over)."""

    def __init__(self, wal: int, index: mmap.mmap, frame_bytes: int) -> None:
        self._wal = wal
        self._index = index
        self._frame_bytes = frame_bytes
        self._start = 0
        self._end = 0
        """The part of the WAL file (bytes) last asked for."""

    @classmethod
    def open(cls, path: str, conn: sqlite3.Connection) -> _WalReadAhead | None:
        """For the database at `path` in WAL mode (open on `conn`: its -wal and -shm
        files exist); None where the OS cannot read ahead or the files are not there."""
        if _fadvise is None:
            return None
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        try:
            wal = os.open(f"{path}-wal", os.O_RDONLY)
        except OSError:
            return None
        try:
            with open(f"{path}-shm", "rb") as shm:
                index = mmap.mmap(shm.fileno(), _MX_FRAME.size + 16, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            os.close(wal)
            return None
        return cls(wal, index, page_size + FRAME_HEADER_BYTES)

    def from_start(self) -> None:
        """The WAL's first pages, for a write that starts it over (from another thread:
        the state it keeps is the loop's; asked again by the loop after that write)."""
        assert _fadvise is not None
        with contextlib.suppress(OSError):
            _fadvise(self._wal, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)

    def written(self) -> None:
        """After a commit: ask for what follows the next write if not asked for yet."""
        assert _fadvise is not None
        (frames,) = _MX_FRAME.unpack_from(self._index, 16)
        at = WAL_HEADER_BYTES + frames * self._frame_bytes if frames else 0
        if self._start <= at <= self._end - READ_AHEAD_BYTES // 2:
            return
        self._start, self._end = at, at + READ_AHEAD_BYTES
        with contextlib.suppress(OSError):
            _fadvise(self._wal, at, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        self._index.close()
        os.close(self._wal)


_SWEEPS: Final = (
    "DELETE FROM claims WHERE key IN (SELECT key FROM claims WHERE expires <= ? LIMIT ?)",
    "DELETE FROM rate_hits WHERE key IN (SELECT key FROM rate_hits WHERE expires <= ? LIMIT ?)",
    "DELETE FROM rate_verdicts WHERE call_id IN "
    "(SELECT call_id FROM rate_verdicts WHERE expires <= ? LIMIT ?)",
    # A heartbeat run out holds nothing any more (a live process writes its row again).
    "DELETE FROM owners WHERE owner IN (SELECT owner FROM owners WHERE beat <= ? LIMIT ?)",
)
"""Deletions of what expired, in chunks (short transactions: calls are waiting)."""

# --- claims ------------------------------------------------------------------------------

# Statements for 1 to 4 keys (a delivery has 2): only "?" placeholders are formatted in.
_MAX_KEYS: Final = 4


def _per_arity(statement: str) -> dict[int, str]:
    """`statement` for each number of keys: `(?KEYS)` becomes `(?, ?)` for two."""
    return {
        n: statement.replace("(?KEYS)", "(" + ", ".join("?" * n) + ")")
        for n in range(1, _MAX_KEYS + 1)
    }


_SELECT: Final = _per_arity(
    # A claim holds while its own lease or its owner's heartbeat runs.
    "SELECT c.key, c.claim_id, c.phase, max(c.lease, coalesce(o.beat, 0)), c.status, c.body, "
    "c.context, c.uncertain FROM claims c LEFT JOIN owners o ON o.owner = c.owner "
    "WHERE c.key IN (?KEYS) AND c.expires > ?"
)
_ACTING: Final = _per_arity(
    "UPDATE claims SET phase = 'acting', context = ? "
    "WHERE claim_id = ? AND phase = 'claimed' AND key IN (?KEYS)"
)
_UNDO_ACTING: Final = _per_arity(
    "UPDATE claims SET phase = 'claimed' WHERE claim_id = ? AND phase = 'acting' AND key IN (?KEYS)"
)
_DONE: Final = _per_arity(
    # The expiry set by the claim stands (the horizon from the first delivery, seconds
    # earlier): not moving it spares an index update per key.
    "UPDATE claims SET phase = 'done', status = ?, body = ?, context = NULL "
    "WHERE claim_id = ? AND key IN (?KEYS)"
)
_FREE: Final = _per_arity(
    "UPDATE claims SET phase = 'free', context = NULL, lease = 0, uncertain = 1, "
    "expires = ? WHERE claim_id = ? AND key IN (?KEYS)"
)
_DELETE: Final = _per_arity("DELETE FROM claims WHERE claim_id = ? AND key IN (?KEYS)")
_ORPHAN: Final = _per_arity(
    # No lease, no live owner: the next claim takes it over, in phase `acting`.
    "UPDATE claims SET owner = '', lease = 0 WHERE claim_id = ? AND key IN (?KEYS)"
)
_INSERT: Final = (
    "INSERT OR REPLACE INTO claims "
    "(key, claim_id, owner, phase, lease, context, uncertain, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


_KEEP: Final = (
    "INSERT OR REPLACE INTO claims "
    "(key, claim_id, owner, phase, lease, status, body, uncertain, expires) "
    "VALUES (?, ?, ?, 'done', 0, ?, ?, 0, ?)"
)


def _check_keys(keys: tuple[str, ...]) -> None:
    if not 1 <= len(keys) <= _MAX_KEYS:
        raise ValueError(f"a claim has 1 to {_MAX_KEYS} keys, not {len(keys)}")


def _free(
    conn: sqlite3.Connection,
    keys: tuple[str, ...],
    claim_id: str,
    uncertain: bool,
    expires: float = 0.0,
) -> None:
    """Free the keys: deleted, or kept as `free` rows carrying the uncertain flag."""
    if uncertain:
        conn.execute(_FREE[len(keys)], (expires, claim_id, *keys))
    else:
        conn.execute(_DELETE[len(keys)], (claim_id, *keys))


def _orphan(conn: sqlite3.Connection, keys: tuple[str, ...], claim_id: str) -> None:
    """Leave the keys as a dead process's claim: taken over by the next claim."""
    conn.execute(_ORPHAN[len(keys)], (claim_id, *keys))


class SqliteClaimStore:
    """ClaimStore on a SqliteState (see app.state.claims for the protocol)."""

    def __init__(self, state: SqliteState) -> None:
        self._state = state
        self._local: dict[str, asyncio.Future[Answer]] = {}

    @property
    def state(self) -> SqliteState:
        return self._state

    async def open(self) -> None:
        await asyncio.to_thread(self._state.start)

    async def close(self) -> None:
        await asyncio.to_thread(self._state.stop)

    async def ping(self) -> None:
        if not self._state.running:
            raise StateUnavailable("the state database is not open")

    async def claim(self, keys: tuple[str, ...], deadline: float) -> Ticket | Answer:
        return await self._claim(keys, deadline, None)

    async def claim_acting(
        self, keys: tuple[str, ...], deadline: float, plan: Plan
    ) -> Ticket | Answer:
        """The claim, the dialog taken and `acting` in one transaction (one commit, one
        round of the event loop): three separate ones cost a commit and a wait for the
        next batch each, before the request could leave."""
        return await self._claim(keys, deadline, plan)

    async def _claim(
        self, keys: tuple[str, ...], deadline: float, plan: Plan | None
    ) -> Ticket | Answer:
        _check_keys(keys)
        # The first try raises StateUnavailable; a key held by a live claim is tried
        # again, backing off, until the deadline (IN_PROGRESS). No closure per call.
        got = await self._attempt(keys, deadline, plan)
        pause = MIN_POLL
        while got is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return IN_PROGRESS
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_POLL)
            try:
                got = await self._attempt(keys, deadline, plan)
            except StateUnavailable:
                return IN_PROGRESS
        return got

    async def _attempt(
        self, keys: tuple[str, ...], deadline: float, plan: Plan | None
    ) -> Ticket | Answer | None:
        state = self._state
        now = state.clock()
        args = (keys, new_claim_id(), state.owner, now, now + state.lease, now + state.horizon)
        if plan is None:
            got = await state.run(_claim, *args, deadline=deadline)
        else:
            context = None if plan.context is None else _dumps(plan.context)
            got = await state.run(
                _claim_acting, *args, plan.api, plan.dialog, context, deadline=deadline
            )
        if got[0] == "ticket":
            _, claim_id, _, phase, context, uncertain = got[:6]
            result: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._local[claim_id] = result
            orphan = json.loads(context) if phase == "acting" else None
            if orphan is not None:
                logger.warning(
                    "claim taken over from a process that died while acting",
                    extra={"event": "claim_orphaned", "keys": list(keys)},
                )
            ticket = Ticket(keys, claim_id, uncertain=uncertain, orphan=orphan, result=result)
            if len(got) > 6:
                ticket.handler, ticket.acting = got[6], got[7]
                ticket.sent = ticket.acting
            return ticket
        if got[0] == "answer":
            return Answer(int(got[1]), json.loads(got[2]))
        # Busy: held by a live claim. One of this process: wait for its answer.
        local = self._local.get(got[1])
        if local is not None:
            return await wait_for_answer(local, deadline, time.monotonic)
        return None

    async def acting(
        self, ticket: Ticket, context: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        keys = ticket.keys
        await self._state.run(
            _acting, keys, ticket.claim_id, _dumps(context), len(keys), deadline=deadline
        )

    async def finish(
        self,
        ticket: Ticket,
        answer: Answer,
        *,
        remember: bool,
        uncertain: bool = False,
        deadline: float | None = None,
    ) -> None:
        state = self._state
        keys, claim_id = ticket.keys, ticket.claim_id
        op: Callable[..., None]
        args: tuple[Any, ...]
        if remember:
            op, args = _done, (keys, claim_id, answer.status_code, _dumps(answer.body))
        else:
            # A key that was marked stays marked until the horizon.
            marked = uncertain or ticket.uncertain
            op, args = _free, (keys, claim_id, marked, state.clock() + state.horizon)
        try:
            await state.run(op, *args, deadline=deadline)
        except StateUnavailable:
            state.later(op, *args)  # not written: by the maintenance thread, off the loop
            raise
        finally:
            local = self._local.pop(claim_id, None)
            if local is not None and not local.done():
                local.set_result(answer)

    async def keep_first(self, key: str, answer: Answer, deadline: float) -> Answer | None:
        """One statement pair in one trip (a claim then a finish took two trips)."""
        state = self._state
        body = _dumps(answer.body)
        pause = MIN_POLL
        first = True
        while True:
            now = state.clock()
            try:
                got = await state.run(
                    _keep_first,
                    key,
                    new_claim_id(),
                    state.owner,
                    now,
                    answer.status_code,
                    body,
                    now + state.horizon,
                    deadline=deadline,
                )
            except StateUnavailable:
                if first:
                    raise
                return None  # the deadline ran out while asking
            if got is not None:
                break
            # A claim holds the key: its answer, or its lease running out, until the deadline.
            first = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_POLL)
        if got[1] is None:
            return answer  # this one was kept
        return Answer(int(got[0]), json.loads(got[1]))


def _acting(
    conn: sqlite3.Connection, keys: tuple[str, ...], claim_id: str, text: str, n: int
) -> None:
    changed = conn.execute(_ACTING[n], (text, claim_id, *keys)).rowcount
    if changed != n:
        conn.execute(_UNDO_ACTING[n], (claim_id, *keys))
        raise ClaimLost("the claim was taken over")


def _done(
    conn: sqlite3.Connection, keys: tuple[str, ...], claim_id: str, status: int, body: str
) -> None:
    conn.execute(_DONE[len(keys)], (status, body, claim_id, *keys))


def _keep_first(
    conn: sqlite3.Connection,
    key: str,
    claim_id: str,
    owner: str,
    now: float,
    status: int,
    body: str,
    expires: float,
) -> tuple[Any, str | None] | None:
    """(status, body) kept before, (status, None) when this one is kept now, None when a
    live claim holds the key (one of a release that claimed, then finished)."""
    row = conn.execute(_SELECT[1], (key, now)).fetchone()
    if row is not None:
        if row[2] == "done":
            return (row[4], row[5])
        if row[2] != "free" and row[3] > now:
            return None
    conn.execute(_KEEP, (key, claim_id, owner, status, body, expires))
    return (status, None)


def _claim(
    conn: sqlite3.Connection,
    keys: tuple[str, ...],
    claim_id: str,
    owner: str,
    now: float,
    lease: float,
    expires: float,
) -> tuple[Any, ...]:
    rows = conn.execute(_SELECT[len(keys)], (*keys, now)).fetchall()
    # (key, claim_id, phase, lease, status, body, context, uncertain), in key order
    rows.sort(key=lambda row: keys.index(row[0]))
    for row in rows:
        if row[2] == "done":
            return ("answer", row[4], row[5])
    for row in rows:
        if row[2] != "free" and row[3] > now:
            return ("busy", row[1])
    # Free, or held by processes that stopped renewing their leases.
    context = next((row[6] for row in rows if row[2] == "acting"), None)
    phase = "acting" if context is not None else "claimed"
    uncertain = any(row[7] for row in rows)
    conn.executemany(
        _INSERT,
        [(key, claim_id, owner, phase, lease, context, int(uncertain), expires) for key in keys],
    )
    return ("ticket", claim_id, keys, phase, context, uncertain)


def _claim_acting(
    conn: sqlite3.Connection,
    keys: tuple[str, ...],
    claim_id: str,
    owner: str,
    now: float,
    lease: float,
    expires: float,
    api: str,
    dialog: str | None,
    context: str | None,
) -> tuple[Any, ...]:
    """_claim, then for a ticket that is not an orphan's: the dialog taken for `api`
    (_keep_first) and, when `api` handles it, `acting` written, all in the caller's
    transaction. A ticket comes with (handler, acting written); handler None: an
    unfinished claim holds the dialog (the router then waits for it, as take() does)."""
    got = _claim(conn, keys, claim_id, owner, now, lease, expires)
    if got[0] != "ticket" or got[3] == "acting":
        return got if got[0] != "ticket" else (*got, None, False)
    handler: str | None = api
    if dialog is not None:
        body = _dumps({"api": api})
        kept = _keep_first(conn, dialog, new_claim_id(), owner, now, 200, body, expires)
        if kept is None:
            handler = None
        elif kept[1] is not None:
            handler = json.loads(kept[1]).get("api")
    acting = False
    if handler == api and context is not None:
        n = len(keys)
        # Always n (the keys were written just above); checked as acting() does.
        acting = conn.execute(_ACTING[n], (context, claim_id, *keys)).rowcount == n
        if not acting:
            conn.execute(_UNDO_ACTING[n], (claim_id, *keys))
    return (*got, handler, acting)


# --- rate limits -------------------------------------------------------------------------


class SqliteRateLimiter:
    """Per-route, per-caller limits counted in the state database (every process on it)."""

    def __init__(self, state: SqliteState) -> None:
        self._state = state

    async def allow(
        self,
        route: str,
        caller: str,
        limit: RateLimit,
        call_id: str = "",
        *,
        deadline: float | None = None,
        twin: Twin | None = None,
    ) -> bool:
        state = self._state
        now = state.clock()
        key = f"{route}\0{caller}"
        horizon = now + state.horizon
        return await state.run(
            lambda conn: _count(conn, key, limit, call_id, now, horizon, twin), deadline=deadline
        )


_VERDICT: Final = "SELECT allowed FROM rate_verdicts WHERE call_id = ? AND expires > ?"
_KEEP_VERDICT: Final = (
    "INSERT OR REPLACE INTO rate_verdicts (call_id, allowed, expires) VALUES (?, ?, ?)"
)


def _count(
    conn: sqlite3.Connection,
    key: str,
    limit: RateLimit,
    call_id: str,
    now: float,
    horizon: float,
    twin: Twin | None = None,
) -> bool:
    if call_id:
        row = conn.execute(_VERDICT, (call_id, now)).fetchone()
        if row is not None:
            return bool(row[0])
    if twin is not None:
        # The verdict the other event of this INVITE left: taken once (app.state.ratelimit).
        row = conn.execute(_VERDICT, (twin.take, now)).fetchone()
        if row is not None:
            conn.execute("DELETE FROM rate_verdicts WHERE call_id = ?", (twin.take,))
            if call_id:
                conn.execute(_KEEP_VERDICT, (call_id, row[0], horizon))
            return bool(row[0])
    row = conn.execute(
        "SELECT hits FROM rate_hits WHERE key = ? AND expires > ?", (key, now)
    ).fetchone()
    hits: list[float] = json.loads(row[0]) if row is not None else []
    hits = hits[-limit.calls :]  # the newest `calls`, oldest first
    over = len(hits) >= limit.calls and now - hits[0] < limit.per_seconds
    hits = [*hits, now][-limit.calls :]
    conn.execute(
        "INSERT OR REPLACE INTO rate_hits (key, hits, expires) VALUES (?, ?, ?)",
        (key, json.dumps(hits), now + limit.per_seconds),
    )
    allowed = 0 if over else 1
    if call_id:
        conn.execute(_KEEP_VERDICT, (call_id, allowed, horizon))
    if twin is not None:
        conn.execute(_KEEP_VERDICT, (twin.leave, allowed, horizon))
    return not over
