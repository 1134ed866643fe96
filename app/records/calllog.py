"""Every call's story, from webhook to end: the interface the router and the in-call
manager write to, and the admin API reads from.

Writes never block the event loop (implementations queue them); reads are async.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

CallStatus = Literal["active", "answered", "ended"]
"""active: in progress with a sideband; answered: accepted, no sideband to see the end;
ended: over (rejected, hung up, caller gone, sideband closed...)."""

CallApi = Literal["realtime", "live"]
"""The API that handled the call (app.rules.ruleset.Api; records do not import the rules)."""


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
    api: CallApi = "realtime"
    events: tuple[CallEvent, ...] = ()

    @property
    def duration(self) -> float | None:
        return None if self.ended_at is None else max(0.0, self.ended_at - self.started_at)


class CallLogError(Exception):
    """The call database cannot be opened or used."""


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
        api: CallApi | None = None,
    ) -> list[CallRecord]: ...


DROP_REASONS: tuple[str, ...] = (
    "queue_full",  # the database was away for longer than the queue holds
    "rejected",  # the database refused that one write (its data); logged
    "shutdown",  # still queued when the service stopped and the database did not take it
)


STALLED_AFTER: Final = 60.0
"""Seconds writes may wait with nothing written before the call log counts as not writing
(two of SQLite's longest retry pauses; a busy file gives up after 10 s)."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a call log that writes to a server has not written (yet, or ever)."""

    queued: int
    """Writes waiting in memory for the database."""
    dropped: Mapping[str, int]
    """Writes lost since start-up, by reason (DROP_REASONS)."""
    available: bool
    """False while the database cannot be reached (or before it ever was)."""
    stalled_for: float = 0.0
    """Seconds since the writer last had everything written, while writes wait (0 when
    none do); only SQLite's says."""

    @property
    def stalled(self) -> bool:
        """Writes have waited STALLED_AFTER with nothing written: the log is not writing."""
        return self.stalled_for >= STALLED_AFTER


@runtime_checkable
class ReportsBacklog(Protocol):
    def backlog(self) -> Backlog: ...


@runtime_checkable
class WritesWhenIdle(Protocol):
    def idle(self) -> None:
        """The event loop has nothing in flight (no webhook): a moment to write what is
        queued. Called on the loop; must be cheap and never block."""
        ...
