"""claim_acting(): the claim, the dialog taken and `acting` in one trip of the store.

The router decides before it claims, so the claim can carry what used to follow it in
trips of their own (app.state.handlers' take, then acting()): with SQLite one transaction
instead of three before the request leaves. Same exactly-once and crash-safety rules: a
ticket is written with its keys, `acting` is durable before any request, and a dialog
another API holds (or an unfinished claim holds) is not acted on.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from app.intake.events import IncomingCall, SipHeader
from app.state.claims import Answer, ClaimStore, Plan, Ticket
from app.state.handlers import PREFIX
from app.state.sqlite import SqliteClaimStore, SqliteState
from tests.state.test_claims import (
    CONTEXT,
    KEYS,
    LEASE,
    ROUTED,
    Factory,
    crash,
    soon,
    stores,  # noqa: F401 - the fixture
)
from tests.test_router import ACCEPT_WITHOUT_FALLBACK as ACCEPT
from tests.test_router import Harness, headers

DIALOG = PREFIX + "dialog-1"
PLAN = Plan(api="realtime", dialog=DIALOG, context=CONTEXT)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def sqlite_store(path: Path) -> SqliteClaimStore:
    store = SqliteClaimStore(SqliteState(path, horizon_seconds=60, lease_seconds=LEASE))
    await store.open()
    return store


def transactions(store: SqliteClaimStore) -> list[str]:
    """The transactions the store's event-loop connection begins from now on."""
    begun: list[str] = []
    conn = store.state._conn
    assert conn is not None
    conn.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    return begun


