"""app.state.redis: SWITCHBOARD_REDIS_URL checked, and a real redis-server's two kinds of no."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings
from app.state.redis import RedisConfigError, RedisUnavailable, check, connect, parse_url
from tests.redis_server import RedisServer, free_port, make_tls


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://localhost", "redis://localhost:6379/0"),
        ("redis://:secret@10.0.0.5:6380/3", "redis://10.0.0.5:6380/3"),
        ("rediss://user:secret@redis.internal/1", "rediss://redis.internal:6379/1"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("rediss://:secret@r.internal/1?ssl_cert_reqs=required", "rediss://r.internal:6379/1"),
    ],
)
def test_urls_and_what_logs_show_of_them(url: str, target: str) -> None:
    assert str(parse_url(url)) == target
    assert "secret" not in str(parse_url(url))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://localhost:6379", "must start with redis://"),
        ("localhost:6379", "must start with redis://"),
        ("redis://", "no host"),
        ("redis://localhost:port", "not a valid URL"),
        ("redis://localhost/zero", "database number"),
        # redis-py would take these and fail at the first command, as if Redis were down.
        ("rediss://:secret@h/0?ssl_ca_certs=/nonexistent/ca.pem", "ssl_ca_certs= names no"),
        ("rediss://:secret@h/0?ssl_certfile=", "ssl_certfile= names no readable file"),
        ("redis://:secret@h/0?ssl_ca_certs=/etc/hostname", "needs rediss://"),
        ("rediss://:secret@h/0?socket_timeout=1", "'socket_timeout' is not supported"),
        ("rediss://:secret@h/0?ssl_cert_reqs=maybe", "must be one of none, optional, required"),
    ],
)
def test_bad_urls_are_refused_without_echoing_them(url: str, message: str) -> None:
    with pytest.raises(RedisConfigError, match=message) as refused:
        parse_url(url)
    assert "secret" not in str(refused.value)


def test_the_setting_is_checked_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_REDIS_URL", "redis://:pw@localhost/not-a-number")
    with pytest.raises(ValidationError, match="database number"):
        Settings(_env_file=None)


async def _refusal(url: str) -> str:
    """The RedisConfigError a client of `url` meets at the start-up check: its message."""
    client = connect(url)
    try:
        with pytest.raises(RedisConfigError) as refused:
            await check(client)
    finally:
        await client.aclose()
    return str(refused.value)


@pytest.mark.anyio
async def test_a_server_that_answers(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        await check(client)
        await client.set("k", "v")
        assert await client.get("k") == "v"  # text, not bytes
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_nobody_listening_is_unavailable() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        with pytest.raises(RedisUnavailable):
            await check(client, timeout=0.5)
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_a_wrong_password_or_database_is_a_configuration_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right").start()
    try:
        for url in (
            server.url().replace(":right@", ":wrong@"),
            server.url().replace(":right@", ""),
            server.url(db=99),
        ):
            await _refusal(url)
        client = connect(server.url(db=1))
        try:
            await check(client)
        finally:
            await client.aclose()
    finally:
        server.stop()


@pytest.mark.anyio
async def test_rediss_with_the_ca_and_a_client_certificate(tls_redis_server: RedisServer) -> None:
    url = tls_redis_server.url()
    assert url.startswith("rediss://") and "ssl_ca_certs=" in url and "ssl_certfile=" in url
    client = connect(url)
    try:
        await check(client)
        await client.set("k", "over TLS")
        assert await client.get("k") == "over TLS"
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_rediss_with_another_ca_is_a_configuration_error(
    tls_redis_server: RedisServer, tmp_path: Path
) -> None:
    """A certificate our CA does not vouch for will not come right by waiting: the service
    must not start (RedisConfigError), and the error says what to set."""
    other = make_tls(tmp_path / "other", name="another CA")
    for url in (
        tls_redis_server.url(ca=other.ca),
        # No CA given: the system's CAs, which do not know the private one either.
        tls_redis_server.url().split("?")[0],
    ):
        message = await _refusal(url)
        assert "TLS certificate was not accepted" in message
        assert "certificate verify failed" in message
        assert "ssl_ca_certs" in message


@pytest.mark.anyio
async def test_rediss_without_the_client_certificate_redis_requires_is_a_configuration_error(
    tls_redis_server: RedisServer,
) -> None:
    """A Redis that requires a client certificate (tls-auth-clients yes) ends a handshake
    without one with a TLS alert; with TLS 1.3 the client has sent its first command by
    then, and meets either the alert ('certificate required') or, about as often, a reset
    (the server closed with the command unread). Neither comes right by waiting: the
    service must not start, and the error says which parameters to set. Before, both were
    'Redis does not answer', not ready forever. Ten clients: both kinds turn up."""
    url = tls_redis_server.url(client_cert=False)
    assert "ssl_certfile" not in url
    for _ in range(10):
        message = await _refusal(url)
        assert "Redis requires a client certificate" in message
        assert "certificate required" in message  # the alert, as TLS names it
        assert "ssl_certfile=" in message and "ssl_keyfile=" in message


@pytest.mark.anyio
async def test_a_refusal_seen_as_a_close_before_the_first_command_is_a_configuration_error(
    tls_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third way the refusal meets us, on a loaded machine: the server's alert and
    close arrive before the first command is written, and redis-py says "Connection closed
    by the server before write" (no reset, no alert in its error). Made certain here by
    waiting after the handshake for the server's close. Before, 'Redis does not answer'."""
    import asyncio
    from collections.abc import Awaitable, Callable

    from redis.asyncio.connection import SSLConnection

    handshake: Callable[[SSLConnection], Awaitable[None]] = SSLConnection._connect

    async def slow_to_write(self: SSLConnection) -> None:
        await handshake(self)
        # Until the server's alert and close have arrived (as a loaded machine would be
        # slow to write the first command).
        async with asyncio.timeout(0.4):
            while self._writer is not None and not self._writer.transport.is_closing():  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.005)

    monkeypatch.setattr(SSLConnection, "_connect", slow_to_write)
    message = await _refusal(tls_redis_server.url(client_cert=False))
    assert "Redis requires a client certificate" in message
    assert "ssl_certfile=" in message and "ssl_keyfile=" in message


