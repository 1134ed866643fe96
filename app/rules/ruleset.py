"""Compiled, immutable routing rules: RuleSet.decide(call, now) -> Decision."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple
from zoneinfo import ZoneInfo

from app.rules.conditions import Condition, NumberMatches
from app.rules.templates import (
    CallValues,
    Template,
    UnsafeValue,
    call_values,
    quote_text,
    uri_token,
    validate_target_uri,
)
from app.sip.identity import CallIdentity

DEFAULT_ROUTE: Final = "default"


Api = Literal["realtime", "live"]
"""Which OpenAI API an accept goes through: /v1/realtime/calls/{call_id}/accept, or
/v1/live/sessions/{session_id}/accept."""


def session_payload(api: Api, session: Mapping[str, Any]) -> dict[str, Any]:
    """The session as sent, `type` first, from its keys (without `type`).

    Realtime's accept body is this; GPT-Live's is `{"session": this}` (the Live call
    control wraps it: app.openai.callcontrol.LiveCallControl.accept)."""
    return {"type": api, **session}


@dataclass(frozen=True, slots=True)
class SessionTemplate:
    """A session whose strings hold placeholders; rendered per call."""

    session: Mapping[str, Any]
    paths: tuple[tuple[str | int, ...], ...]
    """Where the templated strings are, so only they are rendered."""
    templates: tuple[Template, ...]
    api: Api = "realtime"
    """The API of the session this renders (its `type`)."""
    _pieces: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    """The encoded body split around the templated strings: a render joins, never re-encodes."""
    _order: tuple[Template, ...] = dataclasses.field(init=False, repr=False, compare=False)
    """The templates in the order they appear in the body."""

    def __post_init__(self) -> None:
        session: Any = json.loads(json.dumps(self.session))
        marks = [f"\0template-{i}\0" for i in range(len(self.paths))]
        for path, mark in zip(self.paths, marks, strict=True):
            node = session
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = mark
        text = _encode(session_payload(self.api, session)).decode()
        encoded = [json.dumps(mark, ensure_ascii=False) for mark in marks]
        order = sorted(range(len(marks)), key=lambda i: text.index(encoded[i]))
        pieces: list[str] = []
        for i in order:
            before, _, text = text.partition(encoded[i])
            pieces.append(before)
        pieces.append(text)
        object.__setattr__(self, "_pieces", tuple(pieces))
        object.__setattr__(self, "_order", tuple(self.templates[i] for i in order))

    def render(self, values: CallValues) -> bytes:
        pieces = self._pieces
        out = [pieces[0]]
        for i, template in enumerate(self._order):
            out.append(_json_string(template.render(values, quote_text)))
            out.append(pieces[i + 1])
        return "".join(out).encode()


@dataclass(frozen=True, slots=True)
class Destination:
    uri: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class MaxDuration:
    seconds: float
    warning_before: float | None = None
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class CallFeatures:
    """What Switchboard does during an accepted call, over the sideband WebSocket."""

    greeting: bool = False
    greeting_instructions: str | None = None
    transfers: Mapping[str, Destination] = dataclasses.field(default_factory=dict)
    transfer_message: str | None = None
    end_call: bool = False
    dtmf: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    """Digit -> destination name to transfer to, or None to hang up."""
    max_duration: MaxDuration | None = None
    announce: str | None = None
    """Refer routes: a line said before transferring to `refer_to`."""
    refer_to: str | None = None

    @property
    def sideband(self) -> bool:
        """Whether the call needs the WebSocket (a max duration alone does not)."""
        return bool(
            self.greeting
            or self.transfers
            or self.end_call
            or self.dtmf
            or self.refer_to
            or (self.max_duration is not None and self.max_duration.warning_before)
        )


@dataclass(frozen=True, slots=True)
class Accept:
    body: bytes
    """The session, JSON, `type` first ("realtime" or "live"); encoded once at load."""

    template: SessionTemplate | None = None
    features: CallFeatures | None = None
    api: Api = "realtime"
    """realtime: POST /v1/realtime/calls/{call_id}/accept with `body`;
    live: POST /v1/live/sessions/{session_id}/accept with {"session": `body`}."""
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

    target_template: Template | None = None
    accept_template: SessionTemplate | None = None
    announce: str | None = None
    """Said over the sideband before the REFER; the transfer then happens after the answer."""
    api: Api = "realtime"
    """The API of `accept_body` (a session, as Accept.body): the one `session:` names,
    Realtime by default."""
    kind: Literal["refer"] = "refer"


Action = Accept | Reject | Refer


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    weight: int
    action: Action


@dataclass(frozen=True, slots=True)
class Split:
    """Weighted choice between actions, sticky per caller."""

    arms: tuple[Arm, ...]
    total: int
    kind: Literal["split"] = "split"

    def choose(self, route: str, key: str) -> Arm:
        digest = hashlib.blake2b(f"{route}\0{key}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") % self.total
        for arm in self.arms:
            if point < arm.weight:
                return arm
            point -= arm.weight
        return self.arms[-1]


@dataclass(frozen=True, slots=True)
class RateLimit:
    calls: int
    per_seconds: float
    over_limit: Action


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    conditions: tuple[Condition, ...]
    action: Action | Split
    rate_limit: RateLimit | None = None
    fallback: Action | None = None

    def matches(self, call: CallIdentity, now: datetime) -> bool:
        for condition in self.conditions:  # noqa: SIM110 (a generator costs more per call)
            if not condition(call, now):
                return False
        return True


class Decision(NamedTuple):
    """What to do with one call. A NamedTuple like the call identity it is made from:
    immutable, and built once per call at a fraction of a frozen dataclass's cost."""

    route: str
    action: Action
    rules_version: str
    arm: str | None = None
    fallback: Action | None = None
    rate_limit: RateLimit | None = None
    note: str | None = None
    """Why the action differs from the route's (e.g. an unsafe transfer target)."""


