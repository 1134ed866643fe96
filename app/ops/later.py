"""Work a request does after its answer is sent: `after_answer(fn, *args)`.

A webhook's answer waits for nothing that does not decide it. The call's log line (a JSON
encoding, and the write of the loop round it lands in) and its last call-log record (a
record built and queued, waking the writer thread) were done between the API's answer
and the webhook's. The endpoint opens a list per request (`answering()`, in the request's
own task context) and runs it once the answer is sent; outside a request (a test calling
the router, the CLI) the work runs at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("switchboard")

_Work = tuple[Callable[..., None], tuple[Any, ...]]


class _Pending(list[_Work]):
    """A request's after-answer work; `done` once it has run (a task the request started
    inherits the list with its context, and may outlive the request)."""

    done = False


_pending: ContextVar[_Pending | None] = ContextVar("switchboard_after_answer", default=None)


def after_answer(fn: Callable[..., None], *args: Any) -> None:
    """`fn(*args)` once this request's answer is sent; at once outside a request, or
    after it (from a task it started)."""
    pending = _pending.get()
    if pending is None or pending.done:
        fn(*args)
    else:
        pending.append((fn, args))


@contextlib.contextmanager
def answering() -> Iterator[Callable[[], None]]:
    """Collect the request's after-answer work; the function yielded runs it (in order).
    Whatever was not run by the end (an exception, a cancellation) runs then: a call's
    log line and record are never lost for being late."""
    pending = _Pending()
    token = _pending.set(pending)

    def run() -> None:
        while pending:
            fn, args = pending.pop(0)
            try:
                fn(*args)
            except Exception:
                logger.exception("work after the answer failed", extra={"event": "webhook_error"})

    try:
        yield run
    finally:
        _pending.reset(token)
        run()
        pending.done = True
