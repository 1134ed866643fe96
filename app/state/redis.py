"""The one place a Redis client is made (SWITCHBOARD_REDIS_URL), for every shared store.

`redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS) or
`unix:///path/redis.sock?db=0`. TLS takes redis-py's URL parameters: `ssl_ca_certs=` (the CA
file of a private CA; without it, the system's CAs), `ssl_certfile=` and `ssl_keyfile=` (a
client certificate, when Redis requires one), `ssl_cert_reqs=` and `ssl_check_hostname=`;
no other parameter is taken (redis-py would fail on an unknown one at the first command).
With the maintained
`redis` package's asyncio client (hiredis parses replies when it is installed). A phone is
ringing while we talk to Redis, so every command has a short timeout and at most one quick
retry (a pooled connection that a Redis restart closed); nothing waits longer than the
call's own deadline.

Start-up decides between two failures (docs/operations.md, "Shared state"): a Redis that
answers but refuses us (wrong password, no such database), whose TLS certificate our CA
does not vouch for, or that requires a client certificate we do not give (or does not
trust ours) is a configuration error and the service does not start (`RedisConfigError`);
a Redis that does not answer yet only keeps the service not ready until it does
(`RedisUnavailable`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError  # not the builtin

SCHEMES: Final = ("redis", "rediss", "unix")
DEFAULT_TIMEOUT: Final = 0.5
"""Seconds for one command (and for opening a connection), unless configured."""
MAX_CONNECTIONS: Final = 64
TLS_FILES: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_PARAMETERS: Final = (*TLS_FILES, "ssl_cert_reqs", "ssl_check_hostname")
_CHOICES: Final = {
    "ssl_cert_reqs": ("none", "optional", "required"),
    "ssl_check_hostname": ("true", "false"),
}
CLIENT_CERTIFICATE_ALERTS: Final = frozenset(
    {
        "CERTIFICATE_REQUIRED",  # TLS 1.3: we gave none
        "HANDSHAKE_FAILURE",  # TLS 1.2: we gave none (or nothing in common)
        "UNKNOWN_CA",
        "BAD_CERTIFICATE",
        "UNSUPPORTED_CERTIFICATE",
        "CERTIFICATE_REVOKED",
        "CERTIFICATE_EXPIRED",
        "CERTIFICATE_UNKNOWN",
        "ACCESS_DENIED",
    }
)
"""TLS alerts (OpenSSL's reason, after `..._ALERT_`) by which a server refuses the client's
certificate, or the lack of one: configuration errors, not a Redis that is not up yet."""
_RESETS: Final = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)


class RedisConfigError(Exception):
    """SWITCHBOARD_REDIS_URL is malformed, or Redis refuses these credentials or database."""


class RedisUnavailable(Exception):
    """Redis does not answer (down, unreachable, or slower than the timeout)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a URL points at, for logs: never the password."""

    scheme: str
    host: str
    port: int
    db: int

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.host}?db={self.db}"
        return f"{self.scheme}://{self.host}:{self.port}/{self.db}"


def parse_url(url: str) -> RedisTarget:
    """Check a SWITCHBOARD_REDIS_URL; raise RedisConfigError naming what is wrong
    (without repeating the URL, which may hold a password)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise RedisConfigError(f"SWITCHBOARD_REDIS_URL is not a valid URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise RedisConfigError(
            "SWITCHBOARD_REDIS_URL must start with redis://, rediss:// (TLS) or unix://, "
            f"not {parts.scheme + '://' if parts.scheme else 'nothing'}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise RedisConfigError("SWITCHBOARD_REDIS_URL (unix://) has no socket path")
        db = dict(parse_qsl(parts.query)).get("db", "0")
        if not db.isdigit():
            raise RedisConfigError("SWITCHBOARD_REDIS_URL's db= must be a database number")
        return RedisTarget(parts.scheme, parts.path, 0, int(db))
    if not parts.hostname:
        raise RedisConfigError("SWITCHBOARD_REDIS_URL has no host")
    _check_parameters(parts.scheme, parse_qsl(parts.query, keep_blank_values=True))
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise RedisConfigError(
            "SWITCHBOARD_REDIS_URL's path must be a database number, e.g. redis://host:6379/0"
        )
    return RedisTarget(parts.scheme, parts.hostname, port or 6379, int(path or 0))


def _check_parameters(scheme: str, parameters: list[tuple[str, str]]) -> None:
    """The TLS parameters, on rediss:// only, with values redis-py takes and files that
    can be read (else the first command would fail, as if Redis did not answer)."""
    for name, value in parameters:
        if name not in TLS_PARAMETERS:
            raise RedisConfigError(
                f"SWITCHBOARD_REDIS_URL's parameter {name!r} is not supported "
                f"(only {', '.join(TLS_PARAMETERS)}, with rediss://)"
            )
        if scheme != "rediss":
            raise RedisConfigError(f"SWITCHBOARD_REDIS_URL's {name}= needs rediss:// (TLS)")
        if name in _CHOICES and value.lower() not in _CHOICES[name]:
            raise RedisConfigError(
                f"SWITCHBOARD_REDIS_URL's {name}= must be one of {', '.join(_CHOICES[name])}"
            )
        if name in TLS_FILES and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            raise RedisConfigError(
                f"SWITCHBOARD_REDIS_URL's {name}= names no readable file: {value or '(empty)'}"
            )


def connect(url: str, *, timeout: float = DEFAULT_TIMEOUT) -> aioredis.Redis:
    """A pooled client for `url`; no connection is opened until the first command.

    Replies are decoded as UTF-8 text. One immediate retry on a connection error covers a
    pooled connection that a Redis restart closed; any other retry is the caller's."""
    parse_url(url)
    return aioredis.Redis.from_url(
        url.strip(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        retry_on_timeout=False,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        decode_responses=True,
    )


async def check(client: aioredis.Redis, *, timeout: float = DEFAULT_TIMEOUT) -> None:  # noqa: ASYNC109
    """PING. RedisConfigError if Redis refuses us, RedisUnavailable if it does not answer.
    A TLS connection reset takes up to `timeout` more: one more connection, to read why."""
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except (AuthenticationError, AuthorizationError) as exc:
        raise RedisConfigError(f"Redis refused the credentials: {exc}") from None
    except ResponseError as exc:
        # e.g. "DB index is out of range", "NOAUTH Authentication required."
        raise RedisConfigError(f"Redis refused the connection: {exc}") from None
    except (RedisError, OSError, TimeoutError) as exc:
        refused = _certificate_refused(exc)
        if refused is not None:
            # Not a Redis that will come back: one our CA does not vouch for (or another
            # server on that port). Waiting would only hide it.
            raise RedisConfigError(
                "Redis's TLS certificate was not accepted (certificate verify failed: "
                f"{refused.verify_message}): give the CA that signed it in "
                "SWITCHBOARD_REDIS_URL's ssl_ca_certs= (docs/deploy.md)"
            ) from None
        alert = _client_certificate_alert(exc)
        if alert is None and _dropped(exc):
            # With TLS 1.3 a server checks our certificate after our handshake is done: its
            # alert is as often lost in the reset of a socket closed with our first command
            # unread, or, when it comes before that command is written, in redis-py's
            # "closed by the server". Ask again, saying nothing: the alert, if any.
            alert = await _tls_alert(client, timeout)
        if alert is not None:
            raise RedisConfigError(_client_certificate_message(client, alert)) from None
        raise RedisUnavailable(f"Redis does not answer: {exc or type(exc).__name__}") from None


def _certificate_refused(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind redis-py's ConnectionError, if any."""
    seen: BaseException | None = exc
    for _ in range(5):  # redis-py raises its own error while handling the ssl one
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the errors behind it (redis-py raises its own while handling the OS's)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 5:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _alert(error: BaseException) -> str | None:
    """The client-certificate alert an ssl.SSLError reports, if it is one."""
    if not isinstance(error, ssl.SSLError) or isinstance(error, ssl.SSLCertVerificationError):
        return None
    _, _, alert = (error.reason or "").partition("_ALERT_")
    return alert if alert in CLIENT_CERTIFICATE_ALERTS else None


def _client_certificate_alert(exc: BaseException) -> str | None:
    for error in _chain(exc):
        alert = _alert(error)
        if alert is not None:
            return alert
    return None


def _dropped(exc: BaseException) -> bool:
    """A reset, or redis-py finding the connection closed by the server (its own
    ConnectionError, with no error of the OS's behind it: not a refused connect)."""
    chain = _chain(exc)
    if any(isinstance(error, _RESETS) for error in chain):
        return True
    return isinstance(exc, RedisConnectionError) and len(chain) == 1


async def _tls_alert(client: aioredis.Redis, timeout: float) -> str | None:  # noqa: ASYNC109
    """Open a TLS connection as the client does and only read: a server that refuses our
    certificate (or the lack of one) says so with an alert, now that no command of ours
    is left unread to turn its close into a reset. Redis itself says nothing until asked:
    silence (until `timeout`), or a close without an alert (a proxy whose Redis is down),
    is no refusal."""
    pool = client.connection_pool
    if not issubclass(pool.connection_class, SSLConnection):
        return None
    connection = pool.connection_class(**pool.connection_kwargs)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                connection.host, connection.port, ssl=connection.ssl_context.get()
            )
            await reader.read(1)
    except ssl.SSLError as exc:
        return _alert(exc)
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()
    return None


def _client_certificate_message(client: aioredis.Redis, alert: str) -> str:
    said = alert.lower().replace("_", " ")
    if client.connection_pool.connection_kwargs.get("ssl_certfile"):
        return (
            f"Redis did not accept this replica's client certificate (TLS alert: {said}): "
            "give one that Redis's CA (tls-ca-cert-file) signed in SWITCHBOARD_REDIS_URL's "
            "ssl_certfile= and ssl_keyfile= (docs/deploy.md)"
        )
    if alert == "CERTIFICATE_REQUIRED":
        refused = f"Redis requires a client certificate (TLS alert: {said})"
    else:  # TLS 1.2 says "handshake failure"
        refused = f"Redis refused a TLS handshake without a client certificate (TLS alert: {said})"
    return (
        f"{refused}: give this replica's certificate and key in SWITCHBOARD_REDIS_URL's "
        "ssl_certfile= and ssl_keyfile= (docs/deploy.md)"
    )
