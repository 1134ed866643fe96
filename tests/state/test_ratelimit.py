"""The rate-limit rule, one suite over every store: memory, SQLite, Redis.

The rule (docs/routes.md, rate_limit): a call is over the limit when the caller's last
`calls` calls to the route all came within `per`; refused calls count too; a call counts
once (its redelivery gets the first verdict). SQLite and Redis share the counts between
processes. Memory and SQLite run on an injected clock; Redis counts on its own clock, so
its time-dependent case uses a short real window.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.rules import RateLimit, Reject
from app.state.ratelimit import RateLimiter, RateLimits, Twin
from app.state.redis import connect
from app.state.redisstore import RedisRateLimiter, RedisState
from app.state.sqlite import SqliteRateLimiter, SqliteState

THREE_PER_MINUTE = RateLimit(calls=3, per_seconds=60.0, over_limit=Reject(486))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


Make = Callable[[], RateLimits]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def limiters(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """A factory of limiters on one backend (each: another process on it)."""
    kind = request.param
    clock = Clock()
    closers: list[Callable[[], object]] = []
    memory = RateLimiter(clock=clock)
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""

    def make() -> RateLimits:
        if kind == "memory":
            return memory
        if kind == "sqlite":
            state = SqliteState(tmp_path / "state.db", horizon_seconds=3600, clock=clock)
            state.start()
            closers.append(state.stop)
            return SqliteRateLimiter(state)
        redis_state = RedisState(connect(url), horizon_seconds=3600)
        closers.append(redis_state.client.aclose)
        return RedisRateLimiter(redis_state)

    make.kind = kind  # type: ignore[attr-defined]
    make.clock = clock  # type: ignore[attr-defined]
    yield make
    for close in closers:
        result = close()
        if asyncio.iscoroutine(result):
            await result


@pytest.mark.anyio
async def test_the_limit_counts_every_call_of_one_caller(limiters: Make) -> None:
    one, other = limiters(), limiters()
    assert await one.allow("route", "x", THREE_PER_MINUTE)
    assert await other.allow("route", "x", THREE_PER_MINUTE)
    assert await one.allow("route", "x", THREE_PER_MINUTE)
    assert not await other.allow("route", "x", THREE_PER_MINUTE)  # the 4th, anywhere
    assert not await one.allow("route", "x", THREE_PER_MINUTE)
    assert await one.allow("route", "y", THREE_PER_MINUTE)  # callers are independent
    assert await one.allow("other-route", "x", THREE_PER_MINUTE)  # routes too


@pytest.mark.anyio
async def test_a_redelivered_call_gets_its_first_verdict(limiters: Make) -> None:
    one, other = limiters(), limiters()
    for n in range(3):
        assert await one.allow("r", "x", THREE_PER_MINUTE, f"rtc_{n}")
    assert not await one.allow("r", "x", THREE_PER_MINUTE, "rtc_over")
    # Redelivered, to this process or another: the same verdicts, nothing counted again.
    assert not await other.allow("r", "x", THREE_PER_MINUTE, "rtc_over")
    assert await other.allow("r", "x", THREE_PER_MINUTE, "rtc_0")
    assert await one.allow("r", "x", THREE_PER_MINUTE, "rtc_2")


@pytest.mark.anyio
async def test_a_changed_limit_keeps_the_recent_calls(limiters: Make) -> None:
    limiter = limiters()
    five = RateLimit(calls=5, per_seconds=60.0, over_limit=Reject(486))
    one = RateLimit(calls=1, per_seconds=60.0, over_limit=Reject(486))
    for _ in range(3):
        assert await limiter.allow("r", "x", THREE_PER_MINUTE)
    assert await limiter.allow("r", "x", five)  # raised to 5: the 4th and 5th get in
    assert await limiter.allow("r", "x", five)
    assert not await limiter.allow("r", "x", five)
    assert not await limiter.allow("r", "x", one)  # lowered to 1: still over


@pytest.mark.anyio
async def test_a_pause_as_long_as_the_window_lets_the_caller_in(limiters: Make) -> None:
    kind = getattr(limiters, "kind")  # noqa: B009
    per = 0.3 if kind == "redis" else 60.0
    limit = RateLimit(calls=2, per_seconds=per, over_limit=Reject(486))
    limiter = limiters()
    assert await limiter.allow("r", "x", limit)
    assert await limiter.allow("r", "x", limit)
    assert not await limiter.allow("r", "x", limit)  # refused calls count too
    if kind == "redis":
        await asyncio.sleep(per + 0.1)
    else:
        getattr(limiters, "clock").now += per  # noqa: B009
    assert await limiter.allow("r", "x", limit)


@pytest.mark.anyio
async def test_the_two_events_of_one_invite_share_a_verdict_once(limiters: Make) -> None:
    # One INVITE: a Realtime and a Live event, tied by the SIP dialog (the caller's). The
    # first counts, the other takes its verdict; an INVITE reusing the dialog is counted.
    one, other = limiters(), limiters()
    one_limit = RateLimit(calls=1, per_seconds=60.0, over_limit=Reject(486))

    def twin(api: str) -> Twin:
        return Twin.of("d1", api, "live" if api == "realtime" else "realtime")

    assert await one.allow("r", "x", one_limit, "rtc_1", twin=twin("realtime"))
    assert await other.allow("r", "x", one_limit, "live_1", twin=twin("live"))  # not counted
    assert await other.allow("r", "x", one_limit, "live_1", twin=twin("live"))  # redelivered
    # Another INVITE with the same Call-ID and From tag: counted (over), both its events.
    assert not await other.allow("r", "x", one_limit, "live_2", twin=twin("live"))
    assert not await one.allow("r", "x", one_limit, "rtc_2", twin=twin("realtime"))
    assert not await one.allow("r", "x", one_limit, "rtc_3", twin=twin("realtime"))
