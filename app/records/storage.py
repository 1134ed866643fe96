"""What the call logs (SQLite, PostgreSQL, memory) store the same way: event data as JSON,
a call row back to a CallRecord, and how long a call is kept.

One copy of each rule, so that the backends cannot drift apart: a record read back from
any of them is the same record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from app.records.calllog import CallApi, CallEvent, CallRecord, CallStatus

Clock = Callable[[], float]

DAY: Final = 86400.0
RETENTION_INTERVAL: Final = 3600.0
"""Seconds between two deletions of expired calls while running."""
RECOVERED_NOTE: Final = "open at shutdown"
"""The note on the `ended` event of a call a previous run left open (its end unknown)."""
STATUSES: Final[frozenset[str]] = frozenset(("active", "answered", "ended"))


def checked_status(status: str) -> CallStatus:
    """A status a caller gives (`status()`): one of STATUSES, else ValueError."""
    if status not in STATUSES:
        raise ValueError(f"unknown call status {status!r}")
    return as_status(status)


def ended_data(reason: str | None) -> dict[str, str]:
    """The data of a call's `ended` event."""
    return {"reason": reason} if reason else {}


def recovered_data() -> dict[str, str]:
    """The data of the `ended` event of a call a previous run left open."""
    return {"reason": "unknown", "note": RECOVERED_NOTE}


class Row(Protocol):
    """A row as read: a sqlite3 tuple or an asyncpg Record."""

    def __getitem__(self, index: int, /) -> Any: ...


def encode_data(data: Mapping[str, Any] | None) -> str:
    """Event data as stored: JSON, with anything JSON does not know written as text."""
    return json.dumps(dict(data or {}), default=str, ensure_ascii=False, separators=(",", ":"))


def decode_data(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}


def as_api(value: str) -> CallApi:
    """A stored API name; anything else (none is written) reads as the default."""
    return "live" if value == "live" else "realtime"


def as_status(value: str) -> CallStatus:
    if value == "active":
        return "active"
    if value == "answered":
        return "answered"
    return "ended"


def checked_retention(days: int) -> int:
    if days < 1:
        raise ValueError("retention_days must be at least 1")
    return days


def retention_cutoff(now: float, retention_days: int) -> float:
    """Calls started before this (unix seconds) are deleted, with their events."""
    return now - retention_days * DAY


def end_time(record: CallRecord, now: float) -> float | None:
    """When a new record's call ended: a call recorded as already over without an end
    time (rejected, say) ended now."""
    if record.status == "ended" and record.ended_at is None:
        return now
    return record.ended_at


def record_from_row(row: Row, events: tuple[CallEvent, ...] = ()) -> CallRecord:
    """A call row, its columns in CallRecord's order (call_id ... end_reason, api; times
    as unix seconds), and its events."""
    return CallRecord(
        call_id=row[0],
        started_at=row[1],
        route=row[2],
        action=row[3],
        outcome=row[4],
        status=as_status(row[5]),
        caller=row[6],
        called=row[7],
        rules_version=row[8],
        ended_at=row[9],
        end_reason=row[10],
        api=as_api(row[11]),
        events=events,
    )


def events_from_rows(rows: Iterable[Row]) -> tuple[CallEvent, ...]:
    """Event rows (at, kind, data as JSON text), in the order read."""
    return tuple(CallEvent(row[0], row[1], decode_data(row[2])) for row in rows)
