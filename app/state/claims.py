"""Exactly-once handling of webhook deliveries.

OpenAI may deliver the same event twice, concurrently, or again after a failure. Each
delivery claims its keys (the webhook id and the call id) before acting:

- nobody holds them: the caller gets a Ticket, acts, and finishes the ticket;
- a finished, successful delivery holds them: its answer is returned, nothing is redone;
- a delivery is in flight: wait for it and return its answer.

A delivery that failed in a retryable way is forgotten, so a redelivery tries again.
`CallStateStore` is the interface; `MemoryCallStateStore` serves one process, and a store
shared by replicas can implement the same two methods.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer given to a delivery, replayed to its duplicates."""

    status_code: int
    body: Mapping[str, Any]


@dataclass(eq=False, slots=True)
class Ticket:
    """Proof that this delivery owns its keys until it finishes."""

    keys: tuple[str, ...]
    result: asyncio.Future[Answer] = field(repr=False)


class CallStateStore(Protocol):
    async def claim(self, keys: tuple[str, ...]) -> Ticket | Answer: ...

    async def finish(self, ticket: Ticket, answer: Answer, *, remember: bool) -> None:
        """Publish the answer; keep it for the horizon if `remember`, else forget the keys."""
        ...


IN_PROGRESS = Answer(503, {"error": "an earlier delivery of this call is still in progress"})


class MemoryCallStateStore:
    def __init__(
        self,
        *,
        horizon_seconds: float,
        wait_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._horizon = horizon_seconds
        self._wait_timeout = wait_timeout
        self._clock = clock
        self._entries: dict[str, asyncio.Future[Answer]] = {}
        self._expiry: deque[tuple[float, str, asyncio.Future[Answer]]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, keys: tuple[str, ...]) -> Ticket | Answer:
        self._sweep()
        # No await between looking and claiming: on one event loop this is atomic.
        for key in keys:
            existing = self._entries.get(key)
            if existing is None:
                continue
            if existing.done():
                return existing.result()
            try:
                return await asyncio.wait_for(asyncio.shield(existing), self._wait_timeout)
            except TimeoutError:
                return IN_PROGRESS
        result: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._entries[key] = result
        return Ticket(keys, result)

    async def finish(self, ticket: Ticket, answer: Answer, *, remember: bool) -> None:
        if remember:
            expires = self._clock() + self._horizon
            for key in ticket.keys:
                self._expiry.append((expires, key, ticket.result))
        else:
            for key in ticket.keys:
                if self._entries.get(key) is ticket.result:
                    del self._entries[key]
        if not ticket.result.done():
            ticket.result.set_result(answer)

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, key, result = self._expiry.popleft()
            if self._entries.get(key) is result:
                del self._entries[key]
