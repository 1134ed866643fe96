"""app.openai.transport: httpcore's pool on asyncio streams, against real local servers.

Every test runs on asyncio's own event loop and on uvloop (what `switchboard serve` runs
on). The server is a real HTTP/1.1 server on loopback, told what to do with each request:
answer, answer and later close the idle connection, never answer, cut the answer short,
reset the connection; one case speaks TLS with a throwaway CA (trustme).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trustme

from app.openai.callcontrol import (
    LIMITS,
    CallControl,
    CallGone,
    LiveCallControl,
    RetryPolicy,
    UpstreamRejected,
    UpstreamUnavailable,
    build_http_client,
)
from app.openai.transport import AsyncioStream, Pool, PoolTransport

CALL_ID = "rtc_0123456789abcdef"
BOTH_PATHS = pytest.mark.parametrize(
    "call_id",
    [
        pytest.param(CALL_ID, id="direct"),
        pytest.param("rtc_%41", id="through-httpx"),  # a path httpx quotes: client's path
    ],
)
PATH = f"/realtime/calls/{CALL_ID}/accept"
FAST = RetryPolicy(attempt_timeout=5.0, base_backoff=0.001, max_backoff=0.002)
BODY = b'{"ok":true}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


class Api:
    """A local HTTP/1.1 server; `actions` says what each request gets (then "ok")."""

    def __init__(self, *actions: str | bytes, tls: ssl.SSLContext | None = None) -> None:
        self.actions = deque(actions)
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.alpn: list[str | None] = []
        self.release = asyncio.Event()
        """Lets an "ok-then-close" connection close."""
        self.closed = asyncio.Event()
        """Set when the server closed a connection on its own (not a client's leaving)."""
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Api:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.release.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def base_url(self) -> str:
        scheme, host = ("https", "localhost") if self.tls else ("http", "127.0.0.1")
        return f"{scheme}://{host}:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.alpn.append(ssl_object.selected_alpn_protocol())
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed its connection
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.requests.append(head + await reader.readexactly(length))
                action = self.actions.popleft() if self.actions else "ok"
                if isinstance(action, bytes):  # this answer, as it is
                    writer.write(action)
                    await writer.drain()
                elif action == "ok":
                    writer.write(ANSWER)
                    await writer.drain()
                elif action == "ok-then-close":
                    writer.write(ANSWER)
                    await writer.drain()
                    await self.release.wait()
                    self.closed.set()
                    return
                elif action == "close":
                    writer.write(ANSWER.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
                    await writer.drain()
                    return
                elif action == "big":
                    size = 4 * 1024 * 1024
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                    for _ in range(size // 65536):
                        writer.write(b"x" * 65536)
                        await writer.drain()
                elif action == "silent":
                    await reader.read()  # until the client gives up and closes
                    return
                elif action == "cut":
                    writer.write(ANSWER[: ANSWER.index(b"\r\n\r\n") + 6])  # headers, 2 bytes
                    await writer.drain()
                    self.closed.set()
                    return
                elif action == "half-head":
                    writer.write(ANSWER[: ANSWER.index(b"\r\n") + 6])  # status line, 4 bytes
                    await writer.drain()
                    self.closed.set()
                    return
                elif action == "garbled":
                    writer.write(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")
                    await writer.drain()
                    self.closed.set()
                    return
                elif action == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.closed.set()
                    return
                else:
                    raise AssertionError(action)
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def client(
    base_url: str, ssl_context: ssl.SSLContext | None = None, limits: httpx.Limits = LIMITS
) -> AsyncIterator[httpx.AsyncClient]:
    transport = PoolTransport(limits=limits, ssl_context=ssl_context)
    async with httpx.AsyncClient(base_url=base_url, transport=transport) as http:
        yield http


def pool_of(http: httpx.AsyncClient) -> Pool:
    transport = http._transport
    assert isinstance(transport, PoolTransport)
    return transport._pool


async def until(condition: Any, what: str) -> None:
    """Waits for the event loop to deliver something (bounded, never a timed assertion)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def stream_of(response: httpx.Response) -> AsyncioStream:
    stream = response.extensions["network_stream"]
    assert isinstance(stream, AsyncioStream)
    return stream


# --- the backend under httpcore's pool ------------------------------------------------------


@pytest.mark.anyio
async def test_the_production_client_runs_on_the_asyncio_backend() -> None:
    async with Api() as api, build_http_client(api.base_url, "sk-test") as http:
        response = await http.post(f"/realtime/calls/{CALL_ID}/hangup")
    assert response.status_code == 200
    assert isinstance(response.extensions["network_stream"], AsyncioStream)


@pytest.mark.anyio
async def test_keep_alive_connections_are_reused() -> None:
    async with Api() as api, client(api.base_url) as http:
        streams = []
        for _ in range(3):
            response = await http.post(f"/realtime/calls/{CALL_ID}/reject", content=b"{}")
            assert (response.status_code, response.content) == (200, BODY)
            streams.append(stream_of(response))
            assert streams[-1].get_extra_info("is_readable") is False  # idle, open, quiet
        stream = streams[0]
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", api.port)
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("socket").fileno() > 0
        assert stream.get_extra_info("ssl_object") is None
    assert len(api.requests) == 3
    assert api.connections == 1
    assert streams[0] is streams[1] is streams[2]


@pytest.mark.anyio
async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    """The pool asks `is_readable` of idle connections: it must see the server's close."""
    async with Api("ok-then-close") as api, client(api.base_url) as http:
        first = await http.post(f"/realtime/calls/{CALL_ID}/accept", content=b"{}")
        stream = stream_of(first)
        assert stream.get_extra_info("is_readable") is False
        api.release.set()
        await api.closed.wait()
        await until(lambda: stream.get_extra_info("is_readable"), "the close seen by the client")

        second = await http.post(f"/realtime/calls/{CALL_ID}/accept", content=b"{}")

    assert second.status_code == 200
    assert stream_of(second) is not stream
    assert api.connections == 2
    assert len(api.requests) == 2  # nothing sent into the closed connection


@pytest.mark.anyio
async def test_an_answer_larger_than_the_read_buffer_limit() -> None:
    """Reading pauses past the limit and resumes as the body is consumed."""
    async with Api("big", "ok") as api, client(api.base_url) as http:
        async with http.stream("POST", PATH, timeout=httpx.Timeout(5.0)) as response:
            protocol = stream_of(response)._protocol
            await until(lambda: protocol.reading_paused, "reading paused, the body unread")
            assert len(await response.aread()) == 4 * 1024 * 1024
        assert not protocol.reading_paused
        assert (await http.post(PATH)).content == BODY  # the connection is still in step
    assert api.connections == 1


class CountingTransport:
    """An asyncio transport that counts what is written to it (uvloop's can't be patched)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@pytest.mark.anyio
async def test_a_request_leaves_in_one_write() -> None:
    """Head and body together: one system call, not one per part httpcore hands over."""
    async with Api() as api, client(api.base_url) as http:
        stream = stream_of(await http.post(PATH))
        counting = CountingTransport(stream._transport)
        stream._transport = counting  # type: ignore[assignment]
        await http.post(PATH, content=b'{"type":"realtime"}')
        await http.post(PATH)
    assert len(counting.writes) == 2
    assert counting.writes[0] == api.requests[1]
    assert counting.writes[1] == api.requests[2]


@pytest.mark.anyio
async def test_read_timeout() -> None:
    async with Api("silent") as api, client(api.base_url) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                f"/realtime/calls/{CALL_ID}/accept",
                content=b"{}",
                timeout=httpx.Timeout(5.0, read=0.1),
            )
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_write_timeout_when_the_server_reads_nothing() -> None:
    """A body far beyond the socket buffers, to a server that never reads it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.getsockname()[1]
    try:
        async with client(f"http://127.0.0.1:{port}") as http:
            with pytest.raises(httpx.WriteTimeout):
                await http.post(
                    "/upload",
                    content=b"x" * (32 * 1024 * 1024),
                    timeout=httpx.Timeout(5.0, write=0.2),
                )
    finally:
        listener.close()


@pytest.mark.anyio
async def test_connection_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]  # closed again: nothing listens there
    async with client(f"http://127.0.0.1:{port}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.post("/v1/realtime/calls/x/accept")


# --- the pool ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_full_pool_makes_a_request_wait_then_time_out() -> None:
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60)
    async with Api() as api, client(api.base_url, limits=one) as http:
        async with http.stream("POST", PATH) as held:  # the one connection, not yet given back
            with pytest.raises(httpx.PoolTimeout):
                await http.post(PATH, timeout=httpx.Timeout(5.0, pool=0.05))
            waiting = asyncio.create_task(http.post(PATH))
            await until(lambda: len(pool_of(http)._waiters) == 1, "the request waits")
            await held.aread()
        response = await waiting  # given the connection the first one gave back
        assert response.status_code == 200
        assert pool_of(http).connections == 1
    assert api.connections == 1
    assert len(api.requests) == 2  # the request that timed out was never sent


@pytest.mark.anyio
async def test_idle_connections_beyond_the_keep_alive_limit_are_closed() -> None:
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=1, keepalive_expiry=60)
    async with Api() as api, client(api.base_url, limits=limits) as http:
        async with http.stream("POST", PATH) as first, http.stream("POST", PATH) as second:
            assert pool_of(http).connections == 2
            await first.aread()
            await second.aread()
        assert pool_of(http).connections == 1
        kept = pool_of(http)._idle
        (stack,) = kept.values()
        assert [c.is_idle() for c in stack] == [True]
        await http.post(PATH)
        await http.post(PATH)
    assert api.connections == 2  # the two opened at once; the rest reused the one kept


@pytest.mark.anyio
async def test_an_expired_connection_is_not_reused() -> None:
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=0.05)
    async with Api() as api, client(api.base_url, limits=limits) as http:
        first = await http.post(PATH)
        await asyncio.sleep(0.1)  # past the keep-alive expiry
        second = await http.post(PATH)
        assert stream_of(second) is not stream_of(first)
        assert stream_of(first).get_extra_info("is_readable")  # closed by the client
    assert api.connections == 2


@pytest.mark.anyio
async def test_connection_close_from_the_server_is_honoured() -> None:
    async with Api("close", "ok") as api, client(api.base_url) as http:
        first = await http.post(PATH)
        second = await http.post(PATH)
        assert (first.status_code, second.status_code) == (200, 200)
        assert pool_of(http).connections == 1
    assert api.connections == 2
    assert len(api.requests) == 2


@pytest.mark.anyio
async def test_a_cancelled_request_gives_its_connection_back_closed() -> None:
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60)
    async with Api("silent", "ok") as api, client(api.base_url, limits=one) as http:
        unanswered = asyncio.create_task(http.post(PATH))
        await until(lambda: len(api.requests) == 1, "the request reaches the server")
        queued = asyncio.create_task(http.post(PATH))
        await until(lambda: len(pool_of(http)._waiters) == 1, "the second request waits")
        queued.cancel()
        unanswered.cancel()
        for task in (queued, unanswered):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert pool_of(http).connections == 0  # the half-used connection is not kept
        assert not pool_of(http)._waiters
        response = await http.post(PATH, timeout=httpx.Timeout(5.0, pool=1.0))
        assert response.status_code == 200
    assert api.connections == 2


