"""Exactly-once handling of webhook deliveries: the `ClaimStore` seam.

OpenAI may deliver the same event twice, concurrently, after a failure, or to another
replica, for up to 72 hours. Each delivery claims its keys (the webhook id and the call id)
before it counts or sends anything (the router decides first, in memory only, so that the
claim can carry what follows it: `claim_acting`), and the claim goes through three phases,
each written to the store before the step it guards:

    claimed  - nothing has been sent for this call yet;
    acting   - a call-control request may have been sent (written before the first one);
    done     - the answer is kept for the horizon and replayed to every later delivery.

What a delivery gets from `claim(keys, deadline)`:

- a `Ticket` when nobody holds the keys: it decides, calls `acting()` before its first
  request, and `finish()` with its answer;
- the kept `Answer` when a finished delivery holds them;
- the answer of a delivery in flight, waited for (bounded by the deadline); `IN_PROGRESS`
  (503, OpenAI redelivers) when it does not come in time.

A claim lives on a lease that its process renews while it lives. A claim whose process died
(a crash, kill -9, a replica lost) is taken over by the next delivery once the lease has
run out: in phase `claimed` the taker acts (nothing was sent); in phase `acting` the ticket
carries `orphan` (what the dead owner was doing) and the router does not act again: the
request may have taken effect (docs/webhooks.md, "Exactly once").

A delivery whose request timed out (`finish(..., uncertain=True)`) marks its keys for the
horizon: a later delivery's ticket says `uncertain`, and no fallback follows.

Implementations: `MemoryClaimStore` (one process: tests, development), the SQLite one
(app.state.sqlite, the default: every process on one data directory) and the Redis one
(app.state.redisstore: every replica).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

Phase = Literal["claimed", "acting", "done"]


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer given to a delivery, replayed to its duplicates."""

    status_code: int
    body: Mapping[str, Any]


@dataclass(eq=False, slots=True)
class Ticket:
    """Proof that this delivery owns its keys until it finishes."""

    keys: tuple[str, ...]
    claim_id: str
    uncertain: bool = False
    """An earlier delivery of these keys sent a request that may have taken effect."""
    orphan: Mapping[str, Any] | None = None
    """Taken over from a process that died in phase `acting`: the context it stored
    (route, action...). A request of that process may have taken effect."""
    result: asyncio.Future[Answer] | None = field(default=None, repr=False)
    """Completed by finish(): how waiters in the same process learn the answer."""
    sent: bool = False
    """Set when `acting` is written (by the router, or by `claim_acting` with the claim):
    from then on the claim may be in that phase and a request may be sent, so its last
    write gets a short grace past the call's deadline."""
    requested: bool = False
    """Set by the router as its first request leaves: a delivery stopped from then on (an
    error, a cancellation) keeps an 'uncertain' answer, never sent again (app.router)."""
    handler: str | None = None
    """`claim_acting` only: the API the claim found or made the handler of `Plan.dialog`
    (None: not asked, or not known yet: an unfinished claim held the dialog)."""
    acting: bool = False
    """`claim_acting` only: `acting` was written with the claim (what `acting()` would
    have written), so a request may be sent now."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a delivery does once it holds its keys, decided before it claims them, for
    `claim_acting`: take the dialog for `api` (app.state.handlers), then, when `api` is
    its handler, write `acting` with `context`."""

    api: str
    dialog: str | None
    """The dialog's key in the store (app.state.handlers.PREFIX + dialog); None: no dialog
    to take (this API is the call's handler)."""
    context: Mapping[str, Any] | None
    """`acting`'s context; None: nothing to act on (a dry run): no `acting`."""


class StateUnavailable(Exception):
    """The store did not answer in time (Redis down, a database locked too long). Nothing
    may be acted on without a claim: the webhook is answered 503 and redelivered."""


class ClaimLost(Exception):
    """The claim was taken over (this process stalled past its lease): do not act."""


