"""Table-driven tests for app.state.claims: exactly-once claims on webhook and call keys.

Expiry runs on an injected fake clock. Concurrency is made deterministic by holding the
owning delivery on an asyncio.Event until the test has seen every other claim waiting.
"""

from __future__ import annotations

import asyncio

import pytest

from app.state.claims import IN_PROGRESS, Answer, MemoryCallStateStore, Ticket

HORIZON = 60.0
KEYS = ("webhook:wh_1", "call:rtc_1")
ROUTED = Answer(200, {"call_id": "rtc_1", "route": "support", "outcome": "accepted"})
RETRY = Answer(503, {"call_id": "rtc_1", "outcome": "upstream_error"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_store(
    clock: FakeClock | None = None, *, wait_timeout: float = 30.0
) -> MemoryCallStateStore:
    return MemoryCallStateStore(
        horizon_seconds=HORIZON, wait_timeout=wait_timeout, clock=clock or FakeClock()
    )


async def settle() -> None:
    """Let every ready task run up to its next suspension point."""
    for _ in range(5):
        await asyncio.sleep(0)


# Redeliveries: what a duplicate shares with the first delivery.
DUPLICATES = [
    pytest.param(KEYS, id="same-webhook-and-call"),
    pytest.param(("webhook:wh_1", "call:rtc_other"), id="same-webhook"),
    pytest.param(("webhook:wh_2", "call:rtc_1"), id="same-call-new-webhook"),
    pytest.param(("call:rtc_1",), id="call-key-only"),
]


@pytest.mark.anyio
async def test_first_claim_gets_a_ticket() -> None:
    store = make_store()
    ticket = await store.claim(KEYS)
    assert isinstance(ticket, Ticket)
    assert ticket.keys == KEYS
    assert len(store) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("keys", DUPLICATES)
async def test_remembered_answer_is_returned_to_duplicates(keys: tuple[str, ...]) -> None:
    store = make_store()
    ticket = await store.claim(KEYS)
    assert isinstance(ticket, Ticket)
    await store.finish(ticket, ROUTED, remember=True)

    assert await store.claim(keys) == ROUTED
    assert await store.claim(keys) == ROUTED  # and again: nothing is consumed


@pytest.mark.anyio
@pytest.mark.parametrize("keys", DUPLICATES)
async def test_forgotten_keys_are_free_again(keys: tuple[str, ...]) -> None:
    store = make_store()
    ticket = await store.claim(KEYS)
    assert isinstance(ticket, Ticket)
    await store.finish(ticket, RETRY, remember=False)
    assert len(store) == 0

    again = await store.claim(keys)
    assert isinstance(again, Ticket)
    assert again is not ticket


@pytest.mark.anyio
async def test_unrelated_keys_are_independent() -> None:
    store = make_store()
    first = await store.claim(KEYS)
    assert isinstance(first, Ticket)
    other = await store.claim(("webhook:wh_9", "call:rtc_9"))
    assert isinstance(other, Ticket)
    await store.finish(first, ROUTED, remember=True)
    await store.finish(other, RETRY, remember=True)
    assert await store.claim(("call:rtc_1",)) == ROUTED
    assert await store.claim(("call:rtc_9",)) == RETRY


@pytest.mark.anyio
async def test_retry_after_forgetting_can_be_remembered() -> None:
    store = make_store()
    first = await store.claim(KEYS)
    assert isinstance(first, Ticket)
    await store.finish(first, RETRY, remember=False)
    second = await store.claim(KEYS)
    assert isinstance(second, Ticket)
    await store.finish(second, ROUTED, remember=True)
    assert await store.claim(KEYS) == ROUTED


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "remember"),
    [
        pytest.param(ROUTED, True, id="remembered"),
        pytest.param(RETRY, False, id="forgotten"),
    ],
)
async def test_concurrent_claims_wait_for_the_first(answer: Answer, remember: bool) -> None:
    store = make_store()
    release = asyncio.Event()

    async def deliver() -> Ticket | Answer:
        got = await store.claim(KEYS)
        if isinstance(got, Ticket):
            await release.wait()
            await store.finish(got, answer, remember=remember)
        return got

    tasks = [asyncio.create_task(deliver()) for _ in range(20)]
    await settle()
    assert not any(task.done() for task in tasks)  # the owner holds, everyone else waits

    release.set()
    results = await asyncio.gather(*tasks)

    tickets = [r for r in results if isinstance(r, Ticket)]
    assert len(tickets) == 1
    assert [r for r in results if not isinstance(r, Ticket)] == [answer] * 19
    after = await store.claim(KEYS)
    assert isinstance(after, Ticket) is not remember


