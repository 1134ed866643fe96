"""Per-route, per-caller call limits (N calls per window), for robocall floods.

Counts every call that reaches the route, including refused ones, so a flood stays
refused while it goes on: a call is over the limit when the caller's last `calls` calls
to the route all came within `per`. A call counts once: a redelivery of the same call
(after a 503) gets the verdict its first delivery got, and the other API's event of the
same INVITE takes it (`Twin`).

`RateLimits` is the seam. `RateLimiter` counts in this process's memory (bounded: the
longest-idle callers are forgotten first); the SQLite and Redis stores count in the state
every process or replica shares (app.state.sqlite, app.state.redisstore), with the same
rule. Counts are kept by route name, so they survive rule reloads.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

from app.rules import RateLimit

MAX_KEYS = 200_000


class Twin(NamedTuple):
    """How the two events of one INVITE (one per API, tied by its SIP dialog) share one
    verdict: the first counts and leaves its verdict under `leave` (the dialog and the
    other API); the other takes it from `take` (the dialog and its own API), once. Taken,
    not read: the dialog is the caller's (app.sip.dialog), and an INVITE that reuses
    another's must be counted, not handed the earlier verdict."""

    take: str
    leave: str

    @classmethod
    def of(cls, dialog: str, api: str, other: str) -> Twin:
        # ">" is in no event id (app.intake.events), so no key is also an event's.
        return cls(f"{dialog}>{api}", f"{dialog}>{other}")


class RateLimits(Protocol):
    async def allow(
        self,
        route: str,
        caller: str,
        limit: RateLimit,
        call_id: str = "",
        *,
        deadline: float | None = None,
        twin: Twin | None = None,
    ) -> bool:
        """Count this call and say whether it is within the limit (StateUnavailable when
        a shared store cannot say by `deadline`, on time.monotonic()). `call_id`: the
        event's own id, its verdict kept for its redeliveries. `twin`: see Twin."""
        ...


class RateLimiter:
    """Counts in this process's memory."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._hits: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._calls: OrderedDict[str, bool] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hits)

    async def allow(
        self,
        route: str,
        caller: str,
        limit: RateLimit,
        call_id: str = "",
        *,
        deadline: float | None = None,
        twin: Twin | None = None,
    ) -> bool:
        return self.allow_now(route, caller, limit, call_id, twin)

    def allow_now(
        self, route: str, caller: str, limit: RateLimit, call_id: str = "", twin: Twin | None = None
    ) -> bool:
        calls = self._calls
        if call_id:
            earlier = calls.get(call_id)
            if earlier is not None:
                return earlier
        left = calls.pop(twin.take, None) if twin is not None else None
        allowed = self._count(route, caller, limit) if left is None else left
        if call_id:
            calls[call_id] = allowed
        if twin is not None and left is None:
            calls[twin.leave] = allowed
        while len(calls) > self._max_keys:
            calls.popitem(last=False)
        return allowed

    def _count(self, route: str, caller: str, limit: RateLimit) -> bool:
        now = self._clock()
        key = (route, caller)
        hits = self._hits.get(key)
        if hits is None or hits.maxlen != limit.calls:
            hits = deque(hits or (), maxlen=limit.calls)
            self._hits[key] = hits
        self._hits.move_to_end(key)
        over = len(hits) >= limit.calls and now - hits[0] < limit.per_seconds
        hits.append(now)
        while len(self._hits) > self._max_keys:
            self._hits.popitem(last=False)  # the longest-idle caller
        return not over
