"""One handler per call across the Realtime and GPT-Live events of one SIP INVITE.

A real CallRouter with a real claim store (memory, then SQLite and Redis, whose
`claim_acting` takes the dialog with the claim) and one recording controller per API; each
scenario delivers the two events of one call (same INVITE headers, an `rtc_` and a `live_`
id) in some order or concurrently and checks that exactly one API acted.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.intake.events import Api, IncomingCall, SipHeader
from app.ops.metrics import Metrics
from app.router import CallRouter, Pairing
from app.rules import compile_rules
from app.sip.identity import IdentityPolicy
from app.state.claims import Answer, ClaimStore, MemoryClaimStore
from app.state.ratelimit import RateLimiter, RateLimits
from app.state.redis import connect
from app.state.redisstore import RedisClaimStore, RedisRateLimiter, RedisState
from app.state.sqlite import SqliteClaimStore, SqliteRateLimiter, SqliteState

ROUTES = """
sessions:
  live-desk:
    type: live
    model: gpt-live-1
    instructions: You answer for Example Co.
  realtime-desk:
    model: gpt-realtime
    instructions: You are the front desk.
routes:
  - name: live-line
    match: {called: "+18005550100"}
    accept: live-desk
  - name: realtime-line
    match: {called: "+18005550101"}
    accept: realtime-desk
  - name: live-with-fallback
    match: {called: "+18005550102"}
    accept: live-desk
    fallback: {reject: {status_code: 486}}
  - name: blocked
    match: {called: "+18005550103"}
    reject: {status_code: 403}
"""
RULES = compile_rules(ROUTES, "routes.yaml", region="US")
_ids = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


_sqlite: list[Path] = []
"""The SQLite store's directory while a test runs on it (the `store` fixture)."""
_redis: list[str] = []
"""The Redis server's URL while a test runs on it."""
_opened: list[SqliteState | RedisState] = []


