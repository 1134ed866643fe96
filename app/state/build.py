"""Which state store serves the exactly-once claims and rate limits, from the settings.

- SWITCHBOARD_REDIS_URL set: Redis, shared by every replica;
- else SWITCHBOARD_STATE_DB (default `state.db` beside the call log): SQLite, shared by
  every process on the data directory and kept across restarts;
- `:memory:` (explicitly, or because the call log is in memory): this process only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.settings import Settings
from app.state.claims import ClaimStore, MemoryClaimStore
from app.state.ratelimit import RateLimiter, RateLimits
from app.state.sqlite import SqliteClaimStore, SqliteRateLimiter, SqliteState

if TYPE_CHECKING:
    import redis.asyncio as aioredis

StoreKind = Literal["memory", "sqlite", "redis"]


@dataclass(frozen=True, slots=True)
class State:
    claims: ClaimStore
    """Opened at start-up, closed at shutdown (it carries the rate limits' connection)."""
    limits: RateLimits
    kind: StoreKind
    redis: aioredis.Redis | None = None
    """The Redis client, for other shared state of the same deployment."""


def build_state(settings: Settings) -> State:
    horizon = settings.dedupe_horizon_seconds
    if settings.redis_url is not None:
        # Imported by a deployment that has Redis only: redis costs 0.3 s of CPU at each start.
        from app.state.redis import connect, parse_url
        from app.state.redisstore import RedisClaimStore, RedisRateLimiter, RedisState

        url = settings.redis_url.get_secret_value()
        client = connect(url, timeout=settings.state_timeout_seconds)
        redis_state = RedisState(
            client,
            horizon_seconds=horizon,
            lease_seconds=settings.claim_lease_seconds,
            timeout=settings.state_timeout_seconds,
            target=str(parse_url(url)),
        )
        return State(RedisClaimStore(redis_state), RedisRateLimiter(redis_state), "redis", client)
    path = settings.state_path
    if path == ":memory:":
        return State(MemoryClaimStore(horizon_seconds=horizon), RateLimiter(), "memory")
    sqlite_state = SqliteState(
        path,
        horizon_seconds=horizon,
        lease_seconds=settings.claim_lease_seconds,
        timeout=settings.state_timeout_seconds,
    )
    return State(SqliteClaimStore(sqlite_state), SqliteRateLimiter(sqlite_state), "sqlite")
