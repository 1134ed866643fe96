"""Table-driven tests for app.openai.callcontrol: the call-control client, against a respx router.

The client is the production one (`build_http_client`) with only its transport swapped for
respx. Retries use a tiny backoff and short deadlines; where a test needs to know exactly
how long the client paused, a fake clock and a fake sleep are injected instead.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
import respx

from app.openai.callcontrol import (
    JITTER,
    ApiClient,
    CallControl,
    CallGone,
    Operation,
    RetryPolicy,
    UpstreamRejected,
    UpstreamUnavailable,
    build_http_client,
)

BASE_URL = "https://api.openai.test/v1"
API_KEY = "sk-test-0123456789"
CALL_ID = "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce"
CALLS_URL = f"{BASE_URL}/realtime/calls/{CALL_ID}"
ACCEPT_BODY = b'{"type":"realtime","model":"gpt-realtime","instructions":"Be brief."}'
FAST = RetryPolicy(attempt_timeout=1.0, base_backoff=0.001, max_backoff=0.004)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Attempts:
    """The observer: every attempt as (operation, status label, seconds)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Operation, str, float]] = []

    def __call__(self, operation: Operation, status: str, seconds: float) -> None:
        self.seen.append((operation, status, seconds))

    @property
    def labels(self) -> list[str]:
        return [status for _, status, _ in self.seen]


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(base_url=BASE_URL, assert_all_called=False)


@pytest.fixture
def attempts() -> Attempts:
    return Attempts()


@pytest.fixture
async def client(router: respx.Router) -> AsyncIterator[ApiClient]:
    transport = httpx.MockTransport(router.async_handler)
    async with build_http_client(BASE_URL, API_KEY, transport=transport) as http:
        yield http


@pytest.fixture
def control(client: ApiClient, attempts: Attempts) -> CallControl:
    return CallControl(client, policy=FAST, observer=attempts)


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": "invalid_request"}})


Call = Callable[[CallControl, float], Any]

