"""Each exactly-once store holds nothing of a finished call once its horizon has passed:
memory entries swept, Redis keys all expiring (SQLite rows: test_claims.py,
test_sqlite_deletes_what_expired). What a call leaves is bounded by the horizon, not by
the number of calls."""

from __future__ import annotations

import time

import pytest

from app.rules import Reject
from app.rules.ruleset import RateLimit
from app.state.claims import Answer, MemoryClaimStore, Ticket
from app.state.redis import connect
from app.state.redisstore import RedisClaimStore, RedisRateLimiter, RedisState

HORIZON = 60.0
DONE = Answer(200, {"outcome": "accepted"})
RETRY = Answer(503, {"outcome": "upstream_error"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _keys(n: int) -> tuple[str, ...]:
    return (f"webhook:wh_{n}", f"call:rtc_{n}")


@pytest.mark.anyio
async def test_the_memory_store_keeps_nothing_of_calls_past_the_horizon() -> None:
    now = [1_000.0]
    store = MemoryClaimStore(horizon_seconds=HORIZON, clock=lambda: now[0])
    for n in range(300):  # kept answers, uncertain marks, freed keys
        got = await store.claim(_keys(n), time.monotonic() + 5)
        assert isinstance(got, Ticket)
        if n % 3 == 0:
            await store.finish(got, DONE, remember=True)
        elif n % 3 == 1:
            await store.finish(got, RETRY, remember=False, uncertain=True)
        else:
            await store.finish(got, RETRY, remember=False)
    assert len(store) == 200
    now[0] += HORIZON + 1
    latest = await store.claim(_keys(10_000), time.monotonic() + 5)  # sweeps on the way
    assert isinstance(latest, Ticket)
    assert len(store) == 2  # the keys of the call in flight only
    assert not store._marks
    assert not store._expiry


@pytest.mark.anyio
async def test_every_redis_key_a_call_leaves_expires_within_the_horizon(redis_url: str) -> None:
    state = RedisState(connect(redis_url, timeout=2.0), horizon_seconds=HORIZON, timeout=2.0)
    store = RedisClaimStore(state)
    limiter = RedisRateLimiter(state)
    await store.open()
    try:
        limit = RateLimit(calls=3, per_seconds=30.0, over_limit=Reject(486))
        for n in range(30):
            await limiter.allow("support", f"+1646555{n % 7:04d}", limit, f"rtc_{n}")
            got = await store.claim(_keys(n), time.monotonic() + 5)
            assert isinstance(got, Ticket)
            if n % 2:
                await store.finish(got, DONE, remember=True)
            else:
                await store.finish(got, RETRY, remember=False, uncertain=True)
        keys = [key async for key in state.client.scan_iter(match=f"{state.prefix}*")]
        assert len(keys) >= 30
        for key in keys:
            ttl = await state.client.pttl(key)
            assert 0 < ttl <= HORIZON * 1000, (key, ttl)
    finally:
        await store.close()
