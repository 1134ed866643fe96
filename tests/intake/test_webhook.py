"""Table-driven tests for app.intake.webhook: signature verification and event parsing.

Test payloads are signed with the reference `standardwebhooks` package, never with the code
under test, and the verifier runs on a fixed fake clock so nothing depends on wall time.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from app.intake.events import (
    INCOMING_CALL,
    MAX_SIP_HEADER_NAME,
    MAX_SIP_HEADER_VALUE,
    MAX_SIP_HEADERS,
    IncomingCall,
    OtherEvent,
    SipHeader,
    parse_event,
)
from app.intake.webhook import (
    MAX_ID_LENGTH,
    MAX_SIGNATURE_HEADER,
    MalformedPayload,
    SignatureError,
    SignatureVerifier,
    WebhookError,
    decode_secret,
)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _secret(key: bytes) -> str:
    return "whsec_" + _b64(key)


KEY = b"switchboard-test-key-32-bytes-ok"
SECRET = _secret(KEY)
OLD_SECRET = _secret(b"old-rotated-out-key-0123456789ab")
NEW_SECRET = _secret(b"new-rotated-in-key-0123456789abc")
OTHER_SECRET = _secret(b"somebody-elses-key-0123456789abc")

NOW = 1_750_287_018  # the fake clock; every timestamp below is relative to it
TOLERANCE = 300
MSG_ID = "wh_685343a1381c819085d44c354e1b330e"
CALL_ID = "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce"

BODY = json.dumps(
    {
        "object": "event",
        "id": "evt_685343a1381c819085d44c354e1b330e",
        "type": INCOMING_CALL,
        "created_at": NOW,
        "data": {
            "call_id": CALL_ID,
            "sip_headers": [
                {"name": "From", "value": "sip:+142555512112@sip.example.com"},
                {"name": "To", "value": "sip:+18005551212@sip.example.com"},
                {"name": "Call-ID", "value": "03782086-4ce9-44bf-8b0d-4e303d2cc590"},
            ],
        },
    }
).encode()


def sign(secret: str = SECRET, *, msg_id: str = MSG_ID, ts: int = NOW, body: bytes = BODY) -> str:
    """A `v1,<base64>` signature made by the reference implementation."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())


def signed(
    secret: str = SECRET,
    *,
    msg_id: str = MSG_ID,
    ts: int = NOW,
    body: bytes = BODY,
    **override: str | None,
) -> dict[str, str]:
    """Correctly signed headers; `id=`, `timestamp=`, `signature=` replace one (None drops it)."""
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id=msg_id, ts=ts, body=body),
    }
    for key, value in override.items():
        name = f"webhook-{key}"
        assert name in headers, name
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return headers


def verifier(
    secrets: tuple[str, ...] = (SECRET,), *, tolerance: int = TOLERANCE, now: float = NOW
) -> SignatureVerifier:
    return SignatureVerifier(list(secrets), tolerance_seconds=tolerance, clock=lambda: now)


def reject_reason(v: SignatureVerifier, headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(SignatureError) as caught:
        v.verify(headers, body)
    assert caught.value.status_code == 401
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


GOOD = sign()
WRONG = sign(OTHER_SECRET)  # well-formed, but made with another key
NO_MATCH = "signature does not match"
NO_V1 = "no v1 signature in webhook-signature header"
BAD_ID = "malformed webhook-id header"
BAD_TS = "malformed webhook-timestamp header"
TOO_OLD = "webhook-timestamp is too old"
TOO_NEW = "webhook-timestamp is too new"


# --------------------------------------------------------------------------------------------
# SignatureVerifier: accepted


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(signed(), BODY, id="valid"),
        pytest.param(signed(body=b""), b"", id="empty-body"),
        pytest.param(
            signed(body='{"x": "Grüße ☎"}'.encode()), '{"x": "Grüße ☎"}'.encode(), id="utf8-body"
        ),
        pytest.param(signed(msg_id="m" * MAX_ID_LENGTH), BODY, id="id-exactly-max-length"),
        pytest.param(signed(msg_id="msg é.1 2"), BODY, id="id-printable-unicode-dot-space"),
        pytest.param(signed(signature=f"{WRONG} {GOOD}"), BODY, id="wrong-then-right"),
        pytest.param(signed(signature=f"{GOOD} {WRONG}"), BODY, id="right-then-wrong"),
        pytest.param(
            signed(signature=f"v1a,{GOOD.partition(',')[2]} {GOOD}"), BODY, id="v1a-then-right"
        ),
        pytest.param(signed(signature=f"v2,AAAA {GOOD}"), BODY, id="unknown-version-then-right"),
        pytest.param(signed(signature=f"garbage {GOOD}"), BODY, id="no-comma-entry-then-right"),
        pytest.param(signed(signature=f"v1,!!!! {GOOD}"), BODY, id="bad-base64-then-right"),
        pytest.param(signed(signature=f"v1, {GOOD}"), BODY, id="empty-v1-then-right"),
        pytest.param(signed(signature=f"   {GOOD}   "), BODY, id="surrounding-spaces"),
        pytest.param(
            signed(signature=f"{GOOD} " + "x" * (MAX_SIGNATURE_HEADER - len(GOOD) - 1)),
            BODY,
            id="header-exactly-max-length",
        ),
    ],
)
def test_verify_accepts(headers: dict[str, str], body: bytes) -> None:
    assert verifier().verify(headers, body) == headers["webhook-id"]