@pytest.mark.anyio
async def test_a_closed_pool_sends_nothing() -> None:
    async with Api() as api:
        transport = PoolTransport(limits=LIMITS)
        async with httpx.AsyncClient(base_url=api.base_url, transport=transport) as http:
            await http.post(PATH)
        assert pool_of(http).connections == 0
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(httpx.Request("POST", api.base_url + PATH))
    assert len(api.requests) == 1


# --- the call-control rules on real failures ------------------------------------------------


@pytest.mark.anyio
async def test_refused_connections_are_retried_and_certain() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    seen: list[str] = []
    async with build_http_client(f"http://127.0.0.1:{port}/v1", "sk-test") as http:
        control = CallControl(http, policy=FAST, observer=lambda op, label, s: seen.append(label))
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.accept(CALL_ID, b"{}", time.monotonic() + 5)
    assert caught.value.uncertain is False  # never reached the API
    assert seen == ["connection_error"] * FAST.max_sends


@pytest.mark.anyio
@BOTH_PATHS
async def test_an_answer_cut_short_is_uncertain_and_not_sent_again(call_id: str) -> None:
    """The server read the request and dropped the connection mid-answer: its head came
    (here a 200: the API did it), so this is no stale keep-alive connection and the
    request is not sent again (docs/operations.md: only a connection closed before
    answering is). It was sent twice: an accept or refer the API had done, again."""
    async with (
        Api("cut", "cut", "ok") as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=FAST)
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.accept(call_id, b"{}", time.monotonic() + 5)
    assert caught.value.uncertain is True
    assert caught.value.detail.startswith("RemoteProtocolError")
    assert len(api.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["half-head", "garbled"])
