"""Crashes and second processes never answer a call twice (issue 12).

Real `switchboard serve` processes, the local API stand-in holding its replies so that calls
are in flight, `kill -9`, a restart on the same data directory (or the same Redis), and every
webhook delivered again: the stand-in sees exactly one accept per call.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import E2E_ROUTES, Service, start_service, stop_service
from tests.e2e.fake_openai import FakeOpenAI, Reply
from tests.redis_server import RedisServer
from tests.support import HTTP, SECRET, incoming_event, new_id, signed

pytestmark = pytest.mark.e2e

LEASE = "0.5"
IN_FLIGHT = 8
FINISHED = 4


def env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-e2e",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_WEBHOOK_SECRET": SECRET,
        "SWITCHBOARD_UPSTREAM_TIMEOUT_SECONDS": "20",
        "SWITCHBOARD_CALL_DEADLINE_SECONDS": "3",
        "SWITCHBOARD_CLAIM_LEASE_SECONDS": LEASE,
        "SWITCHBOARD_WATCH_RULES": "false",
        **extra,
    }


class Delivery:
    """One webhook, signed once: every redelivery sends the same bytes and webhook-id."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.body, self.headers = signed(incoming_event(call_id), webhook_id=new_id("wh"))

    def send(self, service: Service, timeout: float = 10) -> httpx.Response:
        return HTTP.post(
            service.webhook_url, content=self.body, headers=self.headers, timeout=timeout
        )

    def send_until_final(self, service: Service) -> httpx.Response:
        """OpenAI redelivers after a 503: so do we, a few times."""
        for _ in range(10):
            response = self.send(service)
            if response.status_code != 503:
                return response
            time.sleep(0.2)
        return response


def accepts(fake: FakeOpenAI, calls: list[Delivery]) -> Counter[str]:
    ids = {d.call_id for d in calls}
    return Counter(r.call_id for r in fake.requests if r.operation == "accept" and r.call_id in ids)


def wait_for(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def kill_9(service: Service) -> None:
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait(10)


def crash_and_redeliver(workdir: Path, fake: FakeOpenAI, extra: dict[str, str]) -> None:
    finished = [Delivery(new_id()) for _ in range(FINISHED)]
    in_flight = [Delivery(new_id()) for _ in range(IN_FLIGHT)]
    for delivery in in_flight:
        # The stand-in holds these accepts past the crash: sent, never answered.
        fake.script(delivery.call_id, "accept", Reply(delay=30))
    service = start_service(workdir, E2E_ROUTES, env=env(fake, **extra))
    pool = ThreadPoolExecutor(IN_FLIGHT)
    try:
        for delivery in finished:
            assert delivery.send(service).json()["outcome"] == "accepted"
        for delivery in in_flight:
            pool.submit(delivery.send, service, 30)
        wait_for(
            lambda: sum(accepts(fake, in_flight).values()) == IN_FLIGHT,
            "every in-flight accept reached the stand-in",
        )
        kill_9(service)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_service(service)

    restarted = start_service(workdir, E2E_ROUTES, env=env(fake, **extra))
    try:
        with ThreadPoolExecutor(8) as redeliver:
            answers = list(
                redeliver.map(lambda d: d.send_until_final(restarted), finished + in_flight)
            )
        for response in answers[:FINISHED]:
            assert response.status_code == 200, response.text
            assert response.json()["outcome"] == "accepted"
            assert response.json()["duplicate"] is True
        for response in answers[FINISHED:]:
            assert response.status_code == 200, response.text
            body = response.json()
            # The accept may have taken effect: not sent again, reported as uncertain.
            assert (body["outcome"], body["route"], body["action"]) == (
                "uncertain",
                "support",
                "accept",
            ), body
        # And again, later: the uncertain answer is kept like any other.
        again = in_flight[0].send(restarted).json()
        assert (again["outcome"], again["duplicate"]) == ("uncertain", True)
        assert accepts(fake, finished + in_flight) == Counter(
            {d.call_id: 1 for d in finished + in_flight}
        )
    finally:
        stop_service(restarted)


def test_kill_9_and_restart_on_the_sqlite_default(tmp_path: Path) -> None:
    fake = FakeOpenAI().start()
    try:
        crash_and_redeliver(tmp_path / "node", fake, {})
        assert (tmp_path / "node" / "state.db").is_file()  # beside calls.db, by default
    finally:
        fake.stop()


def test_kill_9_and_restart_on_redis(tmp_path: Path, redis_url: str) -> None:
    fake = FakeOpenAI().start()
    try:
        crash_and_redeliver(tmp_path / "node", fake, {"SWITCHBOARD_REDIS_URL": redis_url})
        assert not (tmp_path / "node" / "state.db").exists()
    finally:
        fake.stop()


def test_two_processes_on_one_data_directory_act_once(tmp_path: Path) -> None:
    """A deploy's old and new container on one volume (or several workers): concurrent
    duplicates spread over both processes, one accept per call."""
    fake = FakeOpenAI().start()
    calls = [Delivery(new_id()) for _ in range(12)]
    for delivery in calls:
        fake.script(delivery.call_id, "accept", Reply(delay=0.2))
    # A lease long enough for a loaded test machine: no process here dies.
    live = env(fake, SWITCHBOARD_CLAIM_LEASE_SECONDS="5")
    first = start_service(tmp_path / "data", E2E_ROUTES, env=live)
    second = start_service(tmp_path / "data", E2E_ROUTES, env=live)
    try:
        jobs = [(d, s) for d in calls for s in (first, second, first, second)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda job: job[0].send_until_final(job[1]), jobs))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert {a.json()["outcome"] for a in answers} == {"accepted"}
        assert accepts(fake, calls) == Counter({d.call_id: 1 for d in calls})
    finally:
        stop_service(first)
        stop_service(second)
        fake.stop()


