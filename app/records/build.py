"""Which call log the service writes to, and its lifetime.

SWITCHBOARD_DATABASE_URL set: PostgreSQL, shared by every replica. Otherwise
SWITCHBOARD_CALLS_DB: a SQLite file (the embedded default), or `:memory:`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

from app.records.calllog import CallLog
from app.records.sqlite import ManagedCallLog
from app.records.sqlite import build_call_log as build_embedded_call_log
from app.records.sqlite import end_calls_left_open as end_on_sqlite


@runtime_checkable
class AsyncManagedCallLog(CallLog, Protocol):
    """A call log whose lifetime is async (it lives on the event loop: a pool)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


def build_call_log(
    db: str,
    retention_days: int,
    *,
    database_url: str | None = None,
    queue_max: int | None = None,
    timeout: float | None = None,
    single_replica: bool = True,
    recover_open_calls: bool = True,
) -> CallLog:
    """`single_replica`: no other process shares the records' database (no shared
    live-call registry), so calls open at start-up are leftovers of a previous run.
    `recover_open_calls`: False in a `serve --workers N` worker (end_calls_left_open() ran
    before it; its siblings' calls are open). `queue_max`, `timeout`: PostgreSQL's
    (default: app.records.postgres's)."""
    if database_url:
        # Imported by a deployment that records to PostgreSQL only: asyncpg costs 0.1 s of
        # CPU at each start.
        from app.records.postgres import QUEUE_MAX, TIMEOUT, PostgresCallLog

        timeout = TIMEOUT if timeout is None else timeout
        return PostgresCallLog(
            database_url,
            retention_days=retention_days,
            queue_max=QUEUE_MAX if queue_max is None else queue_max,
            timeout=timeout,
            close_timeout=timeout,  # a stop must not wait long for a database that is away
            recover_open_calls=single_replica and recover_open_calls,
        )
    return build_embedded_call_log(db, retention_days, recover_open_calls=recover_open_calls)


def end_calls_left_open(
    db: str,
    *,
    database_url: str | None = None,
    timeout: float | None = None,
    single_replica: bool = True,
) -> int:
    """End the calls a previous run left open, once for the whole service: `serve --workers
    N`'s supervisor, before it starts the workers, which do not (a worker that uvicorn
    restarts would end the calls its siblings are handling). With replicas, nothing, as at a
    replica's own start. Blocking; raises CallLogError for a SQLite file it cannot use."""
    if database_url:
        if not single_replica:
            return 0
        from app.records.postgres import TIMEOUT
        from app.records.postgres import end_calls_left_open as end_on_postgres

        return asyncio.run(
            end_on_postgres(database_url, time_limit=TIMEOUT if timeout is None else timeout)
        )
    return end_on_sqlite(db)


async def open_call_log(log: CallLog) -> None:
    """Open it at start-up, if it has a lifetime (an injected test log may not)."""
    if isinstance(log, AsyncManagedCallLog):
        await log.start()
    elif isinstance(log, ManagedCallLog):
        await asyncio.to_thread(log.open)


async def close_call_log(log: CallLog) -> None:
    """Write what is queued and release it; last at shutdown."""
    if isinstance(log, AsyncManagedCallLog):
        await log.aclose()
    elif isinstance(log, ManagedCallLog):
        await asyncio.to_thread(log.close)