@BOTH_PATHS
async def test_an_answer_cut_or_garbled_in_its_head_is_uncertain_and_not_sent_again(
    action: str, call_id: str
) -> None:
    """Some of an answer came (part of its head, or a head that cannot be read), then the
    connection ended: the server had read the request, so this is no stale keep-alive
    connection either. It was sent again once: an accept the API may have done, twice."""
    async with (
        Api(action, "ok") as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=FAST)
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.accept(call_id, b"{}", time.monotonic() + 5)
    assert caught.value.uncertain is True
    assert "the answer was cut in its head" in caught.value.detail
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_a_reset_after_sending_is_uncertain_and_not_sent_again() -> None:
    async with (
        Api("reset", "ok") as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=FAST)
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.refer(CALL_ID, "tel:+14155550123", time.monotonic() + 5)
    assert caught.value.uncertain is True
    assert caught.value.detail.startswith("ReadError")
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_an_unanswered_request_times_out_uncertain() -> None:
    async with Api("silent", "ok") as api, build_http_client(api.base_url, "sk-test") as http:
        control = CallControl(http, policy=RetryPolicy(attempt_timeout=0.2))
        with pytest.raises(UpstreamUnavailable) as caught:
            await control.accept(CALL_ID, b"{}", time.monotonic() + 5)
    assert caught.value.uncertain is True
    assert len(api.requests) == 1


