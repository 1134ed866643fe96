"""A delivery stopped once its request may have been sent is never acted on again.

`acting` is written before the first request so that a crash after it is answered
'uncertain' on redelivery. A delivery that does not crash but stops there all the same (an
exception of ours after the API's answer, a cancellation while the process stops) must
leave the same thing behind: it used to free its claim as if nothing had been sent, and
the redelivery sent the accept again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.intake.events import IncomingCall, SipHeader
from app.state.claims import ClaimStore, MemoryClaimStore
from app.state.redis import connect
from app.state.redisstore import RedisClaimStore, RedisState
from app.state.sqlite import SqliteClaimStore, SqliteState
from tests.test_router import ACCEPT_WITH_FALLBACK, Harness, headers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """The router on each store (SQLite and Redis take claim, dialog and `acting` in one
    trip)."""
    h = Harness(ACCEPT_WITH_FALLBACK)
    store: ClaimStore
    if request.param == "sqlite":
        store = SqliteClaimStore(SqliteState(tmp_path / "state.db", horizon_seconds=60))
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        store = RedisClaimStore(RedisState(connect(url), horizon_seconds=60))
    else:
        store = MemoryClaimStore(horizon_seconds=60)
    await store.open()
    h.router._store = store
    h.router._handlers._store = store
    try:
        yield h
    finally:
        await store.close()


def incoming(webhook: str) -> IncomingCall:
    sip = headers(("Call-ID", "a84b4c76e66710@trunk.example.net"))
    return IncomingCall(
        webhook_id=webhook,
        call_id="rtc_1",
        sip_headers=tuple(SipHeader(k, v) for k, v in sip),
        media_security="srtp",
    )


class Defect(Exception):
    pass


@pytest.mark.anyio
async def test_an_exception_after_the_request_is_not_sent_again(harness: Harness) -> None:
    h = harness
    accept = h.controller.accept

    async def answered_then_failed(call_id: str, body: bytes, deadline: float) -> None:
        await accept(call_id, body, deadline)  # the API accepted the call
        raise Defect("a defect of ours after the answer")

    h.controller.accept = answered_then_failed  # type: ignore[method-assign]
    with pytest.raises(Defect):
        await h.router.handle(incoming("wh_1"), h.rules)
    assert len(h.controller.requests) == 1
    await asyncio.sleep(0)  # what the loop had scheduled (the decision's record) has run
    # The call's record says so, not 'active' for ever (the decision's record, queued as
    # the request left, must not land after it).
    record = await h.call_log.get("rtc_1")
    assert record is not None and (record.status, record.outcome) == ("ended", "uncertain")

    h.controller.accept = accept  # type: ignore[method-assign]
    for webhook in ("wh_1", "wh_2"):  # OpenAI's redelivery, another delivery of the call
        again = await h.router.handle(incoming(webhook), h.rules)
        assert again.status_code == 200
        assert again.body["outcome"] == "uncertain"
    assert len(h.controller.requests) == 1, "the accept was sent again"


@pytest.mark.anyio
async def test_a_cancellation_during_the_request_is_not_sent_again(harness: Harness) -> None:
    h = harness
    sent = asyncio.Event()

    async def waiting(call_id: str, body: bytes, deadline: float) -> Any:
        h.controller.requests.append(("accept", call_id))
        sent.set()
        await asyncio.Event().wait()  # the answer never comes before the stop

    accept = h.controller.accept
    h.controller.accept = waiting  # type: ignore[method-assign]
    first = asyncio.create_task(h.router.handle(incoming("wh_1"), h.rules))
    await sent.wait()
    first.cancel()  # the server stopping (its graceful timeout over)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(h.controller.requests) == 1

    h.controller.accept = accept  # type: ignore[method-assign]
    again = await h.router.handle(incoming("wh_1"), h.rules)
    assert again.body["outcome"] == "uncertain"
    assert len(h.controller.requests) == 1, "the accept was sent again"
    # The call's record says so, not 'active' for ever.
    record = await h.call_log.get("rtc_1")
    assert record is not None and (record.status, record.outcome) == ("ended", "uncertain")


@pytest.mark.anyio
async def test_an_exception_before_the_request_is_acted_on_again(harness: Harness) -> None:
    """With SQLite and Redis `acting` is written with the claim, before the last steps of
    the decision: a failure there sent nothing, and the redelivery acts."""
    h = harness
    numbers = h.router._numbers

    def failing(identity: Any) -> Any:
        raise Defect("a defect of ours before the request")

    h.router._numbers = failing  # type: ignore[method-assign]
    with pytest.raises(Defect):
        await h.router.handle(incoming("wh_1"), h.rules)
    assert h.controller.requests == []

    h.router._numbers = numbers  # type: ignore[method-assign]
    again = await h.router.handle(incoming("wh_1"), h.rules)
    assert again.body["outcome"] == "accepted"
    assert len(h.controller.requests) == 1
