"""The router's side of the claim: nothing is sent without one, `acting` is written before
the first request, and a claim inherited in phase `acting` is answered without acting."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from app.intake.events import IncomingCall
from app.records.memory import InMemoryCallLog
from app.router import FINISH_GRACE_SECONDS
from app.state.claims import (
    Answer,
    ClaimLost,
    MemoryClaimStore,
    StateUnavailable,
    Ticket,
)
from tests.test_router import ACCEPT_WITH_FALLBACK, Harness, unavailable


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedStore(MemoryClaimStore):
    """The memory store, with what the test makes go wrong, and the deadline of each call
    (with the time it was made) recorded. Like the Redis and SQLite stores, a write given
    no time left is StateUnavailable."""

    def __init__(self) -> None:
        super().__init__(horizon_seconds=300)
        self.claim_error: Exception | None = None
        self.acting_error: Exception | None = None
        self.orphan: Mapping[str, Any] | None = None
        self.after_claim: Callable[[], None] | None = None
        self.phases: list[str] = []
        self.deadlines: dict[str, tuple[float | None, float]] = {}

    def _deadline(self, what: str, deadline: float | None) -> None:
        now = time.monotonic()
        self.deadlines[what] = (deadline, now)
        if deadline is not None and deadline <= now:
            raise StateUnavailable("no time left for the state store")

    async def claim(self, keys: tuple[str, ...], deadline: float) -> Ticket | Answer:
        if self.claim_error is not None:
            raise self.claim_error
        self._deadline("claim", deadline)
        got = await super().claim(keys, deadline)
        if isinstance(got, Ticket) and self.orphan is not None:
            got.orphan = self.orphan
        if self.after_claim is not None:
            self.after_claim()
        return got

    async def acting(
        self, ticket: Ticket, context: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        self.phases.append("acting")
        if self.acting_error is not None:
            raise self.acting_error
        self._deadline("acting", deadline)
        await super().acting(ticket, context)

    async def finish(
        self,
        ticket: Ticket,
        answer: Answer,
        *,
        remember: bool,
        uncertain: bool = False,
        deadline: float | None = None,
    ) -> None:
        self.phases.append(f"finish remember={remember} uncertain={uncertain}")
        self._deadline("finish", deadline)
        await super().finish(ticket, answer, remember=remember, uncertain=uncertain)


def harness(text: str = ACCEPT_WITH_FALLBACK, **script: Any) -> tuple[Harness, ScriptedStore]:
    h = Harness(text, script or None)
    store = ScriptedStore()
    h.router._store = store
    return h, store


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("claim", StateUnavailable("Redis did not answer in time")),
        ("acting", StateUnavailable("Redis did not answer in time")),
        ("acting", ClaimLost("the claim was taken over")),
    ],
)
async def test_no_claim_no_request(where: str, error: Exception) -> None:
    h, store = harness()
    setattr(store, f"{where}_error", error)
    event = IncomingCall(webhook_id="wh_1", call_id="rtc_1", sip_headers=(), media_security=None)
    answer = await h.router.handle(event, h.rules)
    assert answer.status_code == 503
    assert "state store unavailable" in answer.body["error"]
    assert h.controller.requests == []


@pytest.mark.anyio
async def test_acting_is_written_before_the_request_and_the_answer_after() -> None:
    h, store = harness()
    seen: list[list[str]] = []
    accept = h.controller.accept

    async def watching(call_id: str, body: bytes, deadline: float) -> None:
        seen.append(list(store.phases))
        await accept(call_id, body, deadline)

    h.controller.accept = watching  # type: ignore[method-assign]
    body = await h.call()
    assert body["outcome"] == "accepted"
    assert seen == [["acting"]]
    assert store.phases == ["acting", "finish remember=True uncertain=False"]


@pytest.mark.anyio
async def test_an_inherited_acting_claim_is_answered_uncertain_without_a_request() -> None:
    h, store = harness()
    log = InMemoryCallLog()
    h.router._call_log = log
    store.orphan = {"route": "agent", "action": "accept", "rules_version": "v9", "x": "dropped"}
    body = await h.call()
    assert body == {
        "route": "agent",
        "action": "accept",
        "outcome": "uncertain",
        "error": body["error"],
        "status": 200,
    }
    assert "not sent again" in body["error"]
    assert h.controller.requests == []  # neither the accept again nor its fallback
    assert store.phases == ["finish remember=True uncertain=False"]
    record = await log.get("rtc_1")
    assert record is not None
    assert (record.outcome, record.status, record.end_reason) == ("uncertain", "ended", "uncertain")
    assert (
        h.metric(
            "switchboard_call_outcomes_total", api="realtime", action="accept", outcome="uncertain"
        )
        == 1
    )


@pytest.mark.anyio
async def test_a_timed_out_request_marks_the_call_and_its_redelivery_has_no_fallback() -> None:
    from app.openai.callcontrol import UpstreamUnavailable

    timed_out = UpstreamUnavailable("accept", "ReadTimeout", uncertain=True)
    h, store = harness(accept=[timed_out, unavailable()])
    first = await h.call()
    assert (first["status"], first["outcome"]) == (503, "upstream_error")
    assert store.phases[-1] == "finish remember=False uncertain=True"
    # The redelivery (another webhook id, same call) may act again, but never the fallback.
    ticket = await store.claim(("webhook:wh_9", "call:rtc_1"), 10**9)
    assert isinstance(ticket, Ticket)
    assert ticket.uncertain
    await store.finish(ticket, Answer(503, {}), remember=False)


@pytest.mark.anyio
async def test_every_store_call_gets_the_calls_deadline() -> None:
    h, store = harness()
    assert (await h.call())["outcome"] == "accepted"
    claim_deadline, claimed_at = store.deadlines["claim"]
    acting_deadline, _ = store.deadlines["acting"]
    finish_deadline, finished_at = store.deadlines["finish"]
    assert claim_deadline is not None and acting_deadline is not None
    assert claimed_at < claim_deadline <= claimed_at + 5.0  # the harness's 5 s deadline
    assert acting_deadline <= claim_deadline
    # The answer of a call acted on: the call's deadline, or a short grace past it.
    assert finish_deadline is not None
    assert finish_deadline <= max(claim_deadline, finished_at + FINISH_GRACE_SECONDS)


@pytest.mark.anyio
async def test_no_time_left_before_acting_sends_nothing() -> None:
    """The claim took the whole deadline (a slow store): `acting` gets no time, so nothing
    is sent (503, OpenAI redelivers)."""
    h, store = harness()
    store.after_claim = lambda: h.clock.advance(10)  # past the 5 s deadline
    event = IncomingCall(webhook_id="wh_1", call_id="rtc_1", sip_headers=(), media_security=None)
    answer = await h.router.handle(event, h.rules)
    assert answer.status_code == 503
    assert "no time left" in answer.body["error"]
    assert h.controller.requests == []
    acting_deadline, acting_at = store.deadlines["acting"]
    assert acting_deadline is not None and acting_deadline <= acting_at
    assert store.phases == ["acting", "finish remember=False uncertain=False"]


@pytest.mark.anyio
async def test_the_release_after_an_acting_that_timed_out_gets_the_grace() -> None:
    """`acting` timed out at the deadline: it may still land in the store (Redis ran the
    script, SQLite's queue wrote it), so the claim's release must not be given up at
    once, or a redelivery would find the claim `acting` and answer 'uncertain'."""
    h, store = harness()
    store.acting_error = StateUnavailable("Redis did not answer in time")
    store.after_claim = lambda: h.clock.advance(10)
    event = IncomingCall(webhook_id="wh_1", call_id="rtc_1", sip_headers=(), media_security=None)
    assert (await h.router.handle(event, h.rules)).status_code == 503
    assert h.controller.requests == []
    assert store.phases == ["acting", "finish remember=False uncertain=False"]
    finish_deadline, finished_at = store.deadlines["finish"]
    assert finish_deadline is not None
    assert finished_at < finish_deadline <= finished_at + FINISH_GRACE_SECONDS


@pytest.mark.anyio
async def test_a_release_before_any_acting_gets_no_grace() -> None:
    """Nothing was attempted past the claim (the rate limit's store did not answer): the
    release stops at the call's deadline like everything else."""
    h, store = harness()
    store.after_claim = lambda: h.clock.advance(10)

    async def no_handler(*args: Any, **kwargs: Any) -> Any:
        raise StateUnavailable("Redis did not answer in time")

    h.router._handler = no_handler  # type: ignore[method-assign]
    event = IncomingCall(webhook_id="wh_1", call_id="rtc_1", sip_headers=(), media_security=None)
    assert (await h.router.handle(event, h.rules)).status_code == 503
    assert store.phases == ["finish remember=False uncertain=False"]
    finish_deadline, finished_at = store.deadlines["finish"]
    assert finish_deadline is not None and finish_deadline <= finished_at


@pytest.mark.anyio
async def test_the_answer_of_a_request_sent_late_gets_a_short_grace() -> None:
    """The accept answered at the call's deadline: it took effect, so its answer still gets
    FINISH_GRACE_SECONDS to be kept (else a redelivery would say 'uncertain')."""
    h, store = harness()
    accept = h.controller.accept

    async def slow(call_id: str, body: bytes, deadline: float) -> None:
        await accept(call_id, body, deadline)
        h.clock.advance(10)  # the whole deadline and more

    h.controller.accept = slow  # type: ignore[method-assign]
    assert (await h.call())["outcome"] == "accepted"
    finish_deadline, finished_at = store.deadlines["finish"]
    assert finish_deadline is not None
    assert finished_at < finish_deadline <= finished_at + FINISH_GRACE_SECONDS
    assert store.phases == ["acting", "finish remember=True uncertain=False"]
