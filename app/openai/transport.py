"""The HTTP transport of call control: our pool and HTTP/1.1 over plain asyncio streams.

httpx's default transport runs httpcore over anyio. At a few hundred calls a second that
layer was a third of the process's CPU: the pool asks every idle connection, at the start
and the end of every request, whether its socket is readable (a `poll` syscall behind a
dict of lambdas rebuilt per question), and each read and write opens a cancel scope and
takes a lock. `AsyncioBackend` is httpcore's public extension point
(`httpcore.AsyncNetworkBackend`) written on asyncio's own transports and protocols: a
connection's protocol records what arrived (bytes, end of stream, a reset) as the event
loop delivers it, so "is this idle connection readable?" is answered from that record, and
a read or write waits on one future with one timer. `PoolTransport` puts our pool (`Pool`)
of HTTP/1.1 connections (app/openai/http11.py: httptools' parser in place of h11) on that
backend behind httpx's transport interface, so the client is still httpx.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, cast

import httpcore
import httpx

from app.openai.http11 import AnswerUnreadable, HTTP11Connection

READ_BUFFER_LIMIT = 256 * 1024
"""Bytes buffered unread before the connection stops reading from the socket."""
CORK_LIMIT = 64 * 1024
"""Bytes of a request held back to be sent together (beyond: sent at once, and waited on)."""
LAST_LOOK: Final = 0.001
"""Seconds between a wait's time passing and the wait giving up: the event loop polls the
sockets once in between (`LastLook`)."""


class _Protocol(asyncio.Protocol):
    """One connection's received bytes and state, as the event loop delivers them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.eof = False
        """The peer finished sending, or the connection is gone."""
        self.error: Exception | None = None
        """Why the connection was lost, when it was not a clean close."""
        self.lost = False
        self.reading_paused = False
        self.writing_paused = False
        self._reader: asyncio.Future[bool] | None = None
        self._drainer: asyncio.Future[bool] | None = None

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_BUFFER_LIMIT and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        _wake(self._reader, True)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self._reader, True)
        return False  # close our side too: HTTP/1.1 never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.eof = True
        self.error = exc
        _wake(self._reader, True)
        _wake(self._drainer, True)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        _wake(self._drainer, True)

    # --- waiting, with a timeout -------------------------------------------------------

    async def wait_readable(self, seconds: float | None) -> bool:
        """Until data or the end arrives (True), or `seconds` pass (False)."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._reader = waiter
        timer = None if seconds is None else LastLook(self.loop, seconds, _wake, waiter, False)
        try:
            return await waiter
        finally:
            self._reader = None
            if timer is not None:
                timer.cancel()

    async def wait_drained(self, seconds: float | None) -> bool:
        """Until the transport's buffer drains (True), or `seconds` pass (False)."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._drainer = waiter
        timer = None if seconds is None else LastLook(self.loop, seconds, _wake, waiter, False)
        try:
            return await waiter
        finally:
            self._drainer = None
            if timer is not None:
                timer.cancel()


