"""Exactly-once claims and rate limits on one SQLite file: the default, restart-safe state.

Every process on the data directory (a restart, `--workers N`, a second container on the
same volume during a deploy) opens the same file, so what one process claimed, another
sees. Each process has one connection, owned by one writer thread: the event loop puts an
operation on a queue and awaits a future; the thread runs whatever has queued up in one
short `BEGIN IMMEDIATE` transaction and hands the
results back in one wake-up of the loop. Under load many calls share one commit; a call
alone costs one thread hand-off, not a thread of its own.

WAL mode with synchronous=NORMAL: a commit survives the process being killed (the log is
in the operating system's hands), not necessarily a power cut of the last moments.

Times are the host's wall clock (time.time()), shared by every process on it. The same
thread renews the leases of this process's claims in flight (every third of the lease) and
deletes what expired (claims past the horizon, rate-limit counts).

A call costs the writer four statements: the claim (one read, one write of its keys),
`acting` and `finish` (one update each). A key freed after a retryable failure whose
request may have taken effect stays as a `free` row carrying the `uncertain` flag, so the
next claim reads it with everything else in one statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from app.rules import RateLimit
from app.state.claims import (
    IN_PROGRESS,
    Answer,
    ClaimLost,
    StateUnavailable,
    Ticket,
    new_claim_id,
    new_owner_id,
    poll_until,
    wait_for_answer,
)

logger = logging.getLogger("switchboard.state")

T = TypeVar("T")
Clock = Callable[[], float]
_Op = Callable[[sqlite3.Connection], Any]

SCHEMA_VERSION: Final = 1
MAX_BATCH: Final = 500
SWEEP_INTERVAL: Final = 60.0
SWEEP_CHUNK: Final = 5000
CLOSE_TIMEOUT: Final = 10.0

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
PRAGMA user_version = {SCHEMA_VERSION};
"""


class StateDatabaseError(Exception):
    """The state database cannot be opened or used (a configuration problem)."""


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), default=str, ensure_ascii=False, separators=(",", ":"))


