"""One HTTP/1.1 connection of call control's pool, its answers parsed by httptools.

httpcore's `AsyncHTTP11Connection` runs every request through h11: an event object per
request, body part and end of message, each pushed through h11's state machine, and the
answer taken apart line by line with regular expressions. That was about a third of a
call's CPU. `HTTP11Connection` is the part of it our `Pool` uses (the same methods, the
same `httpcore.Response`, the same exceptions for the same failures), with the answer
parsed by httptools (llhttp, the C parser uvicorn serves with) and the request written by
hand, byte for byte as h11 writes it.

It runs over an `httpcore.AsyncNetworkStream` (ours: `AsyncioStream`), not on the asyncio
protocol underneath: TLS (`start_tls` gives a new stream), the `network_stream` extension
and the write corking stay where they are, and the stream's read is a deque pop, a small
part of what h11 cost.

What callers rely on, as h11 and httpcore do it:

- an end of a reused connection before any byte of an answer: `RemoteProtocolError("Server
  disconnected without sending a response.")` (a stale keep-alive connection: the only
  failure call control sends a request again after); on a new connection, where h11 says
  the same, `AnswerUnreadable` (no stale connection: the server took it for the request,
  and may have read it); before the end of a body with a
  length (Content-Length, chunked): `RemoteProtocolError`; a body with neither ends there;
- part of a head then the end, a malformed head, or one beyond `MAX_HEAD` bytes:
  `AnswerUnreadable` (a `RemoteProtocolError`: the server had read the request); a
  malformed body: `RemoteProtocolError`;
- the stream's own errors as they are (`ReadTimeout`, `ReadError`, `WriteTimeout`); a
  `WriteError` while sending is let pass to read the answer the server may have sent
  before closing (the connection is not reused);
- a header value folded over lines (obs-fold) is taken, as a client must (RFC 9112 5.2):
  its line break dropped, the spaces or tabs after it kept (h11 makes them one space);
- 1xx answers are skipped; a connection is reused only after a whole answer to a whole
  request, HTTP/1.1 without `Connection: close` (neither the request's nor the answer's),
  other than a 408 (the server gave up on the request: it may still answer it) or an
  answer with both Transfer-Encoding and Content-Length (h11 keeps both);
- an idle connection the server sent anything on, or closed, has expired.

Not supported (the pool never asks for them): 101 Switching Protocols and CONNECT (a
`RemoteProtocolError`, where httpcore would hand over the raw stream), and reuse after a
HEAD request (its answer is read, then the connection is closed: llhttp cannot be told
that an answer announcing a length has no body).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

import httpcore
import httptools

READ_SIZE: Final = 64 * 1024
MAX_HEAD: Final = 100 * 1024
"""Bytes of an answer head (or of a chunk header, or trailers) held unparsed: httpcore's
`max_incomplete_event_size` for h11."""

# h11's grammar (h11/_abnf.py), so that a request h11 refuses is refused here the same way.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_CONTENT_LENGTH = re.compile(rb"[0-9]+")
# An answer's header value: what llhttp takes when it checks them (RFC 9110's field-value:
# no control but tab), a fold already joined.
_ANSWER_VALUE = re.compile(rb"([\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
_CONTENT_LENGTH_MAX_DIGITS = 20


class AnswerUnreadable(httpcore.RemoteProtocolError):
    """The server sent part of an answer's head, or one that cannot be read, then failed,
    or ended a new connection without answering its first request: it may have read the
    request. Only a reused connection that ends before any byte of an answer (a keep-alive
    connection the server had closed) is the plain RemoteProtocolError "Server
    disconnected without sending a response." that a request may be sent again after
    (app.openai.callcontrol)."""


class _State(enum.IntEnum):
    NEW = 0
    ACTIVE = 1
    IDLE = 2
    CLOSED = 3


class _Stop(Exception):
    """Raised in the parser's callback to stop it after the answer: the bytes that follow
    are not parsed (they make the connection unfit for reuse)."""


_CLOSE_DELIMITED: Final = -1


def _close_requested(value: bytes) -> bool:
    """A Connection header value that has the `close` token (h11's get_comma_header)."""
    return b"close" in [token.strip() for token in value.lower().split(b",")]


def _request_head(request: httpcore.Request) -> tuple[bytes, int | None, bool]:
    """The request line and headers as h11 writes them (Host first, then the others in
    order), its body's length (None: chunked), and whether it asks to close."""
    lines = [b"", b""]  # the request line, then Host
    length: int | None = 0  # neither Content-Length nor Transfer-Encoding: no body
    seen_length: bytes | None = None
    chunked = False
    close = False
    host_count = 0
    for name, value in request.headers:
        if _TOKEN.fullmatch(name) is None:
            raise httpcore.LocalProtocolError(f"Illegal header name {name!r}")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise httpcore.LocalProtocolError(f"Illegal header value {value!r}")
        lowered = name.lower()
        if lowered == b"host":
            host_count += 1
            lines[1] = b"%s: %s\r\n" % (name, value)
            continue
        if lowered == b"content-length":
            lengths = {part.strip() for part in value.split(b",")}
            if len(lengths) != 1:
                raise httpcore.LocalProtocolError("conflicting Content-Length headers")
            value = lengths.pop()
            if _CONTENT_LENGTH.fullmatch(value) is None or len(value) > _CONTENT_LENGTH_MAX_DIGITS:
                raise httpcore.LocalProtocolError("bad Content-Length")
            if seen_length is not None:
                if seen_length != value:
                    raise httpcore.LocalProtocolError("conflicting Content-Length headers")
                continue  # h11 keeps the first of equal ones
            seen_length = value
            if not chunked:
                length = int(value)
        elif lowered == b"transfer-encoding":
            if chunked:
                raise httpcore.LocalProtocolError("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise httpcore.LocalProtocolError("Only Transfer-Encoding: chunked is supported")
            chunked = True
            length = None  # Transfer-Encoding wins over Content-Length
        elif lowered == b"connection":
            close = close or _close_requested(value)
        lines += (name, b": ", value, b"\r\n")
    if host_count == 0:
        raise httpcore.LocalProtocolError("Missing mandatory Host: header")
    if host_count > 1:
        raise httpcore.LocalProtocolError("Found multiple Host: headers")
    if _TOKEN.fullmatch(request.method) is None:
        raise httpcore.LocalProtocolError("Illegal method characters")
    target = request.url.target
    if _TARGET.fullmatch(target) is None:
        raise httpcore.LocalProtocolError("Illegal target characters")
    if request.method == b"CONNECT":
        raise httpcore.UnsupportedProtocol("CONNECT is not supported on this connection")
    lines[0] = b"%s %s HTTP/1.1\r\n" % (request.method, target)
    lines.append(b"\r\n")
    return b"".join(lines), length, close


class HTTP11Connection:
    """What our Pool uses of `httpcore.AsyncHTTP11Connection`, on httptools."""

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: httpcore.AsyncNetworkStream,
        keepalive_expiry: float | None = None,
    ) -> None:
        self._origin = origin
        self._stream = stream
        self._keepalive_expiry = keepalive_expiry
        self._expire_at: float | None = None
        self._state = _State.NEW
        self._request_count = 0
        self._parser = httptools.HttpResponseParser(self)
        # h11 lets Transfer-Encoding override Content-Length, and takes a bare LF as a
        # line end; llhttp refuses both unless told. Keep-alive is decided here (h11's
        # rule): llhttp would otherwise refuse an answer after a 1xx with
        # `Connection: close`. A value folded over lines (obs-fold), which a client must
        # take (RFC 9112 5.2) and h11 does, llhttp refuses unless its check of header
        # values is off: on_header checks them as it did instead. Refused, a success
        # of the API became a RemoteProtocolError, which call control sends again.
        self._parser.set_dangerous_leniencies(
            lenient_headers=True,
            lenient_chunked_length=True,
            lenient_optional_cr_before_lf=True,
            lenient_keep_alive=True,
        )
        self._head_request = False
        self._reusable = True
        """The request was sent whole, without `Connection: close`, and not HEAD."""
        self._reset()

    def _reset(self) -> None:
        """Before each request (a 1xx answer's head is forgotten in on_headers_complete)."""
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._complete = False
        self._trailing = False
        """Bytes came after the answer (the connection is out of step: not reused)."""
        self._chunked = False
        self._length = _CLOSE_DELIMITED
        self._received = 0
        self._close = False
        """The answer says so (`Connection: close`), or is HTTP/1.0."""
        self._parts: list[bytes] = []
        self._unparsed = 0
        self._failure: httpcore.RemoteProtocolError | None = None

    # --- the request --------------------------------------------------------------------

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if request.url.origin != self._origin:
            raise RuntimeError(
                f"a request to {request.url.origin} on a connection to {self._origin}"
            )
        if self._state is not _State.NEW and self._state is not _State.IDLE:
            raise httpcore.ConnectionNotAvailable()
        self._request_count += 1
        self._state = _State.ACTIVE
        self._expire_at = None
        self._reset()
        try:
            timeouts = request.extensions.get("timeout", {})
            head, length, close = _request_head(request)
            self._head_request = request.method == b"HEAD"
            self._reusable = not close
            try:
                await self._send(request, head, length, timeouts.get("write"))
            except httpcore.WriteError:
                # The server may have answered and closed before reading it all: the
                # answer is read (httpcore's rule); the connection is not reused.
                self._reusable = False
            read_timeout = timeouts.get("read")
            stream = self._stream
            answered = False  # any byte of an answer
            while not self._head_done:
                data = await stream.read(READ_SIZE, read_timeout)
                if not data:
                    if answered:
                        raise AnswerUnreadable("Server disconnected in the answer's head.")
                    if self._request_count == 1:
                        # A new connection cannot be a stale keep-alive one: the server
                        # took it for this request, and may have read it.
                        raise AnswerUnreadable(
                            "Server disconnected a new connection without answering."
                        )
                    raise httpcore.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
                answered = True
                try:
                    self._feed(data)
                except AnswerUnreadable:
                    raise
                except httpcore.RemoteProtocolError as exc:
                    raise AnswerUnreadable(str(exc)) from exc
            return httpcore.Response(
                status=self._parser.get_status_code(),
                headers=self._headers,
                content=_Body(self, read_timeout),
                extensions={
                    "http_version": b"HTTP/" + self._parser.get_http_version().encode(),
                    "reason_phrase": self._reason,
                    "network_stream": stream,
                },
            )
        except BaseException:
            await self.aclose()
            raise

    async def _send(
        self, request: httpcore.Request, head: bytes, length: int | None, seconds: float | None
    ) -> None:
        stream = self._stream
        await stream.write(head, seconds)
        body = request.stream
        assert isinstance(body, AsyncIterable)
        if length is None:
            async for part in body:
                if part:
                    await stream.write(b"%x\r\n%s\r\n" % (len(part), part), seconds)
            await stream.write(b"0\r\n\r\n", seconds)
            return
        left = length
        async for part in body:
            left -= len(part)
            if left < 0:
                raise httpcore.LocalProtocolError("Too much data for declared Content-Length")
            await stream.write(part, seconds)
        if left:
            raise httpcore.LocalProtocolError("Too little data for declared Content-Length")

    # --- the answer ---------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise httpcore.RemoteProtocolError("101 Switching Protocols is not supported") from exc
        except httptools.HttpParserError as exc:
            if self._failure is not None:
                raise self._failure from None
            if self._complete:  # _Stop, or a parse error in what followed the answer
                self._trailing = True
                return
            raise httpcore.RemoteProtocolError(str(exc) or type(exc).__name__) from None
        if self._unparsed > MAX_HEAD and not self._complete:
            raise httpcore.RemoteProtocolError("Receive buffer too long")

    def _at_end(self) -> None:
        """The server closed the connection in the body."""
        if self._length == _CLOSE_DELIMITED and not self._chunked:
            self._complete = True  # a body delimited by the end of the connection
            self._reusable = False
            return
        if self._chunked:
            raise httpcore.RemoteProtocolError(
                "peer closed connection without sending complete message body: "
                "incomplete chunked read"
            )
        raise httpcore.RemoteProtocolError(
            "peer closed connection without sending complete message body: "
            f"received {self._received} bytes, expected {self._length}"
        )

    async def _receive_body(self, seconds: float | None) -> AsyncIterator[bytes]:
        stream = self._stream
        while True:
            if self._parts:
                parts = self._parts
                self._parts = []
                for part in parts:
                    yield part
            if self._complete:
                return
            data = await stream.read(READ_SIZE, seconds)
            if data:
                self._feed(data)
            else:
                self._at_end()

    async def _response_closed(self) -> None:
        if (
            self._state is _State.ACTIVE
            and self._complete
            and self._reusable
            and not self._close
            and not self._trailing
        ):
            self._state = _State.IDLE
            if self._keepalive_expiry is not None:
                self._expire_at = time.monotonic() + self._keepalive_expiry
        else:
            await self.aclose()

    # --- httptools' callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            raise _Stop  # bytes after the answer
        if self._head_done:
            return
        self._reason = b""
        self._headers = []
        self._unparsed = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason  # in pieces when it spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # llhttp strips only the leading whitespace
        # llhttp's own check of values is off (lenient_headers, for obs-fold): done here.
        if _ANSWER_VALUE.fullmatch(value) is None:
            self._failure = httpcore.RemoteProtocolError(f"illegal header value {value!r}")
            raise self._failure
        if self._head_done:
            return  # trailers: h11 reports them at the end of the body; httpcore drops them
        lowered = name.lower()
        if lowered == b"content-length":
            self._length = int(value)
        elif lowered == b"transfer-encoding":
            value = value.lower()
            if self._chunked:
                self._failure = httpcore.RemoteProtocolError("multiple Transfer-Encoding headers")
                raise self._failure
            if value != b"chunked":
                self._failure = httpcore.RemoteProtocolError(
                    "Only Transfer-Encoding: chunked is supported"
                )
                raise self._failure
            self._chunked = True
        elif lowered == b"connection" and _close_requested(value):
            self._close = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._unparsed = 0
        parser = self._parser
        status = parser.get_status_code()
        if status < 100:
            # llhttp takes 0-99 as a final answer with a body; below 200 here, it was
            # skipped as a 1xx and its body taken into the next answer's (h11 refuses it).
            self._failure = httpcore.RemoteProtocolError(f"illegal status code {status}")
            raise self._failure
        if status < 200:
            if status == 101:
                return  # llhttp stops with HttpParserUpgrade
            # 1xx: skipped, as httpcore does; the headers gathered again for the next
            self._headers = []
            self._length = _CLOSE_DELIMITED
            self._chunked = self._close = False
            return
        self._head_done = True
        if parser.get_http_version() < "1.1":
            self._close = True  # h11 keeps no HTTP/1.0 connection alive
        elif status == 408:
            # The server gave up on the request, but may still read it and answer: the
            # connection is out of step (RFC 9110 15.5.9). h11 would keep it.
            self._close = True
        if self._chunked and self._length != _CLOSE_DELIMITED:
            # Both framings: chunked wins, but the two may disagree on where the answer
            # ends, and what follows would be the next request's (RFC 9112 6.3: handled
            # as an error). h11 would keep the connection.
            self._close = True
        if self._head_request:
            # No body, whatever the head says; llhttp would wait for one, so the
            # connection cannot be reused.
            self._complete = True
            self._reusable = False
            raise _Stop

    def on_body(self, part: bytes) -> None:
        self._unparsed = 0
        self._received += len(part)
        self._parts.append(part)

    def on_chunk_header(self) -> None:
        self._unparsed = 0

    def on_message_complete(self) -> None:
        self._unparsed = 0
        if self._head_done:
            self._complete = True

    # --- the pool's questions -----------------------------------------------------------

    async def aclose(self) -> None:
        self._state = _State.CLOSED
        await self._stream.aclose()

    def is_available(self) -> bool:
        return self._state is _State.IDLE and not self._stream.get_extra_info("is_readable")

    def has_expired(self) -> bool:
        if self._expire_at is not None and time.monotonic() > self._expire_at:
            return True
        # An idle connection with something to read: the server closed it (or is out
        # of step with it).
        return self._state is _State.IDLE and bool(self._stream.get_extra_info("is_readable"))

    def is_idle(self) -> bool:
        return self._state is _State.IDLE

    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} [{str(self._origin)!r}, {self._state.name}, "
            f"Request Count: {self._request_count}]>"
        )


class _Body:
    """An answer's body as httpcore's response stream; closing it ends the exchange."""

    def __init__(self, connection: HTTP11Connection, seconds: float | None) -> None:
        self._connection = connection
        self._seconds = seconds
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._connection._receive_body(self._seconds):
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._connection._response_closed()
