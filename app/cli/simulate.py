"""Build a realistic signed incoming-call webhook (`realtime.call.incoming`, or GPT-Live's
`live.transport.incoming`), for trying the service."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from app.intake.events import INCOMING_CALL, LIVE_INCOMING
from app.intake.webhook import decode_secret
from app.sip.identity import canonical_name


def parse_header_line(line: str) -> tuple[str, str]:
    """`Name: value` -> (name, value); ValueError when there is no name."""
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or " " in name.strip():
        raise ValueError(f"expected 'Name: value', got {line!r}")
    return name.strip(), value.strip()


_START_LINE = re.compile(r"[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3}.*")


def parse_header_block(text: str) -> list[tuple[str, str]]:
    """Headers from a pasted SIP message: the request line is skipped, folded lines are
    joined, and the headers end at the first blank line (the SDP body is not headers)."""
    headers: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if headers:
                break
            continue
        if not headers and _START_LINE.fullmatch(line.strip()):
            continue
        if line[0] in " \t" and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        try:
            headers.append(parse_header_line(line))
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
    return headers


def invite_headers(
    *,
    caller: str,
    called: str,
    caller_name: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    trunk_host: str = "trunk.example.com",
) -> list[tuple[str, str]]:
    """The INVITE headers a carrier trunk would send; extra From/To replace the made-up ones."""
    given = {canonical_name(name) for name, _ in extra_headers}
    display = f'"{_escape(caller_name)}" ' if caller_name else ""
    tag = secrets.token_hex(4)
    made_up = [
        ("Via", f"SIP/2.0/TLS {trunk_host}:5061;branch=z9hG4bK{tag}"),
        ("From", f"{display}<sip:{caller}@{trunk_host}>;tag={tag}"),
        ("To", f"<sip:{called}@sip.api.openai.com>"),
        ("Call-ID", f"{secrets.token_hex(12)}@{trunk_host}"),
        ("CSeq", "1 INVITE"),
        ("Contact", f"<sip:{caller}@{trunk_host}:5061;transport=tls>"),
        ("User-Agent", "switchboard-simulate"),
    ]
    return [(n, v) for n, v in made_up if canonical_name(n) not in given] + list(extra_headers)


def incoming_call_event(
    *,
    caller: str,
    called: str,
    caller_name: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    call_id: str | None = None,
    media_security: str | None = "srtp",
    live: bool = False,
) -> dict[str, object]:
    """The event as OpenAI sends it, with realistic INVITE headers: `realtime.call.incoming`,
    or with `live` GPT-Live's `live.transport.incoming` (`call_id` is then the session id)."""
    headers = invite_headers(
        caller=caller, called=called, caller_name=caller_name, extra_headers=extra_headers
    )
    sip_headers = [{"name": n, "value": v} for n, v in headers]
    data: dict[str, object]
    if live:
        session_id = call_id or f"live_{secrets.token_hex(16)}"
        data = {"type": "sip", "session_id": session_id, "sip_headers": sip_headers}
    else:
        data = {"call_id": call_id or f"rtc_{secrets.token_hex(16)}", "sip_headers": sip_headers}
    if media_security:
        data["sip_media_security"] = media_security
    return {
        "object": "event",
        "id": f"evt_{secrets.token_hex(12)}",
        "type": LIVE_INCOMING if live else INCOMING_CALL,
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
