"""Every call's story, from webhook to end: the interface the router and the in-call
manager write to, and the admin API reads from.

Writes never block the event loop (implementations queue them); reads are async.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

CallStatus = Literal["active", "answered", "ended"]
"""active: in progress with a sideband; answered: accepted, no sideband to see the end;
ended: over (rejected, hung up, caller gone, sideband closed...)."""


@dataclass(frozen=True, slots=True)
class CallEvent:
    at: float
    kind: str
    """decision, accepted, rejected, referred, sideband_connected, sideband_failed,
    greeting, tool_call, transfer, hangup, dtmf, warning, error, ended..."""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    started_at: float
    route: str
    action: str
    outcome: str
    status: CallStatus
    caller: str | None
    """As configured for logs: masked unless SWITCHBOARD_LOG_PHONE_NUMBERS."""
    called: str | None
    rules_version: str
    ended_at: float | None = None
    end_reason: str | None = None
    events: tuple[CallEvent, ...] = ()

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)


class CallLog(Protocol):
    def started(self, record: CallRecord) -> None:
        """A new call (its decision and first outcome); `record.events` are stored too."""
        ...

    def event(self, call_id: str, kind: str, data: Mapping[str, Any] | None = None) -> None: ...

    def status(self, call_id: str, status: CallStatus) -> None: ...

    def ended(self, call_id: str, reason: str) -> None:
        """Mark the call over (once: later calls for the same id are ignored)."""
        ...

    async def get(self, call_id: str) -> CallRecord | None: ...

    async def recent(
        self,
        *,
        status: CallStatus | None = None,
        route: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[CallRecord]: ...