# --- TLS: start_tls, SNI and ALPN -----------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, sni: list[str | None]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.sni_callback = lambda sslobj, name, ctx: sni.append(name)
    return context


@pytest.mark.anyio
async def test_a_request_cancelled_in_the_tls_handshake_closes_its_connection() -> None:
    """A server that takes the TCP connection and never answers the handshake; the request
    is cancelled (its call's deadline): the connection is closed then, not left open
    until the garbage collector finds it."""
    ended = asyncio.Event()
    entered = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        entered.set()
        await reader.read()  # the client's hello, then nothing until the client closes
        ended.set()
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client(f"https://127.0.0.1:{port}/v1", ssl.create_default_context()) as http:
            request = asyncio.create_task(http.post(f"/realtime/calls/{CALL_ID}/accept"))
            await asyncio.wait_for(entered.wait(), 5)
            await asyncio.sleep(0.05)  # in the handshake now
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.wait_for(ended.wait(), 5)  # closed by the cancellation
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.anyio
async def test_https_with_sni_and_alpn(ca: trustme.CA) -> None:
    sni: list[str | None] = []
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with (
        Api(tls=server_context(ca, sni)) as api,
        client(api.base_url, trusting) as http,
    ):
        first = await http.post(f"/realtime/calls/{CALL_ID}/accept", content=b"{}")
        second = await http.post(f"/realtime/calls/{CALL_ID}/hangup")
    assert (first.status_code, first.content, second.status_code) == (200, BODY, 200)
    assert sni == ["localhost"]
    assert api.alpn == ["http/1.1"]  # offered by the client, so not h2
    ssl_object = stream_of(first).get_extra_info("ssl_object")
    assert ssl_object.selected_alpn_protocol() == "http/1.1"
    assert stream_of(second) is stream_of(first)
    assert api.connections == 1
    assert api.requests[1].startswith(b"POST /v1/realtime/calls/")


@pytest.mark.anyio
async def test_https_to_an_untrusted_certificate_is_a_connect_error(ca: trustme.CA) -> None:
    async with Api(tls=server_context(ca, [])) as api, client(api.base_url) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.post(f"/realtime/calls/{CALL_ID}/accept")
    assert api.requests == []


