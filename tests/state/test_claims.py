"""The ClaimStore contract, one suite over every implementation: memory, SQLite, Redis.

Memory is one process; SQLite and Redis are shared, so the suite also runs "another
process" (a second store on the same file or server) and "a dead process" (a store that
stops renewing its leases without finishing: what kill -9 leaves behind). Redis is a real
throwaway redis-server (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from app.state.claims import (
    IN_PROGRESS,
    Answer,
    ClaimLost,
    ClaimStore,
    MemoryClaimStore,
    StateUnavailable,
    Ticket,
)
from app.state.redis import connect
from app.state.redisstore import RedisClaimStore, RedisState
from app.state.sqlite import SqliteClaimStore, SqliteState
from tests.redis_server import RedisServer

HORIZON = 60.0
LEASE = 0.5
TIMEOUT = 2.0
"""Generous: a loaded test machine must not turn a slow answer into a failure."""
KEYS = ("webhook:wh_1", "call:rtc_1")
ROUTED = Answer(200, {"call_id": "rtc_1", "route": "support", "outcome": "accepted"})
RETRY = Answer(503, {"call_id": "rtc_1", "outcome": "upstream_error"})
CONTEXT = {"call_id": "rtc_1", "route": "support", "action": "accept", "rules_version": "v1"}

Factory = Callable[..., Awaitable[ClaimStore]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def soon(seconds: float = 2.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """A factory of stores on one backend: each call is another process on it."""
    opened: list[ClaimStore] = []
    kind = request.param
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    shared_memory: list[MemoryClaimStore] = []

    async def make(*, horizon: float = HORIZON, lease: float = LEASE) -> ClaimStore:
        store: ClaimStore
        if kind == "memory":
            if not shared_memory:
                shared_memory.append(MemoryClaimStore(horizon_seconds=horizon))
            store = shared_memory[0]  # one process: "another" is the same memory
        elif kind == "sqlite":
            store = SqliteClaimStore(
                SqliteState(
                    tmp_path / "state.db",
                    horizon_seconds=horizon,
                    lease_seconds=lease,
                    timeout=TIMEOUT,
                )
            )
        else:
            store = RedisClaimStore(
                RedisState(
                    connect(url, timeout=TIMEOUT),
                    horizon_seconds=horizon,
                    lease_seconds=lease,
                    timeout=TIMEOUT,
                )
            )
        await store.open()
        opened.append(store)
        return store

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for store in opened:
        await store.close()


def shared(stores: Factory) -> bool:
    return getattr(stores, "kind", "") != "memory"


async def crash(store: ClaimStore) -> None:
    """Stop renewing leases, release nothing: the process is gone."""
    if isinstance(store, SqliteClaimStore):
        await asyncio.to_thread(store.state.stop)
    elif isinstance(store, RedisClaimStore):
        task = store.state._renewer
        assert task is not None
        task.cancel()
    else:
        raise AssertionError("a memory store cannot outlive its process")


async def ticket(store: ClaimStore, keys: tuple[str, ...] = KEYS) -> Ticket:
    got = await store.claim(keys, soon())
    assert isinstance(got, Ticket), got
    return got


DUPLICATES = [
    pytest.param(KEYS, id="same-webhook-and-call"),
    pytest.param(("webhook:wh_1", "call:rtc_other"), id="same-webhook"),
    pytest.param(("webhook:wh_2", "call:rtc_1"), id="same-call-new-webhook"),
    pytest.param(("call:rtc_1",), id="call-key-only"),
]


@pytest.mark.anyio
async def test_first_claim_gets_a_ticket(stores: Factory) -> None:
    store = await stores()
    got = await ticket(store)
    assert got.keys == KEYS
    assert not got.uncertain
    assert got.orphan is None


@pytest.mark.anyio
@pytest.mark.parametrize("keys", DUPLICATES)
async def test_a_kept_answer_is_replayed(stores: Factory, keys: tuple[str, ...]) -> None:
    store = await stores()
    first = await ticket(store)
    await store.acting(first, CONTEXT)
    await store.finish(first, ROUTED, remember=True)
    assert await store.claim(keys, soon()) == ROUTED
    assert await store.claim(keys, soon()) == ROUTED  # nothing is consumed
    other = await stores()  # another process sees it too
    assert await other.claim(keys, soon()) == ROUTED


@pytest.mark.anyio
@pytest.mark.parametrize("keys", DUPLICATES)
async def test_forgotten_keys_are_free_again(stores: Factory, keys: tuple[str, ...]) -> None:
    store = await stores()
    first = await ticket(store)
    await store.finish(first, RETRY, remember=False)
    again = await ticket(await stores(), keys)
    assert again.claim_id != first.claim_id
    assert not again.uncertain


@pytest.mark.anyio
async def test_an_uncertain_request_marks_the_keys(stores: Factory) -> None:
    store = await stores()
    first = await ticket(store)
    await store.acting(first, CONTEXT)
    await store.finish(first, RETRY, remember=False, uncertain=True)
    again = await ticket(await stores(), ("webhook:wh_2", "call:rtc_1"))
    assert again.uncertain
    await store.finish(again, ROUTED, remember=True)
    assert (await ticket(store, ("call:rtc_2",))).uncertain is False


@pytest.mark.anyio
async def test_unrelated_keys_are_independent(stores: Factory) -> None:
    store = await stores()
    first = await ticket(store)
    other = await ticket(store, ("webhook:wh_9", "call:rtc_9"))
    await store.finish(first, ROUTED, remember=True)
    await store.finish(other, RETRY, remember=True)
    assert await store.claim(("call:rtc_1",), soon()) == ROUTED
    assert await store.claim(("call:rtc_9",), soon()) == RETRY


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "remember"),
    [pytest.param(ROUTED, True, id="remembered"), pytest.param(RETRY, False, id="forgotten")],
)
async def test_concurrent_claims_in_one_process_wait_for_the_first(
    stores: Factory, answer: Answer, remember: bool
) -> None:
    store = await stores()
    release = asyncio.Event()

    async def deliver() -> Ticket | Answer:
        got = await store.claim(KEYS, soon(5))
        if isinstance(got, Ticket):
            await release.wait()
            await store.finish(got, answer, remember=remember)
        return got

    tasks = [asyncio.create_task(deliver()) for _ in range(10)]
    try:
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in tasks)  # the owner holds, everyone waits
    finally:
        release.set()
    results = await asyncio.gather(*tasks)
    assert len([r for r in results if isinstance(r, Ticket)]) == 1
    assert [r for r in results if not isinstance(r, Ticket)] == [answer] * 9


@pytest.mark.anyio
async def test_concurrent_claims_in_other_processes_wait_for_the_first(stores: Factory) -> None:
    if not shared(stores):
        pytest.skip("memory is one process")
    processes = [await stores() for _ in range(4)]
    release = asyncio.Event()

    async def deliver(store: ClaimStore) -> Ticket | Answer:
        got = await store.claim(KEYS, soon(5))
        if isinstance(got, Ticket):
            await release.wait()
            await store.finish(got, ROUTED, remember=True)
        return got

    tasks = [asyncio.create_task(deliver(s)) for s in processes for _ in range(3)]
    try:
        await asyncio.sleep(0.2)
        assert sum(task.done() for task in tasks) == 0
    finally:
        release.set()
    results = await asyncio.gather(*tasks)
    assert len([r for r in results if isinstance(r, Ticket)]) == 1
    assert [r for r in results if not isinstance(r, Ticket)] == [ROUTED] * 11


@pytest.mark.anyio
async def test_a_duplicate_that_waits_past_its_deadline_gets_in_progress(stores: Factory) -> None:
    store = await stores()
    owner = await ticket(store)
    for waiter in (store, await stores()):
        assert await waiter.claim(KEYS, soon(0.3)) == IN_PROGRESS
    assert IN_PROGRESS.status_code == 503
    # The owner was not disturbed: it finishes, and later duplicates get its answer.
    await store.acting(owner, CONTEXT)
    await store.finish(owner, ROUTED, remember=True)
    assert await store.claim(KEYS, soon()) == ROUTED


@pytest.mark.anyio
async def test_a_live_owner_keeps_its_claim_past_the_lease(stores: Factory) -> None:
    """Leases are renewed while the process lives: a slow call is not taken over."""
    store = await stores()
    owner = await ticket(store)
    await store.acting(owner, CONTEXT)
    await asyncio.sleep(LEASE * 2.5)
    assert await (await stores()).claim(KEYS, soon(0.3)) == IN_PROGRESS
    await store.finish(owner, ROUTED, remember=True)
    assert await store.claim(KEYS, soon()) == ROUTED


@pytest.mark.anyio
async def test_a_dead_owner_that_sent_nothing_is_taken_over(stores: Factory) -> None:
    if not shared(stores):
        pytest.skip("memory is one process")
    dead = await stores()
    first = await ticket(dead)
    await crash(dead)
    taker = await stores()
    # Waits for the lease to run out (within its deadline), then acts: nothing was sent.
    second = await ticket(taker)
    assert second.orphan is None
    await taker.acting(second, CONTEXT)
    await taker.finish(second, ROUTED, remember=True)
    assert await taker.claim(KEYS, soon()) == ROUTED
    assert first.claim_id != second.claim_id


@pytest.mark.anyio
async def test_a_dead_owner_that_was_acting_is_inherited_as_uncertain(stores: Factory) -> None:
    if not shared(stores):
        pytest.skip("memory is one process")
    dead = await stores()
    first = await ticket(dead)
    await dead.acting(first, CONTEXT)
    await crash(dead)
    taker = await stores()
    assert await taker.claim(KEYS, soon(0.2)) == IN_PROGRESS  # the lease still runs
    second = await ticket(taker, ("webhook:wh_2", "call:rtc_1"))
    assert second.orphan == CONTEXT
    # Whoever inherits it and dies too passes it on as it is: never as "nothing sent".
    await crash(taker)
    third = await ticket(await stores(), ("webhook:wh_3", "call:rtc_1"))
    assert third.orphan == CONTEXT
    uncertain = Answer(200, {**CONTEXT, "outcome": "uncertain"})
    last = await stores()
    await last.finish(third, uncertain, remember=True)
    assert await last.claim(KEYS, soon()) == uncertain


@pytest.mark.anyio
async def test_a_stalled_owner_whose_claim_was_taken_cannot_act(stores: Factory) -> None:
    if not shared(stores):
        pytest.skip("memory is one process")
    stalled = await stores()
    first = await ticket(stalled)
    await crash(stalled)  # stops renewing (a stall past the lease looks the same)
    taker = await stores()
    second = await ticket(taker)
    assert second.orphan is None
    with pytest.raises((ClaimLost, StateUnavailable)):
        await stalled.acting(first, CONTEXT)
    if isinstance(stalled, RedisClaimStore):
        # The same client still works: the stalled process is refused by the fence.
        with pytest.raises(ClaimLost):
            await stalled.acting(first, CONTEXT)
    await taker.acting(second, CONTEXT)


@pytest.mark.anyio
async def test_answers_expire_with_the_horizon(stores: Factory) -> None:
    store = await stores(horizon=0.3)
    first = await ticket(store)
    await store.finish(first, ROUTED, remember=True, uncertain=True)
    assert await store.claim(KEYS, soon()) == ROUTED
    await asyncio.sleep(0.4)
    again = await ticket(store)
    assert not again.uncertain


@pytest.mark.anyio
async def test_keep_first_keeps_the_first_answer_for_every_later_one(stores: Factory) -> None:
    first = Answer(200, {"api": "realtime"})
    second = Answer(200, {"api": "live"})
    store = await stores()
    assert await store.keep_first("dialog:d1", first, soon()) == first
    assert await store.keep_first("dialog:d1", second, soon()) == first
    other = await stores()  # another process on a shared store
    assert await other.keep_first("dialog:d1", second, soon()) == first
    assert await other.keep_first("dialog:d2", second, soon()) == second
    # Concurrent ones in one process: one is first, all see it.
    kept = await asyncio.gather(
        *(store.keep_first("dialog:d3", Answer(200, {"n": n}), soon()) for n in range(5))
    )
    assert len({repr(answer) for answer in kept}) == 1


@pytest.mark.anyio
async def test_keep_first_waits_for_no_dead_claim_and_answers_none_for_a_live_one(
    stores: Factory,
) -> None:
    if not shared(stores):
        pytest.skip("memory is one process")
    kept = Answer(200, {"api": "realtime"})
    live = await stores()
    holder = await ticket(live, ("dialog:d1",))
    other = await stores()
    assert await other.keep_first("dialog:d1", kept, soon(0.2)) is None  # not known yet
    await live.finish(holder, Answer(200, {"api": "live"}), remember=True)
    assert await other.keep_first("dialog:d1", kept, soon()) == Answer(200, {"api": "live"})
    dead = await stores()
    await ticket(dead, ("dialog:d2",))
    await crash(dead)
    assert await other.keep_first("dialog:d2", kept, soon()) == kept  # after its lease


@pytest.mark.anyio
async def test_the_sqlite_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteClaimStore(SqliteState(path, horizon_seconds=HORIZON))
    await first.open()
    owner = await ticket(first)
    await first.finish(owner, ROUTED, remember=True)
    await first.close()
    restarted = SqliteClaimStore(SqliteState(path, horizon_seconds=HORIZON))
    await restarted.open()
    try:
        assert await restarted.claim(KEYS, soon()) == ROUTED
    finally:
        await restarted.close()


@pytest.mark.anyio
async def test_sqlite_deletes_what_expired(tmp_path: Path) -> None:
    now = [1_000.0]
    state = SqliteState(
        tmp_path / "state.db",
        horizon_seconds=10,
        clock=lambda: now[0],
        sweep_interval=0.05,
    )
    store = SqliteClaimStore(state)
    await store.open()
    try:
        for n in range(50):
            got = await ticket(store, (f"webhook:wh_{n}", f"call:rtc_{n}"))
            await store.finish(got, ROUTED, remember=True, uncertain=True)

        def count(conn: Any) -> int:
            return int(conn.execute("SELECT count(*) FROM claims").fetchone()[0])

        await asyncio.sleep(0.2)
        assert await state.run(count, deadline=None) == 100  # not expired: kept
        now[0] += 11
        # The maintenance thread sweeps every 50 ms here (give a loaded machine time).
        for _ in range(100):
            if await state.run(count, deadline=None) == 0:
                break
            await asyncio.sleep(0.05)
        assert await state.run(count, deadline=None) == 0
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sqlite_keeps_claims_alive_by_a_heartbeat_not_by_rewriting_them(
    tmp_path: Path,
) -> None:
    """A live process renews one row (its heartbeat), not each claim in flight: renewing
    claims one by one scanned the whole table per claim every third of the lease."""
    path = tmp_path / "state.db"
    state = SqliteState(path, horizon_seconds=HORIZON, lease_seconds=LEASE, timeout=TIMEOUT)
    store = SqliteClaimStore(state)
    await store.open()
    other = SqliteClaimStore(SqliteState(path, horizon_seconds=HORIZON, lease_seconds=LEASE))
    await other.open()
    try:
        owner = await ticket(store)

        def leases(conn: Any) -> list[float]:
            rows = conn.execute("SELECT lease FROM claims ORDER BY key").fetchall()
            return [row[0] for row in rows]

        def beat(conn: Any) -> float:
            row = conn.execute("SELECT beat FROM owners WHERE owner = ?", (state.owner,))
            return float(row.fetchone()[0])

        taken = await state.run(leases, deadline=None)
        first_beat = await state.run(beat, deadline=None)
        await asyncio.sleep(LEASE * 2.5)
        assert await other.claim(KEYS, soon(0.3)) == IN_PROGRESS  # still held
        assert await state.run(leases, deadline=None) == taken  # the rows were not written
        assert await state.run(beat, deadline=None) > first_beat
        await store.acting(owner, CONTEXT)
        await store.finish(owner, ROUTED, remember=True)
        assert await other.claim(KEYS, soon()) == ROUTED
    finally:
        await other.close()
        await store.close()


@pytest.mark.anyio
async def test_sqlite_heartbeats_of_dead_processes_are_swept_and_a_live_one_comes_back(
    tmp_path: Path,
) -> None:
    now = [1_000.0]
    path = tmp_path / "state.db"
    state = SqliteState(
        path, horizon_seconds=HORIZON, lease_seconds=0.3, clock=lambda: now[0], sweep_interval=0.05
    )
    store = SqliteClaimStore(state)
    await store.open()
    dead = SqliteState(path, horizon_seconds=HORIZON, clock=lambda: now[0])
    await asyncio.to_thread(dead.start)
    await asyncio.to_thread(dead.stop)  # killed: its heartbeat stays behind

    def owners(conn: Any) -> set[str]:
        return {row[0] for row in conn.execute("SELECT owner FROM owners")}

    try:
        assert await state.run(owners, deadline=None) == {state.owner, dead.owner}
        now[0] += 60  # both heartbeats ran out (this process stalled, say)
        for _ in range(100):
            if dead.owner not in await state.run(owners, deadline=None):
                break
            await asyncio.sleep(0.05)
        # The dead one is gone for good; the live one wrote its heartbeat again.
        for _ in range(100):
            if await state.run(owners, deadline=None) == {state.owner}:
                break
            await asyncio.sleep(0.05)
        assert await state.run(owners, deadline=None) == {state.owner}
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sqlite_refuses_an_unwritable_path(tmp_path: Path) -> None:
    from app.state.sqlite import StateDatabaseError

    blocker = tmp_path / "file"
    blocker.write_text("")
    store = SqliteClaimStore(SqliteState(blocker / "state.db", horizon_seconds=HORIZON))
    with pytest.raises(StateDatabaseError, match="SWITCHBOARD_STATE_DB"):
        await store.open()


@pytest.mark.anyio
async def test_redis_lost_and_back(own_redis_server: RedisServer) -> None:
    store = RedisClaimStore(
        RedisState(connect(own_redis_server.url()), horizon_seconds=HORIZON, timeout=0.3)
    )
    await store.open()
    try:
        done = await ticket(store)
        await store.finish(done, ROUTED, remember=True)
        own_redis_server.stop()
        with pytest.raises(StateUnavailable):
            await store.ping()
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await store.claim(("call:rtc_2",), soon())
        assert time.monotonic() - started < 2  # a timeout, not a hang
        own_redis_server.start()  # empty: this one keeps nothing on disk
        await store.ping()
        assert isinstance(await store.claim(("call:rtc_2",), soon()), Ticket)
    finally:
        await store.close()


def test_claim_ids_are_unique_without_a_system_call_per_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before: uuid4() per claim read os.urandom, a system call on the event loop (it let
    # the writer threads take the GIL).
    import os

    from app.state.claims import new_claim_id

    def no_urandom(n: int) -> bytes:
        raise AssertionError("os.urandom called per claim")

    first = new_claim_id()
    monkeypatch.setattr(os, "urandom", no_urandom)
    ids = {new_claim_id() for _ in range(1000)}
    assert len(ids) == 1000 and first not in ids
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_forked_process_makes_other_claim_ids() -> None:
    import os

    from app.state.claims import new_claim_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, through the pipe
        os.close(read)
        os.write(write, " ".join(new_claim_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split())
    os.waitpid(pid, 0)
    ours = {new_claim_id() for _ in range(100)}
    assert len(theirs) == 100 and not theirs & ours


@pytest.mark.anyio
async def test_acting_and_finish_stop_at_the_deadline_given(stores: Factory) -> None:
    """The router gives every store call the call's deadline: with no time left, the
    write is not attempted (StateUnavailable), whatever the store's own timeout."""
    if not shared(stores):
        pytest.skip("the memory store answers at once: no deadline to keep")
    store = await stores()
    owner = await ticket(store)
    with pytest.raises(StateUnavailable, match="no time left"):
        await store.acting(owner, CONTEXT, deadline=time.monotonic())
    # Nothing was written: the claim is still `claimed`, and acting in time works.
    await store.acting(owner, CONTEXT, deadline=soon())
    with pytest.raises(StateUnavailable, match="no time left"):
        await store.finish(owner, ROUTED, remember=True, deadline=time.monotonic())
    await store.finish(owner, ROUTED, remember=True, deadline=soon())
    assert await (await stores()).claim(KEYS, soon()) == ROUTED


