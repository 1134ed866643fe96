"""GPT-Live's incoming-call events, checked against the official SDK's event models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.webhooks import (
    LiveCallIncomingWebhookEvent,
    LiveTransportIncomingWebhookEvent,
    RealtimeCallIncomingWebhookEvent,
)

from app.intake.events import IncomingCall, SipHeader, parse_event
from app.intake.webhook import MalformedPayload

HEADERS = [
    {"name": "From", "value": "<sip:+14155550123@sip.example.com>;tag=a1"},
    {"name": "Call-ID", "value": "abc@10.0.0.1"},
]


def live_event(event_type: str = "live.transport.incoming", **data: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"session_id": "live_123", "sip_headers": HEADERS}
    if event_type == "live.transport.incoming":
        payload["type"] = "sip"
    payload.update(data)
    return {
        "id": "evt_1",
        "object": "event",
        "created_at": 1760000000,
        "type": event_type,
        "data": {k: v for k, v in payload.items() if v is not None},
    }


@pytest.mark.parametrize(
    ("event", "model"),
    [
        (live_event(sip_media_security="srtp"), LiveTransportIncomingWebhookEvent),
        (live_event("live.call.incoming", sip_media_security="srtp"), LiveCallIncomingWebhookEvent),
    ],
    ids=["live.transport.incoming", "live.call.incoming"],
)
def test_live_events_parse_to_a_live_call(event: dict[str, Any], model: Any) -> None:
    model.model_validate(event)  # the SDK takes our sample as a valid event of that type
    parsed = parse_event(json.dumps(event).encode(), "wh_1")
    assert parsed == IncomingCall(
        "wh_1",
        "live_123",
        (SipHeader("From", HEADERS[0]["value"]), SipHeader("Call-ID", "abc@10.0.0.1")),
        "srtp",
        api="live",
    )


def test_realtime_event_is_a_realtime_call() -> None:
    event = {
        "id": "evt_1",
        "object": "event",
        "created_at": 1760000000,
        "type": "realtime.call.incoming",
        "data": {"call_id": "rtc_1", "sip_headers": HEADERS},
    }
    RealtimeCallIncomingWebhookEvent.model_validate(event)
    parsed = parse_event(json.dumps(event).encode(), "wh_1")
    assert isinstance(parsed, IncomingCall)
    assert (parsed.api, parsed.call_id) == ("realtime", "rtc_1")


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (live_event(session_id=None), "event has no data.session_id"),
        (live_event(session_id=""), "event has no data.session_id"),
        (live_event(session_id=7), "event has no data.session_id"),
        (live_event(session_id="../x"), "data.session_id has unexpected characters"),
        (live_event(session_id="live_1/hangup"), "data.session_id has unexpected characters"),
        (live_event(session_id=".."), "data.session_id has unexpected characters"),
        (live_event(session_id="l" * 257), "data.session_id has unexpected characters"),
        (live_event("live.call.incoming", session_id="a b"), "unexpected characters"),
        ({"type": "live.call.incoming", "data": []}, "event has no data object"),
    ],
)
def test_bad_session_ids_are_refused(event: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedPayload, match=reason):
        parse_event(json.dumps(event).encode(), "wh_1")


def test_live_media_security_is_optional_and_unknown_values_kept_short() -> None:
    parsed = parse_event(json.dumps(live_event()).encode(), "wh_1")
    assert isinstance(parsed, IncomingCall) and parsed.media_security is None
    odd = parse_event(json.dumps(live_event(sip_media_security="ZRTP-" + "x" * 40)).encode(), "")
    assert isinstance(odd, IncomingCall)
    assert odd.media_security == ("zrtp-" + "x" * 40)[:16]
    assert odd.webhook_id == "evt_1"  # no webhook-id header: the event's own id
