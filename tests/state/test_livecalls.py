"""The live-call registry: one contract, run on the in-process registry and on a real,
throwaway redis-server. Registries made by one `Replicas` share their state, as replicas
on one Redis do. Lease expiry: the in-process hub's clock is moved on; on Redis (whose
server clock times the leases) the test waits a lease of a fraction of a second."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any, Protocol

import pytest
from redis.asyncio import Redis

from app.rules.ruleset import CallFeatures, Destination, MaxDuration
from app.state.livecalls import (
    NO_ANSWER,
    ControlRequest,
    LiveCall,
    LiveCallError,
    LiveCallRegistry,
    MemoryHub,
    MemoryLiveCalls,
    RedisLiveCalls,
    Renewal,
    features_from_dict,
    features_to_dict,
)
from app.state.redis import connect
from tests.redis_server import RedisServer
from tests.support import new_id

pytestmark = pytest.mark.anyio

LEASE = 30.0
"""A lease that does not run out during a test, however busy the machine."""
SHORT = 0.3
"""A lease a test lets run out (on Redis it waits that long)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


FULL = CallFeatures(
    greeting=True,
    greeting_instructions="Greet them.",
    transfers={
        "sales": Destination("sip:sales@pbx.example.com", "Buying"),
        "x": Destination("tel:+1"),
    },
    transfer_message="Putting you through.",
    end_call=True,
    dtmf={"5": "sales", "0": None},
    max_duration=MaxDuration(60.0, 10.0, "One minute left."),
    announce="Hold on.",
    refer_to="sip:desk@pbx.example.com",
)


def test_read_only_mappings_are_encoded() -> None:
    # Compiled rules hold their maps as read-only proxies (deepcopy cannot copy them).
    features = CallFeatures(
        transfers=MappingProxyType({"sales": Destination("sip:s@x")}),
        dtmf=MappingProxyType({"1": "sales"}),
    )
    call = LiveCall("rtc_1", "realtime", 1.0, features)
    again = LiveCall.decode(call.encode())
    assert dict(again.features.transfers) == {"sales": Destination("sip:s@x")}
    assert dict(again.features.dtmf) == {"1": "sales"}


def test_every_feature_survives_the_round_trip() -> None:
    # Every field set to something other than its default, so that a field added to
    # CallFeatures without serialization support fails here.
    defaults = CallFeatures()
    for f in dataclasses.fields(CallFeatures):
        assert getattr(FULL, f.name) != getattr(defaults, f.name), f.name
    call = LiveCall("rtc_1", "realtime", 1000.5, FULL, deadline=1060.5, owner="a")
    again = LiveCall.decode(call.encode(), owner="a")
    assert again == call
    assert features_from_dict(features_to_dict(FULL)) == FULL
    assert features_from_dict({"greeting": True, "from_the_future": 1}) == CallFeatures(
        greeting=True
    )


@pytest.mark.parametrize("text", ["", "[]", '{"v": 99}', '{"v": 1, "call_id": "x"}', "\xff"])
def test_unreadable_records_are_named(text: str) -> None:
    with pytest.raises(LiveCallError, match="unreadable live call record"):
        LiveCall.decode(text)


class Replicas(Protocol):
    def make(self, replica: str, lease: float = LEASE) -> LiveCallRegistry: ...

    async def expire(self) -> None:
        """Let the SHORT leases taken until now run out."""
        ...


class MemoryReplicas:
    def __init__(self) -> None:
        self.now = 0.0
        self.hub = MemoryHub(clock=lambda: self.now)

    def make(self, replica: str, lease: float = LEASE) -> LiveCallRegistry:
        return MemoryLiveCalls(replica, lease_seconds=lease, hub=self.hub)

    async def expire(self) -> None:
        self.now += SHORT + 0.01


class RedisReplicas:
    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"test:{{{new_id()}}}"
        self.clients: list[Redis] = []

    def make(self, replica: str, lease: float = LEASE) -> LiveCallRegistry:
        client = connect(self.url)  # as the service makes it: short timeouts, text replies
        self.clients.append(client)
        return RedisLiveCalls(client, replica, lease_seconds=lease, prefix=self.prefix)

    async def expire(self) -> None:
        await asyncio.sleep(SHORT + 0.05)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    if request.param == "memory":
        yield MemoryReplicas()
        return
    shared = RedisReplicas(request.getfixturevalue("redis_url"))
    yield shared
    await shared.close()