# --------------------------------------------------------------------------------------------
# SignatureVerifier: rejected, with the exact reason


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        # missing or empty headers; checked in the order id, timestamp, signature
        pytest.param(signed(id=None), BODY, "missing webhook-id header", id="missing-id"),
        pytest.param(
            signed(timestamp=None), BODY, "missing webhook-timestamp header", id="missing-timestamp"
        ),
        pytest.param(
            signed(signature=None), BODY, "missing webhook-signature header", id="missing-signature"
        ),
        pytest.param(signed(id=""), BODY, "missing webhook-id header", id="empty-id"),
        pytest.param(
            signed(timestamp=""), BODY, "missing webhook-timestamp header", id="empty-timestamp"
        ),
        pytest.param(
            signed(signature=""), BODY, "missing webhook-signature header", id="empty-signature"
        ),
        pytest.param({}, BODY, "missing webhook-id header", id="no-headers-at-all"),
        # tampering
        pytest.param(signed(), BODY + b" ", NO_MATCH, id="tampered-body-trailing-space"),
        pytest.param(signed(), BODY.replace(b"+1800", b"+1900"), NO_MATCH, id="tampered-body"),
        pytest.param(signed(), b"", NO_MATCH, id="body-dropped"),
        pytest.param(signed(id=MSG_ID + "x"), BODY, NO_MATCH, id="tampered-id"),
        pytest.param(signed(timestamp=str(NOW + 1)), BODY, NO_MATCH, id="tampered-timestamp"),
        pytest.param(signed(OTHER_SECRET), BODY, NO_MATCH, id="wrong-secret"),
        pytest.param(signed(signature="v1,AAAA"), BODY, NO_MATCH, id="short-v1-signature"),
        pytest.param(signed(signature=f"{WRONG} {WRONG}"), BODY, NO_MATCH, id="two-wrong"),
        pytest.param(signed(), b"\xff\xfe{}", NO_MATCH, id="non-utf8-body"),
        # garbage webhook-timestamp
        pytest.param(signed(timestamp="abc"), BODY, BAD_TS, id="ts-non-numeric"),
        pytest.param(signed(timestamp="-5"), BODY, BAD_TS, id="ts-negative"),
        pytest.param(signed(timestamp=f"{NOW}.5"), BODY, BAD_TS, id="ts-float"),
        pytest.param(signed(timestamp="1e9"), BODY, BAD_TS, id="ts-exponent"),
        pytest.param(signed(timestamp=f"+{NOW}"), BODY, BAD_TS, id="ts-plus-sign"),
        pytest.param(signed(timestamp=f" {NOW}"), BODY, BAD_TS, id="ts-leading-space"),
        pytest.param(signed(timestamp=f"{NOW}\n"), BODY, BAD_TS, id="ts-trailing-newline"),
        pytest.param(signed(timestamp="١٧٥٠٢٨٧٠١٨"), BODY, BAD_TS, id="ts-arabic-indic-digits"),
        pytest.param(signed(timestamp="9" * 13), BODY, BAD_TS, id="ts-huge-13-digits"),
        pytest.param(signed(timestamp="9" * 400), BODY, BAD_TS, id="ts-huge-400-digits"),
        pytest.param(signed(timestamp="9" * 12), BODY, TOO_NEW, id="ts-12-digits-too-new"),
        pytest.param(signed(timestamp="0"), BODY, TOO_OLD, id="ts-zero-too-old"),
        # garbage webhook-id
        pytest.param(signed(id="msg\n1"), BODY, BAD_ID, id="id-newline"),
        pytest.param(signed(id="msg\r\nX-Evil: 1"), BODY, BAD_ID, id="id-crlf"),
        pytest.param(signed(id="msg\x00"), BODY, BAD_ID, id="id-nul"),
        pytest.param(signed(id="msg\t1"), BODY, BAD_ID, id="id-tab"),
        pytest.param(signed(id="msg\x7f"), BODY, BAD_ID, id="id-del"),
        pytest.param(signed(id="m" * (MAX_ID_LENGTH + 1)), BODY, BAD_ID, id="id-over-256"),
        pytest.param(signed(id="m" * 100_000), BODY, BAD_ID, id="id-100k"),
        # garbage webhook-signature
        pytest.param(signed(signature="v1"), BODY, NO_V1, id="sig-no-comma"),
        pytest.param(signed(signature=GOOD.replace(",", "")), BODY, NO_V1, id="sig-comma-removed"),
        pytest.param(signed(signature="v1,!!!notbase64!!!"), BODY, NO_V1, id="sig-bad-base64"),
        pytest.param(signed(signature="v1,AAAA$$$$"), BODY, NO_V1, id="sig-base64-with-junk"),
        pytest.param(
            signed(signature="v1," + GOOD.partition(",")[2].replace("+", "-").replace("/", "_")),
            BODY,
            NO_V1,
            id="sig-urlsafe-alphabet",  # GOOD (deterministic) has a "+", which becomes "-"
        ),
        pytest.param(signed(signature=GOOD.rstrip("=")), BODY, NO_V1, id="sig-unpadded-base64"),
        pytest.param(signed(signature="v1,"), BODY, NO_V1, id="sig-empty-v1"),
        pytest.param(signed(signature="   "), BODY, NO_V1, id="sig-only-spaces"),
        pytest.param(signed(signature=",,,"), BODY, NO_V1, id="sig-only-commas"),
        pytest.param(
            signed(signature="v1a," + GOOD.partition(",")[2]), BODY, NO_V1, id="sig-only-v1a"
        ),
        pytest.param(signed(signature="V1," + GOOD.partition(",")[2]), BODY, NO_V1, id="sig-V1"),
        pytest.param(
            signed(signature=GOOD + " " + "v1,AAAA" * 1500), BODY, NO_V1, id="sig-10kb-header"
        ),
        pytest.param(
            signed(signature=f"{GOOD} " + "x" * (MAX_SIGNATURE_HEADER - len(GOOD))),
            BODY,
            NO_V1,
            id="sig-one-over-max-length",
        ),
        # the cheap checks come before the HMAC
        pytest.param(
            signed(ts=NOW - 10_000, signature=WRONG), BODY, TOO_OLD, id="old-and-wrong-says-old"
        ),
        pytest.param(
            signed(id="a\nb", timestamp="x", signature="y"), BODY, BAD_ID, id="id-checked-first"
        ),
    ],
)
def test_verify_rejects(headers: dict[str, str], body: bytes, reason: str) -> None:
    assert reject_reason(verifier(), headers, body) == reason


