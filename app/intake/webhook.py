"""Raw webhook request -> verified body (app.intake.events parses it).

The signature (Standard Webhooks: HMAC-SHA256 over `id.timestamp.body`) is checked on the
raw body bytes before anything is parsed; only then is the JSON read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence

MAX_ID_LENGTH = 256
MAX_SIGNATURE_HEADER = 4096
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
