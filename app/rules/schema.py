"""The shape of routes.yaml, as pydantic models. Unknown keys are errors everywhere.

Validation here is per value (a status code, a URI, a number pattern); relations between
parts of the file (a route naming a session that does not exist) are checked by compile.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from app.rules.numbers import normalise_pattern
from app.rules.regex import check_regex
from app.rules.schedule import parse_dates, parse_days, parse_timezone, parse_window

# Session models (and the in-call features they hold) have their own module; the names
# compile and the CLI reach through `schema` are re-exported here.
from app.rules.sessions import Api as Api
from app.rules.sessions import CallFeaturesSpec as CallFeaturesSpec
from app.rules.sessions import Destination as Destination
from app.rules.sessions import LiveFields, Session
from app.rules.sessions import LiveSession as LiveSession
from app.rules.sessions import MaxDuration as MaxDuration
from app.rules.sessions import SessionConfig as SessionConfig
from app.rules.strict import Strict as Strict
from app.rules.templates import check_target_template, validate_target_uri
from app.sip.identity import canonical_name

# --- matchers ---------------------------------------------------------------------


def _region(info: ValidationInfo) -> str:
    return str((info.context or {}).get("region", "US"))


def _number_patterns(value: Any, info: ValidationInfo) -> Any:
    """A number, a prefix ending in `*`, or a list of them -> normalised tuple."""
    if isinstance(value, dict):
        return value
    items = [value] if isinstance(value, str | int) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a number, a prefix ending in *, or a non-empty list of them")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ValueError("numbers must be written as strings, e.g. '+14155550123'")
        out.append(normalise_pattern(str(item), _region(info)))
    return tuple(out)


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _regex(value: str | None) -> str | None:
    # RE2, as matching will use (app.rules.regex): what it refuses is refused here, with
    # the construct named and what to write instead.
    return check_regex(value) if value is not None else None


NumberType = Literal[
    "fixed_line",
    "mobile",
    "fixed_line_or_mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "unknown",
]


_TYPE_NAMES = list(typing.get_args(NumberType))
NumberTypes = Annotated[
    tuple[NumberType, ...],
    WithJsonSchema(
        {"anyOf": [{"enum": _TYPE_NAMES}, {"type": "array", "items": {"enum": _TYPE_NAMES}}]}
    ),
]


class NumberCondition(Strict):
    """Every key given must hold."""

    equals: Patterns | None = None
    prefix: Patterns | None = None
    list: Patterns | None = None
    """Names of lists under `lists:`; the number must be in one of them."""
    regex: str | None = None
    country: Patterns | None = None
    """ISO 3166 regions, e.g. US, GB."""
    type: NumberTypes | None = None

    _lists = field_validator("list", "type", mode="before")(_one_or_many)
    _re = field_validator("regex")(_regex)

    @field_validator("equals", mode="before")
    @classmethod
    def _equals(cls, value: Any, info: ValidationInfo) -> Any:
        result = _number_patterns(value, info)
        if isinstance(result, tuple) and any(p.endswith("*") for p in result):
            raise ValueError("equals takes whole numbers; use prefix: for prefixes")
        return result

    @field_validator("prefix", mode="before")
    @classmethod
    def _prefix(cls, value: Any, info: ValidationInfo) -> Any:
        items = [value] if isinstance(value, str | int) else value
        if not isinstance(items, list) or not items:
            raise ValueError("expected a prefix or a non-empty list of prefixes")
        return tuple(
            normalise_pattern(str(item).rstrip("*") + "*", _region(info)) for item in items
        )

    @field_validator("country", mode="before")
    @classmethod
    def _country(cls, value: Any) -> Any:
        import phonenumbers

        items = _one_or_many(value)
        if not isinstance(items, list):
            return items
        out = []
        for item in items:
            code = str(item).strip().upper()
            if code not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"{item!r} is not an ISO 3166 region code (e.g. US, GB, DE)")
            out.append(code)
        return tuple(out)

    @model_validator(mode="after")
    def _not_empty(self) -> NumberCondition:
        if not self.model_fields_set:
            raise ValueError("give at least one of: equals, prefix, list, regex, country, type")
        return self


# YAML also takes a single string where a list is expected (normalised before validation);
# the JSON Schema says so, for editors.
_PATTERNS_SCHEMA = WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
)
Patterns = Annotated[tuple[str, ...], _PATTERNS_SCHEMA]
NumberMatch = Annotated[Patterns | NumberCondition, Field(union_mode="left_to_right")]


class TextCondition(Strict):
    equals: str | None = None
    contains: str | None = None
    regex: str | None = None
    present: bool | None = None
    absent: bool | None = None
    ignore_case: bool = False

    _re = field_validator("regex")(_regex)

    @model_validator(mode="after")
    def _one(self) -> TextCondition:
        given = [
            k
            for k in ("equals", "contains", "regex", "present", "absent")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of: equals, contains, regex, present, absent")
        return self


TextMatch = Annotated[str | TextCondition, Field(union_mode="left_to_right")]


def _as_text(value: Any) -> Any:
    """`X-Priority: 1` is the text "1": YAML would make it a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class MatchSpec(Strict):
    """All conditions given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    caller: NumberMatch | None = None
    called: NumberMatch | None = None
    forwarded_from: NumberMatch | None = None
    caller_name: TextMatch | None = None
    headers: dict[str, TextMatch] | None = None
    anonymous: bool | None = None
    forwarded: bool | None = None
    """A Diversion or History-Info header is present."""
    media_security: Literal["srtp", "rtp", "none"] | None = None
    schedule: str | None = None
    """Name of a schedule under `schedules:` that must hold now."""
    outside_schedule: str | None = None
    all: list[MatchSpec] | None = Field(default=None, min_length=1)
    any: list[MatchSpec] | None = Field(default=None, min_length=1)
    not_: MatchSpec | None = Field(default=None, alias="not")

    _numbers = field_validator("caller", "called", "forwarded_from", mode="before")(
        _number_patterns
    )

    @field_validator("caller_name", mode="before")
    @classmethod
    def _name_text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("headers", mode="before")
    @classmethod
    def _header_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: _as_text(v) for name, v in value.items()}
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            seen: set[str] = set()
            for name in value:
                if not re.fullmatch(r"[A-Za-z0-9!%*_+`'~.-]+", name):
                    raise ValueError(f"{name!r} is not a SIP header name")
                if canonical_name(name) in seen:
                    raise ValueError(f"header {name!r} is given twice")
                seen.add(canonical_name(name))
        return value


# --- schedules and lists ----------------------------------------------------------------


class ScheduleSpec(Strict):
    timezone: str
    weekly: dict[str, str | list[str]] = Field(default_factory=dict)
    """Days (`mon-fri`, `sat`, `mon,wed`, `daily`) -> windows (`09:00-17:00`)."""
    include: list[str] = Field(default_factory=list)
    """Dates or ranges (`2026-12-24`, `2026-12-24..2026-12-26`) inside all day."""
    exclude: list[str] = Field(default_factory=list)
    """Dates or ranges never inside: holidays."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @field_validator("weekly")
    @classmethod
    def _weekly(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for days, windows in value.items():
            parse_days(days)
            for window in [windows] if isinstance(windows, str) else windows:
                parse_window(window)
        return value

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _dates(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            items = [str(item) for item in items]  # YAML reads 2026-12-25 as a date
            for item in items:
                parse_dates(item)
        return items


class ListFile(Strict):
    file: str
    """Path to a .txt or .csv file, relative to the routes file."""
    column: int = Field(default=1, ge=1)
    """For CSV: which column holds the number."""


class InlineList(RootModel[Patterns]):
    model_config = ConfigDict(frozen=True)

    @field_validator("root", mode="before")
    @classmethod
    def _numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return _number_patterns(value, info)


# --- actions ----------------------------------------------------------------------------


def _target(value: str) -> str:
    check_target_template(value)
    if "{" in value:
        # Check the shape with a harmless stand-in for each placeholder: digits, which
        # fit both a tel: number and a sip: user (`x1` made every `tel:{...}` an error).
        validate_target_uri(re.sub(r"\{[^{}]*\}", "15550100", value))
        return value.strip()
    return validate_target_uri(value)


class AcceptAction(SessionConfig):
    """Accept through the Realtime API."""

    session: str | None = None
    """Name of a session under `sessions:`; the other keys here override it."""


class LiveAcceptAction(LiveFields):
    """Accept through GPT-Live: `type: live`, or `session:` naming a Live session."""

    session: str | None = None
    """Name of a Live session under `sessions:`; the other keys here override it."""


Accept = Annotated[
    Annotated[AcceptAction, Tag("realtime")] | Annotated[LiveAcceptAction, Tag("live")],
    Discriminator(
        lambda value: value.get("type", "realtime") if isinstance(value, dict) else "realtime",
        custom_error_type="session_type",
        custom_error_message="type must be realtime (the default) or live",
    ),
]


def validation_context(data: Any, region: str) -> dict[str, Any]:
    """What validating routes.yaml needs besides the value at hand: the default region, and
    which named sessions are Live (so that `accept: NAME` is checked as a Live accept)."""
    sessions = data.get("sessions") if isinstance(data, dict) else None
    live = frozenset(
        name
        for name, session in (sessions.items() if isinstance(sessions, dict) else ())
        if isinstance(session, dict) and session.get("type") == "live"
    )
    return {"region": region, "live_sessions": live}


def _accept_api(value: Any, info: ValidationInfo) -> Any:
    """`type: live` added to an accept naming a Live session (the union's discriminator)."""
    if not isinstance(value, dict) or not isinstance(value.get("session"), str):
        return value
    name = value["session"]
    api = "live" if name in (info.context or {}).get("live_sessions", ()) else "realtime"
    given = value.get("type")
    if given is None:
        return {**value, "type": "live"} if api == "live" else value
    if given != api:
        raise ValueError(
            f"session {name!r} is a {api} session: leave out type (or write type: {api})"
        )
    return value


class RejectAction(Strict):
    status_code: int = Field(default=603, ge=400, le=699)


class ReferAction(Strict):
    target_uri: str
    """tel:, sip: or sips:; `{placeholders}` only as the number or the user part."""
    session: str | None = None
    """Session for the short accept that REFER needs; a minimal one by default."""
    announce: str | None = None
    """Instructions for a short line said before transferring (over the sideband)."""

    _uri = field_validator("target_uri")(_target)


ACTION_KEYS = ("accept", "reject", "refer")


def _or(*others: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """Add the shorthand forms (a string, a number) to a field's JSON Schema."""

    def extend(field_schema: dict[str, Any]) -> None:
        field_schema.setdefault("anyOf", []).extend(others)

    return extend


class ActionSpec(Strict):
    accept: Accept | None = Field(default=None, json_schema_extra=_or({"type": "string"}))
    """A session (by name, or inline with overrides); Realtime unless the session is Live."""
    reject: RejectAction | None = Field(default=None, json_schema_extra=_or({"type": "integer"}))
    """A SIP status code, 603 Decline by default."""
    refer: ReferAction | None = Field(default=None, json_schema_extra=_or({"type": "string"}))
    """A tel:, sip: or sips: URI to transfer to."""

    _choices: ClassVar[tuple[str, ...]] = ACTION_KEYS

    @field_validator("accept", mode="before")
    @classmethod
    def _session_shorthand(cls, value: Any, info: ValidationInfo) -> Any:
        return _accept_api({"session": value} if isinstance(value, str) else value, info)

    @field_validator("reject", mode="before")
    @classmethod
    def _reject_shorthand(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"status_code": value}
        return value

    @field_validator("refer", mode="before")
    @classmethod
    def _refer_shorthand(cls, value: Any) -> Any:
        return {"target_uri": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _bare_reject(cls, data: Any) -> Any:
        # `reject:` with nothing after it means "reject with the default code".
        if isinstance(data, dict) and "reject" in data and data["reject"] is None:
            return {**data, "reject": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionSpec:
        given = [n for n in self._choices if getattr(self, n, None) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one action: {', '.join(self._choices)}"
                + (f" (found {', '.join(given)})" if given else "")
            )
        return self


class ArmSpec(ActionSpec):
    weight: int = Field(ge=0)
    name: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", value)
        if not match:
            raise ValueError(f"{value!r} is not a duration like 30s, 5m or 1h")
        return float(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2] or "s"]
    return value


class RateLimitSpec(Strict):
    calls: int = Field(ge=1)
    per: Annotated[
        float,
        Field(gt=0, le=7 * 86400),
        WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}]}),
    ]
    """Window: seconds, or 30s / 5m / 1h."""
    over_limit: ActionSpec = Field(
        default_factory=lambda: ActionSpec(reject=RejectAction(status_code=486))
    )

    _per = field_validator("per", mode="before")(_duration)


