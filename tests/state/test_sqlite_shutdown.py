"""SqliteState.stop() against the batches the event loop writes.

stop() runs in a worker thread (SqliteClaimStore.close) while the event loop may be in the
middle of a batch's transaction on the same connection. Before, stop() closed the
connection under it: the batch's COMMIT then met a closed database (its writes rolled
back, its callers told StateUnavailable), and a close that came while the loop was inside
a statement (SQLite's step, the GIL released) crashed the process (a segmentation fault:
Python's sqlite3 reads the connection it has just cleared). The interleavings are forced
with hooks, not timing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import app.state.sqlite as state_sqlite
from app.state.claims import StateUnavailable, Ticket
from app.state.sqlite import SqliteClaimStore, SqliteState
from tests.state.test_claim_acting import PLAN, rows
from tests.state.test_claims import KEYS, ROUTED, soon
from tests.support import InThread

HANG = 30.0
"""Only a hang waits this long (a guard, not a measure)."""


async def quiet_store(path: Path, store_timeout: float = 0.5) -> SqliteClaimStore:
    """A store whose maintenance thread stays asleep (a long lease): its heartbeat would
    wait for the write lock these tests hold, and stop() for it."""
    state = SqliteState(path, horizon_seconds=60, lease_seconds=600, timeout=store_timeout)
    store = SqliteClaimStore(state)
    await store.open()
    return store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Stopper(InThread):
    """stop() in a thread of its own, as SqliteClaimStore.close() runs it; `reached` is set
    once it has gone as far as it can without the event loop: it returned, or it asked
    the loop for something (call_soon_threadsafe from its thread)."""

    def __init__(self, stop: Callable[[], None], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(stop, "stop()", name="stopper", hang=HANG)
        self._ask = loop.call_soon_threadsafe

    def call_soon_threadsafe(
        self, callback: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> asyncio.Handle:
        if threading.current_thread() is self.thread:
            self.reached.set()
        return self._ask(callback, *args, **kwargs)


@pytest.mark.anyio
async def test_stop_from_a_thread_waits_for_the_batch_the_loop_is_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() is called while the loop is inside a batch's transaction (the claim written,
    not yet committed). Before, it closed the connection there: the COMMIT failed, the
    claim was rolled back and its caller told the store was unavailable (and had the loop
    been inside a statement, the process crashed). Now the batch commits first, the
    caller gets its ticket, and only then is the connection closed."""
    path = tmp_path / "state.db"
    store = await quiet_store(path)
    loop = asyncio.get_running_loop()
    stopper = Stopper(store.state.stop, loop)
    monkeypatch.setattr(loop, "call_soon_threadsafe", stopper.call_soon_threadsafe)
    claim_acting = state_sqlite._claim_acting

    def written_then_stopped(conn: sqlite3.Connection, *args: Any) -> Any:
        got = claim_acting(conn, *args)  # in the batch's transaction, on the loop
        stopper.thread.start()
        assert stopper.reached.wait(HANG), "stop() neither returned nor asked the loop"
        return got

    monkeypatch.setattr(state_sqlite, "_claim_acting", written_then_stopped)
    try:
        got = await store.claim_acting(KEYS, soon(), PLAN)
    except StateUnavailable as exc:
        pytest.fail(f"the batch met a closed connection: {exc}")
    finally:
        monkeypatch.undo()
        stopper.join()
    assert isinstance(got, Ticket) and got.acting
    assert not store.state.running
    assert {key: phase for key, (phase, *_) in rows(path).items() if key in KEYS} == {
        key: "acting" for key in KEYS
    }, "the claim was not committed"


