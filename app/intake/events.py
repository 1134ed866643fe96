"""A verified webhook body -> a typed event.

Two APIs announce an incoming SIP call: the Realtime API (`realtime.call.incoming`, a
`call_id`) and GPT-Live (`live.transport.incoming`, a `session_id`; the deprecated
`live.call.incoming` carries the same data without `data.type` and may still arrive during a
migration). Both become one `IncomingCall` whose `api` says which API the id belongs to: every
request about the call goes to that API with that id, unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from app.intake.webhook import MalformedPayload

Api = Literal["realtime", "live"]
APIS: Final[tuple[Api, ...]] = ("realtime", "live")

REALTIME_INCOMING: Final = "realtime.call.incoming"
LIVE_INCOMING: Final = "live.transport.incoming"
LIVE_INCOMING_DEPRECATED: Final = "live.call.incoming"
INCOMING_EVENTS: Final[dict[str, Api]] = {
    REALTIME_INCOMING: "realtime",
    LIVE_INCOMING: "live",
    LIVE_INCOMING_DEPRECATED: "live",
}
INCOMING_CALL: Final = REALTIME_INCOMING
"""The Realtime event's name (kept for the callers that build one)."""

MAX_SIP_HEADERS = 256
MAX_SIP_HEADER_NAME = 128
MAX_SIP_HEADER_VALUE = 8192

# A call or session id goes into a URL path: letters, digits and a few separators only.
_CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")


class SipHeader(NamedTuple):
    """A NamedTuple rather than a frozen dataclass: a dozen or more per call, built at a
    fraction of the cost, and a (name, value) pair as app.sip.identity.Headers takes them."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A verified incoming-call event of either API."""

    webhook_id: str
    call_id: str
    """The Realtime `call_id` or the Live `session_id`: the id `api` knows the call by."""
    sip_headers: tuple[SipHeader, ...]
    media_security: str | None
    api: Api = "realtime"


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A verified event this router does not act on (realtime.call.ended, WebRTC transports...)."""

    webhook_id: str
    type: str


def parse_event(body: bytes, webhook_id: str) -> IncomingCall | OtherEvent:
    """Parse a verified body; raise MalformedPayload with the reason."""
    try:
        text = body.decode("utf-8")  # json.loads would also take UTF-16 and UTF-32 bytes
    except UnicodeDecodeError:
        raise MalformedPayload("body is not UTF-8") from None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedPayload("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise MalformedPayload("body is not a JSON object")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedPayload("event has no type")
    if not webhook_id:
        webhook_id = str(payload.get("id") or "")
    api = INCOMING_EVENTS.get(event_type)
    if api is None:
        return OtherEvent(webhook_id=webhook_id, type=event_type[:100])
    data = payload.get("data")
    if not isinstance(data, dict):
        raise MalformedPayload("event has no data object")
    if event_type == LIVE_INCOMING and data.get("type") != "sip":
        # Not a phone call (the transport events also describe WebRTC sessions): not ours.
        return OtherEvent(webhook_id=webhook_id, type=event_type)
    field = "call_id" if api == "realtime" else "session_id"
    call_id = data.get(field)
    if not isinstance(call_id, str) or not call_id:
        raise MalformedPayload(f"event has no data.{field}")
    if not _CALL_ID.fullmatch(call_id) or call_id == "." or ".." in call_id:
        # "." and ".." are dot segments: an HTTP client resolves them out of the URL path.
        raise MalformedPayload(f"data.{field} has unexpected characters")
    security = data.get("sip_media_security")
    return IncomingCall(
        webhook_id=webhook_id or call_id,
        call_id=call_id,
        sip_headers=_sip_headers(data.get("sip_headers")),
        media_security=security.lower()[:16] if isinstance(security, str) else None,
        api=api,
    )


def _sip_headers(raw: object) -> tuple[SipHeader, ...]:
    """Keep well-formed `{name, value}` entries in order; skip the rest, never fail."""
    if not isinstance(raw, list):
        return ()
    headers = []
    for entry in raw[:MAX_SIP_HEADERS]:
        if not isinstance(entry, dict):
            continue
        name, value = entry.get("name"), entry.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        name = name.strip()
        if not name or len(name) > MAX_SIP_HEADER_NAME:
            continue
        headers.append(SipHeader(name, value[:MAX_SIP_HEADER_VALUE]))
    return tuple(headers)