# --------------------------------------------------------------------------------------------
# SignatureVerifier: secret rotation


@pytest.mark.parametrize(
    ("secrets", "signed_with", "reason"),
    [
        pytest.param((OLD_SECRET, NEW_SECRET), OLD_SECRET, None, id="old-and-new--signed-old"),
        pytest.param((OLD_SECRET, NEW_SECRET), NEW_SECRET, None, id="old-and-new--signed-new"),
        pytest.param((NEW_SECRET, OLD_SECRET), OLD_SECRET, None, id="new-and-old--signed-old"),
        pytest.param(
            (OLD_SECRET, NEW_SECRET), OTHER_SECRET, NO_MATCH, id="old-and-new--signed-neither"
        ),
        pytest.param((NEW_SECRET,), OLD_SECRET, NO_MATCH, id="rotation-done--old-rejected"),
        pytest.param((_b64(KEY),), SECRET, None, id="secret-given-without-prefix"),
    ],
)
def test_verify_secret_rotation(
    secrets: tuple[str, ...], signed_with: str, reason: str | None
) -> None:
    v = verifier(secrets)
    headers = signed(signed_with)
    if reason is None:
        assert v.verify(headers, BODY) == MSG_ID
    else:
        assert reject_reason(v, headers, BODY) == reason


def test_verify_rotation_one_header_with_both_signatures() -> None:
    """A sender mid-rotation may send both signatures; a verifier knowing either passes."""
    both = f"{sign(OLD_SECRET)} {sign(NEW_SECRET)}"
    for secrets in ((OLD_SECRET,), (NEW_SECRET,)):
        assert verifier(secrets).verify(signed(signature=both), BODY) == MSG_ID