@pytest.mark.anyio
async def test_waiter_on_another_key_of_the_same_call_gets_the_answer() -> None:
    store = make_store()
    owner = await store.claim(KEYS)
    assert isinstance(owner, Ticket)
    waiter = asyncio.create_task(store.claim(("webhook:wh_2", "call:rtc_1")))
    await settle()
    assert not waiter.done()
    await store.finish(owner, ROUTED, remember=True)
    assert await waiter == ROUTED


@pytest.mark.anyio
async def test_waiter_that_waits_too_long_gets_in_progress() -> None:
    store = make_store(wait_timeout=0.01)
    owner = await store.claim(KEYS)
    assert isinstance(owner, Ticket)

    assert await store.claim(KEYS) == IN_PROGRESS
    assert IN_PROGRESS.status_code == 503

    # The owner was not disturbed: it still finishes, and later duplicates see its answer.
    assert not owner.result.done()
    await store.finish(owner, ROUTED, remember=True)
    assert await store.claim(KEYS) == ROUTED


@pytest.mark.anyio
async def test_cancelled_waiter_does_not_cancel_the_owner() -> None:
    store = make_store()
    owner = await store.claim(KEYS)
    assert isinstance(owner, Ticket)
    waiter = asyncio.create_task(store.claim(KEYS))
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not owner.result.cancelled()
    await store.finish(owner, ROUTED, remember=True)
    assert await store.claim(KEYS) == ROUTED


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("elapsed", "remembered"),
    [
        pytest.param(0.0, True, id="at-once"),
        pytest.param(HORIZON - 0.001, True, id="just-before-horizon"),
        pytest.param(HORIZON, False, id="at-horizon"),
        pytest.param(HORIZON * 100, False, id="long-after"),
    ],
)
async def test_remembered_answers_expire_after_the_horizon(
    elapsed: float, remembered: bool
) -> None:
    clock = FakeClock()
    store = make_store(clock)
    ticket = await store.claim(KEYS)
    assert isinstance(ticket, Ticket)
    await store.finish(ticket, ROUTED, remember=True)

    clock.now += elapsed
    got = await store.claim(KEYS)
    assert (got == ROUTED) is remembered
    assert isinstance(got, Ticket) is not remembered


@pytest.mark.anyio
async def test_horizon_counts_from_finish_not_claim() -> None:
    clock = FakeClock()
    store = make_store(clock)
    ticket = await store.claim(KEYS)
    assert isinstance(ticket, Ticket)
    clock.now += 50
    await store.finish(ticket, ROUTED, remember=True)

    clock.now += HORIZON - 1  # 109 s after the claim, 59 s after the finish
    assert await store.claim(KEYS) == ROUTED
    clock.now += 1
    assert isinstance(await store.claim(KEYS), Ticket)


@pytest.mark.anyio
async def test_in_flight_claims_never_expire() -> None:
    clock = FakeClock()
    store = make_store(clock, wait_timeout=0.01)
    owner = await store.claim(KEYS)
    assert isinstance(owner, Ticket)
    clock.now += HORIZON * 10
    assert await store.claim(KEYS) == IN_PROGRESS


@pytest.mark.anyio
async def test_expiry_removes_entries_and_spares_newer_ones() -> None:
    clock = FakeClock()
    store = make_store(clock)
    old = await store.claim(("webhook:wh_old", "call:rtc_old"))
    assert isinstance(old, Ticket)
    await store.finish(old, ROUTED, remember=True)
    clock.now += HORIZON / 2
    new = await store.claim(KEYS)
    assert isinstance(new, Ticket)
    await store.finish(new, RETRY, remember=True)
    assert len(store) == 4

    clock.now += HORIZON / 2  # the old entry's horizon, not the new one's
    assert await store.claim(KEYS) == RETRY
    assert len(store) == 2
    assert isinstance(await store.claim(("call:rtc_old",)), Ticket)
