"""Helpers shared by the test suites: secrets, independently signed deliveries, events."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"switchboard-test-secret-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-abcdefghijklmnop").decode()


# The tests' plain HTTP requests to the services they start go through this one client:
# httpx.get() and httpx.post() build a client, and with it an SSL context (~50 ms of CPU),
# on every call, which made a readiness poll every 0.1 s cost the starting service half a
# core. No keep-alive: each request has a connection of its own, as with httpx.get().
HTTP = httpx.Client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))


def free_port() -> int:
    """A loopback port nobody listens on (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_id(prefix: str = "rtc") -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def incoming_event(
    call_id: str | None = None,
    *,
    caller: str = "+14155550123",
    called: str = "+18005550100",
    headers: Sequence[tuple[str, str]] = (),
    from_value: str | None = None,
    media_security: str | None = "srtp",
) -> dict[str, Any]:
    """A realtime.call.incoming event shaped like OpenAI's documented example."""
    sip_headers = [
        {"name": "From", "value": from_value or f"<sip:{caller}@sip.telnyx.com>;tag=a1b2c3"},
        {"name": "To", "value": f"<sip:{called}@sip.api.openai.com>"},
        {"name": "Call-ID", "value": f"{secrets.token_hex(8)}@10.0.0.1"},
        *({"name": n, "value": v} for n, v in headers),
    ]
    data: dict[str, Any] = {"call_id": call_id or new_id(), "sip_headers": sip_headers}
    if media_security is not None:
        data["sip_media_security"] = media_security
    return {
        "object": "event",
        "id": new_id("evt"),
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": data,
    }


def live_event(
    session_id: str | None = None,
    *,
    like: dict[str, Any] | None = None,
    event_type: str = "live.transport.incoming",
    **incoming: Any,
) -> dict[str, Any]:
    """A GPT-Live incoming-call event (`live.transport.incoming`, or the deprecated
    `live.call.incoming` without data.type). `like`: a realtime.call.incoming event of the
    same INVITE, whose SIP headers (Call-ID included) it carries; else built like one."""
    source = like if like is not None else incoming_event(**incoming)
    data: dict[str, Any] = {
        "session_id": session_id or new_id("live"),
        "sip_headers": source["data"]["sip_headers"],
    }
    if event_type == "live.transport.incoming":
        data = {"type": "sip", **data}
    if "sip_media_security" in source["data"]:
        data["sip_media_security"] = source["data"]["sip_media_security"]
    return {
        "object": "event",
        "id": new_id("evt"),
        "type": event_type,
        "created_at": int(time.time()),
        "data": data,
    }


def sign(
    body: bytes | str,
    *,
    secret: str = SECRET,
    webhook_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers made with the reference package, not our code."""
    text = body.decode() if isinstance(body, bytes) else body
    msg_id = webhook_id or new_id("wh")
    when = datetime.fromtimestamp(int(timestamp if timestamp is not None else time.time()), tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, text),
    }


def sign_raw(body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    """Headers for a body that is not UTF-8, which the reference package cannot sign: the
    Standard Webhooks definition itself (HMAC-SHA256 of `id.timestamp.body`, base64)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = new_id("wh"), str(int(time.time()))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def signed(event: dict[str, Any], **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    return body, sign(body, **kwargs)


T = TypeVar("T")


def overlapping(
    hold: Callable[[], AbstractContextManager[None]], probe: Callable[[], T]
) -> list[T]:
    """Two threads hold `hold()` over spans that overlap, the first leaving first; what
    `probe()` says in the second after the first has left."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[T] = []

    def first() -> None:
        with hold():
            first_in.set()
            assert second_in.wait(10)
        first_out.set()

    def second() -> None:
        assert first_in.wait(10)
        with hold():
            second_in.set()
            assert first_out.wait(10)
            seen.append(probe())

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return seen


STARTING_STEPS = 4
"""Rounds of the event loop a waiter gets to reach its wait (a task, then wait_for's own)."""


async def swallowed_cancellations(
    wait: Callable[[], Awaitable[Any]], complete: Callable[[], None], *, steps: int = 6
) -> list[int]:
    """A task runs `wait()`; `complete()` ends what it waits for, and the task is cancelled
    0, 1, ... `steps - 1` rounds of the event loop later, a fresh one each time. The rounds
    at which it was still running when cancelled and yet did not raise CancelledError:
    Python 3.11's asyncio.wait_for returns the result instead when the inner wait has
    completed by then (fixed in 3.12), and a task that was to stop goes on. Deterministic:
    the same rounds each run, no timing. Asserts that some cancellation landed at all."""
    swallowed: list[int] = []
    landed = 0
    for step in range(steps):
        task = asyncio.ensure_future(wait())
        for _ in range(STARTING_STEPS):
            await asyncio.sleep(0)
        assert not task.done(), "the waiter did not wait"
        complete()
        for _ in range(step):
            await asyncio.sleep(0)
        if not task.cancel():
            await task  # over before the cancellation: nothing to deliver
            continue
        landed += 1
        try:
            await task
        except asyncio.CancelledError:
            continue
        swallowed.append(step)
    assert landed, "every wait was over before its cancellation"
    return swallowed


class InThread:
    """`shut()` (a stop() or close() that blocks) in a thread of its own, as the app's
    to_thread runs it. `reached` is set once it returned, or once a subclass saw it get as
    far as it can without the test; join() raises what it raised."""

    def __init__(
        self, shut: Callable[[], None], what: str, *, name: str, hang: float = 30.0
    ) -> None:
        self.reached = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(shut,), name=name)
        self._what = what
        self._hang = hang

    def _run(self, shut: Callable[[], None]) -> None:
        try:
            shut()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.reached.set()

    def join(self) -> None:
        self.thread.join(self._hang)
        assert not self.thread.is_alive(), f"{self._what} hung"
        if self.error is not None:
            raise self.error