# --------------------------------------------------------------------------------------------
# SignatureVerifier: timestamp tolerance (signature always valid for the stated timestamp)


@pytest.mark.parametrize(
    ("tolerance", "offset", "reason"),
    [
        pytest.param(TOLERANCE, 0, None, id="now"),
        pytest.param(TOLERANCE, -TOLERANCE, None, id="old-just-inside"),
        pytest.param(TOLERANCE, -TOLERANCE - 1, TOO_OLD, id="old-just-outside"),
        pytest.param(TOLERANCE, TOLERANCE, None, id="new-just-inside"),
        pytest.param(TOLERANCE, TOLERANCE + 1, TOO_NEW, id="new-just-outside"),
        pytest.param(TOLERANCE, -86_400, TOO_OLD, id="a-day-old"),
        pytest.param(TOLERANCE, 86_400, TOO_NEW, id="a-day-ahead"),
        pytest.param(10, -10, None, id="custom-10s-old-just-inside"),
        pytest.param(10, -11, TOO_OLD, id="custom-10s-old-just-outside"),
        pytest.param(10, 10, None, id="custom-10s-new-just-inside"),
        pytest.param(10, 11, TOO_NEW, id="custom-10s-new-just-outside"),
        pytest.param(3600, -3600, None, id="custom-1h-old-just-inside"),
        pytest.param(3600, -3601, TOO_OLD, id="custom-1h-old-just-outside"),
        pytest.param(0, 0, None, id="zero-tolerance-exact"),
        pytest.param(0, -1, TOO_OLD, id="zero-tolerance-one-old"),
        pytest.param(0, 1, TOO_NEW, id="zero-tolerance-one-new"),
    ],
)
def test_verify_timestamp_tolerance(tolerance: int, offset: int, reason: str | None) -> None:
    v = verifier(tolerance=tolerance)
    headers = signed(ts=NOW + offset)
    if reason is None:
        assert v.verify(headers, BODY) == MSG_ID
    else:
        assert reject_reason(v, headers, BODY) == reason


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        pytest.param(NOW + TOLERANCE + 0.5, TOO_OLD, id="fractional-clock-half-second-late"),
        pytest.param(NOW + TOLERANCE + 0.0, None, id="fractional-clock-on-the-edge"),
        pytest.param(NOW - TOLERANCE - 0.5, TOO_NEW, id="fractional-clock-half-second-early"),
    ],
)
def test_verify_fractional_clock(now: float, reason: str | None) -> None:
    v = verifier(now=now)
    if reason is None:
        assert v.verify(signed(), BODY) == MSG_ID
    else:
        assert reject_reason(v, signed(), BODY) == reason


def test_verify_uses_the_injected_clock_only() -> None:
    calls: list[None] = []

    def clock() -> float:
        calls.append(None)
        return NOW

    SignatureVerifier([SECRET], clock=clock).verify(signed(), BODY)
    assert calls == [None]


# --------------------------------------------------------------------------------------------
# SignatureVerifier: construction


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        pytest.param([], "at least one webhook secret is required", id="no-secrets"),
        pytest.param(
            [SECRET, "whsec_!!!"],
            "webhook secret is not whsec_ followed by base64",
            id="one-invalid-secret",
        ),
        pytest.param(
            ["whsec_" + base64.b64encode(b"short").decode()],
            "webhook secret is too short (under 16 bytes of key)",
            id="short-secret",
        ),
    ],
)
def test_verifier_rejects_bad_configuration(secrets: list[str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        SignatureVerifier(secrets, clock=lambda: NOW)
    assert str(caught.value) == message


# --------------------------------------------------------------------------------------------
# decode_secret


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        pytest.param(SECRET, KEY, id="with-whsec-prefix"),
        pytest.param(_b64(KEY), KEY, id="without-prefix"),
        pytest.param(f"  {SECRET}\n", KEY, id="surrounding-whitespace"),
        pytest.param("whsec_" + _b64(b"k" * 17), b"k" * 17, id="padded-double-equals"),
        pytest.param("whsec_" + _b64(b"k" * 17).rstrip("="), b"k" * 17, id="unpadded-17-bytes"),
        pytest.param("whsec_" + _b64(b"k" * 19).rstrip("="), b"k" * 19, id="unpadded-19-bytes"),
        pytest.param(_b64(b"k" * 17).rstrip("="), b"k" * 17, id="unpadded-without-prefix"),
        pytest.param("whsec_" + _b64(b"\xff" * 16), b"\xff" * 16, id="exactly-16-bytes"),
        pytest.param("whsec_" + _b64(bytes(range(256))), bytes(range(256)), id="long-256-bytes"),
        pytest.param(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            id="standard-webhooks-example",
        ),
    ],
)
def test_decode_secret(secret: str, key: bytes) -> None:
    assert decode_secret(secret) == key
    # Independently: the reference library signs identically with the decoded key.
    stamp = datetime.fromtimestamp(NOW, tz=UTC)
    assert Webhook(key).sign("id", stamp, "x") == Webhook(secret.strip()).sign("id", stamp, "x")


