"""The one module that talks to OpenAI's call-control APIs.

Realtime: `POST {base}/realtime/calls/{call_id}/accept|reject|refer|hangup`; GPT-Live:
`POST {base}/live/sessions/{session_id}/accept|reject|refer|hangup`. One poster serves both
(`CallControl`, the Realtime API; `LiveCallControl` differs only in its path and the accept
body's shape). A phone is ringing, so every request has one short wall-clock limit, and
retries (connection failures, 408, 429, 5xx, with jittered backoff) stay inside one deadline for
the whole call. The limits on sending one operation again are in `RetryPolicy` and
docs/operations.md ("Limits").
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import httpcore
import httpx

from app.openai.transport import AnswerCut, LastLook, PoolTransport

Operation = Literal["accept", "reject", "refer", "hangup"]
OPERATIONS: tuple[Operation, ...] = ("accept", "reject", "refer", "hangup")
STATUS_LABELS = ("2xx", "404", "429", "4xx", "5xx", "timeout", "connection_error")

logger = logging.getLogger("switchboard.calls")

# Observes every attempt: (operation, status label, seconds).
Observer = Callable[[Operation, str, float], None]


class CallControlError(Exception):
    """A call-control request that did not succeed."""

    retryable = False

    def __init__(
        self,
        operation: Operation,
        detail: str,
        status: int | None = None,
        *,
        uncertain: bool = False,
    ) -> None:
        super().__init__(f"{operation} failed: {detail}")
        self.operation = operation
        self.detail = detail
        self.status = status
        self.uncertain = uncertain
        """Sent but unanswered: the API may have carried it out."""


class CallGone(CallControlError):
    """404: the call no longer exists (the caller hung up). Never retried."""


class UpstreamRejected(CallControlError):
    """A 4xx that a repeat of the same request cannot fix."""


class UpstreamUnavailable(CallControlError):
    """Failed in a way that a later attempt may fix (5xx, 429, 408, timeout, network)."""

    retryable = True


class CallController(Protocol):
    """What the router needs from call control; the dry-run one calls nothing."""

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None: ...
    async def reject(self, call_id: str, status_code: int, deadline: float) -> None: ...
    async def refer(self, call_id: str, target_uri: str, deadline: float) -> None: ...
    async def hangup(self, call_id: str, deadline: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempt_timeout: float = 2.0
    """Wall-clock limit of one request, from connecting to the last byte of the answer
    (never past the call's deadline)."""
    base_backoff: float = 0.05
    """The first pause, and the floor of every pause: a `Retry-After` shorter than the
    backoff (0, negative, a date in the past) waits the backoff."""
    max_backoff: float = 1.0
    max_sends: int = 4
    """Sends of one operation per delivery, the first included."""
    uncertain_resends: int = 1
    """Sends again after a failure that may have reached the API (a connection dropped
    without an answer): once at most, and then no other send of that operation."""

    def __post_init__(self) -> None:
        if self.max_sends < 1:
            raise ValueError("max_sends must be at least 1")
        if self.uncertain_resends not in (0, 1):
            raise ValueError("uncertain_resends must be 0 or 1")


LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=60)

JITTER = 0.1
"""A `Retry-After` longer than the backoff is waited for up to this much longer (10 %), so
calls held back together do not come back together."""

Sleep = Callable[[float], Awaitable[None]]


class ApiClient(httpx.AsyncClient):
    """httpx's client for the API, plus what call control needs to send without its layers.

    `CallControl` sends each request straight to `api_transport`, with headers built once:
    the bytes on the wire are those `post()` would send (same headers, same order), without
    the per-request work of httpx's client (URL and header merging, auth and redirect
    hooks, cookie extraction), which was a large share of a call's CPU."""

    def __init__(
        self, base_url: str, api_key: str, *, api_transport: httpx.AsyncBaseTransport
    ) -> None:
        super().__init__(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "switchboard/0.1"},
            timeout=httpx.Timeout(2.0, connect=1.0),
            transport=api_transport,
            trust_env=False,  # a proxy from the environment is in api_transport already
        )
        self.api_transport = api_transport
        self.url_prefix = str(self.base_url).rstrip("/")
        self.headers_without_body = httpx.Headers(self.headers)
        self.headers_with_json = httpx.Headers(self.headers)
        self.headers_with_json["Content-Type"] = "application/json"
        self.direct = (
            Direct(self.url_prefix, api_transport)
            if isinstance(api_transport, PoolTransport)
            else None
        )