def live(call_id: str | None = None, **changes: object) -> LiveCall:
    call = LiveCall(call_id or new_id(), "realtime", 1000.0, FULL, deadline=1060.0)
    return dataclasses.replace(call, **changes)  # type: ignore[arg-type]


async def test_a_registered_call_is_seen_by_every_replica(replicas: Replicas) -> None:
    a, b = replicas.make("a"), replicas.make("b")
    call = live()
    await a.register(call)
    for registry in (a, b):
        found = await registry.get(call.call_id)
        assert found == dataclasses.replace(call, owner="a")
    assert [c.call_id for c in await b.calls()] == [call.call_id]
    assert await b.get("rtc_unknown") is None


async def test_renewed_leases_are_not_taken_over(replicas: Replicas) -> None:
    lease = 1.0  # renewed every 0.1 s: a machine would have to stall for 0.9 s to fail it
    a, b = replicas.make("a", lease), replicas.make("b", lease)
    call = live()
    await a.register(call)
    assert await b.takeover() == []
    for _ in range(15):  # 1.5 leases in all
        await asyncio.sleep(0.1)
        if isinstance(replicas, MemoryReplicas):
            replicas.now += 0.1
        assert await a.renew([call.call_id]) == Renewal()
    assert await b.takeover() == []


async def test_an_expired_lease_is_taken_over_by_exactly_one_replica(replicas: Replicas) -> None:
    a, b, c = replicas.make("a", SHORT), replicas.make("b"), replicas.make("c")
    call = live()
    await a.register(call)
    await replicas.expire()
    claims = await asyncio.gather(b.takeover(), c.takeover())
    winners = [r for r, claimed in zip((b, c), claims, strict=True) if claimed]
    assert len(winners) == 1
    (winner,) = winners
    (claimed,) = claims[0] or claims[1]
    assert claimed == dataclasses.replace(call, owner="a")  # taken from a
    assert (await a.get(call.call_id)).owner == winner.replica  # type: ignore[union-attr]
    # The old owner's next heartbeat learns it lost the call; it may not release it.
    assert await a.renew([call.call_id]) == Renewal(lost=frozenset({call.call_id}))
    await a.release(call.call_id)
    assert await a.get(call.call_id) is not None
    # The new owner renews, releases, and the call is gone.
    assert await winner.renew([call.call_id]) == Renewal()
    assert await winner.takeover() == []
    await winner.release(call.call_id)
    assert await a.get(call.call_id) is None
    assert await winner.renew([call.call_id]) == Renewal(missing=frozenset({call.call_id}))


async def test_disowned_calls_are_taken_over_at_once(replicas: Replicas) -> None:
    a, b = replicas.make("a"), replicas.make("b")
    kept, left = live(), live()
    await a.register(kept)
    await a.register(left)
    await b.disown(left.call_id)  # not b's: nothing happens
    assert await b.takeover() == []
    await a.disown(left.call_id)
    assert [c.call_id for c in await b.takeover()] == [left.call_id]
    assert await a.renew([kept.call_id, left.call_id]) == Renewal(lost=frozenset({left.call_id}))


async def test_a_call_ended_for_its_dead_owner_is_forgotten(replicas: Replicas) -> None:
    a, b = replicas.make("a", SHORT), replicas.make("b")
    ended, other = live(), live()
    await a.register(ended)
    await a.register(other)
    await b.forget(ended.call_id, "c")  # not c's: nothing happens
    assert (await b.get(ended.call_id)) is not None
    await b.forget(ended.call_id, "a")  # ended by b for a, which is gone
    assert await b.get(ended.call_id) is None
    await replicas.expire()
    # Nothing left of it to take over; the other call of the dead owner is taken over.
    assert [c.call_id for c in await b.takeover()] == [other.call_id]


