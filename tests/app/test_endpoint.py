"""POST /webhooks/openai served ahead of FastAPI's stack (app.endpoint): its edge cases.

Requests go in as an ASGI server gives them (TestClient, or raw scopes and messages for
what a client library would never send), on the running app's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.records.calllog import CallRecord
from app.records.memory import InMemoryCallLog
from app.records.sqlite import SqliteCallLog
from app.rules import compile_rules
from app.state.claims import Answer, MemoryClaimStore, Ticket
from tests.app.test_app import ROUTES, client_for, make_settings, post_event
from tests.support import incoming_event, signed

Message = dict[str, Any]


@pytest.fixture
def api() -> respx.Router:
    router = respx.Router(base_url="https://api.test/v1", assert_all_called=False)
    router.post(path__regex=r"/realtime/calls/[^/]+/\w+").respond(200)
    return router


@pytest.fixture
def client(api: respx.Router) -> Iterator[TestClient]:
    with client_for(api) as test_client:
        yield test_client


def scope(headers: list[tuple[bytes, bytes]], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/webhooks/openai",
        "raw_path": b"/webhooks/openai",
        "query_string": b"",
        "headers": headers,
        "state": {},
    }
    values.update(overrides)
    return values


def call(
    client: TestClient, request_scope: dict[str, Any], messages: list[Message]
) -> tuple[list[Message], int]:
    """Run one request on the app's loop: (messages the app sent, messages it received)."""
    inbox = list(messages)
    sent: list[Message] = []
    taken = 0

    async def receive() -> Message:
        nonlocal taken
        taken += 1
        assert inbox, "the app read past the last message"
        return inbox.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async def run() -> None:
        await client.app(request_scope, receive, send)  # type: ignore[arg-type]

    assert client.portal is not None
    client.portal.call(run)
    return sent, taken


def answer(sent: list[Message]) -> tuple[int, dict[bytes, bytes], bytes]:
    start, body = sent
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


def signed_scope(event: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    body, headers = signed(event)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return scope(raw), body


def app_with(api: respx.Router, **injected: Any) -> FastAPI:
    """The app on the test routes, its API `api`, with `injected` parts (store, call log)."""
    return create_app(
        make_settings(),
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(api.async_handler),
        **injected,
    )


Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Run = Callable[[FastAPI, dict[str, Any], Receive, Send], Awaitable[None]]


async def _once(app: FastAPI, request_scope: dict[str, Any], receive: Receive, send: Send) -> None:
    await app(request_scope, receive, send)  # type: ignore[arg-type]


def deliver(app: FastAPI, send: Send, run: Run = _once) -> None:
    """One signed delivery of a routed call, handed to the app as uvicorn would, on the
    app's running loop (`run` may start more alongside)."""
    request_scope, body = signed_scope(incoming_event(called="+18005550100"))

    async def receive() -> Message:
        return {"type": "http.request", "body": body}

    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(run, app, request_scope, receive, send)


def test_a_routed_call_is_answered_in_json(client: TestClient) -> None:
    request_scope, body = signed_scope(incoming_event(called="+18005550100"))
    sent, _ = call(client, request_scope, [{"type": "http.request", "body": body}])
    status, headers, content = answer(sent)
    assert status == 200
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(content)).encode()
    assert b'"route":"support"' in content


def test_a_body_in_many_chunks_is_put_together(client: TestClient, api: respx.Router) -> None:
    request_scope, body = signed_scope(incoming_event(called="+18005550100"))
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent, _ = call(client, request_scope, messages)
    assert answer(sent)[0] == 200
    assert api.calls.call_count == 1


def test_a_chunked_body_over_the_limit_is_413_before_the_end(client: TestClient) -> None:
    # No content-length: the body is refused as soon as it passes the limit (4096).
    chunk = {"type": "http.request", "body": b"x" * 1000, "more_body": True}
    sent, taken = call(client, scope([]), [chunk] * 10)
    status, _, content = answer(sent)
    assert (status, content) == (413, b'{"error":"body over 4096 bytes"}')
    assert taken == 5  # not read to the end
    assert 'switchboard_webhooks_total{result="too_large"} 1.0' in client.get("/metrics").text


def test_a_declared_length_over_the_limit_is_413_unread(client: TestClient) -> None:
    sent, taken = call(client, scope([(b"content-length", b"5000")]), [])
    assert answer(sent)[0] == 413
    assert taken == 0


@pytest.mark.parametrize("declared", [b"\xb2", b"12x", b"-1", b""])
def test_an_odd_content_length_is_not_a_500(client: TestClient, declared: bytes) -> None:
    # "²" is a digit to str.isdigit() but not to int(); servers refuse most of these, but
    # the endpoint must not depend on that.
    sent, _ = call(client, scope([(b"content-length", declared)]), [{"type": "http.request"}])
    assert answer(sent)[0] == 401  # then: no signature