OPERATIONS = [
    pytest.param(
        "accept",
        lambda c, d: c.accept(CALL_ID, ACCEPT_BODY, d),
        ACCEPT_BODY,
        id="accept",
    ),
    pytest.param(
        "reject",
        lambda c, d: c.reject(CALL_ID, 486, d),
        b'{"status_code":486}',
        id="reject",
    ),
    pytest.param(
        "refer",
        lambda c, d: c.refer(CALL_ID, "tel:+14155550123", d),
        b'{"target_uri":"tel:+14155550123"}',
        id="refer",
    ),
    pytest.param("hangup", lambda c, d: c.hangup(CALL_ID, d), b"", id="hangup"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("operation", "call", "body"), OPERATIONS)
async def test_request_url_auth_and_body(
    router: respx.Router,
    control: CallControl,
    attempts: Attempts,
    operation: Operation,
    call: Call,
    body: bytes,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/{operation}").respond(200)

    await call(control, soon())

    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == f"{CALLS_URL}/{operation}"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.content == body
    if body:
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.content) == json.loads(body)
    else:
        assert "Content-Type" not in request.headers
    assert [(op, label) for op, label, _ in attempts.seen] == [(operation, "2xx")]


@pytest.mark.anyio
@pytest.mark.parametrize(("operation", "call", "body"), OPERATIONS)
async def test_call_gone_is_not_retried(
    router: respx.Router,
    control: CallControl,
    attempts: Attempts,
    operation: Operation,
    call: Call,
    body: bytes,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/{operation}").mock(
        return_value=error(404, "Call not found")
    )

    with pytest.raises(CallGone) as caught:
        await call(control, soon())

    assert route.call_count == 1
    assert (caught.value.operation, caught.value.status) == (operation, 404)
    assert caught.value.detail == "HTTP 404: Call not found"
    assert str(caught.value) == f"{operation} failed: HTTP 404: Call not found"
    assert caught.value.retryable is False
    assert attempts.labels == ["404"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "detail", "label"),
    [
        pytest.param(
            error(400, "Invalid session config"),
            "HTTP 400: Invalid session config",
            "4xx",
            id="400",
        ),
        pytest.param(
            error(401, "Incorrect API key provided"),
            "HTTP 401: Incorrect API key provided",
            "4xx",
            id="401",
        ),
        pytest.param(
            httpx.Response(409, text="call already accepted"),
            "HTTP 409: call already accepted",
            "4xx",
            id="409-text-body",
        ),
        pytest.param(httpx.Response(422), "HTTP 422: Unprocessable Entity", "4xx", id="422-empty"),
        pytest.param(
            httpx.Response(400, json={"error": "flat"}),
            'HTTP 400: {"error":"flat"}',
            "4xx",
            id="400-unexpected-json",
        ),
    ],
)
async def test_client_errors_are_not_retried(
    router: respx.Router,
    control: CallControl,
    attempts: Attempts,
    response: httpx.Response,
    detail: str,
    label: str,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(return_value=response)

    with pytest.raises(UpstreamRejected) as caught:
        await control.accept(CALL_ID, ACCEPT_BODY, soon())

    assert route.call_count == 1
    assert caught.value.status == response.status_code
    assert caught.value.detail == detail
    assert caught.value.retryable is False
    assert attempts.labels == [label]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("side_effect", "labels"),
    [
        pytest.param([httpx.Response(500), httpx.Response(200)], ["5xx", "2xx"], id="500"),
        pytest.param(
            [httpx.Response(502), httpx.Response(503), httpx.Response(504), httpx.Response(200)],
            ["5xx", "5xx", "5xx", "2xx"],
            id="502-503-504",
        ),
        pytest.param(
            [httpx.Response(429), httpx.Response(200)], ["429", "2xx"], id="429-no-retry-after"
        ),
        pytest.param(
            [httpx.ConnectError("connection refused"), httpx.Response(200)],
            ["connection_error", "2xx"],
            id="connect-error",
        ),
        pytest.param(
            [httpx.ConnectTimeout("connect timed out"), httpx.Response(200)],
            ["connection_error", "2xx"],
            id="connect-timeout",
        ),
        pytest.param(
            [httpx.PoolTimeout("no free connection"), httpx.Response(200)],
            ["connection_error", "2xx"],
            id="pool-timeout",
        ),
        pytest.param(
            [httpx.RemoteProtocolError("server disconnected"), httpx.Response(200)],
            ["connection_error", "2xx"],
            id="remote-protocol-error",
        ),
        pytest.param(
            [httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(204)],
            ["connection_error", "5xx", "2xx"],
            id="mixed",
        ),
    ],
)
async def test_transient_failures_are_retried(
    router: respx.Router,
    control: CallControl,
    attempts: Attempts,
    side_effect: list[Any],
    labels: list[str],
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/reject").mock(side_effect=side_effect)

    await control.reject(CALL_ID, 603, soon())

    assert route.call_count == len(side_effect)
    assert attempts.labels == labels
    # Every retry repeats the same request.
    assert {call.request.content for call in route.calls} == {b'{"status_code":603}'}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mock", "label", "status"),
    [
        pytest.param({"return_value": httpx.Response(503)}, "5xx", 503, id="503"),
        pytest.param({"return_value": httpx.Response(429)}, "429", 429, id="429"),
        pytest.param(
            {"side_effect": httpx.ConnectError("connection refused")},
            "connection_error",
            None,
            id="connect-error",
        ),
    ],
)
async def test_repeated_failures_until_the_deadline(
    router: respx.Router,
    control: CallControl,
    attempts: Attempts,
    mock: dict[str, Any],
    label: str,
    status: int | None,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(**mock)

    with pytest.raises(UpstreamUnavailable) as caught:
        await control.accept(CALL_ID, ACCEPT_BODY, soon(0.05))

    assert route.call_count >= 2
    assert attempts.labels == [label] * route.call_count
    assert caught.value.status == status
    assert caught.value.retryable is True


@pytest.mark.anyio
async def test_connection_error_detail(router: respx.Router, control: CallControl) -> None:
    router.post(f"/realtime/calls/{CALL_ID}/hangup").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await control.hangup(CALL_ID, soon(0.02))
    assert caught.value.detail == "ConnectError: connection refused"


@pytest.mark.anyio
async def test_deadline_already_passed_sends_nothing(
    router: respx.Router, control: CallControl, attempts: Attempts
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").respond(200)
    with pytest.raises(UpstreamUnavailable) as caught:
        await control.accept(CALL_ID, ACCEPT_BODY, time.monotonic() - 0.001)
    assert caught.value.detail == "deadline exceeded before a response"
    assert route.call_count == 0
    assert attempts.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("side_effect", "label", "detail"),
    [
        pytest.param(
            httpx.ReadTimeout("timed out"), "timeout", "ReadTimeout: timed out", id="read-timeout"
        ),
        pytest.param(
            httpx.WriteTimeout("timed out"),
            "timeout",
            "WriteTimeout: timed out",
            id="write-timeout",
        ),
        pytest.param(
            httpx.ReadError("connection reset"),
            "connection_error",
            "ReadError: connection reset",
            id="read-error",
        ),
    ],
)
async def test_sent_but_unanswered_is_not_retried(
    router: respx.Router,
    control: CallControl,
    attempts: Attempts,
    side_effect: Exception,
    label: str,
    detail: str,
) -> None:
    """The request may have taken effect: repeating an accept or refer is not safe here."""
    route = router.post(f"/realtime/calls/{CALL_ID}/refer").mock(
        side_effect=[side_effect, httpx.Response(200)]
    )

    with pytest.raises(UpstreamUnavailable) as caught:
        await control.refer(CALL_ID, "sip:operator@pbx.example.com", soon())

    assert route.call_count == 1
    assert caught.value.detail == detail
    assert caught.value.status is None
    assert attempts.labels == [label]


# --- exact pauses and durations: fake clock, fake sleep ------------------------------


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps or the API works."""

    def __init__(self) -> None:
        self.now = 500.0
        self.sleeps: list[float] = []
        self.oversleep = 0.0
        """How much later than asked a sleep wakes up (a busy event loop)."""

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > 1000:  # a client that does not really wait spins forever
            raise AssertionError(f"busy loop: {len(self.sleeps)} pauses, the last {seconds}")
        self.now += seconds + self.oversleep


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


TIMED = RetryPolicy(attempt_timeout=2.0, base_backoff=0.1, max_backoff=0.4)


def timed(client: ApiClient, attempts: Attempts, fake_time: FakeTime, **policy: Any) -> CallControl:
    return CallControl(
        client,
        policy=replace(TIMED, **policy),
        observer=attempts,
        clock=fake_time.monotonic,
        sleep=fake_time.sleep,
    )


@pytest.fixture
def timed_control(client: ApiClient, attempts: Attempts, fake_time: FakeTime) -> CallControl:
    return timed(client, attempts, fake_time)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "pause"),
    [
        pytest.param(httpx.Response(429, headers={"Retry-After": "2"}), 2.0, id="429-seconds"),
        pytest.param(httpx.Response(429, headers={"Retry-After": "0.25"}), 0.25, id="429-fraction"),
        pytest.param(httpx.Response(503, headers={"Retry-After": "3"}), 3.0, id="503-seconds"),
    ],
)
async def test_retry_after_is_honoured_with_jitter(
    router: respx.Router,
    timed_control: CallControl,
    fake_time: FakeTime,
    attempts: Attempts,
    response: httpx.Response,
    pause: float,
) -> None:
    """Never sooner than asked, and up to 10 % later: calls held back together spread out."""
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[response, httpx.Response(200)] * 20
    )

    for _ in range(20):
        await timed_control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + 10)

    assert route.call_count == 40
    assert len(fake_time.sleeps) == 20
    assert all(pause <= s <= pause * (1 + JITTER) for s in fake_time.sleeps)
    assert len(set(fake_time.sleeps)) > 1  # jittered, not one fixed pause


@pytest.mark.anyio
@pytest.mark.parametrize(
    "retry_after",
    [
        pytest.param("0", id="zero"),
        pytest.param("-5", id="negative"),
        pytest.param("0.01", id="below-the-floor"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", id="date-in-the-past"),
        pytest.param("nan", id="nan"),
    ],
)
async def test_a_short_retry_after_waits_the_backoff_floor(
    router: respx.Router, timed_control: CallControl, fake_time: FakeTime, retry_after: str
) -> None:
    """0, negative or past: the server cannot make the client spin; it waits the backoff."""
    router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        return_value=httpx.Response(429, headers={"Retry-After": retry_after})
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await timed_control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + 10)
    assert caught.value.status == 429
    ceilings = [0.1, 0.2, 0.4]  # the backoff of the three pauses between four sends
    assert len(fake_time.sleeps) == 3
    assert all(c / 2 <= s <= c for s, c in zip(fake_time.sleeps, ceilings, strict=True))


@pytest.mark.anyio
async def test_retry_after_zero_makes_a_bounded_number_of_requests(
    router: respx.Router, control: CallControl, attempts: Attempts
) -> None:
    """The storm in issue 11: `Retry-After: 0` made 4,111 accepts for one call in 5 s."""
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "0"})
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await control.accept(CALL_ID, ACCEPT_BODY, soon(1.0))
    assert caught.value.status == 429
    assert route.call_count == RetryPolicy().max_sends == 4
    assert attempts.labels == ["429"] * 4


@pytest.mark.anyio
@pytest.mark.parametrize(
    "retry_after",
    [
        pytest.param("30", id="seconds"),
        pytest.param("Fri, 31 Dec 2999 23:59:59 GMT", id="date"),
        pytest.param("inf", id="infinite"),
    ],
)
async def test_retry_after_beyond_the_deadline_gives_up_at_once(
    router: respx.Router,
    timed_control: CallControl,
    fake_time: FakeTime,
    retry_after: str,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": retry_after}), httpx.Response(200)]
    )

    with pytest.raises(UpstreamUnavailable) as caught:
        await timed_control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + 10)

    assert route.call_count == 1
    assert caught.value.status == 429
    assert fake_time.sleeps == []


@pytest.mark.anyio
async def test_unparseable_retry_after_falls_back_to_backoff(
    router: respx.Router, timed_control: CallControl, fake_time: FakeTime
) -> None:
    router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "soon"}), httpx.Response(200)]
    )
    await timed_control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + 10)
    (pause,) = fake_time.sleeps
    assert 0.05 <= pause <= 0.1  # first backoff: jittered in [base/2, base]


@pytest.mark.anyio
async def test_backoff_doubles_up_to_the_cap_and_stops_before_the_deadline(
    router: respx.Router,
    client: ApiClient,
    fake_time: FakeTime,
    attempts: Attempts,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").respond(503)
    deadline = fake_time.now + 2.0
    control = timed(client, attempts, fake_time, max_sends=100)

    with pytest.raises(UpstreamUnavailable) as caught:
        await control.accept(CALL_ID, ACCEPT_BODY, deadline)

    assert caught.value.status == 503
    ceilings = [min(0.4, 0.1 * 2**n) for n in range(len(fake_time.sleeps))]
    assert all(c / 2 <= s <= c for s, c in zip(fake_time.sleeps, ceilings, strict=True))
    assert ceilings[:3] == [0.1, 0.2, 0.4]
    assert fake_time.now < deadline  # never slept past it
    assert route.call_count == len(fake_time.sleeps) + 1
    assert attempts.labels == ["5xx"] * route.call_count


@pytest.mark.anyio
async def test_sleep_overrunning_the_deadline_reports_the_last_failure(
    router: respx.Router, timed_control: CallControl, fake_time: FakeTime
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[error(503, "Service overloaded"), httpx.Response(200)]
    )
    fake_time.oversleep = 1.0  # the pause fits before the deadline, the wake-up does not

    with pytest.raises(UpstreamUnavailable) as caught:
        await timed_control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + 0.5)

    assert route.call_count == 1
    assert len(fake_time.sleeps) == 1
    assert (caught.value.status, caught.value.detail) == (503, "HTTP 503: Service overloaded")


@pytest.mark.anyio
async def test_observer_sees_each_attempt_with_its_duration(
    router: respx.Router, timed_control: CallControl, fake_time: FakeTime, attempts: Attempts
) -> None:
    responses = iter(
        [(0.25, httpx.Response(500)), (1.5, httpx.Response(429)), (0.125, httpx.Response(204))]
    )

    def slow_api(request: httpx.Request) -> httpx.Response:
        took, response = next(responses)
        fake_time.now += took
        return response

    router.post(f"/realtime/calls/{CALL_ID}/hangup").mock(side_effect=slow_api)

    await timed_control.hangup(CALL_ID, fake_time.now + 10)

    assert attempts.seen == [
        ("hangup", "5xx", 0.25),
        ("hangup", "429", 1.5),
        ("hangup", "2xx", 0.125),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("remaining", "attempt_timeout"),
    [
        pytest.param(10.0, 2.0, id="attempt-timeout"),
        pytest.param(0.5, 0.5, id="time-left"),
    ],
)
async def test_each_attempt_is_bounded_by_the_deadline(
    router: respx.Router,
    timed_control: CallControl,
    fake_time: FakeTime,
    remaining: float,
    attempt_timeout: float,
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").respond(200)
    await timed_control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + remaining)
    assert route.calls.last.request.extensions["timeout"] == dict.fromkeys(
        ("connect", "read", "write", "pool"), attempt_timeout
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "uncertain"),
    [
        pytest.param(httpx.RemoteProtocolError("server disconnected"), True, id="dropped"),
        pytest.param(httpx.ConnectError("connection refused"), False, id="never-sent"),
    ],
)
async def test_a_retry_after_a_dropped_connection_is_uncertain(
    router: respx.Router, control: CallControl, first: Exception, uncertain: bool
) -> None:
    """The dropped attempt may have been read: a refusal after it is not proof of nothing."""
    router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[first, httpx.Response(400, json={"error": {"message": "already accepted"}})]
    )
    with pytest.raises(UpstreamRejected) as caught:
        await control.accept(CALL_ID, b"{}", soon())
    assert caught.value.uncertain is uncertain


# --- how often one operation is sent, per delivery -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "mock",
    [
        pytest.param({"return_value": httpx.Response(503)}, id="503"),
        pytest.param({"return_value": httpx.Response(429)}, id="429"),
        pytest.param({"side_effect": httpx.ConnectError("refused")}, id="connect-error"),
    ],
)
async def test_sends_per_delivery_are_capped(
    router: respx.Router,
    client: ApiClient,
    fake_time: FakeTime,
    attempts: Attempts,
    mock: dict[str, Any],
) -> None:
    """However long the deadline, one operation is sent at most `max_sends` times."""
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(**mock)
    control = timed(client, attempts, fake_time, max_sends=3)
    with pytest.raises(UpstreamUnavailable):
        await control.accept(CALL_ID, ACCEPT_BODY, fake_time.now + 3600)
    assert route.call_count == 3
    assert len(fake_time.sleeps) == 2  # no pause after the last send


@pytest.mark.anyio
async def test_a_dropped_connection_is_sent_again_once_only(
    router: respx.Router, control: CallControl, attempts: Attempts
) -> None:
    """It may have been read: a second send is allowed for a stale keep-alive, not eleven."""
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=httpx.RemoteProtocolError("Server disconnected without sending a response.")
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await control.accept(CALL_ID, ACCEPT_BODY, soon(1.0))
    assert route.call_count == 2
    assert caught.value.uncertain is True
    assert attempts.labels == ["connection_error"] * 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "after",
    [
        pytest.param(httpx.Response(503), id="then-503"),
        pytest.param(httpx.Response(429), id="then-429"),
        pytest.param(httpx.ConnectError("refused"), id="then-connect-error"),
    ],
)
async def test_nothing_more_is_sent_after_the_resend_of_a_dropped_request(
    router: respx.Router, control: CallControl, after: Any
) -> None:
    """After an uncertain failure, one more send in all, whatever it meets."""
    route = router.post(f"/realtime/calls/{CALL_ID}/refer").mock(
        side_effect=[httpx.RemoteProtocolError("dropped"), after, httpx.Response(200)]
    )
    with pytest.raises(UpstreamUnavailable) as caught:
        await control.refer(CALL_ID, "tel:+14155550123", soon(1.0))
    assert route.call_count == 2
    assert caught.value.uncertain is True


@pytest.mark.anyio
async def test_a_dropped_connection_after_retries_still_gets_its_one_resend(
    router: respx.Router, control: CallControl
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[
            httpx.Response(503),
            httpx.RemoteProtocolError("dropped"),
            httpx.Response(200),
        ]
    )
    await control.accept(CALL_ID, ACCEPT_BODY, soon(1.0))
    assert route.call_count == 3


def test_retry_policy_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_sends"):
        RetryPolicy(max_sends=0)
    with pytest.raises(ValueError, match="uncertain_resends"):
        RetryPolicy(uncertain_resends=2)


@pytest.mark.anyio
async def test_no_resend_of_a_dropped_request_when_the_policy_allows_none(
    router: respx.Router, client: ApiClient, attempts: Attempts
) -> None:
    route = router.post(f"/realtime/calls/{CALL_ID}/accept").mock(
        side_effect=[httpx.RemoteProtocolError("dropped"), httpx.Response(200)]
    )
    control = CallControl(client, policy=replace(FAST, uncertain_resends=0), observer=attempts)
    with pytest.raises(UpstreamUnavailable):
        await control.accept(CALL_ID, ACCEPT_BODY, soon(1.0))
    assert route.call_count == 1


# --- one wall-clock limit per request, against a real local server ---------------------------


class Trickle:
    """A real HTTP server that answers 200 with headers at once, then one body byte at a time."""

    def __init__(self, *, length: int = 200, every: float = 0.05) -> None:
        self.length = length
        self.every = every
        self.sent = 0
        self.requests = 0
        self.disconnected = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Trickle:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            self.requests += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {self.length}\r\n\r\n".encode()
            )
            await writer.drain()
            for _ in range(self.length):
                await asyncio.sleep(self.every)
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(b" ")
                await writer.drain()
                self.sent += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.disconnected.set()
            writer.close()


@pytest.mark.anyio
async def test_a_trickling_answer_is_cut_at_the_request_limit() -> None:
    """httpx's read timeout restarts at every byte; the request's own limit does not."""
    async with (
        Trickle(length=200, every=0.05) as server,
        build_http_client(server.base_url, API_KEY) as http,
    ):
        control = CallControl(http, policy=RetryPolicy(attempt_timeout=0.3))
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.accept(CALL_ID, ACCEPT_BODY, time.monotonic() + 0.5)
        assert caught.value.uncertain is True
        assert "no complete answer" in caught.value.detail
        await asyncio.wait_for(server.disconnected.wait(), 10)
        assert server.requests == 1  # sent but unanswered: not sent again
        assert server.sent < server.length  # the client left long before the body ended


@pytest.mark.anyio
async def test_a_trickling_answer_is_cut_at_the_call_deadline() -> None:
    """The request limit is longer than what is left of the call: the deadline wins."""
    async with (
        Trickle(length=200, every=0.05) as server,
        build_http_client(server.base_url, API_KEY) as http,
    ):
        control = CallControl(http, policy=RetryPolicy(attempt_timeout=60))
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.hangup(CALL_ID, time.monotonic() + 0.3)
        assert caught.value.uncertain is True
        await asyncio.wait_for(server.disconnected.wait(), 10)
        assert server.sent < server.length


class HeldAnswer:
    """A real HTTP server on a thread of its own: it reads one request, sets `received`,
    and answers 200 only once `release` is set (then sets `answered`), so that the answer
    can reach the client's socket while the client's event loop is blocked."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        self.answered = threading.Event()
        self._closing = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(body) < length:
                body += connection.recv(65536)
            self.received.set()
            self.release.wait(30)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            )
            self.answered.set()
            self._closing.wait(30)  # held open (keep-alive) until close()

    def close(self) -> None:
        self.release.set()
        self._closing.set()
        self._listener.close()
        self._thread.join(10)


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),  # what serve runs
    ],
)
@pytest.mark.anyio
async def test_an_answer_that_came_while_the_loop_was_stalled_is_taken() -> None:
    """The process stalls (a loaded machine, a long callback, SIGSTOP) while its accept is
    in flight, and the API's answer reaches the socket before the loop runs again, past
    the request's limit. The answer wins. Taken as a timeout, the webhook was answered 503
    and the call freed for its redelivery, which accepted the call a second time (seen end
    to end: two replicas on Redis, one stopped past the call's deadline). The stall is in
    an I/O callback: uvloop then runs the limit's timer before it next polls the sockets,
    asyncio's own loop after."""
    server = HeldAnswer()
    try:
        async with build_http_client(server.base_url, API_KEY) as http:
            limit = 0.2
            control = CallControl(http, policy=RetryPolicy(attempt_timeout=limit))
            accept = asyncio.create_task(
                control.accept(CALL_ID, ACCEPT_BODY, time.monotonic() + 60)
            )
            # The request has left (its limit is set).
            assert await asyncio.to_thread(server.received.wait, 10)
            past = time.monotonic() + limit + 0.05  # the limit is due by then
            loop = asyncio.get_running_loop()
            stalled: asyncio.Future[None] = loop.create_future()
            ours, theirs = socket.socketpair()

            def stall() -> None:
                """The loop stalls: the answer arrives, and the limit passes."""
                loop.remove_reader(ours)
                server.release.set()
                assert server.answered.wait(10)
                while time.monotonic() <= past:
                    time.sleep(0.01)
                stalled.set_result(None)

            with ours, theirs:
                loop.add_reader(ours, stall)
                theirs.send(b"x")
                await stalled
            await accept  # accepted: no UpstreamUnavailable('no complete answer')
    finally:
        server.close()