@dataclass(frozen=True, slots=True)
class RouteIndex:
    """Candidate routes for a call without testing every route.

    A route whose match requires the called (or caller) number to be one of a few exact
    numbers or prefixes is filed under them; all other routes are always candidates.
    Candidates are tested in file order, so the first match still wins.
    """

    always: tuple[int, ...]
    # dicts, not Mappings (never changed after the build): a compiled `.get` on a dict is
    # a direct C call, on a Mapping a method lookup.
    called_exact: dict[str, tuple[int, ...]]
    called_prefix: dict[str, tuple[int, ...]]
    caller_exact: dict[str, tuple[int, ...]]
    caller_prefix: dict[str, tuple[int, ...]]
    prefix_lengths: tuple[int, ...]

    def candidates(self, call: CallIdentity) -> list[int]:
        hits: list[tuple[int, ...]] = []
        called, caller = call.called, call.caller
        if called is not None and called.number_key is not None:
            self._file(hits, called.number_key, self.called_exact, self.called_prefix)
        if caller is not None and caller.number_key is not None:
            self._file(hits, caller.number_key, self.caller_exact, self.caller_prefix)
        if not hits:
            return list(self.always)
        found = [*self.always, *hits[0]]
        if len(hits) == 1:
            found.sort()  # two sorted runs, no route in both: always-routes are not filed
            return found
        for more in hits[1:]:
            found.extend(more)
        return sorted(set(found))  # a route can be filed under several keys a call hits

    def _file(
        self,
        hits: list[tuple[int, ...]],
        key: str,
        exact: dict[str, tuple[int, ...]],
        prefix: dict[str, tuple[int, ...]],
    ) -> None:
        hit = exact.get(key)
        if hit:
            hits.append(hit)
        if prefix:
            for n in self.prefix_lengths:
                if n > len(key):
                    break
                hit = prefix.get(key[:n])
                if hit:
                    hits.append(hit)


