"""Compiled match conditions: small immutable callables, each able to describe itself.

`condition(call, now) -> bool` is the hot path; `describe()` is for `switchboard explain`
and `/admin/routes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol

from app.rules.lookup import listed
from app.rules.numbers import NumberSet, number_info
from app.rules.regex import Regex
from app.rules.schedule import Schedule
from app.sip.identity import Address, CallIdentity

# Caller-controlled text is cut before a regular expression sees it. RE2 is linear in the
# text whatever the pattern (app.rules.regex): this bounds that line's length.
MAX_REGEX_INPUT: Final = 512

Party = Literal["caller", "called", "forwarded_from"]


class Condition(Protocol):
    def __call__(self, call: CallIdentity, now: datetime) -> bool: ...

    def describe(self) -> str: ...


def _party(call: CallIdentity, party: Party) -> Address | None:
    if party == "caller":
        return call.caller
    if party == "called":
        return call.called
    return call.forwarded_from


@dataclass(frozen=True, slots=True)
class NumberMatches:
    """Every given test must hold: in each set, the regex, the countries, the types."""

    party: Party
    sets: tuple[NumberSet, ...] = ()
    regex: Regex | None = None
    countries: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    label: str = ""

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        address = _party(call, self.party)
        key = address.number_key if address is not None else None
        if key is None:
            return False
        for numbers in self.sets:
            # listed(), not `key in numbers`: `in` on NumberSet (an interpreted class)
            # runs an interpreted frame; the compiled function is a direct call.
            if not listed(numbers.shards, numbers.prefixes, numbers.prefix_lengths, key):
                return False
        if self.regex is not None and not self.regex.search(key):
            return False
        if self.countries or self.types:
            if address is None or address.number is None:
                return False
            region, types = number_info(address.number)
            if self.countries and region not in self.countries:
                return False
            if self.types and not (types & self.types):
                return False
        return True

    def describe(self) -> str:
        return f"{self.party} {self.label}"


@dataclass(frozen=True, slots=True)
class TextMatches:
    """The caller's display name, or any value of a header (repeats: any value may match)."""

    header: str | None  # None: the display name
    equals: str | None = None
    contains: str | None = None
    regex: Regex | None = None
    present: bool | None = None
    ignore_case: bool = False

    def values(self, call: CallIdentity) -> tuple[str, ...]:
        if self.header is None:
            return (call.display_name,) if call.display_name else ()
        return call.headers.get_all(self.header)

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        values = self.values(call)
        if self.present is not None:
            return bool(values) is self.present
        for value in values:  # noqa: SIM110 (a generator costs more, and this runs per call)
            if self._one(value):
                return True
        return False

    def _one(self, value: str) -> bool:
        text = value.strip()
        if self.equals is not None:
            if self.ignore_case:
                return text.casefold() == self.equals.casefold()
            return text == self.equals
        if self.contains is not None:
            if self.ignore_case:
                return self.contains.casefold() in text.casefold()
            return self.contains in text
        assert self.regex is not None
        return self.regex.search(text[:MAX_REGEX_INPUT])

    def describe(self) -> str:
        subject = "caller_name" if self.header is None else f"header {self.header}"
        if self.present is not None:
            return f"{subject} is {'present' if self.present else 'absent'}"
        case = " (ignoring case)" if self.ignore_case else ""
        if self.equals is not None:
            return f"{subject} equals {self.equals!r}{case}"
        if self.contains is not None:
            return f"{subject} contains {self.contains!r}{case}"
        assert self.regex is not None
        return f"{subject} matches /{self.regex.pattern}/{case}"


@dataclass(frozen=True, slots=True)
class AnonymousIs:
    anonymous: bool

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        return call.anonymous is self.anonymous

    def describe(self) -> str:
        return "caller is anonymous" if self.anonymous else "caller is not anonymous"


@dataclass(frozen=True, slots=True)
class ForwardedIs:
    forwarded: bool

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        found = call.forwarded_from is not None or "diversion" in call.headers
        return found is self.forwarded

    def describe(self) -> str:
        return "call was forwarded" if self.forwarded else "call was not forwarded"


@dataclass(frozen=True, slots=True)
class MediaSecurityIs:
    values: frozenset[str]

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        return (call.media_security or "none") in self.values

    def describe(self) -> str:
        return "sip_media_security is " + " or ".join(sorted(self.values))


@dataclass(frozen=True, slots=True)
class InSchedule:
    schedule: Schedule
    inside: bool = True

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        return self.schedule.contains(now) is self.inside

    def describe(self) -> str:
        return f"{'inside' if self.inside else 'outside'} schedule {self.schedule.name}"


@dataclass(frozen=True, slots=True)
class AllOf:
    conditions: tuple[Condition, ...]

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        for condition in self.conditions:  # noqa: SIM110 (no generator per call)
            if not condition(call, now):
                return False
        return True

    def describe(self) -> str:
        return "all of (" + "; ".join(c.describe() for c in self.conditions) + ")"


@dataclass(frozen=True, slots=True)
class AnyOf:
    conditions: tuple[Condition, ...]

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        for condition in self.conditions:  # noqa: SIM110 (no generator per call)
            if condition(call, now):
                return True
        return False

    def describe(self) -> str:
        return "any of (" + "; ".join(c.describe() for c in self.conditions) + ")"


@dataclass(frozen=True, slots=True)
class NotOf:
    condition: Condition

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        return not self.condition(call, now)

    def describe(self) -> str:
        return f"not ({self.condition.describe()})"


def first_failing(
    conditions: Sequence[Condition], call: CallIdentity, now: datetime
) -> Condition | None:
    for condition in conditions:
        if not condition(call, now):
            return condition
    return None