def rows(path: Path) -> dict[str, tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        found = conn.execute("SELECT key, phase, context, body FROM claims").fetchall()
    return {key: rest for key, *rest in found}


@pytest.mark.anyio
async def test_every_store_claims_then_replays_the_answer(stores: Factory) -> None:  # noqa: F811
    store: ClaimStore = await stores()
    got = await store.claim_acting(KEYS, soon(), PLAN)
    assert isinstance(got, Ticket) and got.orphan is None
    # A store that could not take the dialog with the claim says so (None): the router
    # then takes it itself.
    assert got.handler in (None, "realtime")
    if got.handler is None:
        assert not got.acting
    await store.finish(got, ROUTED, remember=True, deadline=soon())
    again = await store.claim_acting(KEYS, soon(), PLAN)
    assert again == ROUTED
    if got.handler is not None:
        assert await store.keep_first(DIALOG, Answer(200, {"api": "live"}), soon()) == Answer(
            200, {"api": "realtime"}
        )


@pytest.mark.anyio
async def test_sqlite_claim_dialog_and_acting_in_one_transaction(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "state.db")
    try:
        begun = transactions(store)
        got = await store.claim_acting(KEYS, soon(), PLAN)
        assert isinstance(got, Ticket)
        assert begun == ["BEGIN IMMEDIATE"]
        assert (got.handler, got.acting, got.sent) == ("realtime", True, True)
        found = rows(tmp_path / "state.db")
        for key in KEYS:
            assert found[key][0] == "acting"
        assert found[DIALOG][0] == "done"
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sqlite_acting_is_durable_before_the_request(tmp_path: Path) -> None:
    """A process that dies right after claim_acting leaves an orphan: not acted on again."""
    first = await sqlite_store(tmp_path / "state.db")
    got = await first.claim_acting(KEYS, soon(), PLAN)
    assert isinstance(got, Ticket) and got.acting
    await crash(first)
    second = await sqlite_store(tmp_path / "state.db")
    try:
        await asyncio.sleep(LEASE * 2.5)  # the dead process's heartbeat runs out
        taken = await second.claim_acting(KEYS, soon(), PLAN)
        assert isinstance(taken, Ticket)
        assert taken.orphan == CONTEXT
        assert not taken.acting  # an orphan's claim carries nothing: the router answers it
    finally:
        await second.close()


@pytest.mark.anyio
async def test_sqlite_dialog_of_the_other_api_is_not_acted_on(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "state.db")
    try:
        assert await store.keep_first(DIALOG, Answer(200, {"api": "live"}), soon()) is not None
        got = await store.claim_acting(KEYS, soon(), PLAN)
        assert isinstance(got, Ticket)
        assert (got.handler, got.acting, got.sent) == ("live", False, False)
        assert {rows(tmp_path / "state.db")[key][0] for key in KEYS} == {"claimed"}
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sqlite_dialog_held_by_an_unfinished_claim_is_left_to_the_router(
    tmp_path: Path,
) -> None:
    store = await sqlite_store(tmp_path / "state.db")
    try:
        holder = await store.claim((DIALOG,), soon())
        assert isinstance(holder, Ticket)
        got = await store.claim_acting(KEYS, soon(), PLAN)
        assert isinstance(got, Ticket)
        assert (got.handler, got.acting) == (None, False)
        assert {rows(tmp_path / "state.db")[key][0] for key in KEYS} == {"claimed"}
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sqlite_dry_run_takes_the_dialog_without_acting(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "state.db")
    try:
        got = await store.claim_acting(KEYS, soon(), Plan("realtime", DIALOG, None))
        assert isinstance(got, Ticket)
        assert (got.handler, got.acting) == ("realtime", False)
        assert {rows(tmp_path / "state.db")[key][0] for key in KEYS} == {"claimed"}
    finally:
        await store.close()


# --- the router ---------------------------------------------------------------------------


def incoming(n: int = 1) -> IncomingCall:
    sip = headers(("Call-ID", f"a84b4c76e66710@trunk.example.net-{n}"))
    return IncomingCall(
        webhook_id=f"wh_{n}",
        call_id=f"rtc_{n}",
        sip_headers=tuple(SipHeader(k, v) for k, v in sip),
        media_security="srtp",
    )


@pytest.mark.anyio
async def test_router_one_state_transaction_before_the_request(tmp_path: Path) -> None:
    """Claim, dialog and `acting` were three transactions (three commits, three rounds of
    the event loop) before the accept could leave."""
    h = Harness(ACCEPT)
    store = await sqlite_store(tmp_path / "state.db")
    h.router._store = store
    h.router._handlers._store = store
    begun = transactions(store)
    seen: list[int] = []
    accept = h.controller.accept

    async def counting(call_id: str, body: bytes, deadline: float) -> None:
        seen.append(len(begun))
        await accept(call_id, body, deadline)

    h.controller.accept = counting  # type: ignore[method-assign]
    try:
        answer = await h.router.handle(incoming(), h.rules)
        assert answer.status_code == 200 and answer.body["outcome"] == "accepted"
        assert seen == [1]
        # The answer is kept: a redelivery replays it, nothing is sent again.
        again = await h.router.handle(incoming(), h.rules)
        assert again.body["duplicate"] is True
        assert len(h.controller.requests) == 1
    finally:
        await store.close()


@pytest.mark.anyio
async def test_router_sends_the_request_before_the_call_record() -> None:
    """The decision's record is queued once the request is on its way (the action's first
    wait), and always before the outcome's."""
    h = Harness(ACCEPT)
    order: list[str] = []
    started = h.call_log.started

    def recording(record: Any) -> None:
        order.append(f"record {record.outcome}")
        started(record)

    h.call_log.started = recording  # type: ignore[method-assign]
    accept = h.controller.accept

    async def network(call_id: str, body: bytes, deadline: float) -> None:
        order.append("accept sent")
        await asyncio.sleep(0)  # waiting for the answer
        await accept(call_id, body, deadline)

    h.controller.accept = network  # type: ignore[method-assign]
    await h.router.handle(incoming(1), h.rules)
    assert order == ["accept sent", "record pending", "record accepted"]

    # A controller that never waits: the records keep their order.
    order.clear()
    h.controller.accept = accept  # type: ignore[method-assign]
    await h.router.handle(incoming(2), h.rules)
    assert order == ["record pending", "record accepted"]


@pytest.mark.anyio
async def test_router_counts_the_call_after_its_request() -> None:
    """Metrics (a histogram, counters: a lock and a label lookup each) are not work the
    request waits for."""
    h = Harness(ACCEPT)
    seen: list[float] = []
    accept = h.controller.accept

    async def counting(call_id: str, body: bytes, deadline: float) -> None:
        seen.append(h.metric("switchboard_decision_latency_seconds_count"))
        seen.append(h.metric("switchboard_decisions_total", route="agent", action="accept"))
        await accept(call_id, body, deadline)

    h.controller.accept = counting  # type: ignore[method-assign]
    await h.router.handle(incoming(), h.rules)
    assert seen == [0.0, 0.0]
    assert h.metric("switchboard_decision_latency_seconds_count") == 1.0
    assert h.metric("switchboard_decisions_total", route="agent", action="accept") == 1.0


@pytest.mark.anyio
@pytest.mark.parametrize("plan", [None, PLAN], ids=["claim", "claim_acting"])
async def test_sqlite_an_orphan_taken_by_a_claim_nobody_waits_for_stays_an_orphan(
    tmp_path: Path, plan: Plan | None
) -> None:
    """A claim whose caller is gone (cancelled) before its batch ran is released; one that
    took over a dead process's `acting` must not be released as free: that erased the only
    trace of a request that may have taken effect, and the next delivery sent it again
    (Redis leaves such a claim to its lease: an orphan again)."""
    first = await sqlite_store(tmp_path / "state.db")
    held = await first.claim(KEYS, soon())
    assert isinstance(held, Ticket)
    await first.acting(held, CONTEXT)
    await crash(first)
    second = await sqlite_store(tmp_path / "state.db")
    try:
        await asyncio.sleep(LEASE * 2.5)  # the dead process's heartbeat runs out
        if plan is None:
            gone = asyncio.create_task(second.claim(KEYS, soon()))
        else:
            gone = asyncio.create_task(second.claim_acting(KEYS, soon(), plan))
        await asyncio.sleep(0)  # queued for the next batch
        gone.cancel()  # its caller stops before the batch runs
        with pytest.raises(asyncio.CancelledError):
            await gone
        await asyncio.sleep(0.05)  # the batch, then the release of the claim it granted
        again = await second.claim(KEYS, soon())
        assert isinstance(again, Ticket)
        assert again.orphan == CONTEXT, "the request's trace was erased: it would be sent again"
    finally:
        await second.close()


@pytest.mark.anyio
async def test_sqlite_a_claim_nobody_waits_for_is_released(tmp_path: Path) -> None:
    store = await sqlite_store(tmp_path / "state.db")
    try:
        gone = asyncio.create_task(store.claim_acting(KEYS, soon(), PLAN))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await asyncio.sleep(0.05)
        again = await store.claim(KEYS, soon(0.2))
        assert isinstance(again, Ticket) and again.orphan is None
    finally:
        await store.close()


@pytest.mark.anyio
async def test_sqlite_a_claim_whose_caller_left_before_the_stop_is_released(
    tmp_path: Path,
) -> None:
    """stop() writes what is still queued; a claim_acting granted there to a caller already
    gone was left in `acting` with nothing sent: the next delivery answered 'uncertain' and
    the ringing call was never acted on."""
    first = await sqlite_store(tmp_path / "state.db")
    gone = asyncio.create_task(first.claim_acting(KEYS, soon(), PLAN))
    await asyncio.sleep(0)  # queued for the next batch
    gone.cancel()  # its caller stops...
    first.state.stop()  # ...and so does the process, before the batch ran
    with pytest.raises(asyncio.CancelledError):
        await gone
    second = await sqlite_store(tmp_path / "state.db")
    try:
        await asyncio.sleep(LEASE * 2.5)  # the stopped process's heartbeat runs out
        again = await second.claim_acting(KEYS, soon(), PLAN)
        assert isinstance(again, Ticket)
        assert again.orphan is None and again.acting, "answered 'uncertain': the call is lost"
    finally:
        await second.close()
