"""Three replicas on one Redis and one PostgreSQL (issue 12): webhooks spread over them,
duplicates delivered concurrently to different replicas, one replica killed (SIGKILL) with
calls in flight and a live call of its own.

Real `switchboard serve` processes, a throwaway redis-server and a throwaway PostgreSQL
cluster, and the local stand-ins for OpenAI (call control, and the sideband through the
same base URL). Checked: every call acted on exactly once at the stand-in, none lost, the
records complete and the same from every replica's admin API, and the dead replica's live
call taken over by another replica, which hangs it up at its max duration (the original
deadline, not a new one); an operator's transfer through a replica that does not hold the
call; and HAProxy on the shipped deploy/haproxy/haproxy.cfg (where haproxy is installed)
getting every webhook through while a replica dies behind it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    REPO,
    Service,
    free_port,
    start_service,
    stop_service,
    wait_until,
)
from tests.e2e.fake_openai import FakeOpenAI, Reply
from tests.e2e.fake_realtime import FakeRealtime
from tests.pgserver import create_database, throwaway_server
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.support import HTTP, SECRET, incoming_event, new_id, signed

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-replicas"
TOKEN = "e2e-replicas-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUPPORT = "+18005550100"
LIMITED = "+18005550102"
SALES = "sip:sales@pbx.example.com"
MAX_DURATION = 6.0
LEASE = 2.0
HEARTBEAT = 0.5
STARTUP = 90.0
"""Three processes importing at once on two busy cores: give them time."""

ROUTES = f"""
sessions:
  support:
    model: gpt-realtime
    instructions: You are the support line.
  limited:
    model: gpt-realtime
    instructions: Be quick.
    call:
      greeting: Welcome the caller.
      transfers:
        sales: "{SALES}"
      max_duration: {{seconds: {MAX_DURATION}}}
routes:
  - name: limited
    match: {{called: "{LIMITED}"}}
    accept: limited
  - name: support
    match: {{called: "{SUPPORT}"}}
    accept: support