class ClaimStore(Protocol):
    async def open(self) -> None:
        """Connect, create what is missing, start renewing leases."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StateUnavailable when the store cannot take claims now (for /readyz)."""
        ...

    async def claim(self, keys: tuple[str, ...], deadline: float) -> Ticket | Answer:
        """`deadline` on time.monotonic(): how long a duplicate may wait for its answer."""
        ...

    async def claim_acting(
        self, keys: tuple[str, ...], deadline: float, plan: Plan
    ) -> Ticket | Answer:
        """claim(), then, on a ticket that is not an orphan's, what `plan` says, as far as
        the store can in the same trip: the dialog taken (`Ticket.handler`), then `acting`
        written when this API handles the call (`Ticket.acting`). What it did not do is
        left to the caller's own steps (keep_first, acting). A store with one trip per
        operation only claims (`claim_by_itself`)."""
        ...

    async def acting(
        self, ticket: Ticket, context: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        """Record, before the first request is sent, that one may be; ClaimLost if the
        ticket no longer holds its keys. `deadline` (time.monotonic()): StateUnavailable
        when it is not written by then (the router gives the call's deadline; None: the
        store's own timeout)."""
        ...

    async def finish(
        self,
        ticket: Ticket,
        answer: Answer,
        *,
        remember: bool,
        uncertain: bool = False,
        deadline: float | None = None,
    ) -> None:
        """Keep the answer for the horizon if `remember`, else free the keys (a redelivery
        acts again). `uncertain`: a request may have taken effect; marks the keys.
        `deadline` as for acting()."""
        ...

    async def keep_first(self, key: str, answer: Answer, deadline: float) -> Answer | None:
        """Keep `answer` under `key` for the horizon unless an answer is kept there
        already: the answer kept (`answer` itself when this call was first), or None
        when an unfinished claim holds the key past `deadline` (time.monotonic()).
        What a claim then a remembered finish do, in one trip where the store can."""
        ...


async def claim_by_itself(
    store: ClaimStore, keys: tuple[str, ...], deadline: float, plan: Plan
) -> Ticket | Answer:
    """claim_acting() of a store that does each step in a trip of its own: the claim only
    (the caller then takes the dialog and writes `acting` itself, as before)."""
    return await store.claim(keys, deadline)


async def keep_first_by_claim(
    store: ClaimStore, key: str, answer: Answer, deadline: float
) -> Answer | None:
    """keep_first() as a claim of `key` and a remembered finish (two trips)."""
    claim = await store.claim((key,), deadline)
    if isinstance(claim, Answer):
        return None if claim is IN_PROGRESS else claim
    await store.finish(claim, answer, remember=True, deadline=deadline)
    return answer


IN_PROGRESS: Final = Answer(503, {"error": "an earlier delivery of this call is still in progress"})
UNAVAILABLE: Final = Answer(503, {"error": "the exactly-once state store is unavailable"})

MIN_POLL: Final = 0.005
MAX_POLL: Final = 0.2


def new_owner_id() -> str:
    """This process, for the claims it holds (unique across restarts and hosts)."""
    return uuid.uuid4().hex


class _ClaimIds:
    """Claim ids: this process's random prefix and a counter, unique across processes,
    hosts and restarts like a uuid4, without reading the OS's random source per claim (a
    system call on the event loop that let the state and call-log threads take the GIL:
    9% of the loop's samples under load)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.numbers = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.numbers):016x}"


_claim_ids: Final = _ClaimIds()
os.register_at_fork(after_in_child=_claim_ids.reset)  # a forked child is another process


def new_claim_id() -> str:
    return _claim_ids.next()


async def poll_until(
    attempt: Callable[[], Any], deadline: float, *, clock: Callable[[], float] = time.monotonic
) -> Any:
    """Call `attempt()` (a coroutine function) until it returns non-None, backing off from
    5 ms to 200 ms, until `deadline`; None when it passes. The first attempt's
    StateUnavailable is raised; a later one (the deadline ran out while asking) is None."""
    pause = MIN_POLL
    first = True
    while True:
        try:
            result = await attempt()
        except StateUnavailable:
            if first:
                raise
            return None
        first = False
        if result is not None:
            return result
        remaining = deadline - clock()
        if remaining <= 0:
            return None
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, MAX_POLL)


async def wait_for_answer(
    result: asyncio.Future[Answer], deadline: float, clock: Callable[[], float]
) -> Answer:
    """Wait for a delivery of this process to finish; IN_PROGRESS at the deadline."""
    try:
        # timeout(), not wait_for(): Python 3.11's wait_for drops the caller's cancellation
        # when it comes as the answer does. The shield: the answer is every waiter's, not
        # to be cancelled with one of them.
        async with asyncio.timeout(max(0.0, deadline - clock())):
            return await asyncio.shield(result)
    except TimeoutError:
        return IN_PROGRESS


@dataclass(eq=False, slots=True)
class _Entry:
    claim_id: str
    phase: Phase
    result: asyncio.Future[Answer]
    context: Mapping[str, Any] | None = None


class MemoryClaimStore:
    """Claims in this process's memory: one process, lost at exit (tests, development).

    A process cannot outlive its own memory, so no claim here is ever orphaned."""

    def __init__(
        self,
        *,
        horizon_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._horizon = horizon_seconds
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._marks: dict[str, float] = {}
        # Expiry order is insertion order: every entry lives for the same horizon.
        self._expiry: deque[tuple[float, str, object]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def claim(self, keys: tuple[str, ...], deadline: float) -> Ticket | Answer:
        self._sweep()
        # No await between looking and claiming: on one event loop this is atomic.
        for key in keys:
            existing = self._entries.get(key)
            if existing is None:
                continue
            if existing.result.done():
                return existing.result.result()
            return await wait_for_answer(existing.result, deadline, time.monotonic)
        result: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        entry = _Entry(new_claim_id(), "claimed", result)
        for key in keys:
            self._entries[key] = entry
        uncertain = any(key in self._marks for key in keys)
        return Ticket(keys, entry.claim_id, uncertain=uncertain, result=result)

    async def claim_acting(
        self, keys: tuple[str, ...], deadline: float, plan: Plan
    ) -> Ticket | Answer:
        # In memory every step is cheap: the router's own steps (and a test's overrides).
        return await claim_by_itself(self, keys, deadline, plan)

    async def acting(
        self, ticket: Ticket, context: Mapping[str, Any], *, deadline: float | None = None
    ) -> None:
        entries = [self._entries.get(key) for key in ticket.keys]
        for key, entry in zip(ticket.keys, entries, strict=True):
            if entry is None or entry.claim_id != ticket.claim_id or entry.phase != "claimed":
                raise ClaimLost(f"claim on {key} is no longer held")
        for entry in entries:
            assert entry is not None
            entry.phase = "acting"
            entry.context = dict(context)

    async def finish(
        self,
        ticket: Ticket,
        answer: Answer,
        *,
        remember: bool,
        uncertain: bool = False,
        deadline: float | None = None,
    ) -> None:
        # Memory answers at once: no deadline to keep.
        expires = self._clock() + self._horizon
        for key in ticket.keys:
            entry = self._entries.get(key)
            if entry is None or entry.claim_id != ticket.claim_id:
                continue
            if remember:
                entry.phase = "done"
                self._expiry.append((expires, key, entry))
            else:
                del self._entries[key]
            if uncertain:
                self._marks[key] = expires
                self._expiry.append((expires, key, expires))
        if ticket.result is not None and not ticket.result.done():
            ticket.result.set_result(answer)

    async def keep_first(self, key: str, answer: Answer, deadline: float) -> Answer | None:
        return await keep_first_by_claim(self, key, answer, deadline)

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, key, what = self._expiry.popleft()
            if isinstance(what, _Entry):
                if self._entries.get(key) is what:
                    del self._entries[key]
            elif self._marks.get(key) == what:
                del self._marks[key]
