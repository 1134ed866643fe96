"""app.openai.http11: our HTTP/1.1 connection, against h11's and against real servers.

The first part plays the same bytes to httpcore's `AsyncHTTP11Connection` (h11) and to
ours, over a scripted network stream, and asks for the same outcome: the status, headers,
body and version of an answer, whether the connection is kept, the exception type and,
where callers read it, its message; and the same bytes on the wire for a request. The
cases where ours differs on purpose are tests of their own, below it.

The second part runs the pool on real local servers that send exact bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpcore
import httpx
import pytest

from app.openai.callcontrol import (
    LIMITS,
    CallControl,
    RetryPolicy,
    UpstreamUnavailable,
    build_http_client,
)
from app.openai.http11 import MAX_HEAD, HTTP11Connection
from app.openai.transport import Pool, PoolTransport

# --- the same bytes to h11 and to ours -------------------------------------------------------


class Scripted(httpcore.AsyncNetworkStream):
    """Reads hand out `reads` one by one (an exception is raised), then b"" (the end)."""

    def __init__(self, reads: Sequence[bytes | Exception]) -> None:
        self.reads = deque(reads)
        self.written: list[bytes] = []
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if not self.reads:
            return b""
        item = self.reads.popleft()
        if isinstance(item, Exception):
            raise item
        if len(item) > max_bytes:
            self.reads.appendleft(item[max_bytes:])
            item = item[:max_bytes]
        return item

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.written.append(buffer)

    async def aclose(self) -> None:
        self.closed = True

    def get_extra_info(self, info: str) -> Any:
        return bool(self.reads) if info == "is_readable" else None


ORIGIN = httpcore.Origin(b"http", b"api.test", 80)
HEADERS = [
    (b"Host", b"api.test"),
    (b"Accept", b"*/*"),
    (b"Accept-Encoding", b"gzip, deflate"),
    (b"Connection", b"keep-alive"),
    (b"User-Agent", b"switchboard/0.1"),
    (b"Authorization", b"Bearer sk-test"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"2"),
]
Connect = Callable[[httpcore.AsyncNetworkStream], Any]
CONNECTIONS: dict[str, Connect] = {
    "h11": lambda stream: httpcore.AsyncHTTP11Connection(ORIGIN, stream),
    "ours": lambda stream: HTTP11Connection(ORIGIN, stream),
}


async def outcome(
    kind: str,
    reads: Sequence[bytes | Exception],
    *,
    method: bytes = b"POST",
    headers: Sequence[tuple[bytes, bytes]] = HEADERS,
    content: Any = b"{}",
) -> dict[str, Any]:
    stream = Scripted(reads)
    connection = CONNECTIONS[kind](stream)
    request = httpcore.Request(
        method, "http://api.test/v1/realtime/calls/rtc_1/accept", headers=headers, content=content
    )
    try:
        response = await connection.handle_async_request(request)
        try:
            parts = [part async for part in response.aiter_stream()]
        finally:
            await response.aclose()
    except Exception as exc:
        # Ours may be a subclass of httpcore's (AnswerUnreadable): compared as httpcore's.
        base = next((k for k in type(exc).__mro__ if k.__module__.startswith("httpcore")), None)
        return {
            "error": (base or type(exc)).__name__,
            "message": str(exc),
            "httpcore's": base is not None,
            "closed": connection.is_closed(),
            "sent": b"".join(stream.written),
        }
    return {
        "status": response.status,
        "headers": response.headers,
        "body": b"".join(parts),
        "version": response.extensions["http_version"],
        "reason": response.extensions["reason_phrase"],
        "kept": connection.is_idle(),
        "closed": stream.closed,
        "sent": b"".join(stream.written),
    }


async def same(reads: Sequence[bytes | Exception], **request: Any) -> dict[str, Any]:
    """Both outcomes, asserted equal (error messages: compared by the caller)."""
    theirs = await outcome("h11", reads, **request)
    ours = await outcome("ours", reads, **request)
    if "error" in theirs or "error" in ours:
        assert ours["error"] == theirs.get("error")
        assert ours["closed"] == theirs["closed"]
        assert ours["sent"] == theirs["sent"]
    else:
        assert ours == theirs
    return ours


def lengthed(body: bytes, *headers: bytes, status: bytes = b"200 OK") -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\n\r\n%s" % (status, extra, len(body), body)


def bytewise(data: bytes) -> list[bytes | Exception]:
    return [data[i : i + 1] for i in range(len(data))]


FOLDED = b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
)

SAME_ANSWERS: dict[str, list[bytes | Exception]] = {
    "content-length": [lengthed(b'{"ok":true}', b"Content-Type: application/json")],
    "content-length, a byte a read": bytewise(lengthed(b'{"ok":true}', b"X-A: b")),
    "head and body in separate reads": [lengthed(b"")[:-2], b"\r\n", b""],
    "empty body": [lengthed(b"")],
    "chunked, extensions and trailers": [CHUNKED],
    "chunked, a byte a read": bytewise(CHUNKED),
    "Transfer-Encoding: Chunked (lowered in the headers)": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    ],
    "100 Continue first": [b"HTTP/1.1 100 Continue\r\n\r\n" + lengthed(b"ok")],
    "100 Continue in a read of its own": [b"HTTP/1.1 100 Continue\r\n\r\n", lengthed(b"ok")],
    "103 Early Hints with headers": [
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nConnection: close\r\n\r\n" + lengthed(b"ok")
    ],
    "Connection: close": [lengthed(b"ok", b"Connection: close")],
    "Connection: keep-alive, Close": [lengthed(b"ok", b"Connection: keep-alive, Close")],
    "HTTP/1.0 with keep-alive": [
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    ],
    "HTTP/1.0, delimited by the end": [b"HTTP/1.0 200 OK\r\n\r\nall ", b"of it"],
    "204 without a body": [b"HTTP/1.1 204 No Content\r\n\r\n"],
    "304 with a length and no body": [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"],
    "whitespace around values, an empty value, obs-text": [
        lengthed(b"x", b"X-A:   spaced \t ", b"X-Empty:", b"X-Obs: caf\xc3\xa9")
    ],
    "a status line without a reason": [b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"],
    "a 503 with Retry-After": [lengthed(b"busy", b"Retry-After: 1", status=b"503 Slow Down")],
    "lines ended by LF alone": [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"],
    "a value folded over lines (obs-fold)": [FOLDED],
    "a folded value, a byte a read": bytewise(FOLDED),
    "folded values: empty first line, trailing whitespace, LF alone": [
        b"HTTP/1.1 200 OK\nX-A:\n b  \n c\r\nX-B: d  \r\n e\r\nContent-Length: 2\n\nok"
    ],
    "a folded value in a 103 and in trailers": [
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>,\r\n </b>\r\n\r\n"
        + CHUNKED[: -len(b"\r\n")]
        + b" folded\r\n\r\n"
    ],
    "a head just under the limit, in small reads": [
        lengthed(b"ok", *[b"X-Pad-%d: %s" % (i, b"p" * 1000) for i in range(60)])[i : i + 4096]
        for i in range(0, 70 * 1024, 4096)
    ],
}


@pytest.mark.anyio
@pytest.mark.parametrize("reads", SAME_ANSWERS.values(), ids=SAME_ANSWERS.keys())
async def test_answers_read_as_h11_reads_them(reads: list[bytes | Exception]) -> None:
    got = await same(reads)
    assert "error" not in got  # the cases above are all answers


@pytest.mark.anyio
async def test_an_answer_with_both_framings_is_read_as_chunked_and_the_connection_dropped() -> None:
    """Transfer-Encoding wins over Content-Length, as in h11; but the two may disagree on
    where the answer ends (RFC 9112 6.3: handled as an error, a response splitting
    attempt), and on a kept connection what followed would be the next request's answer.
    h11 keeps the connection; ours is closed."""
    reads: list[bytes | Exception] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\n"
    ]
    theirs = await outcome("h11", reads)
    ours = await outcome("ours", reads)
    read = ("status", "headers", "body", "version", "reason", "sent")
    assert {k: ours[k] for k in read} == {k: theirs[k] for k in read}
    assert ours["body"] == b"hi"
    assert (theirs["kept"], ours["kept"], ours["closed"]) == (True, False, True)


SAME_FAILURES: dict[str, tuple[list[bytes | Exception], str | None]] = {
    # (reads, the message when callers read it)
    # A new connection's first request (as every case here): h11 says "without sending a
    # response" as for a stale connection; ours says it was new (AnswerUnreadable: not
    # sent again). A reused one: test_a_reused_connection_closed_unanswered_is_stale.
    "nothing, then the end": ([], "Server disconnected a new connection without answering."),
    # Some of an answer came: the server had read the request. h11 says "without sending a
    # response" as for nothing at all; ours says where (AnswerUnreadable: not sent again).
    "part of a head, then the end": (
        [b"HTTP/1.1 200 OK\r\nContent-"],
        "Server disconnected in the answer's head.",
    ),
    "100 Continue, then the end": (
        [b"HTTP/1.1 100 Continue\r\n\r\n"],
        "Server disconnected in the answer's head.",
    ),
    "a body cut short": (
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
        "peer closed connection without sending complete message body: "
        "received 3 bytes, expected 10",
    ),
    "a chunked body cut short": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"],
        "peer closed connection without sending complete message body: incomplete chunked read",
    ),
    "a chunked body without its last chunk": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"],
        "peer closed connection without sending complete message body: incomplete chunked read",
    ),
    "garbage": ([b"garbage\r\n\r\n"], None),
    "an HTML page instead of a head": ([b"<html><body>nope</body></html>\r\n\r\n"], None),
    "a four-digit status": ([b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"], None),
    # llhttp reads a body after it; ours took that for part of the next answer's
    "a status below 100 with a body, then an answer": (
        [b"HTTP/1.1 050 X\r\nContent-Length: 2\r\n\r\nxx" + lengthed(b"ok")],
        None,
    ),
    "a header name with a space": ([b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"], None),
    "a NUL in a value": ([b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n"], None),
    "a vertical tab in a value": ([b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\n\r\n"], None),
    "a NUL in a folded value": ([b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\x00\r\n\r\n"], None),
    "a NUL in a trailer": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: \x00\r\n\r\n"],
        None,
    ),
    "a bad Content-Length": ([b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n"], None),
    "Transfer-Encoding: gzip": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx"],
        "Only Transfer-Encoding: chunked is supported",
    ),
    "Transfer-Encoding: gzip, chunked": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"],
        "Only Transfer-Encoding: chunked is supported",
    ),
    "two Transfer-Encoding headers": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"],
        "multiple Transfer-Encoding headers",
    ),
    "a bad chunk size": ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], None),
    "a head beyond the limit, in small reads": (
        [b"HTTP/1.1 200 OK\r\n", *[b"X-Pad: " + b"p" * 4000 + b"\r\n"] * 40],
        "Receive buffer too long",
    ),
    "a head that never ends": (
        [b"HTTP/1.1 200 OK\r\nX-Pad: ", *[b"p" * 8192] * 20],
        "Receive buffer too long",
    ),
    "a reset before the answer": ([httpcore.ReadError("[Errno 104] reset")], "[Errno 104] reset"),
    "a reset in the body": (
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", httpcore.ReadError("reset")],
        "reset",
    ),
    "a read timeout": ([httpcore.ReadTimeout("timed out")], "timed out"),
    "a read timeout in the body": (
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", httpcore.ReadTimeout("late")],
        "late",
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reads", "message"), SAME_FAILURES.values(), ids=list(SAME_FAILURES.keys())
)
async def test_failures_raise_what_h11_raises(
    reads: list[bytes | Exception], message: str | None
) -> None:
    got = await same(reads)
    assert got["closed"] is True
    assert got["httpcore's"] is True
    if message is not None:
        assert got["message"] == message


REQUESTS: dict[str, dict[str, Any]] = {
    "call control's headers": {},
    "Host not first": {"headers": [*HEADERS[1:4], HEADERS[0], *HEADERS[4:]]},
    "no body": {"headers": [*HEADERS[:-1], (b"Content-Length", b"0")], "content": b""},
    "no Content-Length, no body": {"headers": HEADERS[:-1], "content": b""},
    "Content-Length: 2, 2": {"headers": [*HEADERS[:-1], (b"Content-Length", b"2 , 2")]},
    "Content-Length twice": {"headers": [*HEADERS, (b"content-length", b"2")]},
    "Connection: close": {"headers": [*HEADERS[:3], (b"Connection", b"close"), *HEADERS[4:]]},
    "a GET": {"method": b"GET", "headers": HEADERS[:-2], "content": b""},
}


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.anyio
@pytest.mark.parametrize("request_", REQUESTS.values(), ids=REQUESTS.keys())
async def test_requests_leave_as_h11_writes_them(request_: dict[str, Any]) -> None:
    answer = [lengthed(b"ok")]
    ours = await same(answer, **request_)
    assert ours["sent"].startswith(b"POST " if "method" not in request_ else b"GET ")


@pytest.mark.anyio
async def test_a_streamed_body_without_length_is_chunked_as_h11_chunks_it() -> None:
    headers = [*HEADERS[:-1], (b"Transfer-Encoding", b"Chunked")]
    answer = [lengthed(b"ok")]
    theirs = await outcome("h11", answer, headers=headers, content=parts(b"ab", b"", b"cde"))
    ours = await outcome("ours", answer, headers=headers, content=parts(b"ab", b"", b"cde"))
    assert ours == theirs
    assert ours["sent"].endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")


BAD_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "a header name with a space": (
        {"headers": [*HEADERS, (b"Bad Name", b"x")]},
        "Illegal header name b'Bad Name'",
    ),
    "a value with a line break": (
        {"headers": [*HEADERS, (b"X-A", b"a\r\nX-B: b")]},
        "Illegal header value b'a\\r\\nX-B: b'",
    ),
    "a value with leading space": (
        {"headers": [*HEADERS, (b"X-A", b" a")]},
        "Illegal header value b' a'",
    ),
    "no Host": ({"headers": HEADERS[1:]}, "Missing mandatory Host: header"),
    "two Hosts": ({"headers": [*HEADERS, HEADERS[0]]}, "Found multiple Host: headers"),
    "conflicting lengths": (
        {"headers": [*HEADERS, (b"Content-Length", b"3")]},
        "conflicting Content-Length headers",
    ),
    "a bad length": (
        {"headers": [*HEADERS[:-1], (b"Content-Length", b"-2")]},
        "bad Content-Length",
    ),
    "Transfer-Encoding: gzip": (
        {"headers": [*HEADERS[:-1], (b"Transfer-Encoding", b"gzip")]},
        "Only Transfer-Encoding: chunked is supported",
    ),
    "a method with a space": ({"method": b"PO ST"}, "Illegal method characters"),
    "more body than its length": (
        {"content": b"{}{}"},
        "Too much data for declared Content-Length",
    ),
    "less body than its length": ({"content": b"{"}, "Too little data for declared Content-Length"),
}


@pytest.mark.anyio
@pytest.mark.parametrize(("request_", "message"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_requests_h11_refuses_are_refused(request_: dict[str, Any], message: str) -> None:
    got = await same([lengthed(b"ok")], **request_)
    assert (got["error"], got["message"]) == ("LocalProtocolError", message)
    # h11 raises its own LocalProtocolError for a body that does not match its length
    # (httpcore does not map it); ours is httpcore's, as for the other refusals.
    assert got["httpcore's"] is True


# --- where ours differs on purpose ----------------------------------------------------------


@pytest.mark.anyio
async def test_bytes_after_an_answer_make_the_connection_unfit_for_reuse() -> None:
    """h11 keeps them for the next request, whose answer they would become."""
    reads: list[bytes | Exception] = [lengthed(b"ok") + b"HTTP/1.1 200 OK\r\n"]
    assert (await outcome("h11", reads))["kept"] is True
    ours = await outcome("ours", reads)
    assert (ours["status"], ours["body"], ours["kept"], ours["closed"]) == (200, b"ok", False, True)


@pytest.mark.anyio
async def test_a_408_makes_the_connection_unfit_for_reuse() -> None:
    """After a 408 the server may still read (and answer) the request it timed out on:
    request delimitation is lost (RFC 9110 15.5.9). h11 keeps the connection."""
    reads: list[bytes | Exception] = [lengthed(b"", status=b"408 Request Timeout")]
    assert (await outcome("h11", reads))["kept"] is True
    ours = await outcome("ours", reads)
    assert (ours["status"], ours["kept"], ours["closed"]) == (408, False, True)


@pytest.mark.anyio
async def test_garbage_after_an_answer_with_connection_close_is_ignored() -> None:
    got = await same([lengthed(b"ok", b"Connection: close") + b"garbage"])
    assert (got["status"], got["body"], got["kept"]) == (200, b"ok", False)


@pytest.mark.anyio
async def test_an_answer_to_head_has_no_body_and_closes_the_connection() -> None:
    reads: list[bytes | Exception] = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"]
    theirs = await outcome("h11", reads, method=b"HEAD", headers=HEADERS[:-2], content=b"")
    ours = await outcome("ours", reads, method=b"HEAD", headers=HEADERS[:-2], content=b"")
    assert theirs["kept"] is True  # h11 knows no body follows; llhttp cannot be told
    assert {**ours, "kept": True, "closed": False} == theirs
    assert (ours["body"], ours["kept"]) == (b"", False)


@pytest.mark.anyio
async def test_switching_protocols_is_a_protocol_error() -> None:
    reads: list[bytes | Exception] = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    ]
    got = await outcome("ours", reads)
    assert (got["error"], got["closed"]) == ("RemoteProtocolError", True)


@pytest.mark.anyio
async def test_equal_content_length_headers_twice_are_refused() -> None:
    """llhttp refuses what h11 takes as one; no API sends it."""
    reads: list[bytes | Exception] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    ]
    assert (await outcome("h11", reads))["status"] == 200
    assert (await outcome("ours", reads))["error"] == "RemoteProtocolError"


@pytest.mark.anyio
async def test_a_write_error_still_reads_the_answer_and_closes() -> None:
    class Refusing(Scripted):
        async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
            raise httpcore.WriteError("broken pipe")

    for kind in CONNECTIONS:
        stream = Refusing([lengthed(b"too big", status=b"413 Payload Too Large")])
        connection = CONNECTIONS[kind](stream)
        request = httpcore.Request("POST", "http://api.test/x", headers=HEADERS, content=b"{}")
        response = await connection.handle_async_request(request)
        assert response.status == 413
        assert await response.aread() == b"too big"
        await response.aclose()
        assert (connection.is_closed(), stream.closed) == (True, True), kind


@pytest.mark.anyio
async def test_a_connection_is_not_available_to_a_second_request_at_once() -> None:
    for kind in CONNECTIONS:
        connection = CONNECTIONS[kind](Scripted([lengthed(b"ok")]))
        request = httpcore.Request("POST", "http://api.test/x", headers=HEADERS, content=b"{}")
        response = await connection.handle_async_request(request)
        assert not connection.is_available()
        with pytest.raises(httpcore.ConnectionNotAvailable):
            await connection.handle_async_request(request)
        await response.aread()
        await response.aclose()
        assert connection.is_available(), kind


@pytest.mark.anyio
async def test_an_idle_connection_with_bytes_to_read_is_neither_available_nor_fresh() -> None:
    """h11's says so in has_expired only (which our pool asks too)."""
    for kind, available in (("h11", True), ("ours", False)):
        connection = CONNECTIONS[kind](Scripted([lengthed(b"ok"), lengthed(b"unasked")]))
        request = httpcore.Request("POST", "http://api.test/x", headers=HEADERS, content=b"{}")
        response = await connection.handle_async_request(request)
        await response.aread()
        await response.aclose()
        assert (connection.is_idle(), connection.has_expired()) == (True, True), kind
        assert connection.is_available() is available, kind