NOT_BASE64 = "webhook secret is not whsec_ followed by base64"
TOO_SHORT = "webhook secret is too short (under 16 bytes of key)"


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        pytest.param("whsec_!!!!", NOT_BASE64, id="punctuation"),
        pytest.param("whsec_" + _b64(KEY)[:-2] + "$$", NOT_BASE64, id="trailing-dollar"),
        pytest.param(
            "whsec_" + _b64(KEY)[:10] + " " + _b64(KEY)[10:], NOT_BASE64, id="inner-space"
        ),
        pytest.param(
            "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode(),
            NOT_BASE64,
            id="urlsafe-alphabet",
        ),
        pytest.param("whsec_AAAAA", NOT_BASE64, id="length-1-mod-4"),
        pytest.param("whsec_" + _b64(KEY) + "==", NOT_BASE64, id="excess-padding"),
        pytest.param("whsec_é" + _b64(KEY), NOT_BASE64, id="non-ascii"),
        pytest.param("", TOO_SHORT, id="empty"),
        pytest.param("whsec_", TOO_SHORT, id="prefix-only"),
        pytest.param("   ", TOO_SHORT, id="only-whitespace"),
        pytest.param("whsec_" + _b64(b"k" * 15), TOO_SHORT, id="15-bytes"),
        pytest.param("whsec_" + _b64(b"k" * 15).rstrip("="), TOO_SHORT, id="15-bytes-unpadded"),
        pytest.param(_b64(b"k"), TOO_SHORT, id="1-byte-without-prefix"),
    ],
)
def test_decode_secret_rejects(secret: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        decode_secret(secret)
    assert str(caught.value) == message


# --------------------------------------------------------------------------------------------
# parse_event: incoming calls


def _incoming(data: Any, **top: Any) -> bytes:
    return json.dumps({"type": INCOMING_CALL, "data": data, **top}).encode()


def _hdrs(*pairs: tuple[str, str]) -> tuple[SipHeader, ...]:
    return tuple(SipHeader(name, value) for name, value in pairs)


@pytest.mark.parametrize(
    ("body", "webhook_id", "expected"),
    [
        pytest.param(
            BODY,
            MSG_ID,
            IncomingCall(
                webhook_id=MSG_ID,
                call_id=CALL_ID,
                sip_headers=_hdrs(
                    ("From", "sip:+142555512112@sip.example.com"),
                    ("To", "sip:+18005551212@sip.example.com"),
                    ("Call-ID", "03782086-4ce9-44bf-8b0d-4e303d2cc590"),
                ),
                media_security=None,
            ),
            id="openai-example",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1"}),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), None),
            id="minimal-no-headers-no-security",
        ),
        pytest.param(
            _incoming(
                {
                    "call_id": "rtc_1",
                    "sip_headers": [
                        {"name": "Via", "value": "SIP/2.0/TLS a"},
                        {"name": "From", "value": "<sip:1@x>"},
                        {"name": "Via", "value": "SIP/2.0/TLS b"},
                        {"name": "X-Tenant", "value": "acme"},
                        {"name": "Via", "value": "SIP/2.0/TLS c"},
                    ],
                }
            ),
            "wh_1",
            IncomingCall(
                "wh_1",
                "rtc_1",
                _hdrs(
                    ("Via", "SIP/2.0/TLS a"),
                    ("From", "<sip:1@x>"),
                    ("Via", "SIP/2.0/TLS b"),
                    ("X-Tenant", "acme"),
                    ("Via", "SIP/2.0/TLS c"),
                ),
                None,
            ),
            id="header-order-and-repeats-preserved",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1", "sip_media_security": "SRTP"}),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), "srtp"),
            id="media-security-lowercased",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1", "sip_media_security": "Optional"}),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), "optional"),
            id="media-security-mixed-case",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1", "sip_media_security": "X" * 50}),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), "x" * 16),
            id="media-security-truncated-to-16",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1", "sip_media_security": None}),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), None),
            id="media-security-null",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1", "sip_media_security": 1}),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), None),
            id="media-security-not-a-string",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1"}, id="evt_9"),
            "",
            IncomingCall("evt_9", "rtc_1", (), None),
            id="no-webhook-id-falls-back-to-event-id",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1"}),
            "",
            IncomingCall("rtc_1", "rtc_1", (), None),
            id="no-id-anywhere-falls-back-to-call-id",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1"}, id="evt_9"),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), None),
            id="webhook-id-wins-over-event-id",
        ),
        pytest.param(
            _incoming({"call_id": "Az09_.:-x"}),
            "wh_1",
            IncomingCall("wh_1", "Az09_.:-x", (), None),
            id="call-id-every-allowed-character",
        ),
        pytest.param(
            _incoming({"call_id": "r" * 256}),
            "wh_1",
            IncomingCall("wh_1", "r" * 256, (), None),
            id="call-id-256-chars",
        ),
        pytest.param(
            _incoming({"call_id": "rtc_1", "future": {"nested": [1, 2]}}, extra=True),
            "wh_1",
            IncomingCall("wh_1", "rtc_1", (), None),
            id="unknown-fields-ignored",
        ),
    ],
)
def test_parse_incoming_call(body: bytes, webhook_id: str, expected: IncomingCall) -> None:
    assert parse_event(body, webhook_id) == expected


# --------------------------------------------------------------------------------------------
# parse_event: events this router does not act on


@pytest.mark.parametrize(
    ("payload", "expected_type"),
    [
        pytest.param(
            {"type": "live.transport.incoming", "data": {"type": "webrtc", "session_id": "l_1"}},
            "live.transport.incoming",
            id="live-transport-not-sip",
        ),
        pytest.param(
            {"type": "live.transport.connected", "data": {"type": "webrtc", "session_id": "l_1"}},
            "live.transport.connected",
            id="live-transport-connected",
        ),
        pytest.param(
            {"type": "realtime.call.ended", "data": {"call_id": "rtc_1"}},
            "realtime.call.ended",
            id="realtime-call-ended",
        ),
        pytest.param(
            {"type": "realtime.call.hangup", "data": None},
            "realtime.call.hangup",
            id="other-type-data-null",
        ),
        pytest.param(
            {"type": "response.completed", "data": {"call_id": "../../x"}},
            "response.completed",
            id="other-type-bad-call-id-not-inspected",
        ),
        pytest.param(
            {"type": "Realtime.Call.Incoming", "data": {}},
            "Realtime.Call.Incoming",
            id="incoming-type-is-case-sensitive",
        ),
        pytest.param({"type": "t" * 500}, "t" * 100, id="long-type-truncated-to-100"),
    ],
)
def test_parse_other_event(payload: dict[str, Any], expected_type: str) -> None:
    body = json.dumps(payload).encode()
    assert parse_event(body, "wh_1") == OtherEvent(webhook_id="wh_1", type=expected_type)


# --------------------------------------------------------------------------------------------
# parse_event: malformed payloads


NOT_JSON = "body is not valid JSON"
NOT_OBJECT = "body is not a JSON object"
NO_TYPE = "event has no type"
NO_DATA = "event has no data object"
NO_CALL_ID = "event has no data.call_id"
BAD_CALL_ID = "data.call_id has unexpected characters"


def _deep(depth: int) -> bytes:
    inner = b"[" * depth + b"]" * depth
    return b'{"type": "realtime.call.incoming", "data": {"call_id": "rtc_1", "x": ' + inner + b"}}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"not json", NOT_JSON, id="not-json"),
        pytest.param(b"", NOT_JSON, id="empty-body"),
        pytest.param(BODY[:-1], NOT_JSON, id="truncated"),
        pytest.param(b"\xff\xfe\x00", "body is not UTF-8", id="non-utf8"),
        pytest.param(b'{"type": 1' + b"0" * 5000 + b"}", NOT_JSON, id="5000-digit-integer"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, NOT_JSON, id="deeply-nested-array"),
        pytest.param(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, NOT_JSON, id="deeply-nested-obj"),
        pytest.param(_deep(50_000), NOT_JSON, id="deeply-nested-inside-valid-event"),
        pytest.param(b"[]", NOT_OBJECT, id="json-array"),
        pytest.param(b'[{"type": "realtime.call.incoming"}]', NOT_OBJECT, id="event-in-array"),
        pytest.param(b'"realtime.call.incoming"', NOT_OBJECT, id="json-string"),
        pytest.param(b"null", NOT_OBJECT, id="json-null"),
        pytest.param(b"42", NOT_OBJECT, id="json-number"),
        pytest.param(b"{}", NO_TYPE, id="missing-type"),
        pytest.param(b'{"type": null}', NO_TYPE, id="type-null"),
        pytest.param(b'{"type": ""}', NO_TYPE, id="type-empty"),
        pytest.param(b'{"type": 7}', NO_TYPE, id="type-number"),
        pytest.param(b'{"type": ["realtime.call.incoming"]}', NO_TYPE, id="type-list"),
        pytest.param(b'{"type": "realtime.call.incoming"}', NO_DATA, id="missing-data"),
        pytest.param(_incoming(None), NO_DATA, id="data-null"),
        pytest.param(_incoming([]), NO_DATA, id="data-list"),
        pytest.param(_incoming("rtc_1"), NO_DATA, id="data-string"),
        pytest.param(_incoming({}), NO_CALL_ID, id="missing-call-id"),
        pytest.param(_incoming({"call_id": None}), NO_CALL_ID, id="call-id-null"),
        pytest.param(_incoming({"call_id": ""}), NO_CALL_ID, id="call-id-empty"),
        pytest.param(_incoming({"call_id": 12345}), NO_CALL_ID, id="call-id-number"),
        pytest.param(_incoming({"call_id": ["rtc_1"]}), NO_CALL_ID, id="call-id-list"),
        pytest.param(_incoming({"call_id": {"id": "rtc_1"}}), NO_CALL_ID, id="call-id-object"),
        pytest.param(_incoming({"call_id": "rtc/1"}), BAD_CALL_ID, id="call-id-slash"),
        pytest.param(_incoming({"call_id": "../admin"}), BAD_CALL_ID, id="call-id-dotdot-slash"),
        pytest.param(_incoming({"call_id": ".."}), BAD_CALL_ID, id="call-id-dotdot"),
        pytest.param(_incoming({"call_id": "."}), BAD_CALL_ID, id="call-id-dot"),
        pytest.param(_incoming({"call_id": "rtc..1"}), BAD_CALL_ID, id="call-id-inner-dotdot"),
        pytest.param(_incoming({"call_id": "rtc 1"}), BAD_CALL_ID, id="call-id-space"),
        pytest.param(_incoming({"call_id": " rtc_1"}), BAD_CALL_ID, id="call-id-leading-space"),
        pytest.param(_incoming({"call_id": "rtc_1\n"}), BAD_CALL_ID, id="call-id-newline"),
        pytest.param(_incoming({"call_id": "rtc\\1"}), BAD_CALL_ID, id="call-id-backslash"),
        pytest.param(_incoming({"call_id": "rtc%2F1"}), BAD_CALL_ID, id="call-id-percent"),
        pytest.param(_incoming({"call_id": "rtc?x=1"}), BAD_CALL_ID, id="call-id-query"),
        pytest.param(_incoming({"call_id": "rtc#1"}), BAD_CALL_ID, id="call-id-fragment"),
        pytest.param(_incoming({"call_id": "rtc_é"}), BAD_CALL_ID, id="call-id-non-ascii"),
        pytest.param(_incoming({"call_id": "r" * 257}), BAD_CALL_ID, id="call-id-257-chars"),
    ],
)
def test_parse_rejects(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload) as caught:
        parse_event(body, "wh_1")
    assert caught.value.reason == reason
    assert caught.value.status_code == 400


