"""Named schedules: weekly time windows in an IANA timezone, with dates in or out.

A window belongs to the day it starts on, so `fri: 22:00-02:00` covers Friday 22:00 to
Saturday 02:00, and excluding Saturday does not cut it short. Excluded dates win over
everything; included dates are inside the schedule all day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW: Final = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")
_DATE_RANGE: Final = re.compile(r"(\d{4}-\d{2}-\d{2})(?:\s*\.\.\s*(\d{4}-\d{2}-\d{2}))?")


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA timezone (e.g. America/New_York)") from None


def parse_days(spec: str) -> tuple[int, ...]:
    """`mon-fri`, `sat`, `mon,wed,fri`, `daily` -> weekday numbers (Monday = 0)."""
    text = spec.strip().lower()
    if text in ("daily", "every day", "all"):
        return tuple(range(7))
    days: list[int] = []
    for part in text.split(","):
        part = part.strip()
        first, sep, last = part.partition("-")
        if first not in DAYS or (sep and last not in DAYS):
            raise ValueError(f"{spec!r} is not a day or day range (mon..sun, e.g. mon-fri)")
        start, end = DAYS.index(first), DAYS.index(last if sep else first)
        span = (end - start) % 7
        days.extend((start + i) % 7 for i in range(span + 1))
    return tuple(dict.fromkeys(days))


def parse_window(spec: str) -> tuple[int, int]:
    """`09:00-17:30` -> minutes (540, 1050). An end before the start crosses midnight."""
    match = _WINDOW.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"{spec!r} is not a time window like 09:00-17:30")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"{spec!r} has an impossible time")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{spec!r} is empty (start equals end)")
    return start, end


def parse_dates(spec: str) -> tuple[date, date]:
    """`2026-12-25` or `2026-12-24..2026-12-26` -> (first, last), inclusive."""
    match = _DATE_RANGE.fullmatch(str(spec).strip())
    if not match:
        raise ValueError(f"{spec!r} is not a date (YYYY-MM-DD) or range (YYYY-MM-DD..YYYY-MM-DD)")
    try:
        first = date.fromisoformat(match[1])
        last = date.fromisoformat(match[2]) if match[2] else first
    except ValueError:
        raise ValueError(f"{spec!r} is not a real date") from None
    if last < first:
        raise ValueError(f"{spec!r} ends before it starts")
    return first, last


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    zone: ZoneInfo
    windows: tuple[tuple[tuple[int, int], ...], ...]
    """Per weekday (Monday = 0): (start, end) minutes; end < start crosses midnight."""
    include: tuple[tuple[date, date], ...] = ()
    exclude: tuple[tuple[date, date], ...] = ()
    _last: list[tuple[int, bool]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    """The last answer and its minute: every window and date is whole minutes, so the
    answer holds for the rest of that minute (the calls of a busy minute share it)."""

    def contains(self, moment: datetime) -> bool:
        minute = minute_of(moment)
        last = self._last
        if last and last[0][0] == minute:
            return last[0][1]
        local = moment.astimezone(self.zone)
        inside = self._contains(local)
        if minute_aligned(local):
            self._last[:] = [(minute, inside)]
        return inside

    def _contains(self, local: datetime) -> bool:
        today = local.date()
        if _within(today, self.exclude):
            # Yesterday's window running past midnight still counts (it started on a work day).
            return self._overnight(local, today)
        if _within(today, self.include):
            return True
        minute = local.hour * 60 + local.minute
        for start, end in self.windows[local.weekday()]:
            if (start <= minute < end) or (end < start and minute >= start):
                return True
        return self._overnight(local, today)

    def _overnight(self, local: datetime, today: date) -> bool:
        yesterday = today - timedelta(days=1)
        if _within(yesterday, self.exclude):
            return False
        minute = local.hour * 60 + local.minute
        return any(end < start and minute < end for start, end in self.windows[yesterday.weekday()])


_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()


def minute_of(moment: datetime) -> int:
    """The minute `moment` falls in (minutes since the epoch): a key for answers that
    hold for a whole local minute."""
    if moment.tzinfo is not UTC:  # the router's clock is datetime.now(UTC) already
        moment = moment.astimezone(UTC)  # exact (a naive time is taken as local time)
    # From the fields: exact at any date, and half of timestamp()'s cost (callgrind).
    days = moment.toordinal() - _EPOCH_ORDINAL
    return (days * 24 + moment.hour) * 60 + moment.minute


def minute_aligned(local: datetime) -> bool:
    """Whether local minutes start with minute_of's: the UTC offset is whole minutes (it
    is not for local mean time, before ~1900)."""
    offset = local.utcoffset()
    return offset is not None and offset.seconds % 60 == 0


def _within(day: date, ranges: tuple[tuple[date, date], ...]) -> bool:
    return any(first <= day <= last for first, last in ranges)


def build_schedule(
    name: str,
    timezone: str,
    weekly: dict[str, str | list[str]],
    include: list[str],
    exclude: list[str],
) -> Schedule:
    windows: list[list[tuple[int, int]]] = [[] for _ in DAYS]
    for days, spec in weekly.items():
        for window in [spec] if isinstance(spec, str) else spec:
            parsed = parse_window(window)
            for day in parse_days(days):
                windows[day].append(parsed)
    return Schedule(
        name=name,
        zone=parse_timezone(timezone),
        windows=tuple(tuple(sorted(w)) for w in windows),
        include=tuple(parse_dates(d) for d in include),
        exclude=tuple(parse_dates(d) for d in exclude),
    )