@dataclass(frozen=True, slots=True)
class RuleSet:
    routes: tuple[Route, ...]
    default: Action
    version: str
    """Content hash of the files the rules came from."""
    source: str
    loaded_at: float
    files: tuple[str, ...] = ()
    """Every file the rules were built from (the routes file first): what to watch."""
    timezone: ZoneInfo = dataclasses.field(default_factory=lambda: ZoneInfo("UTC"))
    index: RouteIndex | None = None
    warnings: tuple[str, ...] = ()

    def match(self, call: CallIdentity, now: datetime) -> Route | None:
        """The first route that matches, or None (the default applies)."""
        order = self.index.candidates(call) if self.index is not None else range(len(self.routes))
        routes = self.routes
        for i in order:
            if routes[i].matches(call, now):
                return routes[i]
        return None

    def decide(
        self, call: CallIdentity, now: datetime | None = None, call_id: str = ""
    ) -> Decision:
        now = now or datetime.now(UTC)
        route = self.match(call, now)
        if route is None:
            return self._finish(call, now, DEFAULT_ROUTE, self.default, None, None, None)
        action, arm = route.action, None
        if isinstance(action, Split):
            chosen = action.choose(route.name, caller_key(call) or call_id)
            action, arm = chosen.action, chosen.name
        return self._finish(call, now, route.name, action, arm, route.fallback, route.rate_limit)

    def _finish(
        self,
        call: CallIdentity,
        now: datetime,
        route: str,
        action: Action,
        arm: str | None,
        fallback: Action | None,
        rate_limit: RateLimit | None,
    ) -> Decision:
        note = None
        if (
            _templated(action)
            or (fallback is not None and _templated(fallback))
            or (rate_limit is not None and _templated(rate_limit.over_limit))
        ):
            values = call_values(call, route, now, self.timezone)
            action, note = render(action, values)
            if fallback is not None:
                fallback, _ = render(fallback, values)
            if rate_limit is not None:
                over, _ = render(rate_limit.over_limit, values)
                rate_limit = dataclasses.replace(rate_limit, over_limit=over)
        # tuple.__new__: see app.sip.identity.identify.
        return tuple.__new__(
            Decision, (route, action, self.version, arm, fallback, rate_limit, note)
        )

    def route_actions(self) -> Iterator[tuple[str, str]]:
        """(route, action kind) pairs, for pre-creating metric labels."""
        for route in self.routes:
            if isinstance(route.action, Split):
                for arm in route.action.arms:
                    yield route.name, arm.action.kind
            else:
                yield route.name, route.action.kind
            if route.rate_limit is not None:
                yield route.name, route.rate_limit.over_limit.kind
            if route.fallback is not None:
                yield route.name, route.fallback.kind
        yield DEFAULT_ROUTE, self.default.kind

    def split_arms(self) -> Iterator[tuple[str, str]]:
        for route in self.routes:
            if isinstance(route.action, Split):
                for arm in route.action.arms:
                    yield route.name, arm.name


def caller_key(call: CallIdentity) -> str:
    """Who the caller is, for sticky splits and rate limits; empty when unknown.

    An anonymous address (`sip:anonymous@anonymous.invalid`, `sip:restricted@<gateway>`,
    RFC 3323's random `sip:c8oqz84zk7z@privacy.org`) says nothing about who calls: all
    of them are one unknown caller, not one caller per gateway or per call."""
    if call.caller is None or call.caller.is_anonymous:
        return ""
    return call.caller.number_key or call.caller.uri


def _templated(action: Action) -> bool:
    if isinstance(action, Accept):
        return action.template is not None
    if isinstance(action, Refer):
        return action.target_template is not None or action.accept_template is not None
    return False


UNSAFE_TARGET_STATUS: Final = 603


def render(action: Action, values: CallValues) -> tuple[Action, str | None]:
    """The action with this call's values in; an unsafe transfer becomes a reject."""
    if isinstance(action, Accept) and action.template is not None:
        body = action.template.render(values)
        return Accept(body, features=action.features, api=action.api), None
    if isinstance(action, Refer):
        target = action.target_uri
        if action.target_template is not None:
            try:
                target = validate_target_uri(action.target_template.render(values, uri_token))
            except (UnsafeValue, ValueError) as exc:
                return Reject(UNSAFE_TARGET_STATUS), f"unsafe transfer target: {exc}"
        body = action.accept_body
        if action.accept_template is not None:
            body = action.accept_template.render(values)
        return Refer(target, body, announce=action.announce, api=action.api), None
    return action, None


# A str as a JSON string literal, as json.dumps(text, ensure_ascii=False) writes it, by
# the C function json.dumps ends up calling (without its per-call set-up).
_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def indexable(route: Route) -> tuple[str, NumberMatches] | None:
    """The called/caller number condition a route can be filed under, if any."""
    for party in ("called", "caller"):
        for condition in route.conditions:
            if (
                isinstance(condition, NumberMatches)
                and condition.party == party
                and len(condition.sets) == 1
                and condition.regex is None
                and not condition.countries
                and not condition.types
                and len(condition.sets[0]) <= 1000
            ):
                return party, condition
    return None
