"""Compiled, immutable routing rules: RuleSet.decide(identity) -> Decision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from app.sip import CallIdentity, canonical_name


@dataclass(frozen=True, slots=True)
class Accept:
    body: bytes
    """JSON body of the accept request, `type: realtime` included; encoded once at load."""

    kind: Literal["accept"] = "accept"

    @property
    def session(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


@dataclass(frozen=True, slots=True)
class Reject:
    status_code: int = 603
    kind: Literal["reject"] = "reject"


@dataclass(frozen=True, slots=True)
class Refer:
    target_uri: str
    accept_body: bytes
    """REFER needs an answered call: this session is accepted first."""

    kind: Literal["refer"] = "refer"


Action = Accept | Reject | Refer
ACTION_KINDS = ("accept", "reject", "refer")


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    action: Action
    rules_version: str


class Condition(Protocol):
    def __call__(self, call: CallIdentity) -> bool: ...


@dataclass(frozen=True, slots=True)
class NumberIs:
    """Caller or called number equal to one of `exact` or starting with one of `prefixes`."""

    party: Literal["caller", "called"]
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def __call__(self, call: CallIdentity) -> bool:
        address = call.caller if self.party == "caller" else call.called
        key = address.number_key if address is not None else None
        if key is None:
            return False
        return key in self.exact or (bool(self.prefixes) and key.startswith(self.prefixes))


@dataclass(frozen=True, slots=True)
class HeaderEquals:
    name: str
    value: str

    def __call__(self, call: CallIdentity) -> bool:
        return any(v.strip() == self.value for v in call.headers.get_all(self.name))


@dataclass(frozen=True, slots=True)
class HeaderPresent:
    name: str
    present: bool

    def __call__(self, call: CallIdentity) -> bool:
        return (canonical_name(self.name) in call.headers) is self.present


@dataclass(frozen=True, slots=True)
class AnonymousIs:
    anonymous: bool

    def __call__(self, call: CallIdentity) -> bool:
        return call.anonymous is self.anonymous


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    conditions: tuple[Condition, ...]
    action: Action

    def matches(self, call: CallIdentity) -> bool:
        return all(condition(call) for condition in self.conditions)


DEFAULT_ROUTE = "default"


@dataclass(frozen=True, slots=True)
class RuleSet:
    routes: tuple[Route, ...]
    default: Action
    version: str
    """Content hash of the file the rules came from."""
    source: str
    loaded_at: float
    files: tuple[str, ...] = ()
    """Every file the rules were built from (the routes file first): what to watch."""

    def decide(self, call: CallIdentity) -> Decision:
        for route in self.routes:
            if route.matches(call):
                return Decision(route.name, route.action, self.version)
        return Decision(DEFAULT_ROUTE, self.default, self.version)

    def route_actions(self) -> Iterator[tuple[str, str]]:
        """(route, action kind) pairs, for pre-creating metric labels."""
        for route in self.routes:
            yield route.name, route.action.kind
        yield DEFAULT_ROUTE, self.default.kind
