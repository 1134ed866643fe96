"""The GPT-Live call-control client: each request against the one the official SDK sends.

Both clients talk to in-memory transports that record the request; the SDK's
(`client.live.sessions.*`, `client.realtime.calls.*`) is the reference for path and body.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import httpx2
import openai
import pytest

from app.openai.callcontrol import (
    CallControl,
    LiveCallControl,
    RetryPolicy,
    UpstreamRejected,
    UpstreamUnavailable,
    build_http_client,
)

BASE_URL = "https://api.openai.test/v1"
SESSION_ID = "live_0123456789abcdef"
SESSION = {
    "type": "live",
    "model": "gpt-live-1",
    "instructions": "You answer the support line.",
    "audio": {"output": {"voice": "marin"}},
}
FAST = RetryPolicy(attempt_timeout=1.0, base_backoff=0.001, max_backoff=0.002)

Seen = tuple[str, str, Any]


def sdk_request(call: Any) -> Seen:
    """What the official SDK sends for `call(client)`."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200)

    client = openai.OpenAI(
        api_key="sk-test",
        base_url=BASE_URL,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    call(client)
    (request,) = seen
    body = json.loads(request.content) if request.content else None
    return request.method, request.url.path, body


async def our_request(controller_type: type[CallControl], call: Any) -> Seen:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    client = build_http_client(BASE_URL, "sk-test", transport=httpx.MockTransport(handler))
    async with client:
        await call(controller_type(client, policy=FAST))
    (request,) = seen
    body = json.loads(request.content) if request.content else None
    return request.method, request.url.path, body


def deadline() -> float:
    return time.monotonic() + 2


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_live_accept_matches_the_sdk() -> None:
    body = json.dumps(SESSION, separators=(",", ":")).encode()
    ours = await our_request(LiveCallControl, lambda c: c.accept(SESSION_ID, body, deadline()))
    theirs = sdk_request(lambda c: c.live.sessions.accept(SESSION_ID, session=SESSION))
    expected = ("POST", f"/v1/live/sessions/{SESSION_ID}/accept", {"session": SESSION})
    assert ours == theirs == expected


@pytest.mark.anyio
async def test_live_reject_refer_hangup_match_the_sdk() -> None:
    pairs = [
        (
            lambda c: c.reject(SESSION_ID, 486, deadline()),
            lambda c: c.live.sessions.reject(SESSION_ID, status_code=486),
        ),
        (
            lambda c: c.refer(SESSION_ID, "tel:+14155550123", deadline()),
            lambda c: c.live.sessions.refer(SESSION_ID, target_uri="tel:+14155550123"),
        ),
        (
            lambda c: c.hangup(SESSION_ID, deadline()),
            lambda c: c.live.sessions.hangup(SESSION_ID),
        ),
    ]
    for ours_call, sdk_call in pairs:
        assert await our_request(LiveCallControl, ours_call) == sdk_request(sdk_call)


@pytest.mark.anyio
async def test_realtime_requests_still_match_the_sdk() -> None:
    session = {"type": "realtime", "model": "gpt-realtime"}
    body = json.dumps(session).encode()
    ours = await our_request(CallControl, lambda c: c.accept("rtc_1", body, deadline()))
    theirs = sdk_request(lambda c: c.realtime.calls.accept("rtc_1", **session))
    assert ours == theirs
    ours = await our_request(CallControl, lambda c: c.reject("rtc_1", 486, deadline()))
    assert ours == sdk_request(lambda c: c.realtime.calls.reject("rtc_1", status_code=486))


@pytest.mark.anyio
@pytest.mark.parametrize("status_code", [200, 299, 700, 0])
async def test_live_reject_refuses_a_code_outside_300_699(status_code: int) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    client = build_http_client(BASE_URL, "sk", transport=httpx.MockTransport(handler))
    async with client:
        with pytest.raises(UpstreamRejected, match="not 300-699"):
            await LiveCallControl(client, policy=FAST).reject(SESSION_ID, status_code, deadline())
    assert sent == []


@pytest.mark.anyio
async def test_live_requests_share_the_retry_machinery() -> None:
    """A 503 then a 200: retried inside the deadline, at the Live path both times."""
    replies = [httpx.Response(503), httpx.Response(200)]
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return replies.pop(0)

    client = build_http_client(BASE_URL, "sk", transport=httpx.MockTransport(handler))
    async with client:
        await LiveCallControl(client, policy=FAST).hangup(SESSION_ID, deadline())
    assert paths == [f"/v1/live/sessions/{SESSION_ID}/hangup"] * 2

    client = build_http_client(
        BASE_URL, "sk", transport=httpx.MockTransport(lambda r: httpx.Response(503))
    )
    async with client:
        with pytest.raises(UpstreamUnavailable):
            await LiveCallControl(client, policy=FAST).hangup(SESSION_ID, time.monotonic() + 0.05)
