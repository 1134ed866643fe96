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
        timeout_seconds: float = 2.0,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.metrics = metrics
        self.heartbeat = heartbeat_seconds
        self.timeout = min(timeout_seconds, heartbeat_seconds)
        self._tasks: list[asyncio.Task[None]] = []

    async def beat(self) -> None:
        """One heartbeat: renew, let go of lost calls, take over expired ones."""
        held = self.manager.held()
        try:
            async with asyncio.timeout(self.timeout):
                renewal = await self.registry.renew(held)
            for call_id in renewal.lost:
                await self.manager.lose(call_id)
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
            return
        for call in claimed:
            if call.call_id in self.manager:
                continue  # ours all along (a renewal was late): carry on as before
            if call.api not in APIS:
                # Another API's call (a newer replica's): leave it to one that knows it.
                await self.registry.disown(call.call_id)
                continue
            logger.info(
                "taking over a call",
                extra={"event": "call_taken_over", "call_id": call.call_id, "from": call.owner},
            )
            self.manager.resume(call)

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
        while True:
            await self.beat()
            await asyncio.sleep(self.heartbeat)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="live calls heartbeat"),
            asyncio.create_task(self.registry.serve(self.answer), name="live calls control"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
