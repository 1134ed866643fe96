"""The call log in memory: for tests, and for SWITCHBOARD_CALLS_DB=:memory: (nothing is
kept across a restart). Same behaviour as the SQLite log (the rules of app.records.storage):
event data is stored as JSON, the first end wins, expired calls are deleted (at most hourly,
on a write)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.records.calllog import CallApi, CallEvent, CallRecord, CallStatus
from app.records.storage import (
    RETENTION_INTERVAL,
    Clock,
    checked_retention,
    checked_status,
    decode_data,
    encode_data,
    end_time,
    ended_data,
    retention_cutoff,
)


@dataclass(slots=True)
class _Call:
    record: CallRecord
    events: list[CallEvent] = field(default_factory=list)


class InMemoryCallLog:
    def __init__(
        self,
        *,
        retention_days: int = 30,
        clock: Clock = time.time,
        retention_interval: float = RETENTION_INTERVAL,
    ) -> None:
        self.retention_days = checked_retention(retention_days)
        self._clock = clock
        self._retention_interval = retention_interval
        self._calls: dict[str, _Call] = {}
        self._orphans: dict[str, list[CallEvent]] = {}
        """Events for an id that has not started (yet)."""
        self._next_expiry = time.monotonic() + retention_interval

    def open(self) -> None:
        self.expire()

    def close(self) -> None:
        pass

    def expire(self) -> int:
        cutoff = retention_cutoff(self._clock(), self.retention_days)
        old = [cid for cid, call in self._calls.items() if call.record.started_at < cutoff]
        for call_id in old:
            del self._calls[call_id]
        for call_id in [c for c, events in self._orphans.items() if events[-1].at < cutoff]:
            del self._orphans[call_id]
        return len(old)

    def _maybe_expire(self) -> None:
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self._retention_interval
            self.expire()

    @staticmethod
    def _event(at: float, kind: str, data: Mapping[str, Any] | None) -> CallEvent:
        return CallEvent(at, kind, decode_data(encode_data(data)))

    def started(self, record: CallRecord) -> None:
        self._maybe_expire()
        record = replace(record, ended_at=end_time(record, self._clock()))
        events = [self._event(e.at, e.kind, e.data) for e in record.events]
        previous = self._calls.get(record.call_id)
        if previous is not None:
            start = min(previous.record.started_at, record.started_at)
            events = previous.events + events
            record = replace(record, started_at=start)
        events = self._orphans.pop(record.call_id, []) + events
        self._calls[record.call_id] = _Call(replace(record, events=()), events)

    def event(self, call_id: str, kind: str, data: Mapping[str, Any] | None = None) -> None:
        event = self._event(self._clock(), kind, data)
        call = self._calls.get(call_id)
        if call is None:
            self._orphans.setdefault(call_id, []).append(event)
        else:
            call.events.append(event)

    def status(self, call_id: str, status: CallStatus) -> None:
        if status == "ended":
            self._end(call_id, None)
            return
        status = checked_status(status)
        call = self._calls.get(call_id)
        if call is not None and call.record.status != "ended":
            call.record = replace(call.record, status=status)

    def ended(self, call_id: str, reason: str) -> None:
        self._end(call_id, reason)

    def _end(self, call_id: str, reason: str | None) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        record = call.record
        if record.status == "ended" and (record.end_reason is not None or reason is None):
            return  # the first end wins
        at = self._clock()
        ended_at = record.ended_at if record.ended_at is not None else at
        call.record = replace(record, status="ended", ended_at=ended_at, end_reason=reason)
        call.events.append(self._event(at, "ended", ended_data(reason)))

    async def get(self, call_id: str) -> CallRecord | None:
        call = self._calls.get(call_id)
        if call is None:
            return None
        events = sorted(call.events, key=lambda e: e.at)  # stable: equal times keep order
        return replace(call.record, events=tuple(events))

    async def recent(
        self,
        *,
        status: CallStatus | None = None,
        route: str | None = None,
        since: float | None = None,
        limit: int = 100,
        api: CallApi | None = None,
    ) -> list[CallRecord]:
        found = [
            call.record
            for call in self._calls.values()
            if (status is None or call.record.status == status)
            and (route is None or call.record.route == route)
            and (since is None or call.record.started_at >= since)
            and (api is None or call.record.api == api)
        ]
        found.sort(key=lambda r: (-r.started_at, r.call_id))
        return found[: max(0, limit)]