# --- call control's own sending: the bytes httpx's client would send -------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("control_type", [CallControl, LiveCallControl])
async def test_call_control_sends_the_bytes_of_the_httpx_client(
    control_type: type[CallControl],
) -> None:
    """`CallControl` skips `AsyncClient.post`; what reaches the API must not change."""
    call_id = "rtc_a.b:c-D_9"
    session = b'{"type":"realtime","model":"gpt-realtime"}'
    async with Api() as api, build_http_client(api.base_url, "sk-test") as http:
        control = control_type(http, policy=FAST)
        deadline = time.monotonic() + 5
        await control.accept(call_id, session, deadline)
        await control.reject(call_id, 486, deadline)
        await control.refer(call_id, "tel:+14155550123", deadline)
        await control.hangup(call_id, deadline)
        ours = list(api.requests)
        api.requests.clear()
        path = f"{control.resource}/{call_id}"
        accept = session if control_type is CallControl else b'{"session":' + session + b"}"
        json = {"Content-Type": "application/json"}
        await http.post(f"{path}/accept", content=accept, headers=json)
        await http.post(f"{path}/reject", content=b'{"status_code":486}', headers=json)
        await http.post(f"{path}/refer", content=b'{"target_uri":"tel:+14155550123"}', headers=json)
        await http.post(f"{path}/hangup")
    assert ours == api.requests
    assert ours[0].startswith(f"POST /v1{path}/accept HTTP/1.1\r\nHost: 127.0.0.1:".encode())
    assert b"\r\nAuthorization: Bearer sk-test\r\n" in ours[0]


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.anyio
async def test_a_proxy_named_in_the_environment_is_used(no_proxy_env: pytest.MonkeyPatch) -> None:
    async with Api() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with build_http_client("http://api.openai.test/v1", "sk-test") as http:
            await CallControl(http, policy=FAST).hangup(CALL_ID, time.monotonic() + 5)
    (request,) = proxy.requests
    assert request.startswith(
        f"POST http://api.openai.test/v1/realtime/calls/{CALL_ID}/hangup HTTP/1.1\r\n".encode()
    )


@pytest.mark.anyio
async def test_no_proxy_bypasses_it(no_proxy_env: pytest.MonkeyPatch) -> None:
    async with Api() as api:
        no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        async with build_http_client(api.base_url, "sk-test") as http:
            assert isinstance(http.api_transport, PoolTransport)
            await CallControl(http, policy=FAST).hangup(CALL_ID, time.monotonic() + 5)
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_a_request_leaves_before_the_event_loop_runs_anything_else() -> None:
    """No yield to the event loop between asking for a request and its bytes leaving (on a
    kept-alive connection): what else is ready (a record, a log line, other calls' work)
    waits until the request is on its way, not the other way round."""
    async with Api() as api, client(api.base_url) as http:
        stream = stream_of(await http.post(PATH))  # a connection kept alive
        order: list[str] = []

        class Watching(CountingTransport):
            def write(self, data: bytes) -> None:
                order.append("request written")
                super().write(data)

        stream._transport = Watching(stream._transport)  # type: ignore[assignment]
        asyncio.get_running_loop().call_soon(order.append, "the loop ran something else")
        response = await http.post(PATH, content=b'{"type":"realtime"}')
    assert response.status_code == 200
    assert order == ["request written", "the loop ran something else"]


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}content-length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.anyio
async def test_call_control_builds_no_httpx_request_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the pool transport a request goes straight to the pool: httpx's Request (URL
    parsing, header objects, content streams) only once per header set, for its bytes."""
    built: list[str] = []
    real = httpx.Request.__init__

    def counting(self: httpx.Request, *args: Any, **kwargs: Any) -> None:
        built.append("request")
        real(self, *args, **kwargs)

    async with Api() as api, build_http_client(api.base_url, "sk-test") as http:
        control = CallControl(http, policy=FAST)
        await control.accept(CALL_ID, b"{}", time.monotonic() + 5)  # the header set seen
        monkeypatch.setattr(httpx.Request, "__init__", counting)
        for _ in range(3):
            await control.accept(CALL_ID, b'{"type":"realtime"}', time.monotonic() + 5)
            await control.reject(CALL_ID, 486, time.monotonic() + 5)
    assert built == []
    assert len(api.requests) == 7


@pytest.mark.anyio
async def test_call_control_errors_on_the_pool_transport_read_as_httpx_reads_them() -> None:
    error = b'{"error":{"message":"overloaded, try later"}}'
    async with (
        Api(
            answer("404 Not Found", b'{"error":{"message":"no such call"}}'),
            answer("503 Service Unavailable", gzip.compress(error), "content-encoding: gzip"),
            answer("503 Service Unavailable", error, "retry-after: 0"),
            answer("400 Bad Request", b"not json"),
        ) as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=RetryPolicy(max_sends=2, base_backoff=0.001))
        with pytest.raises(CallGone) as gone:
            await control.accept(CALL_ID, b"{}", time.monotonic() + 5)
        assert gone.value.detail == "HTTP 404: no such call"
        with pytest.raises(UpstreamUnavailable) as busy:
            await control.accept(CALL_ID, b"{}", time.monotonic() + 5)
        assert busy.value.detail == "HTTP 503: overloaded, try later"  # sent twice
        with pytest.raises(UpstreamRejected) as refused:
            await control.accept(CALL_ID, b"{}", time.monotonic() + 5)
        assert refused.value.detail == "HTTP 400: not json"
    assert len(api.requests) == 4


@pytest.mark.anyio
async def test_a_call_id_httpx_would_quote_sends_the_bytes_of_the_httpx_client() -> None:
    call_id = "rtc 1é"
    async with Api() as api, build_http_client(api.base_url, "sk-test") as http:
        control = CallControl(http, policy=FAST)
        await control.hangup(call_id, time.monotonic() + 5)
        await http.post(f"/realtime/calls/{call_id}/hangup")
    assert api.requests[0] == api.requests[1]
    assert api.requests[0].startswith(b"POST /v1/realtime/calls/rtc%201%C3%A9/hangup HTTP/1.1")


@pytest.mark.anyio
@BOTH_PATHS
async def test_an_error_answer_nested_too_deep_for_json_is_still_its_status(call_id: str) -> None:
    """json.loads raises RecursionError (no ValueError) on a body nested a few thousand
    deep: it left call control as no CallControlError, the webhook was answered 500 and
    the call kept as 'uncertain' (never sent again) where the API's 503 is retried."""
    deep = b"[" * 100_000
    async with (
        Api(
            answer("503 Service Unavailable", deep),
            "ok",
            answer("404 Not Found", b'{"error":' * 50_000),
        ) as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=FAST)
        await control.accept(call_id, b"{}", time.monotonic() + 5)
        with pytest.raises(CallGone) as gone:
            await control.hangup(call_id, time.monotonic() + 5)
    assert gone.value.detail.startswith('HTTP 404: {"error":{"error":')
    assert len(api.requests) == 3