@pytest.mark.anyio
async def test_rediss_without_a_client_certificate_over_tls_1_2_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """With TLS 1.2 the handshake itself fails: the server's alert is 'handshake failure'."""
    server = RedisServer(
        tmp_path / "redis", tls=make_tls(tmp_path / "tls"), client_certs=True,
        tls_protocols="TLSv1.2",
    ).start()  # fmt: skip
    try:
        message = await _refusal(server.url(client_cert=False))
    finally:
        server.stop()
    assert "without a client certificate (TLS alert: handshake failure)" in message
    assert "ssl_certfile=" in message and "ssl_keyfile=" in message


@pytest.mark.anyio
async def test_rediss_with_a_client_certificate_redis_does_not_trust_is_a_configuration_error(
    tls_redis_server: RedisServer, tmp_path: Path
) -> None:
    other = make_tls(tmp_path / "other", name="another CA")
    message = await _refusal(tls_redis_server.url(client=other))
    assert "Redis did not accept this replica's client certificate" in message
    assert "unknown ca" in message
    assert "ssl_certfile=" in message


@pytest.mark.anyio
async def test_a_redis_at_its_client_limit_is_unavailable_not_misconfigured(
    tmp_path: Path,
) -> None:
    """Redis saying "max number of clients reached" comes right when clients leave: the
    service waits (not ready); it does not refuse to start as for a wrong password."""
    server = RedisServer(tmp_path / "redis").start()
    holder = connect(server.url())
    try:
        await holder.config_set("maxclients", 1)  # the holder is the one client
        client = connect(server.url())
        try:
            with pytest.raises(RedisUnavailable, match="max number of clients"):
                await check(client)
        finally:
            await client.aclose()
    finally:
        await holder.aclose()
        server.stop()


@pytest.mark.anyio
async def test_a_tls_reset_without_an_alert_is_unavailable(tmp_path: Path) -> None:
    """A reset is not a refusal by itself: a TLS-terminating proxy whose Redis is down (or
    a Redis killed mid-handshake) resets too, and that one must be waited for. Here a TLS
    server that completes every handshake and then resets the connection: the service
    keeps trying (RedisUnavailable), it does not stop."""
    import asyncio
    import socket
    import ssl
    import struct

    tls = make_tls(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, no alert

    server = await asyncio.start_server(reset, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = connect(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls.ca}", timeout=0.5)
    try:
        with pytest.raises(RedisUnavailable):
            await check(client, timeout=2.0)
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