_Raw = list[tuple[bytes, bytes]]
# Path characters httpx leaves as they are: a call id made of these goes in unchanged.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/-]*")


class Direct:
    """Call control's requests straight to PoolTransport's pool, without httpx's Request
    and Response (URL parsing and quoting, header objects, content streams: a fifth of the
    work between the decision and the request leaving). The bytes on the wire are those
    of the httpx request: its headers are taken from one, once per header set, with only
    Content-Length filled in per request. A path httpx would quote, and every answer
    other than a success (its body is read as httpx reads it), go through httpx."""

    def __init__(self, url_prefix: str, transport: PoolTransport) -> None:
        self._prefix = url_prefix
        self._transport = transport
        base = httpx.URL(url_prefix)
        self._url = (base.raw_scheme, base.raw_host, base.port)
        self._path = base.raw_path.rstrip(b"/")
        self._headers: dict[tuple[int, bool], tuple[httpx.Headers, _Raw, int]] = {}

    def _template(self, headers: httpx.Headers, body: bool) -> tuple[_Raw, int]:
        """The raw headers httpx would send, and where Content-Length is in them (httpx
        puts it after Host without a body, last with one)."""
        key = (id(headers), body)
        found = self._headers.get(key)
        if found is None or found[0] is not headers:
            sample = httpx.Request(
                "POST", f"{self._prefix}/x", headers=headers, content=b"x" if body else None
            )
            raw = list(sample.headers.raw)
            where = next(i for i, (k, _) in enumerate(raw) if k.lower() == b"content-length")
            found = self._headers[key] = (headers, raw, where)
        return found[1], found[2]

    async def send(
        self, url: str, path: str, headers: httpx.Headers, body: bytes | None, seconds: float
    ) -> httpx.Response | int:
        """The status of a success, else the whole httpx.Response (read)."""
        if _PLAIN_PATH.fullmatch(path) is None:
            return await _send(self._transport, url, headers, body, seconds)
        raw, where = self._template(headers, bool(body))
        if body:
            raw = raw.copy()
            raw[where] = (raw[where][0], b"%d" % len(body))
        scheme, host, port = self._url
        target = self._path + path.encode()
        url_ = httpcore.URL(scheme=scheme, host=host, port=port, target=target)
        status, got, content = await self._transport.send_bytes(url_, raw, body, seconds)
        if status < 300:
            return status
        return await _failure_answer(status, got, content)