@pytest.mark.anyio
async def test_an_answer_redis_missed_is_stored_when_it_answers_again(
    own_redis_server: RedisServer,
) -> None:
    """Redis froze while the call was acted on: the answer is not lost to a takeover."""
    import os
    import signal

    url = own_redis_server.url()
    store = RedisClaimStore(
        RedisState(connect(url), horizon_seconds=HORIZON, lease_seconds=LEASE, timeout=0.2)
    )
    other = RedisClaimStore(
        RedisState(connect(url), horizon_seconds=HORIZON, lease_seconds=LEASE, timeout=0.2)
    )
    await store.open()
    await other.open()
    process = own_redis_server.process
    assert process is not None
    try:
        owner = await ticket(store)
        await store.acting(owner, CONTEXT)
        os.kill(process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StateUnavailable):
                await store.finish(owner, ROUTED, remember=True)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await asyncio.sleep(LEASE)  # a round of the renewer
        assert await other.claim(KEYS, soon()) == ROUTED
    finally:
        await store.close()
        await other.close()


@pytest.mark.anyio
async def test_sqlite_waits_out_a_short_lock_and_gives_up_on_a_long_one(tmp_path: Path) -> None:
    """Another process holding the write lock: retried without blocking the event loop,
    up to the store timeout; then StateUnavailable (the webhook gets 503, nothing is sent)."""
    import sqlite3

    path = tmp_path / "state.db"
    store = SqliteClaimStore(SqliteState(path, horizon_seconds=HORIZON, timeout=0.3))
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, other.execute, "COMMIT")  # a short lock: waited out
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(tick())
        assert isinstance(await store.claim(KEYS, soon()), Ticket)
        ticking.cancel()
        assert ticks >= 5  # the loop ran meanwhile

        other.execute("BEGIN IMMEDIATE")  # a long lock
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="locked"):
            await store.claim(("call:rtc_2",), soon(5))
        assert 0.3 <= time.monotonic() - started < 2
        other.execute("COMMIT")
        assert isinstance(await store.claim(("call:rtc_2",), soon()), Ticket)
    finally:
        other.close()
        await store.close()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["close", "cancel"])