@pytest.mark.anyio
async def test_an_answer_delimited_by_the_end_closes_the_connection_at_once() -> None:
    """h11 calls it idle (the pool finds the end when it next asks has_expired)."""
    reads: list[bytes | Exception] = [b"HTTP/1.1 200 OK\r\n\r\nall ", b"of it"]
    theirs = await outcome("h11", reads)
    ours = await outcome("ours", reads)
    assert (theirs["kept"], theirs["closed"]) == (True, False)
    assert {**ours, "kept": True, "closed": False} == theirs
    assert (ours["body"], ours["kept"], ours["closed"]) == (b"all of it", False, True)


@pytest.mark.anyio
async def test_control_characters_in_a_header_value_are_refused() -> None:
    """h11 takes any byte but NUL and whitespace; llhttp refuses the other controls
    (RFC 9110 does too). No API sends them."""
    reads: list[bytes | Exception] = [lengthed(b"ok", b"X-A: a\x01b")]
    assert (await outcome("h11", reads))["status"] == 200
    assert (await outcome("ours", reads))["error"] == "RemoteProtocolError"


# --- the pool on real servers ---------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Answer = bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server. Each request read gets the next of `answers` (bytes as they
    are, or a coroutine function given the writer), then 200 "ok"; `handler` instead
    does what it likes with each connection."""

    def __init__(self, *answers: Answer, handler: Handler | None = None) -> None:
        self.answers = deque(answers)
        self.handler = handler or self._answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await self.request(reader)
            answer = self.answers.popleft() if self.answers else lengthed(b"ok")
            if isinstance(answer, bytes):
                writer.write(answer)
                await writer.drain()
            else:
                await answer(writer)

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """One request, whole (our requests have a Content-Length)."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        self.requests.append(head + await reader.readexactly(length))
        return self.requests[-1]

    def url(self, path: bytes = b"/v1/realtime/calls/rtc_1/accept") -> httpcore.URL:
        return httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=self.port, target=path)

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"Host", b"127.0.0.1:%d" % self.port),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"2"),
        ]