async def test_a_late_owner_takes_its_own_call_back(replicas: Replicas) -> None:
    a = replicas.make("a", SHORT)
    call = live()
    await a.register(call)
    await replicas.expire()
    # Nobody took it meanwhile: the owner's late heartbeat keeps it.
    assert await a.renew([call.call_id]) == Renewal()


async def test_relayed_requests_reach_the_owner(replicas: Replicas) -> None:
    a, b = replicas.make("a"), replicas.make("b")
    seen: list[ControlRequest] = []

    async def answer(request: ControlRequest) -> str | None:
        seen.append(request)
        if request.call_id == "rtc_slow":
            await asyncio.sleep(5)
        if request.call_id == "rtc_late":
            await asyncio.sleep(1.0)
        return None if request.call_id == "rtc_other" else f"{request.op}:{request.destination}"

    serving = asyncio.create_task(a.serve(answer))
    try:
        request = ControlRequest("transfer", "rtc_1", "sales")
        for _ in range(100):  # until the subscription is in place
            outcome = await b.ask("a", request, 1.0)
            if outcome is not NO_ANSWER:
                break
            await asyncio.sleep(0.02)
        assert outcome == "transfer:sales"
        assert seen[-1] == request
        assert await b.ask("a", ControlRequest("hangup", "rtc_other"), 1.0) is None
        assert await b.ask("nobody", ControlRequest("hangup", "rtc_1"), 1.0) is NO_ANSWER
        with pytest.raises(TimeoutError):
            await b.ask("a", ControlRequest("hangup", "rtc_slow"), 0.2)
        # An owner slower than the client's socket timeout (0.5 s) still gets its answer in.
        assert await b.ask("a", ControlRequest("hangup", "rtc_late"), 3.0) == "hangup:None"
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_redis_lost_is_a_named_error(own_redis_server: RedisServer) -> None:
    client = connect(own_redis_server.url())
    registry = RedisLiveCalls(client, "a", lease_seconds=SHORT)
    await registry.register(live())
    own_redis_server.stop()
    for attempt in (
        registry.takeover(),
        registry.renew(["x"]),
        registry.get("x"),
        registry.ask("b", ControlRequest("hangup", "x"), 1.0),
    ):
        with pytest.raises(LiveCallError, match="failed"):
            await attempt
    await client.aclose()


@pytest.mark.parametrize("command", [b"SUBSCRIBE", b"PING"])
async def test_serve_ends_when_a_write_swallowed_its_cancellation(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, command: bytes
) -> None:
    """Python 3.11's asyncio.wait_for (redis-py bounds each socket write with it) drops a
    cancellation that arrives once the write has completed. serve() was `while True` around
    a poll that never raises it again: it answered on forever, and whoever cancelled it and
    waited (the keeper's stop() at shutdown, asyncio's cancellation of the tasks left when
    its loop ends) hung. The seam cancels it exactly then: as its subscription's write (or
    the first write of its connection, a PING) completes."""
    from redis.asyncio.connection import Connection

    client = connect(redis_url)
    registry = RedisLiveCalls(client, "a", lease_seconds=LEASE, prefix=f"test:{{{new_id()}}}")
    write = Connection._send_packed_command
    serving: list[asyncio.Task[None]] = []
    cancelled: list[bytes] = []

    async def written_then_cancelled(self: Connection, packed: Any) -> None:
        await write(self, packed)
        sent = b"".join(bytes(part) for part in packed)
        if not cancelled and serving and command in sent:
            cancelled.append(sent)
            serving[0].cancel()

    async def answer(request: ControlRequest) -> str | None:
        return None

    monkeypatch.setattr(Connection, "_send_packed_command", written_then_cancelled)
    serving.append(asyncio.create_task(registry.serve(answer)))
    try:
        # Before: still polling its channel 10 s after it was cancelled.
        done, _ = await asyncio.wait(serving, timeout=10)
        assert cancelled, f"serve() wrote no {command!r}"
        assert serving[0] in done, "serve() went on after its cancellation"
        assert serving[0].cancelled()  # the cancellation it got, not a normal return
    finally:
        monkeypatch.undo()
        if not serving[0].done():
            serving[0].cancel()
        await client.aclose()
