"""The SQLite store keeps its claims in flight alive at a cost that does not grow with the table.

The maintenance thread renews with the write lock held, while the event loop's writes
wait: a renewal that read the whole table (every call of the 72-hour horizon) for each
claim in flight stalled every call for that long, every third of the lease. The renewal is
now one heartbeat row per process (no claim row is written).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from app.state.claims import Answer, Ticket
from app.state.sqlite import SqliteClaimStore, SqliteState
from tests.state.sqlite_support import started_connections

DONE = Answer(200, {"outcome": "accepted"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _steps(conn: sqlite3.Connection, every: int = 100) -> list[int]:
    """Counts SQLite VM instructions (in units of `every`) run on `conn` from now on."""
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    conn.set_progress_handler(tick, every)
    return counted


async def _renewal_steps(tmp_path: Path, finished_calls: int) -> int:
    now = [1_000.0]
    # A long lease: the maintenance thread stays asleep; the test runs its renewal.
    state = SqliteState(
        tmp_path / f"state-{finished_calls}.db",
        horizon_seconds=3600,
        lease_seconds=600,
        clock=lambda: now[0],
    )
    store = SqliteClaimStore(state)
    await store.open()
    try:
        for n in range(finished_calls):
            done = await store.claim((f"webhook:wh_{n}", f"call:rtc_{n}"), time.monotonic() + 5)
            assert isinstance(done, Ticket)
            await store.finish(done, DONE, remember=True)
        in_flight = await store.claim(("webhook:wh_x", "call:rtc_x"), time.monotonic() + 5)
        assert isinstance(in_flight, Ticket)
        now[0] += 100
        conn = sqlite3.connect(state.path, isolation_level=None)
        try:
            counted = _steps(conn)
            state._beat(conn)
            conn.set_progress_handler(None, 0)
            leases = conn.execute(
                "SELECT lease FROM claims WHERE claim_id = ?", (in_flight.claim_id,)
            ).fetchall()
        finally:
            conn.close()
        assert leases == [(1_000.0 + 600,)] * 2  # the claim rows are not written
        beat = await state.run(
            lambda c: c.execute(
                "SELECT beat FROM owners WHERE owner = ?", (state.owner,)
            ).fetchone()[0],
            deadline=None,
        )
        assert beat == 1_100.0 + 600  # the heartbeat, from the new "now"
        await store.finish(in_flight, DONE, remember=True)
        return counted[0]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_renewal_reads_the_claims_in_flight_not_the_table(tmp_path: Path) -> None:
    few = await _renewal_steps(tmp_path, 10)
    many = await _renewal_steps(tmp_path, 1000)
    # One row either way (a scan of the claims: ~200 times more here).
    assert many <= few + 5, (few, many)


def test_every_connection_commits_without_fsync_under_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`synchronous` is per connection: the maintenance thread's heartbeat committed with
    FULL (an fsync while holding the write lock), and the loop's writes found the database
    locked for 10-40 ms at every heartbeat. NORMAL on every connection: a commit survives
    the process being killed, which is what the claims need (WAL)."""
    with started_connections(tmp_path, monkeypatch) as opened:
        assert len(opened) == 2  # the event loop's and the maintenance thread's
        normal = 1
        assert [c.execute("PRAGMA synchronous").fetchone()[0] for c in opened] == [normal] * 2