class _Job:
    __slots__ = ("future", "loop", "op")

    def __init__(
        self,
        op: _Op,
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        self.op = op
        self.loop = loop
        self.future = future


_Result = tuple["asyncio.Future[Any] | None", bool, Any]


def _settle(results: list[_Result], state: SqliteState) -> None:
    for future, ok, value in results:
        if future is None:
            continue
        if future.done():
            # The caller gave up (timeout): a claim granted after that is released.
            if ok and isinstance(value, tuple) and value and value[0] == "ticket":
                state.abandon(value[1], value[2])
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SqliteState:
    """The state database of this process: its connection, writer thread and leases."""

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
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._held: set[str] = set()
        """Claim ids of this process in flight: their leases are renewed."""
        self._broken: str | None = None

    # --- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        """Blocking (disk I/O). Idempotent."""
        with self._lock:
            if self._thread is not None:
                return
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=max(self.timeout, 1.0), check_same_thread=False
                )
                conn.isolation_level = None  # transactions are explicit
                self._prepare(conn)
            except (OSError, sqlite3.Error) as exc:
                raise StateDatabaseError(
                    f"cannot use the state database {self.path}: {exc} "
                    "(SWITCHBOARD_STATE_DB must be a writable path)"
                ) from exc
            # Locks wait this long at most in service: a call is waiting for us.
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._conn = conn
            self._thread = threading.Thread(target=self._run, name="switchboard-state", daemon=True)
            self._thread.start()
        logger.info(
            "state database opened",
            extra={"event": "state_opened", "path": self.path, "store": "sqlite"},
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 10000")  # start-up may wait for another process
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this Switchboard's ({SCHEMA_VERSION})"
            )
        if self.path != ":memory:":
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot switch to WAL mode (journal_mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(CLOSE_TIMEOUT)
        if self._conn is not None and not thread.is_alive():
            self._conn.close()
            self._conn = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._broken is None

    # --- operations ------------------------------------------------------------------

    async def run(self, op: Callable[[sqlite3.Connection], T], *, deadline: float | None) -> T:
        """Run `op` in a transaction of the writer thread. StateUnavailable if it cannot
        be done by `deadline` (monotonic) or within the store timeout."""
        if not self.running:
            raise StateUnavailable(self._broken or "the state database is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(op, loop, future))
        budget = self.timeout * 2  # a lock wait (busy_timeout) plus the work itself
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.monotonic()))
        try:
            async with asyncio.timeout(budget):
                return await future
        except TimeoutError:
            raise StateUnavailable("the state database did not answer in time") from None

    def abandon(self, claim_id: str, keys: tuple[str, ...]) -> None:
        """Release a claim nobody waits for any more."""
        self._release(claim_id)
        self._queue.put(_Job(lambda conn: _free(conn, keys, claim_id, False), None, None))

    def hold(self, claim_id: str) -> None:
        with self._lock:
            self._held.add(claim_id)

    def _release(self, claim_id: str) -> None:
        with self._lock:
            self._held.discard(claim_id)

    # --- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        renew_every = self.lease / 3
        next_renew = time.monotonic() + renew_every
        next_sweep = time.monotonic()
        stop = False
        while not stop:
            wait = max(0.0, min(next_renew, next_sweep) - time.monotonic())
            jobs: list[_Job] = []
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                first = _IDLE
            item: _Job | object | None = first
            while True:
                if item is None:
                    stop = True
                    break
                if isinstance(item, _Job):
                    jobs.append(item)
                if len(jobs) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if jobs:
                self._apply(conn, jobs)
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + renew_every
                self._guard(conn, self._renew, "lease renewal")
            if now >= next_sweep:
                next_sweep = now + self._sweep_interval
                self._guard(conn, self._sweep, "expiry")

    def _apply(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """One transaction for the batch. An operation leaves nothing half-done when it
        raises (ClaimLost undoes its own update first); anything else unexpected rolls the
        batch back, and each operation is tried again alone."""
        results = self._transaction(conn, jobs)
        if results is None:
            results = []
            for job in jobs:
                alone = self._transaction(conn, [job])
                if alone is None:
                    error = StateUnavailable("state database error")
                    alone = [(job.future, False, error)]
                results += alone
        by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        for job, result in zip(jobs, results, strict=True):
            if job.loop is not None:
                by_loop.setdefault(job.loop, []).append(result)
        for loop, settled in by_loop.items():
            # RuntimeError: that loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, settled, self)

    def _transaction(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[_Result] | None:
        """The batch's results, or None when it had to be rolled back (tried one by one)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = StateUnavailable(f"the state database is busy: {exc}")
            return [(job.future, False, error) for job in jobs]
        results: list[_Result] = []
        try:
            for job in jobs:
                try:
                    results.append((job.future, True, job.op(conn)))
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

    def _guard(
        self, conn: sqlite3.Connection, task: Callable[[sqlite3.Connection], None], what: str
    ) -> None:
        try:
            task(conn)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            logger.warning(
                f"state database {what} failed",
                extra={"event": "state_maintenance_failed", "error": str(exc)},
            )

    def _renew(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            held = list(self._held)
        if not held:
            return
        lease = self.clock() + self.lease
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "UPDATE claims SET lease = ? WHERE claim_id = ? AND phase != 'done'",
            [(lease, claim_id) for claim_id in held],
        )
        conn.execute("COMMIT")

    def _sweep(self, conn: sqlite3.Connection) -> None:
        now = self.clock()
        for statement in _SWEEPS:
            while True:
                conn.execute("BEGIN IMMEDIATE")
                deleted = conn.execute(statement, (now, SWEEP_CHUNK)).rowcount
                conn.execute("COMMIT")
                if deleted < SWEEP_CHUNK:
                    break


_SWEEPS: Final = (
    "DELETE FROM claims WHERE key IN (SELECT key FROM claims WHERE expires <= ? LIMIT ?)",
    "DELETE FROM rate_hits WHERE key IN (SELECT key FROM rate_hits WHERE expires <= ? LIMIT ?)",
    "DELETE FROM rate_verdicts WHERE call_id IN "
    "(SELECT call_id FROM rate_verdicts WHERE expires <= ? LIMIT ?)",
)
"""Deletions of what expired, in chunks (short transactions: calls are waiting)."""

_IDLE: Final[Any] = object()
"""The writer's wake-up with nothing queued (time to renew leases or sweep)."""


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
    "SELECT key, claim_id, phase, lease, status, body, context, uncertain FROM claims "
    "WHERE key IN (?KEYS) AND expires > ?"
)
_ACTING: Final = _per_arity(
    "UPDATE claims SET phase = 'acting', context = ?, lease = ? "
    "WHERE claim_id = ? AND phase = 'claimed' AND key IN (?KEYS)"
)
_UNDO_ACTING: Final = _per_arity(
    "UPDATE claims SET phase = 'claimed' WHERE claim_id = ? AND phase = 'acting' AND key IN (?KEYS)"
)
_DONE: Final = _per_arity(
    "UPDATE claims SET phase = 'done', status = ?, body = ?, context = NULL, expires = ? "
    "WHERE claim_id = ? AND key IN (?KEYS)"
)
_FREE: Final = _per_arity(
    "UPDATE claims SET phase = 'free', context = NULL, lease = 0, uncertain = 1, "
    "expires = ? WHERE claim_id = ? AND key IN (?KEYS)"
)
_DELETE: Final = _per_arity("DELETE FROM claims WHERE claim_id = ? AND key IN (?KEYS)")
_INSERT: Final = (
    "INSERT OR REPLACE INTO claims "
    "(key, claim_id, owner, phase, lease, context, uncertain, expires) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
        _check_keys(keys)
        state = self._state
        owner = state.owner

        async def attempt() -> Ticket | Answer | None:
            claim_id = new_claim_id()
            now = state.clock()
            got = await state.run(
                lambda conn: _claim(
                    conn, keys, claim_id, owner, now, now + state.lease, now + state.horizon
                ),
                deadline=deadline,
            )
            if got[0] == "answer":
                return Answer(int(got[1]), json.loads(got[2]))
            if got[0] == "ticket":
                _, claim_id, _, phase, context, uncertain = got
                state.hold(claim_id)
                result: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
                self._local[claim_id] = result
                orphan = json.loads(context) if phase == "acting" else None
                if orphan is not None:
                    logger.warning(
                        "claim taken over from a process that died while acting",
                        extra={"event": "claim_orphaned", "keys": list(keys)},
                    )
                return Ticket(keys, claim_id, uncertain=uncertain, orphan=orphan, result=result)
            # Busy: held by a live claim. One of this process: wait for its answer.
            local = self._local.get(got[1])
            if local is not None:
                return await wait_for_answer(local, deadline, time.monotonic)
            return None

        got = await poll_until(attempt, deadline)
        return got if got is not None else IN_PROGRESS

    async def acting(self, ticket: Ticket, context: Mapping[str, Any]) -> None:
        state = self._state
        text = _dumps(context)
        lease = state.clock() + state.lease
        keys, claim_id = ticket.keys, ticket.claim_id
        n = len(keys)

        def op(conn: sqlite3.Connection) -> None:
            changed = conn.execute(_ACTING[n], (text, lease, claim_id, *keys)).rowcount
            if changed != n:
                conn.execute(_UNDO_ACTING[n], (claim_id, *keys))
                raise ClaimLost("the claim was taken over")

        await state.run(op, deadline=None)

    async def finish(
        self, ticket: Ticket, answer: Answer, *, remember: bool, uncertain: bool = False
    ) -> None:
        state = self._state
        keys, claim_id = ticket.keys, ticket.claim_id
        expires = state.clock() + state.horizon
        body = _dumps(answer.body)
        # A key that was marked stays marked until the horizon.
        marked = uncertain or ticket.uncertain

        def op(conn: sqlite3.Connection) -> None:
            if remember:
                conn.execute(_DONE[len(keys)], (answer.status_code, body, expires, claim_id, *keys))
            else:
                _free(conn, keys, claim_id, marked, expires)

        try:
            await state.run(op, deadline=None)
        finally:
            state._release(claim_id)
            local = self._local.pop(claim_id, None)
            if local is not None and not local.done():
                local.set_result(answer)


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
    ) -> bool:
        state = self._state
        now = state.clock()
        key = f"{route}\0{caller}"
        horizon = now + state.horizon
        return await state.run(
            lambda conn: _count(conn, key, limit, call_id, now, horizon), deadline=deadline
        )


def _count(
    conn: sqlite3.Connection,
    key: str,
    limit: RateLimit,
    call_id: str,
    now: float,
    horizon: float,
) -> bool:
    if call_id:
        row = conn.execute(
            "SELECT allowed FROM rate_verdicts WHERE call_id = ? AND expires > ?", (call_id, now)
        ).fetchone()
        if row is not None:
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
    if call_id:
        conn.execute(
            "INSERT OR REPLACE INTO rate_verdicts (call_id, allowed, expires) VALUES (?, ?, ?)",
            (call_id, 0 if over else 1, horizon),
        )
    return not over
