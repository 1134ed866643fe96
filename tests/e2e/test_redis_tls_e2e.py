"""`rediss://` end to end (issue 12): real `switchboard serve` processes on a TLS-only
redis-server whose certificate a throwaway CA signed, configured the way docs/deploy.md
says (redis-py's `ssl_ca_certs=`, `ssl_certfile=`, `ssl_keyfile=` URL parameters)."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.state.redis import connect
from tests.e2e.conftest import E2E_ROUTES, start_service, stop_service
from tests.e2e.fake_openai import FakeOpenAI, Reply
from tests.e2e.test_crash_e2e import Delivery, accepts, env
from tests.redis_server import RedisServer, make_tls
from tests.support import new_id

pytestmark = pytest.mark.e2e


def stored_phases(url: str, call_ids: list[str]) -> list[str | None]:
    """The phase of each call's claim, read from the TLS server by a client of our own."""

    async def read() -> list[str | None]:
        client = connect(url)
        try:
            phases = [await client.hget(f"switchboard:claim:call:{c}", "phase") for c in call_ids]
            return [str(phase) if phase is not None else None for phase in phases]
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_two_processes_share_their_claims_over_tls(
    tmp_path: Path, tls_redis_server: RedisServer
) -> None:
    """Two replicas on one rediss:// URL (a private CA, a client certificate): concurrent
    duplicates spread over both are acted on once per call, and the claims are in Redis."""
    fake = FakeOpenAI().start()
    calls = [Delivery(new_id()) for _ in range(8)]
    for delivery in calls:
        fake.script(delivery.call_id, "accept", Reply(delay=0.2))
    url = tls_redis_server.url()
    settings = env(fake, SWITCHBOARD_REDIS_URL=url, SWITCHBOARD_CLAIM_LEASE_SECONDS="5")
    first = start_service(tmp_path / "a", E2E_ROUTES, env=settings)
    second = start_service(tmp_path / "b", E2E_ROUTES, env=settings)
    try:
        jobs = [(d, s) for d in calls for s in (first, second, first, second)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda job: job[0].send_until_final(job[1]), jobs))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert {a.json()["outcome"] for a in answers} == {"accepted"}
        assert sum(1 for a in answers if not a.json().get("duplicate")) == len(calls)
        assert accepts(fake, calls) == Counter({d.call_id: 1 for d in calls})
        assert stored_phases(url, [d.call_id for d in calls]) == ["done"] * len(calls)
        for service in (first, second):
            assert "rediss://127.0.0.1" in service.logs()  # the target, logged at start
            assert "ssl_keyfile" not in service.logs()
    finally:
        stop_service(first)
        stop_service(second)
        fake.stop()


def test_a_certificate_of_another_ca_stops_the_start(
    tmp_path: Path, tls_redis_server: RedisServer
) -> None:
    """A wrong CA is a configuration error: the service exits at start, saying which
    setting to fix (not 'not ready' forever, not a 500 per webhook)."""
    other = make_tls(tmp_path / "other", name="another CA")
    fake = FakeOpenAI().start()
    try:
        with pytest.raises(RuntimeError, match="exited") as refused:
            start_service(
                tmp_path / "node",
                E2E_ROUTES,
                env=env(fake, SWITCHBOARD_REDIS_URL=tls_redis_server.url(ca=other.ca)),
            )
        log = str(refused.value)
        assert "cannot use SWITCHBOARD_REDIS_URL" in log
        assert "TLS certificate was not accepted" in log
        assert "ssl_ca_certs=" in log
    finally:
        fake.stop()


def test_no_client_certificate_for_a_redis_that_requires_one_stops_the_start(
    tmp_path: Path, tls_redis_server: RedisServer
) -> None:
    """A Redis with tls-auth-clients yes and a URL without ssl_certfile=: a configuration
    error, the service exits at start naming the parameters (before: alive, not ready
    forever, 'Redis does not answer')."""
    fake = FakeOpenAI().start()
    settings = env(fake, SWITCHBOARD_REDIS_URL=tls_redis_server.url(client_cert=False))
    try:
        try:
            # /healthz: a service that started (alive, not ready) is returned at once.
            started = start_service(
                tmp_path / "node", E2E_ROUTES, env=settings, wait_for="/healthz"
            )
        except RuntimeError as refused:
            log = str(refused)
        else:
            stop_service(started)
            pytest.fail(f"the service started without its client certificate:\n{started.logs()}")
        assert "exited" in log
        assert "cannot use SWITCHBOARD_REDIS_URL" in log
        assert "Redis requires a client certificate" in log
        assert "ssl_certfile=" in log and "ssl_keyfile=" in log
    finally:
        fake.stop()
