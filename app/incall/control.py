"""Operator control of live calls from any replica (the admin API's hang-up and transfer).

A call this replica holds is handled by its session. Any other live call is looked up in
the shared registry: a transfer is checked against the allowlist stored there (so the
allowlist holds on every replica), then the request is relayed to the owner, which acts as
for a local request (with the transfer line said, and its session's state kept right).
When the owner does not answer (it died and its lease has not run out yet), this replica
acts itself through the call-control REST API, records what it did in the call log, and
takes a call that it ended out of the registry (else a replica would take it over once the
dead owner's lease runs out, and join and record a call that is over).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.incall.session import API_DEADLINE, REGISTRY_DEADLINE, SAY_TIMEOUT, InCallManager
from app.openai.callcontrol import CallGone
from app.state.livecalls import (
    NO_ANSWER,
    ControlRequest,
    LiveCall,
    LiveCallError,
    LiveCallRegistry,
)

logger = logging.getLogger("switchboard.incall")

RELAY_TIMEOUT = 2 * SAY_TIMEOUT + API_DEADLINE + 3.0
"""How long to wait for the owner's answer: a transfer may wait for the agent to finish a
response and say its line first. An owner that does not answer in time is alive (it
received the request) and may still act, so this replica does not act too: the admin
API answers 504 instead."""


class AnyReplicaControl:
    def __init__(
        self,
        manager: InCallManager,
        registry: LiveCallRegistry,
        *,
        relay_timeout: float = RELAY_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.relay_timeout = relay_timeout
        self.clock = clock

    async def hangup(self, call_id: str) -> str | None:
        if call_id in self.manager:
            return await self.manager.hangup(call_id)
        live = await self.registry.get(call_id)
        if live is None:
            return None
        relayed = await self._relay(live, ControlRequest("hangup", call_id))
        if relayed is not None:
            return relayed
        return await self._hangup_here(live)

    async def transfer(self, call_id: str, destination: str) -> str:
        if call_id in self.manager:
            return await self.manager.transfer(call_id, destination)
        live = await self.registry.get(call_id)
        if live is None:
            raise LookupError(call_id)
        transfers = live.features.transfers
        if destination not in transfers:
            raise ValueError(
                f"{destination!r} is not a destination of this call "
                f"({', '.join(sorted(transfers)) or 'none'})"
            )
        relayed = await self._relay(live, ControlRequest("transfer", call_id, destination))
        if relayed is not None:
            return relayed
        return await self._refer_here(live, destination)

    async def _relay(self, live: LiveCall, request: ControlRequest) -> str | None:
        """The owner's answer; None when it is gone (nobody listens for it) or no longer
        holds the call. TimeoutError when it got the request and did not answer in time."""
        if live.owner == self.registry.replica or not live.owner:
            return None
        answer = await self.registry.ask(live.owner, request, self.relay_timeout)
        if answer is NO_ANSWER or answer is None:
            logger.info(
                "the call's owner did not answer: acting from this replica",
                extra={"event": "relay_unanswered", "call_id": live.call_id, "owner": live.owner},
            )
            return None
        assert isinstance(answer, str)
        return answer

    async def _hangup_here(self, live: LiveCall) -> str:
        manager, call_id = self.manager, live.call_id
        try:
            await manager.controller_for(live.api).hangup(call_id, self.clock() + API_DEADLINE)
            outcome = "hung_up"
        except CallGone:
            outcome = "caller_gone"
        except Exception as exc:  # recorded as failed, like the session does
            outcome = "failed"
            manager.call_log.event(call_id, "error", {"error": str(exc)})
        manager.metrics.hangups.labels("operator").inc()
        manager.call_log.event(
            call_id,
            "hangup",
            {"reason": "operator", "outcome": outcome, "replica": self.registry.replica},
        )
        if outcome != "failed":
            manager.call_log.ended(call_id, "operator")
            await self._forget(live)
        return outcome

    async def _refer_here(self, live: LiveCall, destination: str) -> str:
        manager, call_id = self.manager, live.call_id
        uri = live.features.transfers[destination].uri
        try:
            await manager.controller_for(live.api).refer(call_id, uri, self.clock() + API_DEADLINE)
            outcome = "referred"
        except CallGone:
            outcome = "caller_gone"
        except Exception as exc:
            outcome = "failed"
            manager.call_log.event(call_id, "error", {"error": str(exc)})
        manager.metrics.transfers.labels(outcome).inc()
        manager.call_log.event(
            call_id,
            "transfer",
            {
                "destination": destination,
                "outcome": outcome,
                "by": "operator",
                "uri": uri,
                "replica": self.registry.replica,
            },
        )
        if outcome == "referred":
            manager.call_log.ended(call_id, "transferred")
        if outcome != "failed":
            await self._forget(live)
        return outcome

    async def _forget(self, live: LiveCall) -> None:
        """The call is over: no replica is to take it over from its dead owner. A registry
        that fails here costs a takeover that finds the call gone (its sideband refused)."""
        try:
            # timeout(), not wait_for(): Python 3.11's wait_for drops a cancellation that
            # comes as the registry answers.
            async with asyncio.timeout(REGISTRY_DEADLINE):
                await self.registry.forget(live.call_id, live.owner)
        except (LiveCallError, TimeoutError) as exc:
            logger.warning(
                "live call registry: forget failed",
                extra={"event": "livecalls_failed", "call_id": live.call_id, "error": str(exc)},
            )