class LastLook:
    """`loop.call_later(seconds, fn, *args)` for a time limit on I/O: when `seconds` have
    passed, `fn` runs after the loop has polled the sockets once more.

    The process can stall past a limit while what it waits for arrives (a loaded machine,
    a long callback, a GC pause, SIGSTOP): both are due when the loop runs again. uvloop
    runs the timers due before it polls the sockets (asyncio's own loop after), and a
    limit acted on at once lost what had come: an answer in the socket was reported as
    no answer, a request that may have taken effect (call control's `uncertain`), whose
    redelivery sent it again (a call accepted twice). `fn` waits for a second timer of
    LAST_LOOK, which no loop runs before its next poll of the sockets: what that poll
    finds is handed out first."""

    __slots__ = ("_args", "_fn", "_handle", "_loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, fn: Callable[..., object], *args: Any
    ) -> None:
        self._loop = loop
        self._fn = fn
        self._args = args
        self._handle: asyncio.TimerHandle | None = loop.call_later(seconds, self._due)

    def _due(self) -> None:
        self._handle = self._loop.call_later(LAST_LOOK, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._fn(*self._args)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _wake(waiter: asyncio.Future[bool] | None, value: bool) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(value)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection (TCP, or TLS over it) for httpcore, on an asyncio transport."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._corked: list[bytes] = []
        self._corked_size = 0

    # httpcore's interface passes each operation its timeout.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._corked:
            self._uncork()  # the request is complete: httpcore reads only after sending it
        protocol = self._protocol
        if not protocol.chunks:
            if protocol.eof:
                return self._at_end()
            if not await protocol.wait_readable(timeout):
                raise httpcore.ReadTimeout("timed out waiting for the server")
            if not protocol.chunks:
                return self._at_end()
        chunk = protocol.chunks.popleft()
        if len(chunk) > max_bytes:
            protocol.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        protocol.buffered -= len(chunk)
        if protocol.reading_paused and protocol.buffered <= READ_BUFFER_LIMIT // 2:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return chunk

    def _at_end(self) -> bytes:
        error = self._protocol.error
        if error is not None:
            raise httpcore.ReadError(str(error) or type(error).__name__)
        return b""  # a clean close: the connection tells a complete answer from a cut one

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        # httpcore writes a request's head and body separately: a small request is held
        # until the first read and leaves in one send (one system call, one segment).
        self._corked.append(buffer)
        self._corked_size += len(buffer)
        if self._corked_size < CORK_LIMIT:
            return
        self._uncork()
        if protocol.writing_paused and not await protocol.wait_drained(timeout):
            raise httpcore.WriteTimeout("timed out sending to the server")
        if protocol.lost and protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error) or type(protocol.error).__name__)

    def _uncork(self) -> None:
        corked = self._corked
        self._transport.write(corked[0] if len(corked) == 1 else b"".join(corked))
        self._corked = []
        self._corked_size = 0

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        protocol = self._protocol
        try:
            async with asyncio.timeout(timeout):
                transport = await protocol.loop.start_tls(
                    self._transport,
                    protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from exc
        except (OSError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            self._transport.close()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        protocol.transport = transport
        return AsyncioStream(transport, protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of every idle pooled connection, twice per request: the answer is what
            # the event loop already delivered (bytes, or the end), not a syscall.
            protocol = self._protocol
            return protocol.eof or bool(protocol.chunks)
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens `AsyncioStream`s on the running event loop (asyncio's or uvloop's)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _Protocol(loop),
                    host,
                    port,
                    local_addr=None if local_address is None else (local_address, 0),
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock: socket.socket | None = transport.get_extra_info("socket")
        if socket_options and sock is not None:
            for option in socket_options:
                sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# httpcore's errors as httpx's (what httpx's own transport does), most specific first.
_ERRORS: dict[type[Exception], type[httpx.HTTPError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


class AnswerCut(httpx.RemoteProtocolError):
    """The answer's head came, then its body failed (cut short by the server's close or
    a reset, or malformed), or the head itself came cut or unreadable: the server read the
    request, and may have acted on it. Unlike a connection closed before any answer (a
    stale keep-alive connection), not a failure to send again. Still an
    httpx.RemoteProtocolError for any other caller."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        """The status its head gave; 0 when the head itself did not come whole."""


def _as_httpx(exc: Exception) -> Exception | None:
    """httpx's exception for httpcore's `exc` (None: not one of httpcore's); an answer
    whose head came unreadable is AnswerCut (with no status)."""
    if isinstance(exc, AnswerUnreadable):
        return AnswerCut(str(exc), 0)
    mapped = _httpx_error(exc)
    return None if mapped is None else mapped(str(exc))


def _describe(exc: Exception) -> str:
    """A body's failure, for AnswerCut: a reset says what it was."""
    if isinstance(exc, httpcore.ReadError):
        return f"ReadError: {exc}" if str(exc) else "ReadError"
    return str(exc)


def _httpx_error(exc: Exception) -> type[httpx.HTTPError] | None:
    for kind in type(exc).__mro__:
        mapped = _ERRORS.get(kind)
        if mapped is not None:
            return mapped
    return None


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:  # httpcore's response stream
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            mapped = _as_httpx(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


_Key = tuple[bytes, bytes, int]


def _key(origin: httpcore.Origin) -> _Key:
    return (origin.scheme, origin.host, origin.port)  # httpcore's Origin is not hashable


class Pool:
    """HTTP/1.1 keep-alive connections per origin, handed out most recently used first.

    httpcore's own pool re-examines every connection, and for each idle one counts all the
    others, at the start and the end of every request: quadratic in the connections, and
    at a few dozen requests in flight it was the larger part of a request's CPU. Here a
    request pops an idle connection (checking only that one: expired, or closed by the
    server) or opens one, and gives it back when its answer is closed; waiting for a free
    slot (`max_connections`) is bounded by the request's pool timeout."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        max_keepalive_connections: int,
        keepalive_expiry: float | None,
        backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._max_idle = max_keepalive_connections
        self._keepalive_expiry = keepalive_expiry
        self._backend = backend
        self._idle: dict[_Key, list[HTTP11Connection]] = {}
        self._idle_count = 0
        self._busy = 0
        """Connections handed out to requests, or being opened for one."""
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._closed = False

    @property
    def connections(self) -> int:
        return self._busy + self._idle_count

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if request.url.scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"unsupported scheme {request.url.scheme!r}")
        origin = request.url.origin
        connection = await self._acquire(request, origin)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await self._release(origin, connection)  # closed by the connection on the failure
            raise
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_Lease(response.stream, self, origin, connection),
            extensions=response.extensions,
        )

    async def _acquire(
        self, request: httpcore.Request, origin: httpcore.Origin
    ) -> HTTP11Connection:
        timeouts = request.extensions.get("timeout", {})
        while True:
            if self._closed:
                raise httpcore.ConnectError("the connection pool is closed")
            stack = self._idle.get(_key(origin))
            while stack:
                connection = stack.pop()
                self._idle_count -= 1
                if connection.is_available() and not connection.has_expired():
                    self._busy += 1
                    return connection
                await connection.aclose()  # expired, or the server closed it
            if self.connections < self._max_connections:
                break
            if self._idle_count:  # idle ones to other origins: one makes room
                await self._close_oldest_idle()
                continue
            await self._wait_for_room(timeouts.get("pool"))
        self._busy += 1
        try:
            return await self._connect(request, origin, timeouts.get("connect"))
        except BaseException:
            self._busy -= 1
            self._wake_one()
            raise

    async def _connect(
        self, request: httpcore.Request, origin: httpcore.Origin, seconds: float | None
    ) -> HTTP11Connection:
        host = origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, origin.port, timeout=seconds)
        if origin.scheme == b"https":
            sni = request.extensions.get("sni_hostname") or host
            stream = await stream.start_tls(self._ssl_context, server_hostname=sni, timeout=seconds)
        return HTTP11Connection(origin, stream, self._keepalive_expiry)

    async def _release(self, origin: httpcore.Origin, connection: HTTP11Connection) -> None:
        self._busy -= 1
        if connection.is_idle() and not self._closed:
            stack = self._idle.setdefault(_key(origin), [])
            stack.append(connection)
            self._idle_count += 1
            # The least recently used one is at the bottom: it is the one to go when
            # there are too many idle, or when it has outlived the keep-alive expiry.
            if self._idle_count > self._max_idle or stack[0].has_expired():
                await self._close_oldest_idle(stack)
        else:
            await connection.aclose()
        self._wake_one()

    async def _close_oldest_idle(self, stack: list[HTTP11Connection] | None = None) -> None:
        if stack is None:
            stack = next(s for s in self._idle.values() if s)
        connection = stack.pop(0)
        self._idle_count -= 1
        await connection.aclose()

    async def _wait_for_room(self, seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        timer = None if seconds is None else loop.call_later(seconds, _wake, waiter, False)
        try:
            if not await waiter:
                raise httpcore.PoolTimeout("no connection free within the pool timeout")
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._wake_one()  # pass on the room this cancelled request was given
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done() or not waiter.result():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

    async def aclose(self) -> None:
        self._closed = True
        for stack in self._idle.values():
            while stack:
                await stack.pop().aclose()
        self._idle_count = 0
        while self._waiters:
            _wake(self._waiters.popleft(), False)


class _Lease:
    """An answer's body; closing it gives the connection back to the pool."""

    def __init__(
        self,
        stream: Any,
        pool: Pool,
        origin: httpcore.Origin,
        connection: HTTP11Connection,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._origin = origin
        self._connection = connection
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.aclose()  # the connection: idle again, or closed
        finally:
            await self._pool._release(self._origin, self._connection)


class PoolTransport(httpx.AsyncBaseTransport):
    """Our connection pool on `AsyncioBackend`, as an httpx transport (HTTP/1.1)."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = Pool(
            ssl_context=ssl_context if ssl_context is not None else httpx.create_ssl_context(),
            max_connections=limits.max_connections or 100,
            max_keepalive_connections=limits.max_keepalive_connections or 20,
            keepalive_expiry=limits.keepalive_expiry,
            backend=AsyncioBackend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core)
        except Exception as exc:
            mapped = _as_httpx(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def send_bytes(
        self,
        url: httpcore.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        seconds: float,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """A request straight to the pool, without httpx's Request and Response around it:
        (status, headers, body as received: not decoded). Raises what
        handle_async_request does (httpx's exceptions); a protocol error after the
        answer's head (or a reset there) as AnswerCut."""
        core = httpcore.Request(
            b"POST",
            url,
            headers=headers,
            content=body or b"",
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), seconds)},
        )
        try:
            response = await self._pool.handle_async_request(core)
            stream = response.stream
            try:
                parts = [part async for part in stream]  # type: ignore[union-attr]
            except (httpcore.RemoteProtocolError, httpcore.ReadError) as exc:
                # ReadError: a reset in the body, a cut as a close there is
                raise AnswerCut(_describe(exc), response.status) from exc  # see AnswerCut
            finally:
                await stream.aclose()  # type: ignore[union-attr]
        except AnswerCut:
            raise
        except Exception as exc:
            mapped = _as_httpx(exc)
            if mapped is None:
                raise
            raise mapped from exc
        return response.status, response.headers, b"".join(parts)

    async def aclose(self) -> None:
        await self._pool.aclose()
