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
) -> CallLog:
    """`single_replica`: no other process shares the records' database (no shared
    live-call registry), so calls open at start-up are leftovers of a previous run.
    `queue_max`, `timeout`: PostgreSQL's (default: app.records.postgres's)."""
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
            recover_open_calls=single_replica,
        )
    return build_embedded_call_log(db, retention_days)


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
