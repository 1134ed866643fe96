"""The SIP dialog an INVITE starts, as a key: what ties the two webhooks of one call.

OpenAI may announce one pending SIP call twice, once per API (`realtime.call.incoming` with an
`rtc_...` call id, `live.transport.incoming` with a `live_...` session id), and no field of the
payloads links the two. Both carry the INVITE's headers, and RFC 3261 makes `Call-ID` plus the
From tag the caller's half of the dialog identifier: the same INVITE gives the same key. The
values are caller-controlled, so the key only ever ties a Realtime event to a Live event for
a bounded time; it is hashed so that no header text is kept.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from app.sip.identity import Headers, canonical_name

_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)


def dialog_key(headers: Iterable[tuple[str, str]]) -> str | None:
    """A short digest of Call-ID and the From tag. Without a Call-ID (SIP requires one, but
    the caller controls the INVITE), a digest of every header in order: both events carry
    the same headers, so they still get the same key. None only for no headers at all.
    `headers`: a Headers (the router's, parsed once per call) or any (name, value) pairs."""
    if not isinstance(headers, Headers):
        headers = Headers(headers)
    call_ids = headers.get_all("call-id")
    call_id = call_ids[0].strip() if call_ids else None  # the first Call-ID, even if blank
    from_value = next((value for value in headers.get_all("from") if value), "")
    if call_id:
        # The tag is after the address (a display name or URI may hold ";tag=" text).
        params = from_value.rpartition(">")[2] if ">" in from_value else from_value
        tag = _TAG.search(params)
        return _digest(f"call-id\0{call_id}\0{tag.group(1) if tag else ''}")
    if len(headers):
        text = "\0".join(f"{canonical_name(name)}:{value}" for name, value in headers)
        return _digest(f"headers\0{text}")
    return None


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=16).hexdigest()