@contextlib.asynccontextmanager
async def serving(*answers: Answer) -> AsyncIterator[tuple[Server, PoolTransport]]:
    async with Server(*answers) as server:
        transport = PoolTransport(limits=LIMITS)
        try:
            yield server, transport
        finally:
            await transport.aclose()


def pool_of(transport: PoolTransport) -> Pool:
    return transport._pool


async def send(
    server: Server, transport: PoolTransport, seconds: float = 5.0
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return await transport.send_bytes(server.url(), server.headers, b"{}", seconds)


def close_after(data: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def write(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return write


def trickle(data: bytes, pause: float) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def write(writer: asyncio.StreamWriter) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(pause)

    return write


@pytest.mark.anyio
async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with serving() as (server, transport):
        for _ in range(5):
            assert await send(server, transport) == (200, [(b"content-length", b"2")], b"ok")
        assert pool_of(transport).connections == 1
    assert (server.connections, len(server.requests)) == (1, 5)


@pytest.mark.anyio
async def test_a_chunked_answer_and_the_connection_kept() -> None:
    async with serving(CHUNKED) as (server, transport):
        status, headers, body = await send(server, transport)
        assert (status, body) == (200, b"hello, world")
        assert (b"Transfer-Encoding", b"chunked") in headers
        assert (await send(server, transport))[2] == b"ok"
    assert server.connections == 1


@pytest.mark.anyio
async def test_a_close_delimited_answer_and_a_new_connection_after() -> None:
    async with serving(close_after(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")) as (
        server,
        transport,
    ):
        assert (await send(server, transport))[2] == b"until the end"
        assert (await send(server, transport))[2] == b"ok"
    assert server.connections == 2


@pytest.mark.anyio
async def test_connection_close_is_honoured_even_if_the_server_keeps_it_open() -> None:
    async with serving(lengthed(b"first", b"Connection: close")) as (server, transport):
        assert (await send(server, transport))[2] == b"first"
        assert pool_of(transport).connections == 0
        assert (await send(server, transport))[2] == b"ok"
    assert server.connections == 2


@pytest.mark.anyio
async def test_100_continue_is_skipped() -> None:
    async with serving(b"HTTP/1.1 100 Continue\r\n\r\n" + lengthed(b"after")) as (server, t):
        assert await send(server, t) == (200, [(b"content-length", b"5")], b"after")
        assert (await send(server, t))[2] == b"ok"
    assert server.connections == 1


@pytest.mark.anyio
async def test_a_success_with_a_folded_header_is_a_success_not_a_protocol_error() -> None:
    """A client must take a value folded over lines (RFC 9112 5.2), and h11 did. Refused,
    the API's 200 was a RemoteProtocolError: call control's stale-connection case, so the
    request the API had carried out (an accept, a refer) was sent again."""
    async with serving(FOLDED) as (server, t):
        assert await send(server, t) == (
            200,
            [(b"X-Folded", b"a b"), (b"Content-Length", b"2")],
            b"ok",
        )
        assert (await send(server, t))[2] == b"ok"  # and the connection kept
    assert (server.connections, len(server.requests)) == (1, 2)


@contextlib.asynccontextmanager
async def call_control(*answers: Answer) -> AsyncIterator[tuple[Server, CallControl]]:
    """Call control on a Server of `answers` (then 200 "ok"), retrying at once."""
    policy = RetryPolicy(attempt_timeout=2.0, base_backoff=0.001, max_backoff=0.002)
    async with (
        Server(*answers) as server,
        build_http_client(f"http://127.0.0.1:{server.port}/v1", "sk") as http,
    ):
        yield server, CallControl(http, policy=policy)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("head", "resent"),
    [
        pytest.param(b"HTTP/1.1 200 OK", False, id="200: done, not sent again"),
        pytest.param(b"HTTP/1.1 400 Bad Request", False, id="400: read, not sent again"),
        pytest.param(b"HTTP/1.1 503 Busy", True, id="503: retried as a 503 is"),
    ],
)
async def test_call_control_takes_an_answer_cut_after_its_head_as_its_head_says(
    head: bytes, resent: bool
) -> None:
    """Cut in its body, an answer is no stale connection (sent again once): the API
    read the request. A 429 or 5xx head is retried as such an answer is; any other is
    not sent again, and the delivery is uncertain."""
    cut = close_after(head + b"\r\nContent-Length: 10\r\n\r\n{}")
    async with call_control(cut) as (server, control):  # then 200 "ok"
        if resent:
            await control.accept("rtc_1", b"{}", time.monotonic() + 3)
        else:
            with pytest.raises(UpstreamUnavailable) as caught:
                await control.accept("rtc_1", b"{}", time.monotonic() + 3)
            assert caught.value.uncertain is True
    assert len(server.requests) == (2 if resent else 1)


@pytest.mark.anyio
@pytest.mark.parametrize("call_id", ["rtc_1", "rtc_%41"], ids=["direct", "through-httpx"])
async def test_a_new_connection_closed_unanswered_is_uncertain_and_not_sent_again(
    call_id: str,
) -> None:
    """No stale keep-alive connection: the server took this connection for the request
    and may have read it (an accept, a refer the API did). It was sent again."""
    async with call_control(close_after(b"")) as (server, control):  # then 200 "ok"
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.accept(call_id, b"{}", time.monotonic() + 3)
    assert caught.value.uncertain is True
    assert "a new connection without answering" in caught.value.detail
    assert (server.connections, len(server.requests)) == (1, 1)


@pytest.mark.anyio
@pytest.mark.parametrize("call_id", ["rtc_1", "rtc_%41"], ids=["direct", "through-httpx"])
async def test_a_reused_connection_closed_unanswered_is_stale_and_sent_again_once(
    call_id: str,
) -> None:
    """A kept-alive connection the server closed as the request went out (its idle
    timeout): the request is sent again, once, on a new connection."""
    async with call_control(lengthed(b"ok"), close_after(b"")) as (server, control):
        await control.accept(call_id, b"{}", time.monotonic() + 3)
        await control.accept(call_id, b"{}", time.monotonic() + 3)
    assert (server.connections, len(server.requests)) == (2, 3)


def reset_after(data: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    """Writes `data`, then resets the connection (RST, not a close)."""

    async def write(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(0.05)  # delivered before the reset
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return write


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("head", "resent"),
    [
        pytest.param(b"HTTP/1.1 200 OK", False, id="200: done, not sent again"),
        pytest.param(b"HTTP/1.1 503 Busy", True, id="503: retried as a 503 is"),
        pytest.param(b"HTTP/1.1 429 Too Many", True, id="429: retried as a 429 is"),
    ],
)
@pytest.mark.parametrize("call_id", ["rtc_1", "rtc_%41"], ids=["direct", "through-httpx"])
async def test_call_control_takes_an_answer_reset_after_its_head_as_its_head_says(
    head: bytes, resent: bool, call_id: str
) -> None:
    """A reset in the body is an answer cut after its head as a close there is: a 503 or
    429 head is retried. It was a ReadError, taken as a broken connection: 'uncertain',
    not sent again, where the API had said it did nothing."""
    cut = reset_after(head + b"\r\nContent-Length: 10\r\n\r\n{}")
    async with call_control(cut) as (server, control):  # then 200 "ok"
        if resent:
            await control.accept(call_id, b"{}", time.monotonic() + 3)
        else:
            with pytest.raises(UpstreamUnavailable) as caught:
                await control.accept(call_id, b"{}", time.monotonic() + 3)
            assert caught.value.uncertain is True
            assert "the answer was cut after its head" in caught.value.detail
    assert len(server.requests) == (2 if resent else 1)


@pytest.mark.anyio
async def test_garbage_is_a_protocol_error_and_the_connection_dropped() -> None:
    async with serving(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as (server, transport):
        with pytest.raises(httpx.RemoteProtocolError):
            await send(server, transport)
        assert pool_of(transport).connections == 0
        assert (await send(server, transport))[2] == b"ok"
    assert server.connections == 2


@pytest.mark.anyio
async def test_a_server_that_closes_without_answering() -> None:
    async with serving(close_after(b"")) as (server, transport):
        with pytest.raises(
            httpx.RemoteProtocolError, match=r"^Server disconnected a new connection without"
        ):
            await send(server, transport)
        assert pool_of(transport).connections == 0


@pytest.mark.anyio
async def test_a_reused_connection_closed_unanswered_is_stale() -> None:
    """What call control sends again once: h11's message, as h11 says it."""
    for kind in ("h11", "ours"):
        connection = CONNECTIONS[kind](Scripted([lengthed(b"ok")]))
        first = await connection.handle_async_request(
            httpcore.Request(b"POST", "http://api.test/v1/x", headers=HEADERS, content=b"{}")
        )
        await first.aread()
        await first.aclose()
        assert connection.is_available()
        with pytest.raises(httpcore.RemoteProtocolError) as caught:
            await connection.handle_async_request(
                httpcore.Request(b"POST", "http://api.test/v1/x", headers=HEADERS, content=b"{}")
            )
        assert type(caught.value) is httpcore.RemoteProtocolError, kind
        assert str(caught.value) == "Server disconnected without sending a response."


@pytest.mark.anyio
async def test_a_server_that_closes_in_the_body() -> None:
    async with serving(close_after(lengthed(b"0123456789")[:-4])) as (server, transport):
        with pytest.raises(httpx.RemoteProtocolError, match="received 6 bytes, expected 10"):
            await send(server, transport)
        assert pool_of(transport).connections == 0


@pytest.mark.anyio
async def test_a_slow_trickle_is_read_whole() -> None:
    async with serving(trickle(CHUNKED, 0.001)) as (server, transport):
        assert (await send(server, transport))[2] == b"hello, world"
        assert (await send(server, transport))[2] == b"ok"
    assert server.connections == 1


@pytest.mark.anyio
async def test_a_trickle_slower_than_the_read_timeout_times_out() -> None:
    async with serving(trickle(lengthed(b"ok"), 0.3)) as (server, transport):
        with pytest.raises(httpx.ReadTimeout):
            await send(server, transport, seconds=0.1)
        assert pool_of(transport).connections == 0


@pytest.mark.anyio
async def test_an_endless_head_is_a_protocol_error_not_a_memory_blow_up() -> None:
    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
        for _ in range(1024):  # 8 MiB if it were all read
            writer.write(b"p" * 8192)
            await writer.drain()

    async with serving(endless) as (server, transport):
        with pytest.raises(httpx.RemoteProtocolError, match="Receive buffer too long"):
            await send(server, transport)
        assert pool_of(transport).connections == 0


@pytest.mark.anyio
async def test_a_large_head_within_the_limit_is_read() -> None:
    pad = [b"X-Pad-%d: %s" % (i, b"p" * 1000) for i in range(MAX_HEAD // 1100)]
    async with serving(lengthed(b"ok", *pad)) as (server, transport):
        status, headers, body = await send(server, transport)
    assert (status, len(headers), body) == (200, len(pad) + 1, b"ok")


@pytest.mark.anyio
async def test_an_idle_connection_the_server_wrote_on_is_not_available() -> None:
    async def then_speak(writer: asyncio.StreamWriter) -> None:
        writer.write(lengthed(b"ok"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")  # unasked
        await writer.drain()

    async with serving(then_speak) as (server, transport):
        await send(server, transport)
        (stack,) = pool_of(transport)._idle.values()
        (connection,) = stack
        assert connection.is_available()
        for _ in range(100):
            if not connection.is_available():
                break
            await asyncio.sleep(0.01)
        assert not connection.is_available()
        assert connection.has_expired()
        assert (await send(server, transport))[2] == b"ok"  # on a new connection
        assert connection.is_closed()
    assert server.connections == 2


@pytest.mark.anyio
async def test_an_idle_connection_the_server_closed_is_not_available() -> None:
    async with serving(close_after(lengthed(b"ok"))) as (server, transport):
        await send(server, transport)
        (stack,) = pool_of(transport)._idle.values()
        (connection,) = stack
        for _ in range(100):
            if not connection.is_available():
                break
            await asyncio.sleep(0.01)
        assert not connection.is_available()
        assert (await send(server, transport))[2] == b"ok"
    assert server.connections == 2


@pytest.mark.anyio
async def test_an_answer_before_the_whole_request_is_read() -> None:
    """The server answers on the head alone, then reads the body it was sent."""
    body = b"x" * (1024 * 1024)

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(lengthed(b"early"))
        await writer.drain()
        await reader.readexactly(len(body))
        server.requests.append(head)
        await server.request(reader)
        writer.write(lengthed(b"second"))
        await writer.drain()
        await reader.read()

    async with Server(handler=early) as server:
        transport = PoolTransport(limits=LIMITS)
        headers = [*server.headers[:-1], (b"Content-Length", b"%d" % len(body))]
        assert (await transport.send_bytes(server.url(), headers, body, 5.0))[2] == b"early"
        assert (await send(server, transport))[2] == b"second"
        await transport.aclose()
    assert server.connections == 1


@pytest.mark.anyio
async def test_an_answer_before_the_whole_request_then_a_close_is_the_answer() -> None:
    """The server answers 413 on the head alone and closes without reading the body: the
    413 is the answer (a rejection, certain), not a write error or a broken connection."""

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(lengthed(b"too big", b"Connection: close", status=b"413 Too Large"))
        await writer.drain()

    body = b"x" * (4 * 1024 * 1024)
    async with Server(handler=early) as server:
        transport = PoolTransport(limits=LIMITS)
        headers = [*server.headers[:-1], (b"Content-Length", b"%d" % len(body))]
        got = await transport.send_bytes(server.url(), headers, body, 5.0)
        assert (got[0], got[2], pool_of(transport).connections) == (413, b"too big", 0)
        await transport.aclose()


@pytest.mark.anyio
async def test_httpx_requests_through_the_pool_transport() -> None:
    async with (
        serving(CHUNKED, lengthed(b"gz", b"X-A: 1")) as (server, transport),
        httpx.AsyncClient(transport=transport) as http,
    ):
        url = f"http://127.0.0.1:{server.port}/v1/x"
        first = await http.post(url, content=b"{}")
        second = await http.post(url, content=b"{}")
        assert (first.text, second.text, second.headers["x-a"]) == ("hello, world", "gz", "1")
        assert first.extensions["http_version"] == b"HTTP/1.1"
        assert first.extensions["reason_phrase"] == b"OK"
    assert server.connections == 1