async def test_redis_lease_renewer_ends_when_a_write_swallowed_its_cancellation(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Python 3.11's asyncio.wait_for (redis-py bounds each socket write with it) drops a
    cancellation that arrives once the write has completed. The renewer loops forever: a
    close() awaiting it, or asyncio's cancellation of the tasks left at the end of the
    loop (the test runner's teardown, asyncio.run), hung. The seam cancels it exactly
    then: as a renewal's write completes (load makes that moment likely)."""
    from redis.asyncio.connection import Connection

    state = RedisState(
        connect(redis_url, timeout=TIMEOUT),
        horizon_seconds=HORIZON,
        lease_seconds=0.3,
        timeout=TIMEOUT,
    )
    store = RedisClaimStore(state)
    await store.open()
    await ticket(store)  # held: the renewer writes every third of the lease
    renewer = state._renewer
    assert renewer is not None
    write = Connection._send_packed_command
    stopping: list[asyncio.Task[None]] = []

    async def written_then_stopped(self: Connection, command: Any) -> None:
        await write(self, command)
        if stopping:
            return
        if how == "close":  # stop() cancels the renewer at its next step
            stopping.append(asyncio.get_running_loop().create_task(store.close()))
        else:  # what asyncio does to the tasks left when its loop ends
            renewer.cancel()
            stopping.append(asyncio.get_running_loop().create_task(asyncio.sleep(0)))

    monkeypatch.setattr(Connection, "_send_packed_command", written_then_stopped)
    try:
        for _ in range(100):  # the renewer's next write (every 0.1 s)
            if stopping:
                break
            await asyncio.sleep(0.05)
        assert stopping, "the renewer wrote nothing"
        # Before: the renewer kept renewing forever, and close() waited for it.
        done, _ = await asyncio.wait([stopping[0], renewer], timeout=10)
        assert renewer in done, "the renewer went on after its cancellation"
        assert stopping[0] in done
    finally:
        monkeypatch.undo()
        if not renewer.done():
            renewer.cancel()
        await store.close()


@pytest.mark.anyio
async def test_redis_close_cancelled_while_it_waits_for_the_renewer_is_cancelled(
    redis_url: str,
) -> None:
    """close() waits for the renewer it cancelled; a cancellation of close() itself then
    must not be taken for the renewer's and swallowed. Before, it was: the task closing
    went on as if never cancelled (at the end of a test, the runner's own task, cancelled
    by asyncio once pytest-timeout had interrupted a teardown, then waited forever for
    its next fixture and asyncio's shutdown with it)."""
    store = RedisClaimStore(
        RedisState(
            connect(redis_url, timeout=TIMEOUT), horizon_seconds=HORIZON, lease_seconds=LEASE
        )
    )
    await store.open()
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() cancelled the renewer and waits for it
    closing.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert closing.cancelled()
    finally:
        await store.close()
