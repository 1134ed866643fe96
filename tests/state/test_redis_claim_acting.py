"""claim_acting() on Redis: the claim, the dialog taken and `acting` in one Lua script.

The separate steps cost four round trips before the request could leave (the claim, the
dialog's keep_first as a claim then a finish, acting); the script is one (and keep_first
alone, which a rate-limited route's delivery still takes, one too). Counted on a real
redis-server with MONITOR: what the server receives from its clients, the commands its
scripts run inside left out. The rules are those of the separate steps, checked on every
shared store (SQLite does the same in one transaction): a duplicate waits for the first's
answer, an expired claim is taken over (an `acting` one as an orphan's, never acted on
again), a dialog another API or an unfinished claim holds is not acted on, the 'uncertain'
mark stays. Redis alone: a reply lost after the script ran must not leave an `acting`
nobody acts on (the redelivery would answer 'uncertain' and the call would never be
answered).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from app.state.claims import (
    IN_PROGRESS,
    Answer,
    ClaimStore,
    Plan,
    StateUnavailable,
    Ticket,
)
from app.state.handlers import PREFIX
from app.state.redis import connect
from app.state.redisstore import RedisClaimStore, RedisState
from tests.state.test_claims import (
    CONTEXT,
    KEYS,
    LEASE,
    RETRY,
    ROUTED,
    TIMEOUT,
    Factory,
    crash,
    shared,
    soon,
    stores,  # noqa: F401 - the fixture
)
from tests.test_router import ACCEPT_WITHOUT_FALLBACK as ACCEPT
from tests.test_router import Harness

DIALOG = PREFIX + "dialog-1"
PLAN = Plan(api="realtime", dialog=DIALOG, context=CONTEXT)
LIVE = Answer(200, {"api": "live"})
REALTIME = Answer(200, {"api": "realtime"})
SLOW = LEASE * 3
"""The lease of a store whose reply is lost: released at its renewal (a third of it),
well before it runs out (the claim is then taken over: an orphan's, when it was `acting`)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def shared_only(factory: Factory) -> None:
    if not shared(factory):
        pytest.skip("the memory store claims alone (the router takes each step)")


async def planned(store: ClaimStore, plan: Plan = PLAN, keys: tuple[str, ...] = KEYS) -> Ticket:
    got = await store.claim_acting(keys, soon(), plan)
    assert isinstance(got, Ticket), got
    return got


# --- the same rules as the separate steps, on every shared store ---------------------------


@pytest.mark.anyio
async def test_the_dialog_is_taken_and_acting_is_durable_before_the_request(
    stores: Factory,  # noqa: F811
) -> None:
    """A process that dies right after claim_acting leaves an orphan: not acted on again."""
    shared_only(stores)
    first = await stores()
    got = await planned(first)
    assert (got.handler, got.acting, got.sent, got.orphan) == ("realtime", True, True, None)
    await crash(first)
    taker = await stores()
    taken = await planned(taker)  # waits for the lease to run out (within its deadline)
    assert taken.orphan == CONTEXT
    assert (taken.handler, taken.acting) == (None, False)  # an orphan's claim carries nothing
    assert await taker.keep_first(DIALOG, LIVE, soon()) == REALTIME


@pytest.mark.anyio
async def test_a_dialog_of_the_other_api_is_not_acted_on(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    first = await stores()
    assert await first.keep_first(DIALOG, LIVE, soon()) == LIVE
    got = await planned(first)
    assert (got.handler, got.acting, got.sent) == ("live", False, False)
    await crash(first)
    # Left `claimed`: nothing was sent, the next delivery acts.
    again = await planned(await stores())
    assert again.orphan is None and again.handler == "live"


@pytest.mark.anyio
async def test_a_dialog_held_by_an_unfinished_claim_is_left_to_the_router(
    stores: Factory,  # noqa: F811
) -> None:
    shared_only(stores)
    store = await stores()
    holder = await store.claim((DIALOG,), soon())
    assert isinstance(holder, Ticket)
    got = await planned(store)
    assert (got.handler, got.acting, got.sent) == (None, False, False)
    # The router then takes it as take() does: waits for the holder's answer.
    await store.finish(holder, LIVE, remember=True)
    assert await store.keep_first(DIALOG, REALTIME, soon()) == LIVE


@pytest.mark.anyio
async def test_a_dialog_claim_of_a_dead_process_is_taken_over(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    dead = await stores()
    holder = await dead.claim((DIALOG,), soon())
    assert isinstance(holder, Ticket)
    await crash(dead)
    store = await stores()
    await asyncio.sleep(LEASE * 2.5)  # the dead process's lease runs out
    got = await planned(store)
    assert (got.handler, got.acting) == ("realtime", True)
    assert await store.keep_first(DIALOG, LIVE, soon()) == REALTIME


@pytest.mark.anyio
async def test_a_dry_run_takes_the_dialog_without_acting(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    first = await stores()
    got = await planned(first, Plan("realtime", DIALOG, None))
    assert (got.handler, got.acting, got.sent) == ("realtime", False, False)
    await crash(first)
    again = await planned(await stores())
    assert again.orphan is None and again.acting


@pytest.mark.anyio
async def test_without_a_dialog_to_take_acting_is_written(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    store = await stores()
    got = await planned(store, Plan("realtime", None, CONTEXT))
    assert (got.handler, got.acting, got.sent) == ("realtime", True, True)
    assert await store.keep_first(DIALOG, LIVE, soon()) == LIVE  # no dialog was taken


@pytest.mark.anyio
async def test_the_uncertain_mark_stays(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    store = await stores()
    first = await planned(store)
    await store.finish(first, Answer(503, {"outcome": "timeout"}), remember=False, uncertain=True)
    again = await planned(await stores(), keys=("webhook:wh_2", "call:rtc_1"))
    assert again.uncertain and again.acting and again.handler == "realtime"


@pytest.mark.anyio
async def test_a_forgotten_answer_lets_the_redelivery_act(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    store = await stores()
    first = await planned(store)
    await store.finish(first, Answer(503, {"outcome": "upstream_error"}), remember=False)
    again = await planned(await stores())
    assert again.claim_id != first.claim_id
    assert (again.orphan, again.uncertain, again.handler, again.acting) == (
        None,
        False,
        "realtime",
        True,
    )


@pytest.mark.anyio
async def test_duplicates_wait_for_the_first_answer(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    store = await stores()
    other = await stores()
    first = await planned(store)
    waiting = [
        asyncio.create_task(s.claim_acting(KEYS, soon(5), PLAN)) for s in (store, other, store)
    ]
    await asyncio.sleep(0.2)
    assert not any(task.done() for task in waiting)  # the owner holds, everyone waits
    await store.finish(first, ROUTED, remember=True)
    assert await asyncio.gather(*waiting) == [ROUTED] * 3


@pytest.mark.anyio
async def test_a_duplicate_past_its_deadline_gets_in_progress(stores: Factory) -> None:  # noqa: F811
    shared_only(stores)
    store = await stores()
    first = await planned(store)
    for waiter in (store, await stores()):
        assert await waiter.claim_acting(KEYS, soon(0.3), PLAN) == IN_PROGRESS
    await store.finish(first, ROUTED, remember=True)
    assert await store.claim_acting(KEYS, soon(), PLAN) == ROUTED


@pytest.mark.anyio
async def test_a_dead_owner_that_sent_nothing_is_taken_over_and_acted_on(
    stores: Factory,  # noqa: F811
) -> None:
    shared_only(stores)
    dead = await stores()
    first = await dead.claim(KEYS, soon())
    assert isinstance(first, Ticket)
    await crash(dead)
    taker = await stores()
    got = await planned(taker)  # waits for the lease to run out, then acts
    assert (got.orphan, got.handler, got.acting) == (None, "realtime", True)
    assert got.claim_id != first.claim_id


# --- Redis: one round trip ------------------------------------------------------------------

Upto = Callable[[str], Awaitable[list[tuple[str, ...]]]]


@contextlib.asynccontextmanager
async def monitored(url: str) -> AsyncIterator[Upto]:
    """`upto(label)`: the commands (name and first argument) the server received from its
    clients since the last call, up to a marker sent now; none of those a script ran."""
    watcher, marker = connect(url, timeout=TIMEOUT), connect(url, timeout=TIMEOUT)
    await marker.ping()  # its connection is set up before the count begins
    try:
        async with watcher.monitor() as monitor:

            async def upto(label: str) -> list[tuple[str, ...]]:
                await marker.echo(f"marker:{label}")
                seen: list[tuple[str, ...]] = []
                while True:
                    got = await asyncio.wait_for(monitor.next_command(), TIMEOUT)
                    if got["command"] == f"ECHO marker:{label}":
                        return seen
                    if got["client_type"] != "lua":
                        seen.append(tuple(got["command"].split()[:2]))

            yield upto
    finally:
        await watcher.aclose()
        await marker.aclose()


async def redis_store(url: str, *, lease: float = 30.0) -> RedisClaimStore:
    """A long lease: no renewal among the commands counted."""
    state = RedisState(
        connect(url, timeout=TIMEOUT), horizon_seconds=60, lease_seconds=lease, timeout=TIMEOUT
    )
    store = RedisClaimStore(state)
    await store.open()
    return store


async def before_the_accept(h: Harness, url: str, store: RedisClaimStore) -> list[Any]:
    """The commands Redis receives before the accept leaves, for a call after a first one
    (which loaded the scripts), and those after it (the answer kept)."""
    h.router._store = store
    h.router._handlers._store = store
    seen: list[list[tuple[str, ...]]] = []
    accept = h.controller.accept
    async with monitored(url) as upto:

        async def counting(call_id: str, body: bytes, deadline: float) -> None:
            seen.append(await upto("accept"))
            await accept(call_id, body, deadline)

        h.controller.accept = counting  # type: ignore[method-assign]
        first = await h.call(("Call-ID", "a84b4c76e66710@trunk.example.net-1"))
        assert first["outcome"] == "accepted", first
        await upto("warm")
        seen.clear()
        second = await h.call(("Call-ID", "a84b4c76e66710@trunk.example.net-2"))
        assert second["outcome"] == "accepted", second
        seen.append(await upto("end"))
    return seen


@pytest.mark.anyio
async def test_router_one_round_trip_before_the_request(redis_url: str) -> None:
    """Claim, dialog and `acting` were four commands (the dialog's keep_first two) before
    the accept could leave: now one EVALSHA, then the finish after it."""
    h = Harness(ACCEPT)
    store = await redis_store(redis_url)
    try:
        before, after = await before_the_accept(h, redis_url, store)
        state = store.state
        assert before == [("EVALSHA", state.claim_acting_script.sha)]
        assert after == [("EVALSHA", state.finish_script.sha)]
        assert len(h.controller.requests) == 2
        # The dialog was taken with the claim: the other API's event is told who handles it.
        dialogs = [key async for key in state.client.scan_iter(f"{state.prefix}claim:dialog:*")]
        assert len(dialogs) == 2
    finally:
        await store.close()


@pytest.mark.anyio
async def test_router_a_rate_limited_route_claims_alone(redis_url: str) -> None:
    """The limit is counted after the claim: the claim carries nothing, each step follows
    in a trip of its own (as before)."""
    h = Harness(
        """
        routes:
          - name: agent
            accept: {model: gpt-realtime}
            rate_limit: {calls: 100, per: 1m}
        """
    )
    store = await redis_store(redis_url)
    try:
        before, after = await before_the_accept(h, redis_url, store)
        state = store.state
        assert before == [
            ("EVALSHA", state.claim_script.sha),
            ("EVALSHA", state.keep_first_script.sha),  # was a claim, then a finish
            ("EVALSHA", state.acting_script.sha),
        ]
        assert after == [("EVALSHA", state.finish_script.sha)]
    finally:
        await store.close()


# --- Redis: a lost reply ---------------------------------------------------------------------


async def losing_replies(store: RedisClaimStore, lose: Callable[[], Awaitable[object]]) -> None:
    """The store's next claim_acting runs on Redis, then its reply is lost (`lose`)."""
    state = store.state
    call = state.call

    async def lost(script: Any, keys: list[str], args: list[Any], deadline: float | None) -> Any:
        got = await call(script, keys, args, deadline)
        if script is state.claim_acting_script:
            state.call = call  # type: ignore[method-assign]
            await lose()
        return got

    state.call = lost  # type: ignore[method-assign]


async def timed_out() -> None:
    raise StateUnavailable("Redis did not answer in time")


@pytest.mark.anyio
async def test_an_acting_whose_reply_timed_out_is_released(redis_url: str) -> None:
    store = await redis_store(redis_url, lease=SLOW)
    other = await redis_store(redis_url, lease=LEASE)
    try:
        await losing_replies(store, timed_out)
        with pytest.raises(StateUnavailable):
            await store.claim_acting(KEYS, soon(), PLAN)
        # Polls: freed within a third of the lease, or taken over once it runs out.
        again = await planned(other)
        assert again.orphan is None, "answered 'uncertain': the ringing call is never acted on"
        assert again.acting
    finally:
        await store.close()
        await other.close()


@pytest.mark.anyio
async def test_an_acting_whose_caller_was_cancelled_is_released(redis_url: str) -> None:
    store = await redis_store(redis_url, lease=SLOW)
    other = await redis_store(redis_url, lease=LEASE)
    try:
        await losing_replies(store, asyncio.Event().wait)  # the reply never read
        gone = asyncio.create_task(store.claim_acting(KEYS, soon(), PLAN))
        await asyncio.sleep(0.1)
        gone.cancel()  # its caller stops
        with pytest.raises(asyncio.CancelledError):
            await gone
        again = await planned(other)
        assert again.orphan is None and again.acting
    finally:
        await store.close()
        await other.close()


@pytest.mark.anyio
async def test_an_acting_cancelled_as_the_process_stops_is_released(redis_url: str) -> None:
    """stop() writes what is still queued: the release was left to the renewal that the
    stop ends, and the next delivery answered 'uncertain'."""
    store = await redis_store(redis_url, lease=LEASE)
    other = await redis_store(redis_url, lease=LEASE)
    try:
        await losing_replies(store, asyncio.Event().wait)
        gone = asyncio.create_task(store.claim_acting(KEYS, soon(), PLAN))
        await asyncio.sleep(0.1)
        gone.cancel()  # its caller stops...
        with pytest.raises(asyncio.CancelledError):
            await gone
        await store.close()  # ...and so does the process
        again = await planned(other)
        assert again.orphan is None, "answered 'uncertain': the ringing call is never acted on"
        assert again.acting
    finally:
        await other.close()


@pytest.mark.anyio
async def test_an_orphan_taken_over_by_a_lost_reply_stays_an_orphan(redis_url: str) -> None:
    """Freeing it would erase the only trace of a request that may have taken effect."""
    dead = await redis_store(redis_url, lease=LEASE)
    held = await dead.claim(KEYS, soon())
    assert isinstance(held, Ticket)
    await dead.acting(held, CONTEXT)
    await crash(dead)
    store = await redis_store(redis_url, lease=LEASE)
    other = await redis_store(redis_url, lease=LEASE)
    try:
        await asyncio.sleep(LEASE * 1.5)  # the dead process's lease runs out
        await losing_replies(store, timed_out)
        with pytest.raises(StateUnavailable):
            await store.claim_acting(KEYS, soon(), PLAN)
        again = await planned(other)
        assert again.orphan == CONTEXT, "the request's trace was erased: it would be sent again"
    finally:
        await dead.close()
        await store.close()
        await other.close()


@pytest.mark.anyio
async def test_a_script_run_twice_is_released_not_left_acting(redis_url: str) -> None:
    """redis-py sends a command again after a connection error, which may follow its reply:
    the second run finds its own claim. Nobody holds that one: it is released, and the
    delivery gets the claim after it (not an orphan's)."""
    store = await redis_store(redis_url, lease=SLOW)
    try:
        state = store.state
        call = state.call

        async def twice(
            script: Any, keys: list[str], args: list[Any], deadline: float | None
        ) -> Any:
            if script is state.claim_acting_script:
                state.call = call  # type: ignore[method-assign]
                await call(script, keys, args, deadline)  # its reply lost on the way
            return await call(script, keys, args, deadline)

        state.call = twice  # type: ignore[method-assign]
        got = await planned(store)
        assert (got.orphan, got.acting) == (None, True)
    finally:
        await store.close()


# --- Redis: concurrent deliveries in one process ---------------------------------------------


@pytest.mark.anyio
async def test_a_duplicate_whose_reply_is_read_before_the_owners_waits_for_its_answer(
    redis_url: str,
) -> None:
    """Two deliveries of one process claim at once; the duplicate's 'busy' reply is read
    before the owner's ticket (replies on different connections come in any order, as
    under load). It waits for the owner's answer in this process. Before, the owner's claim
    was known here only once its reply was read: the duplicate polled Redis instead, and
    when the owner's answer was not kept (a retry: the claim freed) it claimed afresh and
    acted too."""
    store = await redis_store(redis_url)
    try:
        state = store.state
        call = state.call
        duplicate_read = asyncio.Event()
        calls = 0

        async def owner_read_last(
            script: Any, keys: list[str], args: list[Any], deadline: float | None
        ) -> Any:
            nonlocal calls
            calls += 1
            mine = calls
            got = await call(script, keys, args, deadline)
            if mine == 1:
                await duplicate_read.wait()  # the owner's reply, read after the duplicate's
            elif mine == 2:
                assert got[0] == "busy", got
                duplicate_read.set()
            return got

        state.call = owner_read_last  # type: ignore[method-assign]
        owner = asyncio.create_task(store.claim(KEYS, soon(5)))
        await asyncio.sleep(0.05)  # the owner's script has run; its reply is held
        duplicate = asyncio.create_task(store.claim(KEYS, soon(5)))
        ticket = await owner
        assert isinstance(ticket, Ticket)
        state.call = call  # type: ignore[method-assign]
        # Not kept (a retry): the claim is freed, before the duplicate would ask again.
        await store.finish(ticket, RETRY, remember=False)
        assert await duplicate == RETRY, "the duplicate claimed afresh and would act again"
    finally:
        await store.close()
