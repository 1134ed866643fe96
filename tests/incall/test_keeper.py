"""The live-call keeper's own tasks (heartbeat, control channel) and how it stops them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from app.incall.keeper import LiveCallKeeper
from app.incall.session import InCallManager
from app.ops.metrics import Metrics
from app.state.livecalls import LiveCallRegistry, MemoryLiveCalls, RedisLiveCalls
from app.state.redis import connect
from tests.support import new_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class NoCalls:
    """A manager holding no call: the heartbeat only renews nothing and takes over."""

    def held(self) -> list[str]:
        return []

    def __contains__(self, call_id: object) -> bool:
        return False


def keeper(registry: LiveCallRegistry) -> LiveCallKeeper:
    return LiveCallKeeper(
        registry,
        cast(InCallManager, NoCalls()),
        Metrics(),
        heartbeat_seconds=0.05,
        lease_seconds=10.0,
    )


@pytest.mark.parametrize(
    ("task", "command"), [("heartbeat", b"EVALSHA"), ("control channel", b"SUBSCRIBE")]
)
async def test_stop_ends_when_a_write_swallowed_a_tasks_cancellation(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, task: str, command: bytes
) -> None:
    """Python 3.11's asyncio.wait_for (redis-py bounds each socket write with it) drops a
    cancellation that arrives once the write has completed. The heartbeat (its takeover
    script) and the control channel (its SUBSCRIBE) write to Redis; stop() cancels both and
    waits for them, and a task that never saw its cancellation went on forever: stop()
    (the service's shutdown) hung. The seam stops the keeper exactly then: as `task`'s
    `command` has been written."""
    from redis.asyncio.connection import Connection

    client = connect(redis_url)
    registry = RedisLiveCalls(client, "a", lease_seconds=10.0, prefix=f"test:{{{new_id()}}}")
    kept = keeper(registry)
    write = Connection._send_packed_command
    stopping: list[asyncio.Task[None]] = []

    async def written_then_stopped(self: Connection, packed: Any) -> None:
        await write(self, packed)
        if not stopping and command in b"".join(bytes(part) for part in packed):
            stopping.append(asyncio.get_running_loop().create_task(kept.stop()))

    monkeypatch.setattr(Connection, "_send_packed_command", written_then_stopped)
    kept.start()
    tasks = list(kept._tasks)
    try:
        for _ in range(200):  # the next write of that task (each heartbeat: 0.05 s)
            if stopping:
                break
            await asyncio.sleep(0.05)
        assert stopping, f"{task} wrote nothing"
        # Before: the task went on after its cancellation, and stop() waited for it.
        done, _ = await asyncio.wait([stopping[0], *tasks], timeout=10)
        assert stopping[0] in done, "stop() waited for a task that went on"
        assert all(t in done for t in tasks)
    finally:
        monkeypatch.undo()
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=10)
        await client.aclose()


async def test_stop_cancelled_while_it_waits_for_its_tasks_is_cancelled() -> None:
    """stop() waits for the tasks it cancelled; a cancellation of stop() itself then must
    not be taken for theirs and swallowed (before, it was: the shutdown that cancelled it
    went on as if it had not)."""
    kept = keeper(MemoryLiveCalls("a", lease_seconds=10.0))
    kept.start()
    await asyncio.sleep(0)  # both tasks started
    tasks = list(kept._tasks)
    stopping = asyncio.create_task(kept.stop())
    await asyncio.sleep(0)  # stop() cancelled them and waits
    stopping.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert stopping.cancelled()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
