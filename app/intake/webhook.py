"""Raw webhook request -> verified, parsed event.

The signature (Standard Webhooks: HMAC-SHA256 over `id.timestamp.body`) is checked on the
raw body bytes before anything is parsed; only then is the JSON read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

INCOMING_CALL = "realtime.call.incoming"

MAX_ID_LENGTH = 256
MAX_SIGNATURE_HEADER = 4096
MAX_SIP_HEADERS = 256
MAX_SIP_HEADER_NAME = 128
MAX_SIP_HEADER_VALUE = 8192

# A call_id goes into a URL path: letters, digits and a few separators only.
_CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,256}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class WebhookError(Exception):
    """A webhook that cannot be taken; `status_code` is the HTTP answer."""

    status_code = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(WebhookError):
    status_code = 401


class MalformedPayload(WebhookError):
    status_code = 400


def decode_secret(secret: str) -> bytes:
    """The key bytes behind `whsec_<base64>`; ValueError with a precise reason."""
    text = secret.strip()
    if text.startswith("whsec_"):
        text = text[len("whsec_") :]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("webhook secret is too short (under 16 bytes of key)")
    return key


class SignatureVerifier:
    """Verifies Standard Webhooks signatures against one or more secrets (rotation)."""

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance_seconds: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("at least one webhook secret is required")
        self._keys = [decode_secret(s) for s in secrets]
        self._tolerance = tolerance_seconds
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Return the webhook id if some `v1` signature matches; raise SignatureError."""
        msg_id = headers.get("webhook-id", "")
        stamp = headers.get("webhook-timestamp", "")
        signature_header = headers.get("webhook-signature", "")
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", stamp),
            ("webhook-signature", signature_header),
        ):
            if not value:
                raise SignatureError(f"missing {name} header")
        if len(msg_id) > MAX_ID_LENGTH or not msg_id.isprintable():
            raise SignatureError("malformed webhook-id header")
        if not _TIMESTAMP.fullmatch(stamp):
            raise SignatureError("malformed webhook-timestamp header")
        age = self._clock() - int(stamp)
        if age > self._tolerance:
            raise SignatureError("webhook-timestamp is too old")
        if age < -self._tolerance:
            raise SignatureError("webhook-timestamp is too new")
        offered = _offered_signatures(signature_header)
        if not offered:
            raise SignatureError("no v1 signature in webhook-signature header")
        # The signed content is the raw body, whatever its encoding: a signed body that is
        # not UTF-8 is malformed (400, parse_event), not forged (401).
        signed = b"%s.%s.%s" % (msg_id.encode(), stamp.encode(), body)
        for key in self._keys:
            expected = hmac.new(key, signed, hashlib.sha256).digest()
            if any(hmac.compare_digest(expected, sig) for sig in offered):
                return msg_id
        raise SignatureError("signature does not match")


def _offered_signatures(header: str) -> list[bytes]:
    if len(header) > MAX_SIGNATURE_HEADER:
        return []
    found = []
    for item in header.split():
        version, _, encoded = item.partition(",")
        if version != "v1" or not encoded:
            continue  # other schemes (v1a) and garbage are not ours to judge
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


@dataclass(frozen=True, slots=True)
class SipHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A verified `realtime.call.incoming` event."""

    webhook_id: str
    call_id: str
    sip_headers: tuple[SipHeader, ...]
    media_security: str | None


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A verified event this router does not act on (live.*, realtime.call.*, ...)."""

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
    if event_type != INCOMING_CALL:
        return OtherEvent(webhook_id=webhook_id, type=event_type[:100])
    data = payload.get("data")
    if not isinstance(data, dict):
        raise MalformedPayload("event has no data object")
    call_id = data.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise MalformedPayload("event has no data.call_id")
    if not _CALL_ID.fullmatch(call_id) or call_id == "." or ".." in call_id:
        # "." and ".." are dot segments: an HTTP client resolves them out of the URL path.
        raise MalformedPayload("data.call_id has unexpected characters")
    security = data.get("sip_media_security")
    return IncomingCall(
        webhook_id=webhook_id or call_id,
        call_id=call_id,
        sip_headers=_sip_headers(data.get("sip_headers")),
        media_security=security.lower()[:16] if isinstance(security, str) else None,
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
