"""Work a request does after its answer is sent: `after_answer(fn, *args)`, and
`await when_answered(fn, *args)` for work that waits (a store's write).

A webhook's answer waits for nothing that does not decide it. The call's log line (a JSON
encoding, and the write of the loop round it lands in), its last call-log record (a record
built and queued, waking the writer thread) and the exactly-once store's keeping of the
answer (a commit, or a round trip to Redis) were done between the API's answer and the
webhook's. The endpoint opens a list per request (`answering()`, in the request's own task
context) and runs it once the answer is sent, in the request's task: the server counts the
request as in flight until it is done, so a graceful shutdown waits for it. Outside a
request (a test calling the router, the CLI) the work runs at once.

The work that does not wait runs first, before the first wait yields to the loop: a call's
in-call session runs from the accept on, and its writes to the call's record (its end)
must come after the outcome's, which would otherwise overwrite them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("switchboard")

_Work = tuple[Callable[..., None], tuple[Any, ...]]
_Wait = tuple[Callable[..., Awaitable[None]], tuple[Any, ...]]


class _Pending(list[_Work]):
    """A request's after-answer work; `done` once it has run (a task the request started
    inherits the list with its context, and may outlive the request)."""

    done = False

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[_Wait] = []


_pending: ContextVar[_Pending | None] = ContextVar("switchboard_after_answer", default=None)


def after_answer(fn: Callable[..., None], *args: Any) -> None:
    """`fn(*args)` once this request's answer is sent; at once outside a request, or
    after it (from a task it started)."""
    pending = _pending.get()
    if pending is None or pending.done:
        fn(*args)
    else:
        pending.append((fn, args))


async def when_answered(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    """`await fn(*args)` once this request's answer is sent, after its `after_answer`
    work; awaited here outside a request, or after it."""
    pending = _pending.get()
    if pending is None or pending.done:
        await fn(*args)
    else:
        pending.waits.append((fn, args))


@contextlib.asynccontextmanager
async def answering() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Collect the request's after-answer work; the function yielded runs it (in order,
    what does not wait first). Whatever was not run by the end (an exception, a cancellation) runs
    then: a call's log line, its record and its kept answer are never lost for being late
    (a cancellation interrupts only the wait it lands in)."""
    pending = _Pending()
    token = _pending.set(pending)

    def work() -> None:
        while pending:
            fn, args = pending.pop(0)
            try:
                fn(*args)
            except Exception:
                logger.exception("work after the answer failed", extra={"event": "webhook_error"})

    async def run() -> None:
        waits = pending.waits
        work()  # before any wait yields: nothing else runs in between
        try:
            while waits:
                fn, args = waits.pop(0)
                try:
                    await fn(*args)
                except Exception:
                    logger.exception(
                        "work after the answer failed", extra={"event": "webhook_error"}
                    )
        finally:
            work()  # added meanwhile, or left by a cancellation

    try:
        yield run
    finally:
        _pending.reset(token)
        try:
            await run()
        finally:
            pending.done = True
