"""Build a realistic signed `realtime.call.incoming` webhook, for trying the service."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from app.webhook import INCOMING_CALL, decode_secret


def parse_header_line(line: str) -> tuple[str, str]:
    """`Name: value` -> (name, value); ValueError when there is no name."""
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or " " in name.strip():
        raise ValueError(f"expected 'Name: value', got {line!r}")
    return name.strip(), value.strip()


def incoming_call_event(
    *,
    caller: str,
    called: str,
    caller_name: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    call_id: str | None = None,
    media_security: str | None = "srtp",
    trunk_host: str = "trunk.example.com",
) -> dict[str, object]:
    """The event as OpenAI sends it, with the INVITE headers a carrier trunk would send."""
    call_id = call_id or f"rtc_{secrets.token_hex(16)}"
    display = f'"{_escape(caller_name)}" ' if caller_name else ""
    tag = secrets.token_hex(4)
    sip_headers = [
        {"name": "Via", "value": f"SIP/2.0/TLS {trunk_host}:5061;branch=z9hG4bK{tag}"},
        {"name": "From", "value": f"{display}<sip:{caller}@{trunk_host}>;tag={tag}"},
        {"name": "To", "value": f"<sip:{called}@sip.api.openai.com>"},
        {"name": "Call-ID", "value": f"{secrets.token_hex(12)}@{trunk_host}"},
        {"name": "CSeq", "value": "1 INVITE"},
        {"name": "Contact", "value": f"<sip:{caller}@{trunk_host}:5061;transport=tls>"},
        {"name": "User-Agent", "value": "switchboard-simulate"},
    ]
    sip_headers += [{"name": n, "value": v} for n, v in extra_headers]
    data: dict[str, object] = {"call_id": call_id, "sip_headers": sip_headers}
    if media_security:
        data["sip_media_security"] = media_security
    return {
        "object": "event",
        "id": f"evt_{secrets.token_hex(12)}",
        "type": INCOMING_CALL,
        "created_at": int(time.time()),
        "data": data,
    }


def signed_request(
    event: dict[str, object], secret: str | None, *, webhook_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a Standard Webhooks delivery; unsigned when no secret."""
    body = json.dumps(event)
    msg_id = webhook_id or f"wh_{secrets.token_hex(16)}"
    now = datetime.now(tz=UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "switchboard-simulate",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
    }
    if secret:
        headers["webhook-signature"] = Webhook(decode_secret(secret)).sign(msg_id, now, body)
    return body.encode(), headers


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
