"""POST /webhooks/openai as a plain ASGI app, ahead of FastAPI's stack.

Every call is one webhook: FastAPI's middleware, routing, dependency solving and response
classes cost about a tenth of the CPU of a call before any of ours runs, for a route that
uses none of them (no parameters, no dependencies, one JSON answer). `SwitchboardApp`
hands a POST to exactly this path straight to `WebhookEndpoint`; everything else (other
methods on it, the admin API, health, metrics, lifespan) goes through FastAPI unchanged.
The endpoint is also FastAPI's route for the path, so what reaches it through FastAPI (a
GET: 405 with `Allow: POST`; the slash redirect) behaves as any route does.

The answers are today's: WebhookError -> 400/401/413 with its reason, counted and logged
(throttled); anything unexpected -> 500 `{"error": "internal error"}` and a log line, as
Starlette's ServerErrorMiddleware would (it never reaches the server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from app.intake.events import IncomingCall, parse_event
from app.intake.webhook import SignatureVerifier, WebhookError
from app.ops.later import answering
from app.ops.logs import LogThrottle
from app.ops.metrics import Metrics
from app.rules import RuleSet
from app.state.claims import Answer

logger = logging.getLogger("switchboard")

WEBHOOK_PATH = "/webhooks/openai"
INTERNAL_ERROR = {"error": "internal error"}
NOT_READY = {"error": "routing rules are not loaded yet"}
UNSUBSCRIBED = "not in SWITCHBOARD_SUBSCRIBED_EVENTS"

# As Starlette's JSONResponse renders, without building an encoder per answer.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_JSON_TYPE = (b"content-type", b"application/json")


class BodyTooLarge(WebhookError):
    status_code = 413


class ClientGone(Exception):
    """The client disconnected before its body was read: nobody to answer."""


Route = Callable[[IncomingCall, RuleSet], Awaitable[Answer]]


class WebhookEndpoint:
    """Verify, parse, route one delivery; answer in JSON. An ASGI app (http scopes)."""

    def __init__(
        self,
        *,
        route: Route,
        rules: Callable[[], RuleSet | None],
        metrics: Metrics,
        verifier: SignatureVerifier | None,
        subscribed: frozenset[str],
        max_body_bytes: int,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """`on_idle`: called when the last webhook in flight is done, its after-answer
        work too (the call log writes then: app.records.sqlite)."""
        self._route = route
        self._rules = rules
        self._metrics = metrics
        self._verifier = verifier
        self._subscribed = subscribed
        self._limit = max_body_bytes
        self._on_idle = on_idle
        self._in_flight = 0
        # Anyone can send refused requests: a flood of them must not flood the logs.
        self._refusals = LogThrottle()
        self._unsubscribed_log = LogThrottle()
        self._errors = LogThrottle()
        self._ignored = metrics.webhook_result("ignored")
        self._not_ready = metrics.webhook_result("not_ready")
        self._refused_counters = {
            status: metrics.webhook_result(result)
            for status, result in ((400, "malformed"), (401, "unauthorized"), (413, "too_large"))
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._in_flight += 1
        try:
            async with answering() as after:
                await self._respond(scope, receive, send)
                await after()  # the kept answer, the call's log line and record (app.ops.later)
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._on_idle is not None:
                self._on_idle()

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            try:
                status, content = await self._answer(scope, receive)
            except WebhookError as exc:
                status, content = self._refused(exc)
            body = _encode(content).encode()
        except ClientGone:
            return
        except Exception:
            # A defect of ours, never the sender's: answered like ServerErrorMiddleware
            # would (in JSON), logged, and the server carries on.
            if self._errors.admit() is not None:
                logger.exception("webhook failed", extra={"event": "webhook_error"})
            status, body = 500, _encode(INTERNAL_ERROR).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"%d" % len(body)), _JSON_TYPE],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, Mapping[str, Any]]:
        headers = _headers(scope["headers"])
        body = await self._read_body(headers, receive)
        if self._verifier is not None:
            webhook_id = self._verifier.verify(headers, body)
        else:
            webhook_id = headers.get("webhook-id", "")[:256]
        event = parse_event(body, webhook_id)
        if not isinstance(event, IncomingCall):
            self._ignored.inc()
            self._metrics.ignored_event(event.type)
            return 200, {"status": "ignored", "type": event.type}
        if event.api not in self._subscribed:
            # Not announced in SWITCHBOARD_SUBSCRIBED_EVENTS: the pairing of the two APIs'
            # events trusts that list, so acting on this one could answer a call twice.
            return self._unsubscribed(event)
        rules = self._rules()  # once: the whole call is decided on these rules
        if rules is None:
            self._not_ready.inc()
            return 503, NOT_READY
        answer = await self._route(event, rules)
        content = answer.body
        return answer.status_code, content if isinstance(content, dict) else dict(content)

    async def _read_body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        """At most the limit; a larger body is refused without reading it all."""
        limit = self._limit
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        chunks = bytearray()
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            if not message.get("more_body", False) and not chunks:
                # The whole body in one message (the usual case): no copy.
                if len(chunk) > limit:
                    raise BodyTooLarge(f"body over {limit} bytes")
                return chunk
            chunks += chunk
            if len(chunks) > limit:
                raise BodyTooLarge(f"body over {limit} bytes")
            if not message.get("more_body", False):
                return bytes(chunks)

    def _refused(self, exc: WebhookError) -> tuple[int, Mapping[str, Any]]:
        status = exc.status_code
        counter = self._refused_counters.get(status, self._refused_counters[400])
        counter.inc()  # every refusal, logged or not
        suppressed = self._refusals.admit()
        if suppressed is not None:
            logger.info(
                "webhook refused",
                extra={
                    "event": "webhook_refused",
                    "status": status,
                    "reason": exc.reason,
                    "suppressed": suppressed,
                },
            )
        return status, {"error": exc.reason}

    def _unsubscribed(self, event: IncomingCall) -> tuple[int, Mapping[str, Any]]:
        self._ignored.inc()
        self._metrics.ignored_event(f"{event.api}.incoming")
        if self._unsubscribed_log.admit() is not None:
            logger.warning(
                "incoming call of an API not in SWITCHBOARD_SUBSCRIBED_EVENTS: not acted on "
                "(add its event to the setting to route these calls)",
                extra={"event": "unsubscribed_event", "api": event.api, "call_id": event.call_id},
            )
        return 200, {"status": "ignored", "api": event.api, "reason": UNSUBSCRIBED}


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers by (lowercase, as ASGI gives them) name; the first of a repeated
    header wins, as with Starlette's Headers.get."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


def route_path(scope: Scope) -> str:
    """The path routes match, without the root path (Starlette's get_route_path)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


class SwitchboardApp(FastAPI):
    """FastAPI, with POST /webhooks/openai served by `webhook` without FastAPI's stack."""

    webhook: WebhookEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        webhook = self.webhook
        if (
            webhook is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and route_path(scope) == WEBHOOK_PATH
        ):
            await webhook(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