def test_redis_lost_while_serving(tmp_path: Path, own_redis_server: RedisServer) -> None:
    """Redis stops: not ready, and webhooks 503 without acting; back: ready, acting."""
    fake = FakeOpenAI().start()
    service = start_service(
        tmp_path / "node",
        E2E_ROUTES,
        env=env(
            fake,
            SWITCHBOARD_REDIS_URL=own_redis_server.url(),
            SWITCHBOARD_STATE_TIMEOUT_SECONDS="0.2",
        ),
    )
    try:
        own_redis_server.stop()
        assert HTTP.get(f"{service.url}/readyz").status_code == 503
        delivery = Delivery(new_id())
        response = delivery.send(service)
        assert response.status_code == 503, response.text
        assert "state store unavailable" in response.json()["error"]
        assert fake.for_call(delivery.call_id) == []  # never acted without the claim
        own_redis_server.start()
        wait_for(lambda: HTTP.get(f"{service.url}/readyz").status_code == 200, "ready again", 10)
        assert delivery.send_until_final(service).json()["outcome"] == "accepted"
        assert accepts(fake, [delivery]) == Counter({delivery.call_id: 1})
    finally:
        stop_service(service)
        fake.stop()


def test_redis_unreachable_at_start_is_alive_not_ready_and_recovers(tmp_path: Path) -> None:
    """The start-up degraded mode (docs/operations.md, "Redis, degraded"): with nothing
    listening at SWITCHBOARD_REDIS_URL the service starts and stays alive (/healthz 200),
    not ready (/readyz 503), and answers signed webhooks 503 without acting on them; once
    a redis-server listens there, it becomes ready without a restart and a redelivered
    webhook is acted on exactly once."""
    fake = FakeOpenAI().start()
    redis = RedisServer(tmp_path / "redis")  # its port, nobody listening yet
    service = start_service(
        tmp_path / "node",
        E2E_ROUTES,
        env=env(
            fake,
            SWITCHBOARD_REDIS_URL=redis.url(),
            SWITCHBOARD_STATE_TIMEOUT_SECONDS="0.2",
            SWITCHBOARD_CLAIM_LEASE_SECONDS="5",
        ),
        wait_for="/healthz",
    )
    try:
        assert "Redis is unreachable" in service.logs()
        ready = HTTP.get(f"{service.url}/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready", "detail": "state store unavailable"}
        delivery = Delivery(new_id())
        for _ in range(3):  # OpenAI's redeliveries meanwhile: each one 503, none acted on
            response = delivery.send(service)
            assert response.status_code == 503, response.text
            assert "state store unavailable" in response.json()["error"]
        assert fake.for_call(delivery.call_id) == []
        assert service.process.poll() is None
        assert HTTP.get(f"{service.url}/healthz").status_code == 200
        assert HTTP.get(f"{service.url}/readyz").status_code == 503

        redis.start()  # the same port: no restart of the service, no new setting
        wait_for(lambda: HTTP.get(f"{service.url}/readyz").status_code == 200, "ready", 20)
        # Redeliveries, some concurrent: the call is acted on once, the others replay it.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: delivery.send_until_final(service), range(4)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert {a.json()["outcome"] for a in answers} == {"accepted"}
        assert sorted(bool(a.json().get("duplicate")) for a in answers) == [
            False,
            True,
            True,
            True,
        ]
        assert accepts(fake, [delivery]) == Counter({delivery.call_id: 1})
        assert service.process.poll() is None
        assert "Traceback" not in service.logs()  # degraded is a mode, not a crash
    finally:
        stop_service(service)
        redis.stop()
        fake.stop()


def test_redis_refusing_the_password_stops_the_start(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="right-password").start()
    fake = FakeOpenAI().start()
    try:
        wrong = server.url().replace("right-password", "wrong-password")
        with pytest.raises(RuntimeError, match="exited") as refused:
            start_service(tmp_path / "node", E2E_ROUTES, env=env(fake, SWITCHBOARD_REDIS_URL=wrong))
        assert "Redis refused" in str(refused.value)
        assert "wrong-password" not in str(refused.value)
    finally:
        server.stop()
        fake.stop()