def test_a_client_gone_mid_body_gets_no_answer_and_the_app_carries_on(
    client: TestClient, api: respx.Router
) -> None:
    request_scope, body = signed_scope(incoming_event(called="+18005550100"))
    messages: list[Message] = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent, _ = call(client, request_scope, messages)
    assert sent == []
    assert api.calls.call_count == 0
    assert post_event(client, incoming_event(called="+18005550100")).status_code == 200


class BrokenStore(MemoryClaimStore):
    """A defect in the exactly-once state: a claim raises what nothing expects."""

    async def claim(self, keys: tuple[str, ...], deadline: float) -> Ticket | Answer:
        raise RuntimeError("bug")


def test_an_unexpected_exception_is_a_500_in_json_and_a_log_line(
    api: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(
        make_settings(),
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(api.async_handler),
        store=BrokenStore(horizon_seconds=3600),
    )
    # raise_server_exceptions: an exception reaching the server would fail the test.
    with TestClient(app, raise_server_exceptions=True) as client:
        with caplog.at_level(logging.ERROR, logger="switchboard"):
            first = post_event(client, incoming_event())
            second = post_event(client, incoming_event())
        assert client.get("/healthz").status_code == 200
    for response in (first, second):
        assert response.status_code == 500
        assert response.json() == {"error": "internal error"}
    errors = [r for r in caplog.records if getattr(r, "event", None) == "webhook_error"]
    assert len(errors) == 2
    assert errors[0].exc_info is not None and "bug" in str(errors[0].exc_info[1])


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_other_methods_are_405_with_allow(client: TestClient, method: str) -> None:
    # As FastAPI answers for a POST-only route.
    response = client.request(method, "/webhooks/openai")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    if method != "HEAD":
        assert response.json() == {"detail": "Method Not Allowed"}


def test_a_trailing_slash_is_redirected_as_before(client: TestClient) -> None:
    response = client.post("/webhooks/openai/", content=b"{}", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"].endswith("/webhooks/openai")


def test_a_root_path_is_taken_off_as_uvicorn_gives_it(client: TestClient) -> None:
    # `uvicorn --root-path /sb`: the scope's path includes the root path.
    request_scope, body = signed_scope(incoming_event(called="+18005550100"))
    request_scope.update(root_path="/sb", path="/sb/webhooks/openai")
    sent, _ = call(client, request_scope, [{"type": "http.request", "body": body}])
    status, _, content = answer(sent)
    assert status == 200
    assert b'"route":"support"' in content


def test_other_paths_still_go_through_fastapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/webhooks/other", content=b"{}").status_code == 404


class RecordingCallLog(InMemoryCallLog):
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def started(self, record: CallRecord) -> None:
        self.order.append(f"record {record.outcome}")
        super().started(record)


def test_the_call_log_line_and_last_record_come_after_the_answer(api: respx.Router) -> None:
    """Nothing that does not decide the answer runs between the API's answer and the
    webhook's: the call's log line and its last record are written after it is sent."""
    order: list[str] = []
    app = app_with(api, call_log=RecordingCallLog(order))

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            order.append(f"log {record.getMessage()}")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            order.append("answer sent")

    lines = Lines()
    calls = logging.getLogger("switchboard.call")
    calls.addHandler(lines)
    level = calls.level
    calls.setLevel(logging.INFO)
    try:
        deliver(app, send)
    finally:
        calls.removeHandler(lines)
        calls.setLevel(level)
    assert order == ["record pending", "answer sent", "log call routed", "record accepted"]


class RecordingStore(MemoryClaimStore):
    """The in-memory store, noting when an answer is kept or a claim freed; a kept answer
    may be held back (`gate`) to see what happens before it lands."""

    def __init__(self, order: list[str], gate: asyncio.Event | None = None) -> None:
        super().__init__(horizon_seconds=3600)
        self.order = order
        self.gate = gate

    async def finish(
        self,
        ticket: Ticket,
        answer: Answer,
        *,
        remember: bool,
        uncertain: bool = False,
        deadline: float | None = None,
    ) -> None:
        delivery = ticket.keys[0].startswith("webhook:")  # not the dialog's (keep_first)
        if remember and delivery and self.gate is not None:
            await self.gate.wait()
        await super().finish(
            ticket, answer, remember=remember, uncertain=uncertain, deadline=deadline
        )
        if delivery:
            self.order.append(f"store {'kept' if remember else 'freed'} {answer.status_code}")


def while_keeping(answered: asyncio.Event, gate: asyncio.Event, meanwhile: Run) -> Run:
    """A delivery that runs `meanwhile` once it has answered, while its store is held from
    keeping the answer (`gate`: a RecordingStore's), then lets it finish."""

    async def run(
        app: FastAPI, request_scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        first = asyncio.create_task(app(request_scope, receive, send))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(5):
                await answered.wait()
                assert not first.done()  # still keeping its answer
                await meanwhile(app, request_scope, receive, send)
        finally:
            gate.set()
            await first

    return run


def answer_order(api: respx.Router) -> list[str]:
    """When one delivery's answer was sent, and its claim kept or freed."""
    order: list[str] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            order.append(f"answer sent {message['status']}")

    deliver(app_with(api, store=RecordingStore(order)), send)
    return order


def test_the_answer_is_kept_after_it_is_sent(api: respx.Router) -> None:
    """The webhook's answer does not wait for the store to keep it (a commit, a round
    trip to Redis): it is kept once sent, in the request's task."""
    assert answer_order(api) == ["answer sent 200", "store kept 200"]


def test_a_claim_freed_for_a_redelivery_is_freed_before_the_answer() -> None:
    """A 503 invites OpenAI's redelivery, which must find the claim free: freed first."""
    api = respx.Router(base_url="https://api.test/v1", assert_all_called=False)
    api.post(path__regex=r"/realtime/calls/[^/]+/\w+").respond(500)
    assert answer_order(api) == ["store freed 503", "answer sent 503"]


def test_a_duplicate_while_the_answer_is_being_kept_gets_it(api: respx.Router) -> None:
    """A duplicate delivery arriving after the answer was sent, before the store has kept
    it, is answered as the first was, and nothing is sent twice."""
    order: list[str] = []
    gate = asyncio.Event()
    answers: list[bytes] = []
    answered = asyncio.Event()
    kept_before_the_duplicate: list[str] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            answers.append(message["body"])
            answered.set()

    async def again(
        app: FastAPI, request_scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        await app(request_scope, receive, send)  # type: ignore[arg-type]
        kept_before_the_duplicate.extend(order)

    deliver(
        app_with(api, store=RecordingStore(order, gate)),
        send,
        while_keeping(answered, gate, again),
    )
    assert kept_before_the_duplicate == []  # the duplicate did not wait for it either
    assert api.calls.call_count == 1
    first, duplicate = (json.loads(a) for a in answers)
    assert first["outcome"] == "accepted"
    assert duplicate == {**first, "duplicate": True}
    assert order == ["store kept 200"]


class IdleCallLog(RecordingCallLog):
    """Notes when the endpoint says no webhook is in flight any more."""

    def idle(self) -> None:
        self.order.append("idle")


def test_the_call_log_hears_of_idle_after_the_after_answer_work(api: respx.Router) -> None:
    """The SQLite call log writes when the loop is idle: told once the webhook's answer
    and its after-answer work (the last record) are done."""
    order: list[str] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            order.append("answer sent")

    deliver(app_with(api, call_log=IdleCallLog(order)), send)
    assert order == ["record pending", "answer sent", "record accepted", "idle"]


def test_idle_comes_once_the_last_webhook_in_flight_is_done(api: respx.Router) -> None:
    """Not while another webhook is in flight (here: still keeping its answer); once,
    when the last one is done."""
    order: list[str] = []
    gate = asyncio.Event()
    answered = asyncio.Event()
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        if message["type"] == "http.response.body":
            answered.set()

    async def another(
        app: FastAPI, request_scope: dict[str, Any], receive: Receive, send: Send
    ) -> None:
        order.clear()
        # Another webhook, done while the first is in flight (unsigned: 401).
        await app(scope([]), receive, send)  # type: ignore[arg-type]
        assert "idle" not in order

    app = app_with(api, store=RecordingStore(order, gate), call_log=IdleCallLog(order))
    deliver(app, send, while_keeping(answered, gate, another))
    assert statuses == [200, 401]
    assert order == ["store kept 200", "idle"]  # its record came before the other webhook


def test_an_injected_sqlite_call_log_is_written_when_the_loop_is_idle(
    api: respx.Router, tmp_path: Path
) -> None:
    """create_app wires the SQLite call log's idle() to the endpoint: with a MAX_DELAY
    no test waits for, the call is on disk soon after its webhook all the same."""
    path = tmp_path / "calls.db"
    app = app_with(api, call_log=SqliteCallLog(path, max_delay=60.0))
    with TestClient(app) as client:
        event = incoming_event(called="+18005550100")
        assert post_event(client, event).status_code == 200
        deadline = time.monotonic() + 10
        while True:
            with sqlite3.connect(path) as db:
                rows = db.execute("SELECT call_id, outcome FROM calls").fetchall()
            if rows:
                break
            assert time.monotonic() < deadline, "the call was never written"
            time.sleep(0.01)
    assert rows == [(event["data"]["call_id"], "accepted")]