# --------------------------------------------------------------------------------------------
# parse_event: sip_headers are taken leniently, never fail the event


GOOD_ENTRY = {"name": "From", "value": "<sip:+15551234567@x>"}
GOOD_HEADER = SipHeader("From", "<sip:+15551234567@x>")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, (), id="null"),
        pytest.param("From: <sip:1@x>", (), id="a-string"),
        pytest.param(GOOD_ENTRY, (), id="a-single-object-not-a-list"),
        pytest.param(7, (), id="a-number"),
        pytest.param([], (), id="empty-list"),
        pytest.param(
            ["From: x", 5, None, True, ["From", "x"], GOOD_ENTRY],
            (GOOD_HEADER,),
            id="non-object-entries-skipped",
        ),
        pytest.param(
            [
                {"name": 5, "value": "x"},
                {"name": None, "value": "x"},
                {"name": ["From"], "value": "x"},
                {"value": "x"},
                GOOD_ENTRY,
            ],
            (GOOD_HEADER,),
            id="non-string-name-skipped",
        ),
        pytest.param(
            [
                {"name": "To", "value": 5},
                {"name": "To", "value": None},
                {"name": "To", "value": {"uri": "x"}},
                {"name": "To"},
                GOOD_ENTRY,
            ],
            (GOOD_HEADER,),
            id="non-string-value-skipped",
        ),
        pytest.param(
            [{"name": "", "value": "x"}, {"name": "  ", "value": "x"}, GOOD_ENTRY],
            (GOOD_HEADER,),
            id="empty-name-skipped",
        ),
        pytest.param(
            [{"name": "  X-Tenant\t", "value": "  acme  "}],
            (SipHeader("X-Tenant", "  acme  "),),
            id="name-stripped-value-kept-verbatim",
        ),
        pytest.param(
            [{"name": "X-Empty", "value": ""}],
            (SipHeader("X-Empty", ""),),
            id="empty-value-kept",
        ),
        pytest.param(
            [{"name": "N" * MAX_SIP_HEADER_NAME, "value": "x"}],
            (SipHeader("N" * MAX_SIP_HEADER_NAME, "x"),),
            id="name-at-max-kept",
        ),
        pytest.param(
            [{"name": "N" * (MAX_SIP_HEADER_NAME + 1), "value": "x"}, GOOD_ENTRY],
            (GOOD_HEADER,),
            id="name-over-max-skipped",
        ),
        pytest.param(
            [{"name": "X-Big", "value": "v" * MAX_SIP_HEADER_VALUE}],
            (SipHeader("X-Big", "v" * MAX_SIP_HEADER_VALUE),),
            id="value-at-max-kept",
        ),
        pytest.param(
            [{"name": "X-Big", "value": "v" * (MAX_SIP_HEADER_VALUE + 1)}],
            (SipHeader("X-Big", "v" * MAX_SIP_HEADER_VALUE),),
            id="value-over-max-truncated",
        ),
        pytest.param(
            [{"name": "X-Huge", "value": "v" * 1_000_000}],
            (SipHeader("X-Huge", "v" * MAX_SIP_HEADER_VALUE),),
            id="megabyte-value-truncated",
        ),
        pytest.param(
            [{"name": f"X-{i}", "value": str(i)} for i in range(MAX_SIP_HEADERS + 50)],
            tuple(SipHeader(f"X-{i}", str(i)) for i in range(MAX_SIP_HEADERS)),
            id="only-first-256-entries",
        ),
        pytest.param(
            [{"name": "From", "value": "a", "extra": [1]}, {"name": "To", "value": "b"}],
            _hdrs(("From", "a"), ("To", "b")),
            id="extra-keys-ignored",
        ),
    ],
)
def test_parse_sip_headers(raw: object, expected: tuple[SipHeader, ...]) -> None:
    event = parse_event(_incoming({"call_id": "rtc_1", "sip_headers": raw}), "wh_1")
    assert isinstance(event, IncomingCall)
    assert event.sip_headers == expected