class RouteSpec(ActionSpec):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    match: MatchSpec | None = None
    """Absent: the route matches every call."""
    split: list[ArmSpec] | None = Field(default=None, min_length=1)
    """Weighted choice between actions (A/B tests), sticky per caller."""
    rate_limit: RateLimitSpec | None = None
    fallback: ActionSpec | None = None
    """What to do when the action fails (e.g. accept failed -> reject 503)."""

    _choices: ClassVar[tuple[str, ...]] = (*ACTION_KEYS, "split")

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == "default":
            raise ValueError("'default' names the action for calls no route matches; pick another")
        return value

    @field_validator("split")
    @classmethod
    def _weights(cls, value: list[ArmSpec] | None) -> list[ArmSpec] | None:
        if value is not None:
            if sum(arm.weight for arm in value) <= 0:
                raise ValueError("the weights of a split must add up to more than 0")
            names = [arm.name for arm in value if arm.name]
            if len(names) != len(set(names)):
                raise ValueError("arm names in a split must differ")
        return value


class RoutesFile(Strict):
    version: Literal[1] = 1
    timezone: str = "UTC"
    """Timezone of {date}, {time} and {weekday} in templates."""
    lists: dict[str, InlineList | ListFile] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)
    sessions: dict[str, Session] = Field(default_factory=dict)
    """Realtime sessions, and Live ones (`type: live`)."""
    routes: list[RouteSpec] = Field(default_factory=list)
    default: ActionSpec = Field(default_factory=lambda: ActionSpec(reject=RejectAction()))
    """What happens to a call no route matches."""

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        parse_timezone(value)
        return value


def json_schema() -> dict[str, Any]:
    """JSON Schema of routes.yaml, for editors (yaml-language-server)."""
    result = RoutesFile.model_json_schema(by_alias=True)
    _live_overrides(result)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **result,
        "title": "Switchboard routes.yaml",
    }


_ACCEPTS = [{"$ref": "#/$defs/AcceptAction"}, {"$ref": "#/$defs/LiveAcceptAction"}]


def _live_overrides(node: Any) -> None:
    """`accept: {session: NAME, ...}` is a Live accept when NAME is a Live session, without
    `type: live`: which a JSON Schema cannot know. So for editors `type` is optional in a
    Live accept, and an accept is either kind (anyOf: a bare override fits both)."""
    if isinstance(node, dict):
        if node.get("oneOf") == _ACCEPTS:
            node["anyOf"] = node.pop("oneOf")
        live = node.get("$defs", {}).get("LiveAcceptAction")
        if live is not None:
            live["required"] = [key for key in live.get("required", []) if key != "type"]
            if not live["required"]:
                del live["required"]
        for value in node.values():
            _live_overrides(value)
    elif isinstance(node, list):
        for item in node:
            _live_overrides(item)
