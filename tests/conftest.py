"""Fixtures shared by every test package: real servers started for the tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import pg_empty_url, pg_server, pg_session_url, pg_url
from tests.redis_server import OPENSSL, REDIS_SERVER, RedisServer, make_tls

# PostgreSQL (tests/pgserver.py): a database of the session, a throwaway server to stop.
__all__ = ["pg_empty_url", "pg_server", "pg_session_url", "pg_url"]


# Files that start no process but take as long as the end-to-end ones all the same (waits
# on pairing windows and leases, property tests): 20-35 s each in a 4-worker run. Collected
# last, they were handed out last, and the run ended with one worker alone on
# test_router_pairing.py for ~30 s.
LONG_FILES = frozenset(
    {
        "tests/test_router_pairing.py",
        "tests/sip/test_identity.py",
        "tests/state/test_claims.py",
        "tests/sip/test_e164.py",
        "tests/rules/test_matchers.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With workers (scripts/test: pytest-xdist, a file per worker), the files that start
    real processes (marked e2e: tens of seconds each) and the other LONG_FILES are handed out
    first, so that the run does not end with one worker still on a long file while the
    others have nothing left. A stable sort: the order of the tests within a file stays as
    written."""
    if getattr(config.option, "numprocesses", None) or getattr(config, "workerinput", None):
        slow = {
            item.path
            for item in items
            if item.get_closest_marker("e2e") is not None
            or item.path.relative_to(config.rootpath).as_posix() in LONG_FILES
        }
        items.sort(key=lambda item: item.path not in slow)


def _need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One throwaway redis-server for the session (never stopped by a test)."""
    _need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's server, emptied for this test."""
    redis_server.flush()
    return redis_server.url()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, which it may stop and start (an outage)."""
    _need_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def tls_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A TLS-only server of this test's own: a throwaway CA signed its certificate, and it
    requires a client certificate of that CA (mutual TLS); url() carries both files."""
    _need_redis()
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (it makes the test's certificates)")
    tls = make_tls(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis-tls", tls=tls, client_certs=True).start()
    yield server
    server.stop()