def build_http_client(
    base_url: str,
    api_key: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ApiClient:
    """One long-lived pooled client per process.

    Its transport is our HTTP/1.1 pool on asyncio streams (`PoolTransport`), not httpx's
    default on anyio: the same requests, a fraction of the CPU each. Through a proxy named
    in the environment (HTTPS_PROXY, ALL_PROXY, NO_PROXY...), it is httpx's own."""
    if transport is None:
        proxy = _proxy_for(base_url)
        if proxy is None:
            transport = PoolTransport(limits=LIMITS)
        else:
            transport = httpx.AsyncHTTPTransport(proxy=proxy, limits=LIMITS)
    return ApiClient(base_url, api_key, api_transport=transport)


def _proxy_for(base_url: str) -> str | None:
    url = httpx.URL(base_url)
    if urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


class CallControl:
    """The Realtime API's call control; `resource` is where its calls live."""

    resource = "/realtime/calls"

    def __init__(
        self,
        client: ApiClient,
        *,
        policy: RetryPolicy | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._client = client
        self._policy = policy or RetryPolicy()
        self._observe = observer or (lambda op, status, seconds: None)
        self._clock = clock
        self._sleep = sleep

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None:
        await self._post("accept", call_id, body, deadline)

    async def reject(self, call_id: str, status_code: int, deadline: float) -> None:
        await self._post("reject", call_id, _json({"status_code": status_code}), deadline)

    async def refer(self, call_id: str, target_uri: str, deadline: float) -> None:
        await self._post("refer", call_id, _json({"target_uri": target_uri}), deadline)

    async def hangup(self, call_id: str, deadline: float) -> None:
        await self._post("hangup", call_id, None, deadline)

    async def _post(
        self, operation: Operation, call_id: str, body: bytes | None, deadline: float
    ) -> None:
        client = self._client
        path = f"{self.resource}/{call_id}/{operation}"
        url = f"{client.url_prefix}{path}"
        direct = client.direct
        headers = client.headers_with_json if body is not None else client.headers_without_body
        policy = self._policy
        sends = 0
        failure: CallControlError | None = None
        uncertain_after: int | None = None  # sends when a connection dropped unanswered
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                # A sleep may overrun the deadline: report the last failure, not a vague one.
                if failure is not None:
                    raise failure
                raise UpstreamUnavailable(operation, "deadline exceeded before a response")
            timeout = min(policy.attempt_timeout, remaining)
            started = self._clock()
            sends += 1
            maybe_sent = uncertain_after is not None
            try:
                # httpx's timeouts are per read: a body trickling a byte at a time would
                # restart them forever. One wall-clock limit covers the whole exchange
                # (its expiry: _expire).
                async with asyncio.timeout(None) as limit:
                    # An answer that came as the limit passed wins over it (LastLook).
                    expiry = LastLook(asyncio.get_running_loop(), timeout, _expire, limit)
                    try:
                        if direct is not None:
                            response = await direct.send(url, path, headers, body, timeout)
                        else:
                            response = await _send(
                                client.api_transport, url, headers, body, timeout
                            )
                    finally:
                        expiry.cancel()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The request did not reach the API: safe to send again.
                self._observe(operation, "connection_error", self._clock() - started)
                failure = UpstreamUnavailable(operation, _describe(exc), uncertain=maybe_sent)
                retry_after = None
            except AnswerCut as exc:
                # An answer came, then the connection broke (or it was malformed): not a
                # stale connection. A 408, 429 or 5xx head is that answer (retried as one); any
                # other, or a head that did not come whole (status 0), the API read the
                # request and may have acted on it (a 2xx head says it did): not sent again.
                where = "after its head" if exc.status else "in its head"
                detail = f"RemoteProtocolError: the answer was cut {where}: {exc}"
                status = exc.status
                if not _sent_again(status):
                    self._observe(operation, "connection_error", self._clock() - started)
                    raise UpstreamUnavailable(operation, detail, uncertain=True) from None
                self._observe(operation, _status_label(status), self._clock() - started)
                failure = UpstreamUnavailable(operation, detail, status, uncertain=maybe_sent)
                retry_after = None
            except httpx.RemoteProtocolError as exc:
                # A kept-alive connection the server had closed as the request went out
                # (our connection tells a new one apart: AnswerCut), so it is sent again
                # once; but it may have been read, so whatever follows is reported as
                # uncertain (no fallback after it), and nothing more is sent after that.
                self._observe(operation, "connection_error", self._clock() - started)
                failure = UpstreamUnavailable(operation, _describe(exc), uncertain=True)
                if maybe_sent or policy.uncertain_resends == 0:
                    raise failure from None
                uncertain_after = sends
                retry_after = None
            except (httpx.TimeoutException, TimeoutError) as exc:
                # Sent but unanswered: it may have taken effect, so do not repeat it here.
                self._observe(operation, "timeout", self._clock() - started)
                if isinstance(exc, httpx.TimeoutException):
                    detail = _describe(exc)
                else:
                    detail = f"TimeoutError: no complete answer within {timeout:.3g}s"
                raise UpstreamUnavailable(operation, detail, uncertain=True) from None
            except httpx.HTTPError as exc:
                self._observe(operation, "connection_error", self._clock() - started)
                raise UpstreamUnavailable(operation, _describe(exc), uncertain=True) from None
            else:
                status = response if isinstance(response, int) else response.status_code
                self._observe(operation, _status_label(status), self._clock() - started)
                if isinstance(response, int):
                    return  # a success (only its status is read)
                if status < 300:
                    return
                detail = f"HTTP {status}: {_error_text(response)}"
                if status == 404:
                    raise CallGone(operation, detail, status)
                if not _sent_again(status):
                    raise UpstreamRejected(operation, detail, status, uncertain=maybe_sent)
                failure = UpstreamUnavailable(operation, detail, status, uncertain=maybe_sent)
                retry_after = _retry_after(response)
            if sends >= policy.max_sends:
                raise failure  # no send left: do not wait for nothing
            if uncertain_after is not None and sends > uncertain_after:
                raise failure  # the API may have acted, and it was sent again already
            pause = self._pause(sends, retry_after)
            if self._clock() + pause >= deadline:
                raise failure
            logger.debug("retrying %s for %s in %.3fs: %s", operation, call_id, pause, failure)
            await self._sleep(pause)

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        """The backoff, jittered; a longer `Retry-After` wins, jittered too."""
        floor = self._backoff(attempt)
        if retry_after is None or retry_after <= floor:
            return floor  # 0, negative, a past date: the backoff, never a busy loop
        return retry_after * random.uniform(1.0, 1.0 + JITTER)  # noqa: S311 - jitter

    def _backoff(self, attempt: int) -> float:
        ceiling = min(
            self._policy.max_backoff, self._policy.base_backoff * 2 ** min(attempt - 1, 32)
        )
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto


def _expire(limit: asyncio.Timeout) -> None:
    """A request's limit has passed (after a last look at the sockets: LastLook): cancel it
    now, behind the request's wake-up when its answer was found there."""
    limit.reschedule(asyncio.get_running_loop().time())


class LiveCallControl(CallControl):
    """GPT-Live's call control: the same requests under `/live/sessions/{session_id}`.

    Its accept body wraps the session (`{"session": {"type": "live", ...}}`) where the
    Realtime API takes the session itself; its reject requires a status code (300-699)."""

    resource = "/live/sessions"

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None:
        # The session is encoded once at load; wrapping it does not re-encode it.
        await self._post("accept", call_id, b'{"session":' + body + b"}", deadline)

    async def reject(self, call_id: str, status_code: int, deadline: float) -> None:
        if not 300 <= status_code <= 699:
            raise UpstreamRejected("reject", f"status code {status_code} is not 300-699")
        await super().reject(call_id, status_code, deadline)


class DryRunCallControl:
    """Decides nothing differently, calls nothing: used when no API key is set."""

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None:
        logger.info("dry run: would accept %s", call_id)

    async def reject(self, call_id: str, status_code: int, deadline: float) -> None:
        logger.info("dry run: would reject %s with %d", call_id, status_code)

    async def refer(self, call_id: str, target_uri: str, deadline: float) -> None:
        logger.info("dry run: would refer %s", call_id)

    async def hangup(self, call_id: str, deadline: float) -> None:
        logger.info("dry run: would hang up %s", call_id)


async def _send(
    transport: httpx.AsyncBaseTransport,
    url: str,
    headers: httpx.Headers,
    body: bytes | None,
    seconds: float,
) -> httpx.Response | int:
    """What `AsyncClient.post(url, content=body, headers=..., timeout=seconds)` does for us:
    the status of a success, else the whole httpx.Response (read, as Direct.send)."""
    request = httpx.Request(
        "POST",
        url,
        headers=headers,
        content=body,
        extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), seconds)},
    )
    response = await transport.handle_async_request(request)
    stream = response.stream  # as it came: a mock's may be read already, and is read again
    assert isinstance(stream, httpx.AsyncByteStream)
    try:
        content = b"".join([part async for part in stream])
    except httpx.RemoteProtocolError as exc:
        raise AnswerCut(str(exc), response.status_code) from exc  # see AnswerCut
    except httpx.ReadError as exc:  # a reset in the body: a cut as a close there is
        raise AnswerCut(_describe(exc), response.status_code) from exc
    finally:
        await response.aclose()
    if response.status_code < 300:
        return response.status_code  # a success, whatever its body
    return await _failure_answer(
        response.status_code, response.headers.raw, content, response.extensions
    )


