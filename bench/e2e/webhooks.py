"""Pre-signed `realtime.call.incoming` deliveries, written as raw HTTP requests.

Every delivery has its own webhook id and call id (nothing is a duplicate, so no dedupe
short-circuits the work), realistic carrier SIP headers from `bench.workload`, and a
Standard Webhooks signature made with the current time: a file is good for the tolerance
window (300 s by default), so each phase of a run signs its own.

The file format is what `load.lua` and `bench.e2e.openloop` read: for each request its
length in bytes as ASCII digits, a newline, then the request bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from app.intake.webhook import decode_secret
from bench.workload import CallMaker

WEBHOOK_PATH = "/webhooks/openai"
USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"


def bench_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def event(call_id: str, headers: tuple[tuple[str, str], ...], created: int) -> dict[str, object]:
    """The event as OpenAI's webhook reference shows it."""
    return {
        "object": "event",
        "id": f"evt_{secrets.token_hex(12)}",
        "type": "realtime.call.incoming",
        "created_at": created,
        "data": {
            "call_id": call_id,
            "sip_headers": [{"name": name, "value": value} for name, value in headers],
            "sip_media_security": "srtp",
        },
    }


def signed_request(
    key: bytes, body: bytes, *, host: str, timestamp: int, path: str = WEBHOOK_PATH
) -> bytes:
    webhook_id = f"wh_{secrets.token_hex(16)}"
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"host: {host}\r\n"
        f"user-agent: {USER_AGENT}\r\n"
        "content-type: application/json\r\n"
        f"webhook-id: {webhook_id}\r\n"
        f"webhook-timestamp: {timestamp}\r\n"
        f"webhook-signature: v1,{signature}\r\n"
        f"content-length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


def write_requests(path: Path, maker: CallMaker, count: int, *, secret: str, host: str) -> Path:
    """`count` signed deliveries of fresh calls from `maker`, signed now."""
    key = decode_secret(secret)
    now = int(time.time())
    with path.open("wb") as out:
        for _ in range(count):
            call = maker.make()
            call_id = f"rtc_{secrets.token_hex(16)}"
            body = json.dumps(event(call_id, call.headers, now), separators=(",", ":")).encode()
            request = signed_request(key, body, host=host, timestamp=now)
            out.write(b"%d\n" % len(request))
            out.write(request)
    return path


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        length = int(data[pos:newline])
        out.append(data[newline + 1 : newline + 1 + length])
        pos = newline + 1 + length
    return out
