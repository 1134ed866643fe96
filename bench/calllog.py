"""The call log on PostgreSQL next to SQLite: what a call costs the event loop to record,
how fast the writer empties the queue, and the memory a queued write holds while the
database is away (the figure behind SWITCHBOARD_CALLS_QUEUE_MAX's "about 0.5 KB each").

A call is recorded as the router and the in-call session do: `started` with two events,
four more events, `ended` (six writes). PostgreSQL: a throwaway database on the server of
--url (created, dropped at the end). Nothing here is a test assertion.

Usage: python -m bench.calllog [--calls 5000] [--url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from app.records.calllog import CallEvent, CallLog, CallRecord
from app.records.postgres import PostgresCallLog
from app.records.sqlite import SqliteCallLog

WRITES_PER_CALL = 6


def record_call(log: CallLog, n: int) -> None:
    now = time.time()
    call_id = f"rtc_{n:016x}"
    log.started(
        CallRecord(
            call_id,
            now,
            "support",
            "accept",
            "accepted",
            "active",
            "+1415*****23",
            "+18005550100",
            "0123456789abcdef",
            events=(
                CallEvent(now, "decision", {"route": "support", "action": "accept"}),
                CallEvent(now, "accepted", {"outcome": "accepted"}),
            ),
        )
    )
    for k in range(4):
        log.event(call_id, "transcript", {"k": k, "text": "hello there"})
    log.ended(call_id, "end_call")


def queued_bytes(calls: int) -> float:
    """Bytes per queued write, the database never reached (the log is not started)."""
    log = PostgresCallLog("postgresql://nobody@127.0.0.1:1/none", queue_max=10**8)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(calls):
        record_call(log, n)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / (calls * WRITES_PER_CALL)


async def drain(log: Any, calls: int, wait: Any) -> dict[str, float]:
    started = time.perf_counter()
    for n in range(calls):
        record_call(log, n)
    enqueued = time.perf_counter()
    await wait()
    done = time.perf_counter()
    return {
        "enqueue_us_per_call": (enqueued - started) / calls * 1e6,
        "written_calls_per_s": calls / (done - started),
    }


async def postgres(url: str, calls: int) -> dict[str, float]:
    admin = await asyncpg.connect(url)
    name = f"switchboard_bench_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        log = PostgresCallLog(url.rsplit("/", 1)[0] + "/" + name)
        await log.start()

        async def written() -> None:
            await log.get("rtc_none")  # waits for the writes queued before it

        result = await drain(log, calls, written)
        assert log.backlog().queued == 0
        await log.aclose()
        return result
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def sqlite(calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        log = SqliteCallLog(Path(folder) / "calls.db")
        log.open()

        async def written() -> None:
            await log.get("rtc_none")  # waits for the writes queued before it

        result = await drain(log, calls, written)
        log.close()
        return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    report = {
        "calls": args.calls,
        "writes_per_call": WRITES_PER_CALL,
        "postgresql": asyncio.run(postgres(args.url, args.calls)),
        "sqlite": asyncio.run(sqlite(args.calls)),
        "queued_bytes_per_write": round(queued_bytes(args.calls), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