"""


class Delivery:
    """One webhook, signed once: every redelivery sends the same bytes and webhook-id."""

    def __init__(self, call_id: str, called: str = SUPPORT) -> None:
        self.call_id = call_id
        event = incoming_event(call_id, called=called)
        self.body, self.headers = signed(event, webhook_id=new_id("wh"))

    def send(self, service: Service, timeout: float = 10) -> httpx.Response | None:
        """The answer, or None when the replica is unreachable (dead)."""
        try:
            return HTTP.post(
                service.webhook_url, content=self.body, headers=self.headers, timeout=timeout
            )
        except httpx.TransportError:
            return None

    def until_final(self, services: list[Service]) -> httpx.Response:
        """As OpenAI does: after a 503 or no answer, deliver again (here: to the next one)."""
        for attempt in range(20):
            response = self.send(services[attempt % len(services)])
            if response is not None and response.status_code != 503:
                return response
            time.sleep(0.1)
        pytest.fail(f"{self.call_id}: no final answer")


@dataclass
class Cluster:
    api: FakeOpenAI
    realtime: FakeRealtime
    replicas: list[Service]
    env: dict[str, str]

    def accepts(self, deliveries: list[Delivery]) -> Counter[str]:
        ids = {d.call_id for d in deliveries}
        return Counter(
            r.call_id for r in self.api.requests if r.operation == "accept" and r.call_id in ids
        )

    def ops(self, call_id: str, operation: str) -> list[Any]:
        return [r.body for r in self.api.for_call(call_id) if r.operation == operation]


def admin(service: Service, path: str) -> Any:
    response = HTTP.get(f"{service.url}/admin{path}", headers=AUTH, timeout=10)
    assert response.status_code in (200, 404), response.text
    return response.json() if response.status_code == 200 else None


def kill_9(service: Service) -> None:
    os.kill(service.process.pid, signal.SIGKILL)
    service.process.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    api = FakeOpenAI().start()
    realtime = FakeRealtime(api_key=API_KEY).start_in_thread()
    api.websocket_backend = ("127.0.0.1", realtime.port)
    realtime.link(api)
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    replicas: list[Service] = []
    try:
        with throwaway_server() as postgres:
            env = {
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_BASE_URL": api.base_url,
                "OPENAI_WEBHOOK_SECRET": SECRET,
                "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
                "SWITCHBOARD_REDIS_URL": redis.url(),
                "SWITCHBOARD_DATABASE_URL": create_database(postgres.url()),
                "SWITCHBOARD_UPSTREAM_TIMEOUT_SECONDS": "20",
                # Long: the accepts held by the stand-in are still in flight at the kill
                # (one that timed out first is answered 503 and sent again, by design).
                "SWITCHBOARD_CALL_DEADLINE_SECONDS": "20",
                # Leases renewed every third: short enough for a quick takeover, long
                # enough for two busy cores (a lease run out means "uncertain").
                "SWITCHBOARD_CLAIM_LEASE_SECONDS": "2",
                "SWITCHBOARD_LIVE_LEASE_SECONDS": str(LEASE),
                "SWITCHBOARD_LIVE_HEARTBEAT_SECONDS": str(HEARTBEAT),
                "SWITCHBOARD_WATCH_RULES": "false",
            }
            names = ("r1", "r2", "r3")
            workdirs = [tmp_path_factory.mktemp(name) for name in names]
            with ThreadPoolExecutor(len(names)) as starting:  # they start side by side
                replicas += starting.map(
                    lambda job: start_service(
                        job[0],
                        ROUTES,
                        env={**env, "SWITCHBOARD_REPLICA_ID": job[1]},
                        timeout=STARTUP,
                    ),
                    zip(workdirs, names, strict=True),
                )
            yield Cluster(api, realtime, replicas, env)
            for service in replicas:
                stop_service(service)
    finally:
        for service in replicas:
            stop_service(service)
        redis.stop()
        realtime.stop_thread()
        api.stop()
    assert realtime.errors == []


def test_three_replicas_one_killed(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    r1, r2, r3 = cluster.replicas
    api, realtime = cluster.api, cluster.realtime

    # Calls in flight at r3: their accepts reach the stand-in, which holds the answers.
    in_flight = [Delivery(new_id()) for _ in range(6)]
    for delivery in in_flight:
        api.script(delivery.call_id, "accept", Reply(delay=30))
    pool = ThreadPoolExecutor(32)
    for delivery in in_flight:
        pool.submit(delivery.send, r3, 30)
    wait_until(
        lambda: sum(cluster.accepts(in_flight).values()) == len(in_flight),
        "the in-flight accepts at the stand-in",
    )

    # Before the kill: each webhook delivered at the same time to two different replicas.
    before = [Delivery(new_id()) for _ in range(12)]
    pairs = [(r1, r2), (r2, r3), (r1, r3)]
    first = [(d, s) for i, d in enumerate(before) for s in pairs[i % 3]]
    list(pool.map(lambda job: job[0].send(job[1]), first))

    # A live call held by r3 (started last: killed soon after): greeted over its sideband,
    # limited to MAX_DURATION seconds.
    live = Delivery(new_id(), called=LIMITED)
    realtime.call(live.call_id, [])
    answer = live.send(r3)
    assert answer is not None and answer.json()["outcome"] == "accepted", answer
    wait_until(
        lambda: any(e["type"] == "response.create" for e in realtime.events(live.call_id)),
        "the greeting",
    )

    kill_9(r3)
    killed_at = time.time()

    # After: every webhook delivered again until answered (OpenAI's retries), and new calls
    # with concurrent duplicates on the surviving replicas.
    after = [Delivery(new_id()) for _ in range(12)]
    jobs = [(d, [r1, r2]) for d in in_flight + before] + [
        (d, order) for d in after for order in ([r1, r2], [r2, r1], [r1, r2])
    ]
    answers = list(pool.map(lambda job: job[0].until_final(job[1]), jobs))
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    outcomes: dict[str, set[str]] = {}
    for a in answers:
        outcomes.setdefault(a.json()["call_id"], set()).add(a.json()["outcome"])
    for delivery in in_flight:
        # Sent by r3 before it died: maybe in effect, never sent again.
        assert outcomes[delivery.call_id] == {"uncertain"}
    for delivery in before + after:
        assert outcomes[delivery.call_id] == {"accepted"}, [
            a.json() for a in answers if a.json()["call_id"] == delivery.call_id
        ]

    # Zero calls acted on twice, zero lost: exactly one accept each at the stand-in.
    everything = [live, *in_flight, *before, *after]
    assert cluster.accepts(everything) == Counter({d.call_id: 1 for d in everything})

    # The live call: taken over by a surviving replica, hung up once, at its deadline.
    def ended_live() -> dict[str, Any] | None:
        found = admin(r1, f"/calls/{live.call_id}")
        return found if found is not None and found["status"] == "ended" else None

    record = wait_until(ended_live, "the live call to end", within=MAX_DURATION + 15)
    assert record["end_reason"] == "max_duration", record
    assert cluster.ops(live.call_id, "hangup") == [None]
    events = {e["kind"]: e for e in record["events"]}
    resumed = events["resumed"]
    assert resumed["data"]["from"] == "r3" and resumed["data"]["replica"] in ("r1", "r2")
    assert resumed["at"] >= killed_at
    hangup = events["hangup"]
    assert hangup["data"] == {"reason": "max_duration", "outcome": "hung_up"}
    # Not before the limit, and on the original deadline: a timer started again at the
    # takeover would end the call MAX_DURATION after it. (The takeover comes a lease at
    # least after the call started, so on time means at least LEASE before that.)
    assert hangup["at"] >= record["started_at"] + MAX_DURATION - 0.05
    assert hangup["at"] < resumed["at"] + MAX_DURATION - LEASE / 4
    sidebands = realtime.sidebands(live.call_id)
    assert len(sidebands) == 2, "joined again by call id"
    creates = [e for e in realtime.events(live.call_id) if e["type"] == "response.create"]
    assert len(creates) == 1, "greeted once, by the first replica only"

    # A replica comes back (same id, as a restarted container): three replicas again.
    back = start_service(
        tmp_path_factory.mktemp("r3-again"),
        ROUTES,
        env={**cluster.env, "SWITCHBOARD_REPLICA_ID": "r3"},
        timeout=STARTUP,
    )
    cluster.replicas[2] = back
    every = [r1, r2, back]

    # The records: complete, and the same from every replica's admin API.
    ids = {d.call_id for d in everything}

    def same_everywhere() -> list[dict[str, Any]] | None:
        lists = [admin(s, "/calls?limit=1000") for s in every]
        mine = [[c for c in found if c["call_id"] in ids] for found in lists]
        if {c["call_id"] for c in mine[0]} != ids:
            return None
        return mine[0] if all(m == mine[0] for m in mine) else None

    try:
        listed = wait_until(same_everywhere, "the same complete records from every replica")
    finally:
        for service in every:  # what differed, when it did
            seen = {c["call_id"]: c for c in admin(service, "/calls?limit=1000")}
            print(service.url, "missing:", sorted(ids - set(seen)))
    assert all(c["route"] in ("support", "limited") for c in listed)
    for call_id in ids:
        details = [admin(s, f"/calls/{call_id}") for s in every]
        assert details[0] is not None and all(d == details[0] for d in details), call_id
        kinds = [e["kind"] for e in details[0]["events"]]
        assert kinds[0] == "decision", (call_id, kinds)


def live_call(cluster: Cluster, owner: Service) -> Delivery:
    call = Delivery(new_id(), called=LIMITED)
    cluster.realtime.call(call.call_id, [])
    answer = call.send(owner)
    assert answer is not None and answer.json()["outcome"] == "accepted"
    wait_until(
        lambda: any(e["type"] == "response.create" for e in cluster.realtime.events(call.call_id)),
        "the greeting",
    )
    return call


def test_operator_requests_work_from_any_replica(cluster: Cluster) -> None:
    """Live calls held by one replica, hung up and transferred through another's admin
    API: the allowlist checked there, the hang-up and the transfer done by the owner."""
    owner, other = cluster.replicas[0], cluster.replicas[1]
    hung = live_call(cluster, owner)
    done = HTTP.post(f"{other.url}/admin/calls/{hung.call_id}/hangup", headers=AUTH, timeout=30)
    assert done.status_code == 200, done.text
    assert done.json() == {"call_id": hung.call_id, "outcome": "hung_up"}
    assert cluster.ops(hung.call_id, "hangup") == [None]

    def hung_up() -> dict[str, Any] | None:
        found = admin(other, f"/calls/{hung.call_id}")
        return found if found is not None and found["status"] == "ended" else None

    record = wait_until(hung_up, "the call to end")
    assert record["end_reason"] == "operator"
    (hangup,) = [e for e in record["events"] if e["kind"] == "hangup"]
    assert hangup["data"] == {"reason": "operator", "outcome": "hung_up"}  # by the owner

    call = live_call(cluster, owner)
    url = f"{other.url}/admin/calls/{call.call_id}/transfer"
    refused = HTTP.post(url, json={"destination": "nowhere"}, headers=AUTH, timeout=30)
    assert refused.status_code == 422, refused.text
    assert "not a destination of this call" in refused.json()["error"]
    assert cluster.ops(call.call_id, "refer") == []
    moved = HTTP.post(url, json={"destination": "sales"}, headers=AUTH, timeout=30)
    assert moved.status_code == 200, moved.text
    assert moved.json()["outcome"] == "referred"
    assert cluster.ops(call.call_id, "refer") == [{"target_uri": SALES}]

    def transferred() -> dict[str, Any] | None:
        found = admin(other, f"/calls/{call.call_id}")
        return found if found is not None and found["status"] == "ended" else None

    record = wait_until(transferred, "the call to end")
    assert record["end_reason"] == "transferred"
    (transfer,) = [e for e in record["events"] if e["kind"] == "transfer"]
    assert transfer["data"] == {
        "destination": "sales",
        "outcome": "referred",
        "by": "operator",
        "uri": SALES,
    }


def proxy_config(ports: list[int], listen: int) -> str:
    """deploy/haproxy/haproxy.cfg as shipped, but on loopback: the replicas' addresses
    instead of Docker's DNS names (and no Docker resolver), listening on a free port."""
    text = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["resolvers"]:
            skipping = True  # the section, up to the next blank line
        if skipping:
            skipping = bool(line.strip())
            continue
        if words[:1] == ["bind"]:
            line = f"    bind 127.0.0.1:{listen}"
        elif words[:1] == ["default-server"]:
            line = " ".join(w for w in words if w not in ("resolvers", "docker", "init-addr"))
            line = "    " + line.replace(" last,libc,none", "")
        elif words[:1] == ["server"]:
            if words[1] == "switchboard-a":
                out += [f"    server r{i} 127.0.0.1:{port}" for i, port in enumerate(ports)]
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_shipped_proxy_config_spreads_and_survives_a_dead_replica(
    cluster: Cluster, tmp_path: Path
) -> None:
    """HAProxy on deploy/haproxy/haproxy.cfg in front of the replicas: a replica killed
    while webhooks flow through the proxy costs no call, and acts on none twice."""
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    replicas = cluster.replicas
    ports = [int(s.url.rsplit(":", 1)[1]) for s in replicas]
    listen = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(proxy_config(ports, listen))
    with (tmp_path / "haproxy.log").open("wb") as log:
        proxy = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    front = Service(proxy, f"http://127.0.0.1:{listen}", tmp_path / "haproxy.log", {})
    try:
        wait_until(lambda: _ready_through(front), "the proxy to reach a ready replica", within=15)
        calls = [Delivery(new_id()) for _ in range(24)]

        def once(delivery: Delivery) -> httpx.Response:
            # One try each: the proxy, not the sender, must get past a dead replica.
            response = delivery.send(front)
            assert response is not None
            return response

        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(once, calls[:12]))
            # Killed between two batches (nothing in flight there), the proxy not told:
            # until its health checks notice, its connections are refused and retried.
            kill_9(replicas[1])
            rest = list(pool.map(once, calls[12:]))
            # And every webhook once more, through the proxy: duplicates, answered as such.
            again = list(pool.map(once, calls))
        answers = first + rest
        assert [a.status_code for a in answers + again] == [200] * 2 * len(calls)
        assert [a.json()["outcome"] for a in answers] == ["accepted"] * len(calls)
        assert all(a.json().get("duplicate") for a in again), [a.json() for a in again]
        assert cluster.accepts(calls) == Counter({d.call_id: 1 for d in calls})
        # Spread: before the kill, more than one replica answered (round robin).
        logs = "\n".join(s.logs() for s in replicas)
        answered = {s.url for s in replicas for d in calls[:12] if d.call_id in s.logs()}
        assert len(answered) >= 2, logs[-2000:]
    finally:
        proxy.terminate()
        proxy.wait(10)


def _ready_through(front: Service) -> bool:
    try:
        return HTTP.get(f"{front.url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
