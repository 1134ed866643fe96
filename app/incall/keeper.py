"""Keeps this replica's hold on its live calls, and takes over the calls of dead replicas.

Every heartbeat: renew the leases of the calls this replica holds (a call another replica
has taken meanwhile is left without being ended; one the registry forgot is registered
again), then claim the calls whose lease ran out
and resume them. Alongside, answer the operator requests (hang up, transfer) that other
replicas relay to this one for the calls it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from app.incall.session import InCallManager
from app.intake.events import APIS
from app.ops.metrics import Metrics
from app.state.livecalls import ControlRequest, LiveCallError, LiveCallRegistry

logger = logging.getLogger("switchboard.incall")


class LiveCallKeeper:
    def __init__(
        self,
        registry: LiveCallRegistry,
        manager: InCallManager,
        metrics: Metrics,
        *,
        heartbeat_seconds: float,
        lease_seconds: float,
        timeout_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.metrics = metrics
        self.heartbeat = heartbeat_seconds
        self.lease = lease_seconds
        self.timeout = min(timeout_seconds, heartbeat_seconds)
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._renewed: tuple[float, frozenset[str]] | None = None
        """When the last renewal that worked was sent, and the calls it renewed."""

    async def beat(self) -> None:
        """One heartbeat: renew, let go of lost calls, take over expired ones."""
        held = self.manager.held()
        sent = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                renewal = await self.registry.renew(held)
            self._renewed = (sent, frozenset(held) - renewal.lost - renewal.missing)
            for call_id in renewal.lost:
                self.manager.lose(call_id)
            for call_id in renewal.missing:
                # Redis lost its data (a restart without persistence): still ours, say so.
                live = self.manager.live_call(call_id)
                if live is not None:
                    async with asyncio.timeout(self.timeout):
                        await self.registry.register(live)
            async with asyncio.timeout(self.timeout):
                claimed = await self.registry.takeover()
        except (LiveCallError, TimeoutError) as exc:
            self.metrics.live_calls.labels("registry_error").inc()
            logger.warning(
                "live call registry unavailable",
                extra={"event": "livecalls_failed", "error": str(exc) or type(exc).__name__},
            )
            self._fence()
            return
        for call in claimed:
            if call.call_id in self.manager:
                continue  # ours all along (a renewal was late): carry on as before
            # Another API's call (a newer replica's) is left to one that knows it; a call
            # this replica cannot start (shutting down) to another replica, now.
            if call.api in APIS and self.manager.resume(call):
                logger.info(
                    "taking over a call",
                    extra={"event": "call_taken_over", "call_id": call.call_id, "from": call.owner},
                )
                continue
            with contextlib.suppress(LiveCallError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self.registry.disown(call.call_id)

    def _fence(self) -> None:
        """Renewals failed for a whole lease: the leases renewed last have run out, and
        another replica may have taken those calls over. Leave them rather than risk two
        replicas acting on one call; once Redis answers again, a takeover carries them on
        (this replica's own, if no other got there first)."""
        if self._renewed is None:
            return
        sent, renewed = self._renewed
        if self.clock() - sent < self.lease:
            return
        for call_id in renewed:
            self.manager.lose(call_id, fenced=True)
        self._renewed = (sent, frozenset())

    async def answer(self, request: ControlRequest) -> str | None:
        """A request relayed from another replica for a call this one holds."""
        if request.call_id not in self.manager:
            return None
        if request.op == "hangup":
            return await self.manager.hangup(request.call_id)
        try:
            return await self.manager.transfer(request.call_id, request.destination or "")
        except LookupError:
            return None
        except ValueError:
            return "rejected_destination"

    async def _heartbeats(self) -> None:
        # Ends at a cancellation even when redis-py dropped it: Python 3.11's
        # asyncio.wait_for (around each socket write of a renewal or a takeover) returns the
        # write's result when the cancellation came as it completed; a `while True` beat
        # forever and stop() waited for it. Nobody uncancels this task: cancelling() stays.
        task = asyncio.current_task()
        assert task is not None
        while not task.cancelling():
            try:
                await self.beat()
            except Exception:  # a heartbeat that stopped would lose every call
                logger.exception("live call heartbeat failed", extra={"event": "livecalls_bug"})
            if task.cancelling():
                break
            await asyncio.sleep(self.heartbeat)
        raise asyncio.CancelledError  # the one a library dropped: end as cancelled

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="live calls heartbeat"),
            asyncio.create_task(self.registry.serve(self.answer), name="live calls control"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # wait(): the tasks' cancellations are not raised here, and a cancellation of this
        # task is (suppressing CancelledError around `await task` took it too).
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "live calls task failed",
                    exc_info=task.exception(),
                    extra={"event": "livecalls_bug", "task": task.get_name()},
                )
