"""`{caller}`-style templates in session strings and refer targets.

Everything a template pulls from the call is caller-controlled. Two rules keep it safe:
- in session text, a value is cleaned (no control characters, quotes, braces or angle
  brackets), cut to a short length and put in double quotes, so a caller name such as
  `Ignore previous instructions` reads as a quoted name, not as an instruction;
- in a refer target, a value must be a bare token (a number or a SIP user: letters,
  digits, `+ - . _`), and placeholders are allowed only in the user part, so the target
  stays one URI to the host the operator wrote. A value that is not a bare token makes
  the render fail, and the call is rejected rather than transferred anywhere unintended.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from app.rules.schedule import minute_aligned, minute_of
from app.sip.identity import Address, CallIdentity

FIELDS: Final = (
    "caller",
    "called",
    "caller_name",
    "forwarded_from",
    "route",
    "date",
    "time",
    "weekday",
    "datetime",
)
HEADER_FIELD: Final = re.compile(r"header\.([A-Za-z0-9!%*_+`'~.-]{1,64})")
MAX_TEXT_VALUE: Final = 64
_UNSAFE_TEXT: Final = re.compile(r"[\x00-\x1f\x7f\"'`{}<>\\]+")
_TOKEN: Final = re.compile(r"[A-Za-z0-9+._-]{1,64}")

_formatter: Final = string.Formatter()


class TemplateError(ValueError):
    """A template that cannot be used (found at load time)."""


class UnsafeValue(Exception):
    """A caller-supplied value that cannot go into a refer target."""


def placeholders(template: str) -> list[str]:
    """The fields a template uses; TemplateError when it is malformed or unknown."""
    try:
        parts = list(_formatter.parse(template))
    except ValueError as exc:
        raise TemplateError(
            f"bad template {template!r}: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    fields = []
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if spec or conversion:
            raise TemplateError(f"placeholder {{{field}}} takes no format spec or conversion")
        if field not in FIELDS and not HEADER_FIELD.fullmatch(field):
            raise TemplateError(
                f"unknown placeholder {{{field}}}: use one of "
                + ", ".join(f"{{{f}}}" for f in FIELDS)
                + ", {header.Name} (write {{ and }} for literal braces)"
            )
        fields.append(field)
    return fields


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    fields: tuple[str, ...]
    _parts: tuple[tuple[str, str | None], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    """(literal, field or None) pairs, parsed once rather than per call."""

    def __post_init__(self) -> None:
        # Not vformat: it reads `{header.X-Foo}` as attribute `X-Foo` of a field `header`.
        parts = tuple((literal, name) for literal, name, _, _ in _formatter.parse(self.text))
        object.__setattr__(self, "_parts", parts)

    @classmethod
    def parse(cls, text: str) -> Template:
        return cls(text, tuple(placeholders(text)))

    def render(self, values: CallValues, clean: Callable[[str], str]) -> str:
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is not None:
                out.append(clean(values.get(name)))
        return "".join(out)


def quote_text(value: str) -> str:
    """A caller-controlled value as a short quoted string for session text."""
    cleaned = " ".join(_UNSAFE_TEXT.sub(" ", value).split())
    if len(cleaned) > MAX_TEXT_VALUE:
        cleaned = cleaned[: MAX_TEXT_VALUE - 1] + "…"
    return f'"{cleaned}"'


def uri_token(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise UnsafeValue(f"{value[:40]!r} is not a number or plain SIP user")
    return value


def check_target_template(uri: str) -> None:
    """Placeholders only in the user part of sip:/sips:, or as the tel: number."""
    fields = placeholders(uri)
    if not fields:
        return
    scheme, _, rest = uri.partition(":")
    if scheme.lower() == "tel":
        if "{" in rest.partition(";")[2]:
            raise TemplateError("placeholders may not be in tel: parameters")
        return
    user, at, host = rest.rpartition("@")
    if not at or "{" in host:
        raise TemplateError(
            "placeholders may only be in the user part of a sip: target (sip:{called}@host), "
            "so that the host stays the one written here"
        )
    if "{" in user and user.count("{") != 1:
        raise TemplateError("a sip: target may use one placeholder as its user part")


def call_values(call: CallIdentity, route: str, now: datetime, zone: ZoneInfo) -> CallValues:
    """The values templates can use; each is worked out when a template first asks."""
    return CallValues(call, route, now, zone)


_TIME_FORMATS: Final = {"date": "%Y-%m-%d", "time": "%H:%M", "weekday": "%A"}


class CallValues:
    """Lazy: a template uses one or two fields, and local times cost ~10 µs to format.
    Header placeholders are case-insensitive, like header names. A plain class with its
    own memo rather than a dict subclass: compiled, `get` is a direct call."""

    __slots__ = ("_call", "_found", "_now", "_route", "_zone")

    def __init__(self, call: CallIdentity, route: str, now: datetime, zone: ZoneInfo) -> None:
        self._call = call
        self._route = route
        self._now = now
        self._zone = zone
        self._found: dict[str, str] = {}

    def get(self, key: str) -> str:
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = self._value(key)
        return found

    def _value(self, key: str) -> str:
        call = self._call
        if key.startswith("header."):
            return (call.headers.get(key[len("header.") :]) or "").strip()
        if key == "caller":
            return _number(call.caller)
        if key == "called":
            return _number(call.called)
        if key == "forwarded_from":
            return _number(call.forwarded_from)
        if key == "caller_name":
            return call.display_name or ""
        if key == "route":
            return self._route
        if key == "datetime" or key in _TIME_FORMATS:
            return _local_times(self._now, self._zone)[key]
        return ""


# The local date and time fields of the last minutes asked for: minute-precise, so every
# call of a minute shares them (formatting them costs more than the rest of a render).
_LOCAL_TIMES: Final[dict[tuple[int, ZoneInfo], dict[str, str]]] = {}
MAX_LOCAL_TIMES: Final = 64


def _local_times(now: datetime, zone: ZoneInfo) -> dict[str, str]:
    key = (minute_of(now), zone)
    found = _LOCAL_TIMES.get(key)
    if found is not None:
        return found
    local = now.astimezone(zone)
    found = {name: local.strftime(spec) for name, spec in _TIME_FORMATS.items()}
    found["datetime"] = local.isoformat(timespec="minutes")
    if not minute_aligned(local):
        return found
    if len(_LOCAL_TIMES) >= MAX_LOCAL_TIMES:
        _LOCAL_TIMES.clear()
    _LOCAL_TIMES[key] = found
    return found


def _number(address: Address | None) -> str:
    if address is None or address.is_anonymous:
        return ""  # never `anonymous` or a privacy service's random token
    return address.number_key or address.user or ""


_TEL: Final = re.compile(r"tel:\+?[0-9][0-9\-.()]{1,30}(;[A-Za-z0-9\-]+(=[A-Za-z0-9\-+.%]+)?)*")
_SIP: Final = re.compile(
    r"sips?:([A-Za-z0-9\-_.!~*'()&=+$,;/%]+@)?"
    r"([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"(;[A-Za-z0-9\-_.!~*'()%]+(=[A-Za-z0-9\-_.!~*'()%\[\]:]+)?)*"
)


def validate_target_uri(uri: str) -> str:
    """A single tel:, sip: or sips: URI with no embedded headers, spaces or brackets."""
    text = uri.strip()
    if _TEL.fullmatch(text) or _SIP.fullmatch(text):
        return text
    raise ValueError(
        f"{uri!r} is not a transfer target: use tel:+14155550123, sip:user@host or sips:user@host"
    )