async def _failure_answer(
    status: int, headers: _Raw, content: bytes, extensions: dict[str, Any] | None = None
) -> httpx.Response:
    """An answer other than a success, its body decoded as httpx decodes it
    (Content-Encoding). A body that cannot be decoded is kept as it came: the answer is
    still its status (a 503 retried, a 404 the call gone), not a broken connection."""
    response = httpx.Response(
        status, headers=headers, stream=httpx.ByteStream(content), extensions=extensions
    )
    try:
        await response.aread()
    except httpx.DecodingError:
        plain = [(name, value) for name, value in headers if name.lower() != b"content-encoding"]
        response = httpx.Response(
            status, headers=plain, stream=httpx.ByteStream(content), extensions=extensions
        )
        await response.aread()
    return response


def _json(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _sent_again(status: int) -> bool:
    """An answer after which the request is sent again (within the limits): 5xx, 429, and
    408 (the server did not take the request, which may be sent again on a new
    connection: RFC 9110 15.5.9; the connection is not kept, app.openai.http11)."""
    return status >= 500 or status in (408, 429)


def _status_label(status: int) -> str:
    if status < 300:
        return "2xx"
    if status in (404, 429):
        return str(status)
    return "4xx" if status < 500 else "5xx"


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
        message = payload["error"]["message"]
        if isinstance(message, str):
            return message[:200]
    except (ValueError, KeyError, TypeError, RecursionError):
        # RecursionError: json's answer to a body nested a few thousand deep
        pass
    return response.text[:200] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