# --------------------------------------------------------------------------------------------
# Errors and the whole path


@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param(SignatureError("x"), 401, id="signature-error-401"),
        pytest.param(MalformedPayload("x"), 400, id="malformed-payload-400"),
    ],
)
def test_error_status_codes(error: WebhookError, status: int) -> None:
    assert error.status_code == status
    assert error.reason == str(error) == "x"


def test_verify_then_parse_signed_openai_event() -> None:
    webhook_id = verifier().verify(signed(), BODY)
    event = parse_event(BODY, webhook_id)
    assert isinstance(event, IncomingCall)
    assert (event.webhook_id, event.call_id) == (MSG_ID, CALL_ID)
    assert [h.name for h in event.sip_headers] == ["From", "To", "Call-ID"]


def test_raw_signing_agrees_with_the_reference_package() -> None:
    # tests.support.sign_raw signs bytes the reference package cannot (not UTF-8); on a
    # UTF-8 body both must say the same, or the non-UTF-8 tests would prove nothing.
    from tests.support import SECRET as TEST_SECRET
    from tests.support import sign_raw

    headers = sign_raw(BODY, secret=TEST_SECRET)
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
    reference = Webhook(TEST_SECRET).sign(headers["webhook-id"], stamp, BODY.decode())
    assert headers["webhook-signature"] == reference


def test_a_signed_body_that_is_not_utf8_verifies_and_is_then_malformed() -> None:
    from tests.support import SECRET as TEST_SECRET
    from tests.support import sign_raw

    body = b'{"type": "realtime.call.incoming", "x": "\xff"}'
    headers = sign_raw(body, secret=TEST_SECRET)
    assert SignatureVerifier([TEST_SECRET]).verify(headers, body) == headers["webhook-id"]
    with pytest.raises(MalformedPayload, match="body is not UTF-8"):
        parse_event(body, headers["webhook-id"])