@pytest.fixture(autouse=True, params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every scenario on each store the router can have: SQLite's and Redis's claim carry
    the dialog and `acting` (one transaction, one script), the memory store's takes each
    step in turn."""
    if request.param == "sqlite":
        _sqlite.append(tmp_path)
    elif request.param == "redis":
        _redis.append(request.getfixturevalue("redis_url"))
    try:
        yield request.param
    finally:
        _sqlite.clear()
        _redis.clear()
        while _opened:
            opened = _opened.pop()
            if isinstance(opened, RedisState):
                await opened.stop()
            else:
                opened.stop()


def new_store() -> ClaimStore:
    return new_state()[0]


def new_state() -> tuple[ClaimStore, RateLimits]:
    """The claim store and the rate limits on it, as the service builds them."""
    if _redis:
        # Not started (no lease renewal): a scenario is over long before a lease (5 s).
        redis_state = RedisState(connect(_redis[0]), horizon_seconds=300, prefix=f"t{next(_ids)}:")
        _opened.append(redis_state)
        return RedisClaimStore(redis_state), RedisRateLimiter(redis_state)
    if not _sqlite:
        return MemoryClaimStore(horizon_seconds=300), RateLimiter()
    state = SqliteState(_sqlite[0] / f"state-{next(_ids)}.db", horizon_seconds=300)
    state.start()  # blocking, as a test may: the router's store is ready
    _opened.append(state)
    return SqliteClaimStore(state), SqliteRateLimiter(state)


class Recorder:
    """One API's call control: records (operation, call id, detail)."""

    def __init__(self, api: Api, delay: float = 0.0) -> None:
        self.api = api
        self.delay = delay
        self.requests: list[tuple[str, str, Any]] = []

    async def _note(self, operation: str, call_id: str, detail: Any) -> None:
        self.requests.append((operation, call_id, detail))
        await asyncio.sleep(self.delay)

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None:
        await self._note("accept", call_id, json.loads(body))

    async def reject(self, call_id: str, status_code: int, deadline: float) -> None:
        await self._note("reject", call_id, status_code)

    async def refer(self, call_id: str, target_uri: str, deadline: float) -> None:
        await self._note("refer", call_id, target_uri)

    async def hangup(self, call_id: str, deadline: float) -> None:
        await self._note("hangup", call_id, None)


class Harness:
    def __init__(
        self,
        expected: frozenset[Api] = frozenset(("realtime", "live")),
        wait: float = 0.3,
        delay: float = 0.0,
        state: tuple[ClaimStore, RateLimits] | None = None,
    ) -> None:
        self.realtime = Recorder("realtime", delay)
        self.live = Recorder("live", delay)
        self.metrics = Metrics()
        self.rules = RULES
        store, limits = state or new_state()
        self.router = CallRouter(
            controller=self.realtime,
            live_controller=self.live,
            pairing=Pairing(expected=expected, wait_seconds=wait),
            store=store,
            limiter=limits,
            metrics=self.metrics,
            policy=IdentityPolicy(default_region="US"),
            deadline_seconds=5.0,
            dry_run=False,
        )

    async def deliver(self, event: IncomingCall) -> Answer:
        return await self.router.handle(event, self.rules)

    def acted(self) -> list[tuple[str, str, str]]:
        return [(r.api, op, cid) for r in (self.realtime, self.live) for op, cid, _ in r.requests]


def invite(
    called: str, *, call_id_header: str | None = None, tag: str = "a1"
) -> tuple[SipHeader, ...]:
    n = next(_ids)
    headers = [
        SipHeader("From", f"<sip:+14155550123@trunk.example.com>;tag={tag}"),
        SipHeader("To", f"<sip:{called}@sip.api.openai.com>"),
    ]
    if call_id_header != "":
        headers.append(SipHeader("Call-ID", call_id_header or f"call-{n}@10.0.0.1"))
    return tuple(headers)


def pair(called: str, **kwargs: Any) -> tuple[IncomingCall, IncomingCall]:
    """The Realtime and the Live event of one INVITE."""
    n = next(_ids)
    headers = invite(called, **kwargs)
    return (
        IncomingCall(f"wh_r{n}", f"rtc_{n}", headers, "srtp", api="realtime"),
        IncomingCall(f"wh_l{n}", f"live_{n}", headers, "srtp", api="live"),
    )


ORDERS = ["realtime-first", "live-first", "concurrent"]


async def deliver_both(
    h: Harness, events: tuple[IncomingCall, IncomingCall], order: str
) -> list[Answer]:
    """Both events, as OpenAI sends them: independently, one shortly after the other (or at
    once); the answers in (realtime, live) order."""
    realtime, live = events
    if order == "concurrent":
        return list(await asyncio.gather(h.deliver(realtime), h.deliver(live)))
    first, second = (realtime, live) if order == "realtime-first" else (live, realtime)

    async def later() -> Answer:
        await asyncio.sleep(0.02)
        return await h.deliver(second)

    answers = list(await asyncio.gather(h.deliver(first), later()))
    return answers if order == "realtime-first" else answers[::-1]


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
async def test_a_live_route_is_answered_once_through_live(order: str) -> None:
    h = Harness()
    realtime, live = pair("+18005550100")
    answers = await deliver_both(h, (realtime, live), order)
    assert h.acted() == [("live", "accept", live.call_id)]
    assert h.live.requests[0][2] == {
        "type": "live",
        "model": "gpt-live-1",
        "instructions": "You answer for Example Co.",
    }
    by_realtime, by_live = answers
    assert by_live.status_code == 200 and by_live.body["outcome"] == "accepted"
    assert by_live.body["api"] == "live"
    assert by_realtime.status_code == 200
    assert by_realtime.body["outcome"] == "other_api"
    assert by_realtime.body["handled_by"] == "live"


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
async def test_a_realtime_route_is_answered_once_through_realtime(order: str) -> None:
    h = Harness()
    realtime, live = pair("+18005550101")
    by_realtime, by_live = await deliver_both(h, (realtime, live), order)
    assert h.acted() == [("realtime", "accept", realtime.call_id)]
    assert by_realtime.body["outcome"] == "accepted"
    assert (by_live.body["outcome"], by_live.body["handled_by"]) == ("other_api", "realtime")


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
async def test_a_reject_goes_once_through_the_first_event(order: str) -> None:
    h = Harness(delay=0.05)
    events = pair("+18005550103")
    await deliver_both(h, events, order)
    acted = h.acted()
    assert len(acted) == 1 and acted[0][1] == "reject"
    if order != "concurrent":
        first = "realtime" if order == "realtime-first" else "live"
        assert acted[0][0] == first


@pytest.mark.anyio
async def test_duplicates_of_both_events_still_act_once() -> None:
    h = Harness(delay=0.05)
    realtime, live = pair("+18005550100")
    answers = await asyncio.gather(*(h.deliver(e) for e in (realtime, live) * 3))
    assert h.acted() == [("live", "accept", live.call_id)]
    assert all(a.status_code == 200 for a in answers)


@pytest.mark.anyio
async def test_only_the_realtime_event_subscribed_a_live_route_is_rejected_at_once() -> None:
    h = Harness(expected=frozenset(("realtime",)), wait=5.0)
    realtime, _ = pair("+18005550100")
    answer = await asyncio.wait_for(h.deliver(realtime), 1.0)  # no wait for a Live event
    assert h.acted() == [("realtime", "reject", realtime.call_id)]
    assert h.realtime.requests[0][2] == 503
    assert answer.body["note"] == "no live event for this call"


@pytest.mark.anyio
async def test_the_live_event_never_comes_the_fallback_goes_through_realtime() -> None:
    h = Harness(wait=0.05)
    realtime, live = pair("+18005550102")
    answer = await h.deliver(realtime)
    assert h.acted() == [("realtime", "reject", realtime.call_id)]
    assert h.realtime.requests[0][2] == 486  # the route's fallback, a reject, can go here
    assert answer.body["outcome"] == "rejected"
    late = await h.deliver(live)  # after all: the call is the Realtime event's now
    assert late.body["handled_by"] == "realtime"
    assert h.acted() == [("realtime", "reject", realtime.call_id)]


@pytest.mark.anyio
async def test_only_the_live_event_subscribed_works_alone() -> None:
    h = Harness(expected=frozenset(("live",)))
    _, live = pair("+18005550100")
    answer = await h.deliver(live)
    assert answer.body["outcome"] == "accepted"
    assert h.acted() == [("live", "accept", live.call_id)]


@pytest.mark.anyio
async def test_realtime_only_project_acts_as_before_without_waiting() -> None:
    h = Harness(expected=frozenset(("realtime",)), wait=5.0)
    realtime, _ = pair("+18005550101")
    await asyncio.wait_for(h.deliver(realtime), 1.0)
    assert h.acted() == [("realtime", "accept", realtime.call_id)]


@pytest.mark.anyio
async def test_different_calls_are_not_tied() -> None:
    """Two INVITEs (different Call-IDs): each its own handler."""
    h = Harness()
    first, second = pair("+18005550101")[0], pair("+18005550101")[0]
    await h.deliver(first)
    await h.deliver(second)
    assert [op for _, op, _ in h.acted()] == ["accept", "accept"]


@pytest.mark.anyio
async def test_same_call_id_different_from_tag_is_another_dialog() -> None:
    h = Harness()
    a = IncomingCall("wh_a", "rtc_a", invite("+18005550101", call_id_header="x@y", tag="1"), None)
    b = IncomingCall(
        "wh_b", "live_b", invite("+18005550101", call_id_header="x@y", tag="2"), None, api="live"
    )
    await h.deliver(a)
    await h.deliver(b)
    # b is another dialog: it is not acknowledged as a's (it goes its own way: its route wants
    # Realtime, no Realtime event of its own comes, so it ends up rejected through Live).
    assert ("realtime", "accept", "rtc_a") in h.acted()
    assert ("live", "reject", "live_b") in h.acted()


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "call_id_header", ["", "x" * 600], ids=["no-call-id", "600-character-call-id"]
)
@pytest.mark.parametrize("called", ["+18005550103", "+18005550100"], ids=["reject", "live"])
async def test_without_a_usable_call_id_the_events_are_still_tied(
    order: str, call_id_header: str, called: str
) -> None:
    # The caller controls the INVITE: without a Call-ID, or with one of any length, the two
    # events must still act once between them (a reject went through both APIs before).
    h = Harness(delay=0.05)
    await deliver_both(h, pair(called, call_id_header=call_id_header), order)
    assert len(h.acted()) == 1
    if called == "+18005550100":
        assert h.acted()[0][:2] == ("live", "accept")


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
async def test_a_cross_api_split_of_an_anonymous_caller_without_call_id_acts_once(
    order: str,
) -> None:
    rules = compile_rules(
        ROUTES
        + """  - name: ab
    match: {called: "+18005550104"}
    split:
      - {weight: 50, accept: live-desk}
      - {weight: 50, accept: realtime-desk}
""",
        "routes.yaml",
        region="US",
    )
    for _ in range(20):
        h = Harness(delay=0.01)
        n = next(_ids)
        headers = (
            SipHeader("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=t'),
            SipHeader("To", "<sip:+18005550104@sip.api.openai.com>"),
            SipHeader("X-Call", str(n)),
        )
        realtime = IncomingCall(f"wh_r{n}", f"rtc_{n}", headers, None, api="realtime")
        live = IncomingCall(f"wh_l{n}", f"live_{n}", headers, None, api="live")
        h.rules = rules
        await deliver_both(h, (realtime, live), order)
        assert [op for _, op, _ in h.acted()] == ["accept"]


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
async def test_a_cross_api_split_of_a_call_without_any_header_acts_once(order: str) -> None:
    # Nothing ties the two events: each must still pick the same arm (it was keyed on the
    # API's own id: both accepted, or neither acted, about half the time).
    rules = compile_rules(
        ROUTES
        + """  - name: ab
    split:
      - {weight: 50, accept: live-desk}
      - {weight: 50, accept: realtime-desk}
""",
        "routes.yaml",
        region="US",
    )
    for _ in range(10):
        h = Harness(delay=0.01, wait=0.05)
        h.rules = rules
        n = next(_ids)
        realtime = IncomingCall(f"wh_r{n}", f"rtc_{n}", (), None, api="realtime")
        live = IncomingCall(f"wh_l{n}", f"live_{n}", (), None, api="live")
        await deliver_both(h, (realtime, live), order)
        assert [op for _, op, _ in h.acted()] == ["accept"]


@pytest.mark.anyio
async def test_without_any_header_a_reject_goes_through_one_api_only() -> None:
    h = Harness(wait=0.05)
    realtime = IncomingCall("wh_x", "rtc_x", (), None)
    live = IncomingCall("wh_y", "live_y", (), None, api="live")
    await h.deliver(realtime)
    await h.deliver(live)
    assert [(api, op) for api, op, _ in h.acted()] in ([], [("realtime", "reject")])
    assert ("live", "reject") not in [(api, op) for api, op, _ in h.acted()]


@pytest.mark.anyio
async def test_metrics_count_handled_and_acknowledged_events_by_api() -> None:
    h = Harness()
    await deliver_both(h, pair("+18005550100"), "live-first")
    text = h.metrics.render()[0].decode()
    assert 'switchboard_incoming_calls_total{api="live",handling="handled"} 1.0' in text
    assert 'switchboard_incoming_calls_total{api="realtime",handling="other_api"} 1.0' in text


@pytest.mark.anyio
async def test_a_one_api_project_takes_no_dialog_claim() -> None:
    """Only Realtime events subscribed: exactly as before, nothing more in the store."""
    if _sqlite or _redis:
        pytest.skip("counts the memory store's keys")
    h = Harness(expected=frozenset(("realtime",)))
    store = MemoryClaimStore(horizon_seconds=300)
    h.router = CallRouter(
        controller=h.realtime,
        live_controller=h.live,
        pairing=Pairing(expected=frozenset(("realtime",))),
        store=store,
        metrics=h.metrics,
        policy=IdentityPolicy(default_region="US"),
        deadline_seconds=5.0,
        dry_run=False,
    )
    realtime, _ = pair("+18005550101")
    await h.deliver(realtime)
    assert h.acted() == [("realtime", "accept", realtime.call_id)]
    assert len(store) == 2  # the webhook and call keys, no dialog key
    both = Harness()
    await both.deliver(pair("+18005550101")[0])
    assert len(both.router._store) == 3  # type: ignore[arg-type]


LIMITED = compile_rules(
    ROUTES
    + """  - name: limited
    match: {called: "+18005550105"}
    accept: realtime-desk
    rate_limit: {calls: 2, per: 10m}
""",
    "routes.yaml",
    region="US",
)


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("call_id_header", [None, "same@host", ""], ids=["own", "reused", "none"])
async def test_a_rate_limit_counts_each_invite_once_whatever_its_call_id(
    order: str, call_id_header: str | None
) -> None:
    # The caller chooses Call-ID and From tag: INVITEs that all reuse one (or, without a
    # Call-ID, are identical) each count once, their two events agreeing. A reused Call-ID
    # got the first INVITE's 'allowed' for every later one (the limit bypassed); without
    # a Call-ID each event counted on its own (a call counted twice, its events disagreeing).
    h = Harness(delay=0.01)
    h.rules = LIMITED
    for _ in range(4):
        await deliver_both(h, pair("+18005550105", call_id_header=call_id_header), order)
    acted = [(op, detail) for r in (h.realtime, h.live) for op, _, detail in r.requests]
    assert [op for op, _ in acted] == ["accept", "accept", "reject", "reject"]
    assert [detail for _, detail in acted[2:]] == [486, 486]  # over the limit: any API


@pytest.mark.anyio
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("called", ["+18005550100", "+18005550101", "+18005550103"])
async def test_the_two_events_at_two_replicas_act_once(order: str, called: str) -> None:
    """Each event at another process on the shared store: no in-process wake-up, the one
    that does not act learns the handler from the store."""
    if not (_sqlite or _redis):
        pytest.skip("one process's memory")
    states: list[tuple[ClaimStore, RateLimits]] = []
    if _sqlite:  # both replicas on one file
        sqlite_state = SqliteState(_sqlite[0] / "shared.db", horizon_seconds=300)
        sqlite_state.start()
        _opened.append(sqlite_state)
        states = [(SqliteClaimStore(sqlite_state), SqliteRateLimiter(sqlite_state))] * 2
    else:
        prefix = f"t{next(_ids)}:"
        for _ in range(2):
            redis_state = RedisState(connect(_redis[0]), horizon_seconds=300, prefix=prefix)
            _opened.append(redis_state)
            states.append((RedisClaimStore(redis_state), RedisRateLimiter(redis_state)))
    one, other = (Harness(wait=0.2, delay=0.02, state=state) for state in states)
    realtime, live = pair(called)
    first, second = (realtime, live) if order != "live-first" else (live, realtime)
    at = {realtime.call_id: one, live.call_id: other}

    async def later(event: IncomingCall, pause: float) -> Answer:
        await asyncio.sleep(pause)
        return await at[event.call_id].deliver(event)

    await asyncio.gather(later(first, 0), later(second, 0 if order == "concurrent" else 0.05))
    acted = one.acted() + other.acted()
    assert len(acted) == 1, acted
    if called != "+18005550103":
        assert acted[0][:2] == ("live" if called == "+18005550100" else "realtime", "accept")