class LockedClaim:
    """A claim_acting waiting for another process's write lock (tried again later, see
    _busy), and a stop() in a thread; `handed` is set once the loop has run what stop()
    asked of it (the hand-over first)."""

    def __init__(self, store: SqliteClaimStore, path: Path) -> None:
        self.store = store
        self.other = sqlite3.connect(path, isolation_level=None)
        self.handed = asyncio.Event()
        self.stopper = Stopper(store.state.stop, asyncio.get_running_loop())
        self.claiming: asyncio.Task[Any] | None = None

    async def start(self, monkeypatch: pytest.MonkeyPatch) -> asyncio.Task[Any]:
        self.other.execute("BEGIN IMMEDIATE")  # another process writes
        waiting = asyncio.Event()
        busy = self.store.state._busy

        def locked(jobs: list[Any]) -> None:
            busy(jobs)  # the batch waits for the next try
            waiting.set()

        monkeypatch.setattr(self.store.state, "_busy", locked)
        claiming = asyncio.create_task(self.store.claim_acting(KEYS, soon(HANG), PLAN))
        await waiting.wait()
        loop = asyncio.get_running_loop()
        ask = loop.call_soon_threadsafe

        def asked(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
            handle = ask(callback, *args, **kwargs)
            if threading.current_thread() is self.stopper.thread:
                ask(self.handed.set)  # after the loop ran what stop() asked for
            return handle

        monkeypatch.setattr(loop, "call_soon_threadsafe", asked)
        self.stopper.thread.start()
        # The loop hands the connection over (or, before, the caller was answered)...
        await asyncio.wait(
            [asyncio.ensure_future(self.handed.wait()), claiming],
            return_when=asyncio.FIRST_COMPLETED,
        )
        return claiming

    def unlock(self) -> None:
        self.other.execute("COMMIT")  # ...then the other process's write ends

    def close(self) -> None:
        self.other.close()


@pytest.mark.anyio
async def test_stop_from_a_thread_writes_what_waits_for_a_locked_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch waiting for another process's write lock is taken by stop() from the loop
    and written once the lock is free: its caller gets its ticket, and an operation after
    the stop is refused, not queued for nobody. Before, the loop's next try found the
    connection gone and failed it, although stop() was about to write it."""
    path = tmp_path / "state.db"
    # Locked for as long as the hand-over takes: its retries must not give up before.
    store = await quiet_store(path, store_timeout=HANG)
    locked = LockedClaim(store, path)
    try:
        claiming = await locked.start(monkeypatch)
        locked.unlock()
        got = await claiming
    finally:
        monkeypatch.undo()
        locked.close()
        await asyncio.to_thread(locked.stopper.join)
    assert isinstance(got, Ticket) and got.acting
    assert {key for key, (phase, *_) in rows(path).items() if phase == "acting"} >= set(KEYS)
    with pytest.raises(StateUnavailable):
        await store.claim_acting(KEYS, soon(), PLAN)


@pytest.mark.anyio
async def test_results_of_the_last_write_reach_a_loop_blocked_past_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop hands the connection over, then is blocked past CLOSE_TIMEOUT while stop()
    writes what was queued: stop() does not wait for it without end, and the caller still
    gets its result once the loop runs again (not left waiting forever)."""
    path = tmp_path / "state.db"
    store = await quiet_store(path, store_timeout=HANG)
    locked = LockedClaim(store, path)
    try:
        claiming = await locked.start(monkeypatch)
        # Handed over; stop() waits for the lock, then for the loop to take the results.
        monkeypatch.setattr(state_sqlite, "CLOSE_TIMEOUT", 0.2)
        locked.unlock()
        locked.stopper.join()  # on the loop's thread: the loop is blocked until stop() returns
        async with asyncio.timeout(HANG):  # a guard: before, the caller waited forever
            got = await claiming
    finally:
        monkeypatch.undo()
        locked.close()
        await asyncio.to_thread(locked.stopper.join)
    assert isinstance(got, Ticket) and got.acting
    assert not store.state.running


@pytest.mark.anyio
async def test_stop_gives_up_on_a_loop_that_does_not_hand_over_and_leaves_it_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop blocked (here, inside a batch) past CLOSE_TIMEOUT: stop() says so and leaves
    the connection to it, open: the batch commits, and a later stop() closes it."""
    path = tmp_path / "state.db"
    store = await quiet_store(path)
    monkeypatch.setattr(state_sqlite, "CLOSE_TIMEOUT", 0.2)
    stopper = Stopper(store.state.stop, asyncio.get_running_loop())  # returns: `reached`
    claim_acting = state_sqlite._claim_acting

    def blocked_until_stopped(conn: sqlite3.Connection, *args: Any) -> Any:
        got = claim_acting(conn, *args)
        stopper.thread.start()
        assert stopper.reached.wait(HANG), "stop() waited for the loop without end"
        return got

    monkeypatch.setattr(state_sqlite, "_claim_acting", blocked_until_stopped)
    got = await store.claim_acting(KEYS, soon(), PLAN)
    with pytest.raises(state_sqlite.LoopNotHandingOver):
        stopper.join()
    assert isinstance(got, Ticket) and got.acting
    assert store.state.running
    await store.close()
    assert not store.state.running
    assert {key for key, (phase, *_) in rows(path).items() if phase == "acting"} >= set(KEYS)


async def _not_kept_in_time(path: Path, lease_seconds: float) -> SqliteClaimStore:
    """A store whose answer could not be kept: another process held the file's write lock
    past the store timeout, then let go."""
    state = SqliteState(path, horizon_seconds=60, lease_seconds=lease_seconds, timeout=0.05)
    store = SqliteClaimStore(state)
    await store.open()
    ticket = await store.claim_acting(KEYS, soon(), PLAN)
    assert isinstance(ticket, Ticket) and ticket.acting
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateUnavailable):
            await store.finish(ticket, ROUTED, remember=True, deadline=soon())
        other.execute("COMMIT")
    finally:
        other.close()
    return store


@pytest.mark.anyio
async def test_an_answer_not_kept_in_time_is_kept_by_the_stop(tmp_path: Path) -> None:
    """Left `acting`, the heartbeat held it while the process lived (every redelivery
    503), then a redelivery answered 'uncertain' after a graceful stop."""
    store = await _not_kept_in_time(tmp_path / "state.db", lease_seconds=600)
    await store.close()
    assert {phase for phase, *_ in rows(tmp_path / "state.db").values()} == {"done"}
    again = await (await quiet_store(tmp_path / "state.db")).claim(KEYS, soon())
    assert again == ROUTED


@pytest.mark.anyio
async def test_an_answer_not_kept_in_time_is_kept_once_the_file_takes_it(tmp_path: Path) -> None:
    store = await _not_kept_in_time(tmp_path / "state.db", lease_seconds=0.3)
    try:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + HANG
        while rows(tmp_path / "state.db")[KEYS[0]][0] != "done":
            assert loop.time() < give_up, "the answer was never kept"
            await asyncio.sleep(0.02)
    finally:
        await store.close()
