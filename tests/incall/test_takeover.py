"""Replicas sharing live calls, in one process: two in-call managers on one in-process
registry hub (as two replicas on one Redis), one real local sideband server, one call log
(as with PostgreSQL). Heartbeats are driven by hand (`keeper.beat()`), leases run out by
moving the hub's clock, and a replica "dies" by leaving its calls without a word."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from app.incall.control import AnyReplicaControl
from app.incall.keeper import LiveCallKeeper
from app.incall.session import InCallManager
from app.openai.sideband import WebSocketConnector
from app.ops.metrics import Metrics
from app.rules.ruleset import CallFeatures, Destination, MaxDuration
from app.state.livecalls import MemoryHub, MemoryLiveCalls, RedisLiveCalls
from app.state.redis import connect
from tests.e2e.fake_realtime import FakeRealtime
from tests.incall.test_session import (
    API_KEY,
    SALES,
    FakeController,
    RecordingCallLog,
    eventually,
    metric,
    of_type,
)
from tests.redis_server import RedisServer, free_port
from tests.support import new_id

pytestmark = pytest.mark.anyio

LEASE = 10.0
FEATURES = CallFeatures(
    greeting=True,
    transfers={"sales": Destination(SALES)},
    transfer_message="Putting you through.",
    max_duration=MaxDuration(60.0, warning_before=10.0, warning="Ten seconds left."),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Replica:
    name: str
    registry: MemoryLiveCalls
    manager: InCallManager
    keeper: LiveCallKeeper
    control: AnyReplicaControl
    metrics: Metrics


@dataclass
class Cluster:
    fake: FakeRealtime
    controller: FakeController
    log: RecordingCallLog
    hub: MemoryHub
    clock: list[float]

    def replica(self, name: str, *, wall_clock: Callable[[], float] = time.time) -> Replica:
        registry = MemoryLiveCalls(name, lease_seconds=LEASE, hub=self.hub)
        metrics = Metrics()
        manager = InCallManager(
            connector=WebSocketConnector(self.fake.base_url, API_KEY),
            controller=self.controller,
            call_log=self.log,
            metrics=metrics,
            connect_delays=(0.01, 0.02),
            registry=registry,
            wall_clock=wall_clock,
        )
        keeper = LiveCallKeeper(
            registry, manager, metrics, heartbeat_seconds=1.0, lease_seconds=LEASE
        )
        return Replica(
            name, registry, manager, keeper, AnyReplicaControl(manager, registry), metrics
        )

    def expire_leases(self) -> None:
        self.clock[0] += LEASE + 1

    def ops(self, call_id: str, operation: str) -> list[object]:
        return [arg for op, arg in self.controller.for_call(call_id) if op == operation]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    clock = [0.0]
    async with FakeRealtime(api_key=API_KEY) as fake:
        yield Cluster(
            fake, FakeController(fake), RecordingCallLog(), MemoryHub(lambda: clock[0]), clock
        )
    assert fake.errors == []


async def start_call(cluster: Cluster, owner: Replica, features: CallFeatures = FEATURES) -> str:
    call_id = new_id()
    cluster.fake.call(call_id, [])
    assert owner.manager.start(call_id, features)
    await eventually(lambda: "greeting" in cluster.log.kinds(call_id), "the greeting")
    found = await eventually(lambda: cluster.hub.entries.get(call_id), "the registration")
    assert found.owner == owner.name
    return call_id


async def die(replica: Replica) -> None:
    """The replica stops without a word: no release, no hangup, no end recorded."""
    for call_id in replica.manager.held():
        replica.manager.lose(call_id)


async def test_a_dead_owners_call_is_taken_over_and_ends_at_its_deadline(cluster: Cluster) -> None:
    a = cluster.replica("a")
    # b sees the wall clock 58 s later: 2 s of the call's 60 s are left (time to join).
    b = cluster.replica("b", wall_clock=lambda: time.time() + 58)
    call_id = await start_call(cluster, a)
    await die(a)
    await b.keeper.beat()
    assert call_id not in b.manager, "the lease has not run out yet"
    cluster.expire_leases()
    await b.keeper.beat()
    assert call_id in b.manager
    assert cluster.hub.entries[call_id].owner == "b"

    await eventually(lambda: len(cluster.fake.sidebands(call_id)) == 2, "b to join")
    # It ends at the original deadline (within the eventually's bound, not 60 s later).
    await eventually(lambda: cluster.log.ended_with(call_id), "the call to end", within=10)
    assert cluster.log[call_id].endings == ["max_duration"]
    assert cluster.ops(call_id, "hangup") == [None]
    first, second = cluster.fake.sidebands(call_id)
    # The second replica joined the same call: no second greeting, no warning (too late).
    assert of_type(first.events, "response.create") == [{"type": "response.create", "response": {}}]
    assert of_type(second.events, "response.create") == []
    assert cluster.log.data(call_id, "resumed") == [{"replica": "b", "from": "a"}]
    assert cluster.log[call_id].statuses == ["active"]
    assert metric(b.metrics, "switchboard_live_calls_total", event="taken_over") == 1
    await eventually(lambda: call_id not in cluster.hub.entries, "the call to be released")
    await a.manager.shutdown()
    await b.manager.shutdown()


async def test_a_call_past_its_deadline_is_hung_up_at_once(cluster: Cluster) -> None:
    a = cluster.replica("a")
    b = cluster.replica("b", wall_clock=lambda: time.time() + 3600)
    call_id = await start_call(cluster, a)
    await die(a)
    cluster.expire_leases()
    await b.keeper.beat()
    await eventually(lambda: cluster.log.ended_with(call_id), "the call to end")
    assert cluster.log[call_id].endings == ["max_duration"]
    await b.manager.shutdown()


async def test_a_call_that_ended_meanwhile_is_closed(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    call_id = await start_call(cluster, a)
    await die(a)
    cluster.fake.end(call_id)  # the caller hung up while no replica held the call
    cluster.expire_leases()
    await b.keeper.beat()
    await eventually(lambda: cluster.log.ended_with(call_id), "the call to end")
    assert cluster.log[call_id].endings == ["caller_gone"]
    assert cluster.ops(call_id, "hangup") == []
    assert call_id not in cluster.hub.entries
    await b.manager.shutdown()


async def test_an_owner_whose_lease_ran_out_leaves_the_call_to_the_new_one(
    cluster: Cluster,
) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    call_id = await start_call(cluster, a)
    cluster.expire_leases()  # a froze for longer than its lease
    await b.keeper.beat()
    await eventually(lambda: len(cluster.fake.sidebands(call_id)) == 2, "b to join")
    await a.keeper.beat()  # a wakes up: its renewal says the call is b's now
    assert call_id not in a.manager.held()
    await eventually(lambda: call_id not in a.manager, "a to leave the call")
    assert metric(a.metrics, "switchboard_live_calls_total", event="lost") == 1
    assert cluster.log[call_id].endings == []
    await eventually(lambda: not cluster.fake.sidebands(call_id)[0].open, "a's sideband to close")
    cluster.fake.end(call_id)
    await eventually(lambda: cluster.log.ended_with(call_id), "the call to end")
    assert cluster.log[call_id].endings == ["ended"]
    await a.manager.shutdown()
    await b.manager.shutdown()


async def test_a_replica_shutting_down_hands_its_calls_over_at_once(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    call_id = await start_call(cluster, a)
    await a.manager.shutdown()
    assert metric(a.metrics, "switchboard_live_calls_total", event="handed_over") == 1
    await b.keeper.beat()  # no lease to wait for
    assert call_id in b.manager
    await eventually(lambda: len(cluster.log[call_id].statuses) == 2, "the status")
    assert cluster.log[call_id].statuses == ["answered", "active"]
    await eventually(lambda: len(cluster.fake.sidebands(call_id)) == 2, "b to join")
    assert cluster.log[call_id].endings == []
    await b.manager.shutdown()


async def test_operator_requests_reach_the_owner_from_any_replica(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    serving = asyncio.create_task(a.registry.serve(a.keeper.answer))
    try:
        call_id = await start_call(cluster, a)
        # The allowlist holds on b too: nothing is relayed or sent.
        with pytest.raises(ValueError, match="'nowhere' is not a destination of this call"):
            await b.control.transfer(call_id, "nowhere")
        with pytest.raises(LookupError):
            await b.control.transfer("rtc_unknown", "sales")
        assert await b.control.hangup("rtc_unknown") is None
        # The owner transfers, saying its line first, as for a request made to it.
        assert await b.control.transfer(call_id, "sales") == "referred"
        assert cluster.ops(call_id, "refer") == [SALES]
        said = [
            e["response"].get("instructions")
            for e in of_type(cluster.fake.events(call_id), "response.create")
        ]
        assert "Putting you through." in said
        transfer = cluster.log.data(call_id, "transfer")
        assert transfer == [
            {"destination": "sales", "outcome": "referred", "by": "operator", "uri": SALES}
        ]
        await eventually(lambda: cluster.log.ended_with(call_id), "the call to end")
        assert cluster.log[call_id].endings == ["transferred"]
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    await a.manager.shutdown()
    await b.manager.shutdown()


async def test_a_dead_owners_call_is_controlled_through_the_api(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    hung, moved = await start_call(cluster, a), await start_call(cluster, a)
    await die(a)  # its lease has not run out: nobody holds the calls
    assert await b.control.hangup(hung) == "hung_up"
    assert cluster.ops(hung, "hangup") == [None]
    assert cluster.log.data(hung, "hangup") == [
        {"reason": "operator", "outcome": "hung_up", "replica": "b"}
    ]
    assert cluster.log[hung].endings == ["operator"]
    assert await b.control.transfer(moved, "sales") == "referred"
    assert cluster.ops(moved, "refer") == [SALES]
    assert cluster.log.data(moved, "transfer") == [
        {
            "destination": "sales",
            "outcome": "referred",
            "by": "operator",
            "uri": SALES,
            "replica": "b",
        }
    ]
    assert cluster.log[moved].endings == ["transferred"]
    # Both calls are over: once a's lease runs out, no replica takes them over (it would
    # join a call that has ended and record it again: "resumed", "active", a second end).
    cluster.expire_leases()
    await b.keeper.beat()
    for call_id in (hung, moved):
        assert call_id not in cluster.hub.entries
        assert call_id not in b.manager
        assert "resumed" not in cluster.log.kinds(call_id)
    assert metric(b.metrics, "switchboard_live_calls_total", event="taken_over") == 0
    await b.manager.shutdown()


async def test_a_registry_that_fails_costs_the_call_nothing(cluster: Cluster) -> None:
    # Redis nowhere to be found: the call goes on, only its takeover is lost.
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    metrics = Metrics()
    manager = InCallManager(
        connector=WebSocketConnector(cluster.fake.base_url, API_KEY),
        controller=cluster.controller,
        call_log=cluster.log,
        metrics=metrics,
        registry=RedisLiveCalls(client, "a", lease_seconds=LEASE),
    )
    call_id = new_id()
    cluster.fake.call(call_id, [])
    assert manager.start(call_id, FEATURES)
    await eventually(lambda: "greeting" in cluster.log.kinds(call_id), "the greeting")
    assert metric(metrics, "switchboard_live_calls_total", event="registry_error") == 1
    cluster.fake.end(call_id)
    await eventually(lambda: cluster.log.ended_with(call_id), "the call to end")
    assert cluster.log[call_id].endings == ["ended"]
    await manager.shutdown()
    await client.aclose()


async def test_calls_the_registry_forgot_are_registered_again(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")
    call_id = await start_call(cluster, a)
    cluster.hub.entries.clear()  # Redis restarted without its data
    await a.keeper.beat()
    assert call_id in a.manager, "still a's call: not left"
    assert cluster.hub.entries[call_id].owner == "a"
    await b.keeper.beat()
    assert call_id not in b.manager
    await a.manager.shutdown()


async def test_a_replica_cut_off_from_redis_for_a_lease_leaves_its_calls(
    cluster: Cluster, own_redis_server: RedisServer
) -> None:
    """Its leases have run out: another replica may hold the calls now. Better no replica
    on a call for a while than two acting on it."""
    client = connect(own_redis_server.url())
    registry = RedisLiveCalls(client, "a", lease_seconds=LEASE)
    metrics = Metrics()
    manager = InCallManager(
        connector=WebSocketConnector(cluster.fake.base_url, API_KEY),
        controller=cluster.controller,
        call_log=cluster.log,
        metrics=metrics,
        registry=registry,
    )
    now = [0.0]
    keeper = LiveCallKeeper(
        registry, manager, metrics, heartbeat_seconds=1.0, lease_seconds=LEASE, clock=lambda: now[0]
    )
    call_id = new_id()
    cluster.fake.call(call_id, [])
    assert manager.start(call_id, FEATURES)
    await eventually(lambda: "greeting" in cluster.log.kinds(call_id), "the greeting")
    await keeper.beat()  # renewed at 0
    own_redis_server.stop()
    now[0] = LEASE - 1
    await keeper.beat()  # failed, but the lease still runs
    assert call_id in manager
    now[0] = LEASE + 1
    await keeper.beat()
    assert call_id not in manager.held()
    assert metric(metrics, "switchboard_live_calls_total", event="fenced") == 1
    await eventually(lambda: not cluster.fake.sidebands(call_id)[0].open, "the sideband to close")
    await eventually(lambda: call_id not in manager, "the session to finish")
    assert cluster.log[call_id].endings == [], "left, not ended: the call goes on"
    assert cluster.ops(call_id, "hangup") == []
    await manager.shutdown()
    await client.aclose()


async def test_a_replica_shutting_down_takes_nothing_over(cluster: Cluster) -> None:
    a, b, c = cluster.replica("a"), cluster.replica("b"), cluster.replica("c")
    call_id = await start_call(cluster, a)
    await die(a)
    cluster.expire_leases()
    await b.manager.shutdown()
    await b.keeper.beat()  # claims it, cannot start it: hands it on at once
    assert call_id not in b.manager
    await c.keeper.beat()
    assert call_id in c.manager
    await c.manager.shutdown()