@pytest.mark.anyio
@BOTH_PATHS
async def test_an_answer_whose_body_cannot_be_decoded_is_still_its_status(call_id: str) -> None:
    """`content-encoding: gzip` on a body that is not gzip: httpx's DecodingError was
    taken as a broken connection ('uncertain', not sent again). A 503 was not retried, a
    404 was no CallGone, and through httpx a 200 (the call accepted) was a failure, the
    webhook answered 503: its redelivery accepted the call again."""
    bad = "content-encoding: gzip"
    async with (
        Api(
            answer("200 OK", b"{}", bad),
            answer("503 Service Unavailable", b'{"error":{"message":"busy"}}', bad),
            "ok",
            answer("404 Not Found", b"no such call", bad),
        ) as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=FAST)
        await control.accept(call_id, b"{}", time.monotonic() + 5)
        await control.accept(call_id, b"{}", time.monotonic() + 5)  # the 503, then "ok"
        with pytest.raises(CallGone) as gone:
            await control.hangup(call_id, time.monotonic() + 5)
    assert gone.value.detail == "HTTP 404: no such call"
    assert len(api.requests) == 4


@pytest.mark.anyio
async def test_a_408_is_sent_again_on_a_new_connection() -> None:
    """408 Request Timeout: the server did not take the request, and the client may send
    it again (RFC 9110 15.5.9), on a new connection. A server's idle timeout racing a
    kept-alive connection's next request answers it; it was a rejection for good (the
    call lost: 'failed', its fallback or nothing)."""
    async with (
        Api(answer("408 Request Timeout", b""), "ok") as api,
        build_http_client(api.base_url, "sk-test") as http,
    ):
        control = CallControl(http, policy=FAST)
        await control.accept(CALL_ID, b"{}", time.monotonic() + 5)
    assert (len(api.requests), api.connections) == (2, 2)
