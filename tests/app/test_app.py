"""The ASGI app end to end in-process, with respx standing in for the call-control API."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from fastapi.testclient import TestClient

from app.main import create_app
from app.records import calllog
from app.records.sqlite import SqliteCallLog
from app.rules import compile_rules
from app.settings import MissingWebhookSecret, Settings
from app.state.claims import MemoryClaimStore, StateUnavailable
from tests.records.test_sqlite_held_writes import eventually, record, refuse_writes
from tests.support import (
    OTHER_SECRET,
    SECRET,
    incoming_event,
    live_event,
    new_id,
    sign,
    sign_raw,
    signed,
)

BASE = "https://api.test/v1"
ADMIN_TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

ROUTES = """
sessions:
  support:
    model: gpt-realtime
    instructions: Help with orders.
    audio: {output: {voice: marin}}
routes:
  - name: spam
    match: {caller: "+1900*"}
    reject: {status_code: 486}
  - name: anonymous
    match: {anonymous: true}
    reject: {}
  - name: vip
    match: {headers: {X-Customer-Tier: gold}}
    refer: {target_uri: "tel:+14155550199"}
  - name: support
    match: {called: "+1 800 555 0100"}
    accept:
      session: support
      instructions: Help with orders, briefly.
default:
  reject: {status_code: 480}
"""


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "openai_api_key": "sk-test",
        "openai_base_url": BASE,
        "webhook_secrets": SECRET,
        "max_body_bytes": 4096,
        "watch_rules": False,  # the tests' rules are not on disk (tests/app/test_reload.py)
        "admin_token": ADMIN_TOKEN,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def api() -> respx.Router:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    for operation in ("accept", "reject", "refer", "hangup"):
        router.post(path__regex=rf"/realtime/calls/[^/]+/{operation}", name=operation).respond(200)
    return router


def client_for(api: respx.Router, **overrides: Any) -> TestClient:
    app = create_app(
        make_settings(**overrides),
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(api.async_handler),
    )
    return TestClient(app)


@pytest.fixture
def client(api: respx.Router) -> Iterator[TestClient]:
    with client_for(api) as test_client:
        yield test_client


def post_event(client: TestClient, event: dict[str, Any], **sign_args: Any) -> Any:
    # Any: TestClient answers with httpx2's Response where httpx2 is installed (the openai
    # package brings it), else httpx's.
    body, headers = signed(event, **sign_args)
    return client.post("/webhooks/openai", content=body, headers=headers)


def sent(api: respx.Router) -> list[tuple[str, Any]]:
    """(path, JSON body) of every call-control request, in order."""
    calls = []
    for call in api.calls:
        content = call.request.content
        calls.append((call.request.url.path, json.loads(content) if content else None))
    return calls


# --- routing and the exact requests sent ---------------------------------------------


def test_accept_sends_merged_session(client: TestClient, api: respx.Router) -> None:
    event = incoming_event(called="+18005550100")
    response = post_event(client, event)
    call_id = event["data"]["call_id"]
    assert response.status_code == 200
    assert response.json() == {
        "call_id": call_id,
        "api": "realtime",
        "route": "support",
        "action": "accept",
        "outcome": "accepted",
        "rules_version": compile_rules(ROUTES, "routes.yaml", region="US").version,
    }
    assert sent(api) == [
        (
            f"/v1/realtime/calls/{call_id}/accept",
            {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "Help with orders, briefly.",
                "audio": {"output": {"voice": "marin"}},
            },
        )
    ]
    request = api.calls[0].request
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("event_args", "route", "status_code"),
    [
        ({"caller": "+19005550100"}, "spam", 486),
        ({"from_value": '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'}, "anonymous", 603),
        ({"called": "+14155550000"}, "default", 480),
    ],
    ids=["prefix-list", "anonymous-default-603", "no-match-default"],
)
def test_reject(
    client: TestClient, api: respx.Router, event_args: dict[str, Any], route: str, status_code: int
) -> None:
    event = incoming_event(**event_args)
    response = post_event(client, event)
    assert response.status_code == 200
    assert response.json()["route"] == route
    assert response.json()["outcome"] == "rejected"
    call_id = event["data"]["call_id"]
    assert sent(api) == [
        (f"/v1/realtime/calls/{call_id}/reject", {"status_code": status_code}),
    ]


def test_refer_accepts_then_refers(client: TestClient, api: respx.Router) -> None:
    event = incoming_event(headers=[("x-customer-tier", "gold")])
    response = post_event(client, event)
    call_id = event["data"]["call_id"]
    assert response.json()["outcome"] == "referred"
    assert sent(api) == [
        (f"/v1/realtime/calls/{call_id}/accept", {"type": "realtime"}),
        (f"/v1/realtime/calls/{call_id}/refer", {"target_uri": "tel:+14155550199"}),
    ]


def test_refer_failure_hangs_up_and_is_final(client: TestClient, api: respx.Router) -> None:
    api.routes["refer"].respond(400, json={"error": {"message": "no transfer"}})
    event = incoming_event(headers=[("X-Customer-Tier", "gold")])
    response = post_event(client, event)
    call_id = event["data"]["call_id"]
    assert response.status_code == 200
    assert response.json()["outcome"] == "refer_failed"
    assert "no transfer" in response.json()["error"]
    assert [path for path, _ in sent(api)] == [
        f"/v1/realtime/calls/{call_id}/accept",
        f"/v1/realtime/calls/{call_id}/refer",
        f"/v1/realtime/calls/{call_id}/hangup",
    ]


# --- answers: what OpenAI should retry --------------------------------------------------


def test_caller_gone_is_final(client: TestClient, api: respx.Router) -> None:
    api.routes["accept"].respond(404)
    event = incoming_event()
    first = post_event(client, event)
    assert (first.status_code, first.json()["outcome"]) == (200, "caller_gone")
    again = post_event(client, event)
    assert again.json()["duplicate"] is True
    assert len(api.calls) == 1


def test_retryable_failure_answers_503_and_redelivery_acts_again(
    api: respx.Router,
) -> None:
    api.routes["accept"].respond(500)
    with client_for(api, call_deadline_seconds=0.3) as client:
        event = incoming_event()
        body, headers = signed(event)
        first = client.post("/webhooks/openai", content=body, headers=headers)
        assert first.status_code == 503
        assert first.json()["outcome"] == "upstream_error"
        retries = api.routes["accept"].call_count
        assert retries >= 2  # retried inside the deadline
        api.routes["accept"].respond(200)
        second = client.post("/webhooks/openai", content=body, headers=headers)
        assert second.status_code == 200
        assert second.json()["outcome"] == "accepted"
        assert "duplicate" not in second.json()
        assert api.routes["accept"].call_count == retries + 1


def test_permanent_api_refusal_is_final(client: TestClient, api: respx.Router) -> None:
    api.routes["accept"].respond(400, json={"error": {"message": "Invalid value for voice"}})
    response = post_event(client, incoming_event())
    assert response.status_code == 200
    assert response.json()["outcome"] == "failed"
    assert "Invalid value for voice" in response.json()["error"]


def test_duplicate_by_webhook_id_and_by_call_id(client: TestClient, api: respx.Router) -> None:
    event = incoming_event()
    body, headers = signed(event)
    first = client.post("/webhooks/openai", content=body, headers=headers)
    same_delivery = client.post("/webhooks/openai", content=body, headers=headers)
    body2, headers2 = signed(event)  # a new webhook-id for the same call
    same_call = client.post("/webhooks/openai", content=body2, headers=headers2)
    assert first.json()["outcome"] == "accepted"
    assert same_delivery.json() == {**first.json(), "duplicate": True}
    assert same_call.json() == {**first.json(), "duplicate": True}
    assert len(api.calls) == 1
    assert "switchboard_duplicates_suppressed_total 2.0" in client.get("/metrics").text


def test_dry_run_calls_nothing(api: respx.Router) -> None:
    with client_for(api, openai_api_key=None) as client:
        response = post_event(client, incoming_event())
        assert response.json()["outcome"] == "dry_run"
        assert client.get("/admin/status", headers=ADMIN).json()["dry_run"] is True
        assert "switchboard_dry_run 1.0" in client.get("/metrics").text
    assert api.calls.call_count == 0


# --- refusing bad input -----------------------------------------------------------------


def _valid() -> tuple[bytes, dict[str, str]]:
    return signed(incoming_event())


_UTF16 = json.dumps({"type": "realtime.call.incoming", "data": {"call_id": "rtc_1"}}).encode(
    "utf-16"
)

BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("no-signature", lambda: (_valid()[0], {}), 401, "missing webhook-id header"),
    (
        "wrong-secret",
        lambda: signed(incoming_event(), secret=OTHER_SECRET),
        401,
        "signature does not match",
    ),
    (
        "tampered-body",
        lambda: (_valid()[0].replace(b"+1415", b"+1416"), _valid()[1]),
        401,
        "signature does not match",
    ),
    (
        "too-old",
        lambda: signed(incoming_event(), timestamp=1_000_000_000),
        401,
        "webhook-timestamp is too old",
    ),
    ("bad-json", lambda: (b"{not json", sign(b"{not json")), 400, "body is not valid JSON"),
    # Signed, but not UTF-8: malformed (400), not a forgery (401).
    ("non-utf8", lambda: (b"\xff\xfe{}", sign_raw(b"\xff\xfe{}")), 400, "body is not UTF-8"),
    (
        "utf16-json",
        lambda: (_UTF16, sign_raw(_UTF16)),
        400,
        "body is not UTF-8",
    ),
    ("array", lambda: (b"[]", sign(b"[]")), 400, "body is not a JSON object"),
    (
        "no-call-id",
        lambda: signed({"type": "realtime.call.incoming", "data": {"sip_headers": []}}),
        400,
        "event has no data.call_id",
    ),
    (
        "path-in-call-id",
        lambda: signed(incoming_event(call_id="../../files")),
        400,
        "data.call_id has unexpected characters",
    ),
    ("too-large", lambda: signed(incoming_event(headers=[("X-Pad", "x" * 5000)])), 413, ""),
]


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_precise_answer(
    client: TestClient, api: respx.Router, make: Any, status: int, reason: str
) -> None:
    body, headers = make()
    response = client.post("/webhooks/openai", content=body, headers=headers)
    assert response.status_code == status
    if reason:
        assert response.json() == {"error": reason}
    assert api.calls.call_count == 0


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    response = client.post("/webhooks/openai", content=chunks())
    assert response.status_code == 413


def test_other_event_types_are_ignored_and_counted(client: TestClient, api: respx.Router) -> None:
    for event_type in ("live.transport.connected", "realtime.call.ended"):
        body, headers = signed({"type": event_type, "data": {}})
        response = client.post("/webhooks/openai", content=body, headers=headers)
        assert response.json() == {"status": "ignored", "type": event_type}
    metrics = client.get("/metrics").text
    assert 'switchboard_webhooks_total{result="ignored"} 2.0' in metrics
    assert 'switchboard_ignored_events_total{type="live"} 1.0' in metrics
    assert api.calls.call_count == 0


ODD_BODIES = [
    b"",
    b"null",
    b'"string"',
    b"1e999",
    b"\xff\xfe\x00",
    b'{"type": "realtime.call.incoming", "data": {"call_id": "rtc_1", "sip_headers": "nope"}}',
    b'{"type": "realtime.call.incoming", "data": {"call_id": "rtc_2", "sip_headers": [1, null]}}',
    json.dumps(
        {
            "type": "realtime.call.incoming",
            "data": {
                "call_id": "rtc_3",
                "sip_headers": [
                    {"name": "From", "value": '"unterminated <sip:+1415'},
                    {"name": "To", "value": "<<<>>>"},
                    {"name": "P-Asserted-Identity", "value": ";;;,,,"},
                    {"name": "Diversion", "value": "\x00\x01"},
                ],
            },
        }
    ).encode(),
    b"[" * 100_000,
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=[f"odd-{i}" for i in range(len(ODD_BODIES))])
def test_no_input_produces_a_500(api: respx.Router, body: bytes) -> None:
    with client_for(api, max_body_bytes=1024 * 1024) as client:
        headers = {"webhook-id": new_id("wh"), "webhook-timestamp": "1", "webhook-signature": "x"}
        if body and body[0:1] != b"\xff":
            headers = sign(body)
        response = client.post("/webhooks/openai", content=body, headers=headers)
        assert response.status_code < 500, response.text


def test_unparseable_headers_still_route(client: TestClient) -> None:
    event = incoming_event(from_value='"no end <sip:', called="+18005550100")
    response = post_event(client, event)
    assert response.json()["route"] == "support"


# --- health, readiness, metrics, settings ----------------------------------------------


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    # Public: status and version only (no file path, no reload errors, no settings).
    assert set(ready.json()) == {"status", "rules_version"}
    assert ready.json()["status"] == "ready"
    detail = client.get("/admin/status", headers=ADMIN)
    assert detail.status_code == 200
    assert detail.json()["routes"] == 4
    assert detail.json()["dry_run"] is False
    assert client.get("/admin/status").status_code == 401


def test_readiness_says_when_the_call_log_is_not_writing(
    api: respx.Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes refused past STALLED_AFTER: /readyz says so (still 200: calls route without
    their records), and stops saying it once they are written. Before: nothing said."""
    monkeypatch.setattr(calllog, "STALLED_AFTER", 0.3)
    with client_for(api) as client:
        log = client.app.state.call_log  # type: ignore[attr-defined]
        assert isinstance(log, SqliteCallLog)
        refuse_writes(log, True)
        log.started(record(1))
        eventually(lambda: "call_log" in client.get("/readyz").json(), "the stall reported")
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "rules_version": ready.json()["rules_version"],
            "call_log": "not writing",
        }
        refuse_writes(log, False)
        eventually(lambda: "call_log" not in client.get("/readyz").json(), "the writes written")
        assert set(client.get("/readyz").json()) == {"status", "rules_version"}


def test_metrics_are_precreated_and_hold_no_numbers(client: TestClient) -> None:
    post_event(client, incoming_event(caller="+14155550123", called="+18005550100"))
    text = client.get("/metrics").text
    for line in (
        'switchboard_webhooks_total{result="retry"} 0.0',
        'switchboard_decisions_total{action="reject",route="spam"} 0.0',
        'switchboard_decisions_total{action="accept",route="support"} 1.0',
        'switchboard_upstream_requests_total{api="realtime",operation="refer",status="5xx"} 0.0',
        'switchboard_upstream_requests_total{api="realtime",operation="accept",status="2xx"} 1.0',
        'switchboard_upstream_requests_total{api="live",operation="accept",status="2xx"} 0.0',
        "switchboard_decision_latency_seconds_count 1.0",
        'switchboard_upstream_latency_seconds_count{api="realtime",operation="accept"} 1.0',
        'switchboard_call_outcomes_total{action="accept",api="realtime",outcome="accepted"} 1.0',
        'switchboard_call_outcomes_total{action="accept",api="live",outcome="accepted"} 0.0',
    ):
        assert line in text
    assert "4155550123" not in text and "8005550100" not in text


def test_call_log_masks_numbers(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="switchboard.call")
    post_event(client, incoming_event(caller="+14155550123"))
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "call"]
    assert record.caller == "+1415*****23"  # type: ignore[attr-defined]
    assert "4155550123" not in caplog.text


def test_refuses_to_start_without_a_secret() -> None:
    with pytest.raises(MissingWebhookSecret, match="OPENAI_WEBHOOK_SECRET is not set"):
        create_app(make_settings(webhook_secrets=""))


def test_insecure_mode_takes_unsigned_webhooks(api: respx.Router) -> None:
    with client_for(api, webhook_secrets="", insecure_skip_signature=True) as client:
        response = client.post("/webhooks/openai", json=incoming_event())
        assert response.json()["outcome"] == "accepted"


def test_rotated_secrets_both_verify(api: respx.Router) -> None:
    with client_for(api, webhook_secrets=f"{OTHER_SECRET},{SECRET}") as client:
        for secret in (SECRET, OTHER_SECRET):
            response = post_event(client, incoming_event(), secret=secret)
            assert response.status_code == 200


def test_readiness_before_rules_load(tmp_path: Any) -> None:
    missing = tmp_path / "routes.yaml"
    app = create_app(make_settings(routes_file=missing))
    with pytest.raises(Exception, match="cannot read"), TestClient(app):
        pass


def test_a_flood_of_refused_webhooks_is_counted_in_full_and_logged_sparingly(
    client: TestClient, api: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    body, headers = signed(incoming_event(), secret=OTHER_SECRET)
    with caplog.at_level(logging.INFO, logger="switchboard"):
        for _ in range(300):
            assert client.post("/webhooks/openai", content=body, headers=headers).status_code == 401
    lines = [r for r in caplog.records if getattr(r, "event", None) == "webhook_refused"]
    assert 1 <= len(lines) <= 25  # the burst, not one line per request
    assert 'switchboard_webhooks_total{result="unauthorized"} 300.0' in client.get("/metrics").text
    assert api.calls.call_count == 0


def test_a_flood_of_refused_admin_requests_is_logged_sparingly(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    with caplog.at_level(logging.INFO, logger="switchboard"):
        for _ in range(300):
            assert client.get("/admin/status", headers=wrong).status_code == 401
    lines = [r for r in caplog.records if getattr(r, "event", None) == "admin_refused"]
    assert 1 <= len(lines) <= 25
    # Every refusal is counted, logged or not (issue 11: the log is throttled, not the count).
    metrics = client.get("/metrics").text
    assert 'switchboard_admin_refused_total{reason="invalid_token"} 300.0' in metrics
    assert client.get("/admin/status").status_code == 401
    metrics = client.get("/metrics").text
    assert 'switchboard_admin_refused_total{reason="missing_token"} 1.0' in metrics
    assert 'switchboard_admin_refused_total{reason="disabled"} 0.0' in metrics


LIVE_ROUTES = """
sessions:
  live-desk:
    type: live
    model: gpt-live-1
    instructions: You answer for Example Co.
routes:
  - name: live-line
    match: {called: "+18005550100"}
    accept: live-desk
default:
  reject: {status_code: 480}
"""


def test_a_live_call_is_counted_under_its_api(api: respx.Router) -> None:
    # Issue 13: the outcome and the upstream request of a GPT-Live call carry api="live",
    # so a dashboard tells the two APIs apart (the phone numbers never are labels).
    api.post(path__regex=r"/live/sessions/[^/]+/accept", name="live_accept").respond(200)
    app = create_app(
        make_settings(subscribed_events="live.transport.incoming"),
        rules=compile_rules(LIVE_ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(api.async_handler),
    )
    with TestClient(app) as client:
        response = post_event(client, live_event(caller="+14155550123", called="+18005550100"))
        assert response.json()["outcome"] == "accepted"
        text = client.get("/metrics").text
    for line in (
        'switchboard_call_outcomes_total{action="accept",api="live",outcome="accepted"} 1.0',
        'switchboard_call_outcomes_total{action="accept",api="realtime",outcome="accepted"} 0.0',
        'switchboard_upstream_requests_total{api="live",operation="accept",status="2xx"} 1.0',
        'switchboard_upstream_requests_total{api="realtime",operation="accept",status="2xx"} 0.0',
        'switchboard_upstream_latency_seconds_count{api="live",operation="accept"} 1.0',
    ):
        assert line in text
    assert "4155550123" not in text and "8005550100" not in text


class UnreachableStore(MemoryClaimStore):
    """A shared store that does not answer: its error names an internal host."""

    async def ping(self) -> None:
        raise StateUnavailable("Redis: Error 111 connecting to 10.20.30.40:6379. Refused.")


def test_readiness_without_the_state_store_tells_the_public_no_details(
    api: respx.Router,
) -> None:
    app = create_app(
        make_settings(),
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(api.async_handler),
        store=UnreachableStore(horizon_seconds=60),
    )
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        # Public: the status only; where the store lives is the admin's business.
        assert ready.json() == {"status": "not ready", "detail": "state store unavailable"}
        status = client.get("/admin/status", headers=ADMIN).json()
        assert status["state_store"] == (
            "unavailable: Redis: Error 111 connecting to 10.20.30.40:6379. Refused."
        )
    with client_for(api) as client:
        assert client.get("/admin/status", headers=ADMIN).json()["state_store"] == "ok"


@pytest.mark.parametrize(
    ("subscribed", "event_type"),
    [
        ("realtime.call.incoming", "live.transport.incoming"),
        ("realtime.call.incoming", "live.call.incoming"),
        ("live.transport.incoming", "realtime.call.incoming"),
    ],
)
def test_an_incoming_call_of_an_unsubscribed_api_is_not_acted_on(
    api: respx.Router, caplog: pytest.LogCaptureFixture, subscribed: str, event_type: str
) -> None:
    # The pairing of the two APIs' events trusts SWITCHBOARD_SUBSCRIBED_EVENTS: a Realtime-only
    # project skips the dialog claim, so a Live event acted on as well could answer (or
    # reject) the call a second time. It is acknowledged, counted and logged instead.
    if event_type == "realtime.call.incoming":
        event = incoming_event()
    else:
        event = live_event(event_type=event_type)
    with client_for(api, subscribed_events=subscribed) as client:
        with caplog.at_level(logging.WARNING, logger="switchboard"):
            response = post_event(client, event)
        assert response.status_code == 200
        assert response.json()["status"] == "ignored"
        assert "SWITCHBOARD_SUBSCRIBED_EVENTS" in response.json()["reason"]
        family = event_type.split(".")[0]
        text = client.get("/metrics").text
        assert f'switchboard_ignored_events_total{{type="{family}"}} 1.0' in text
    assert api.calls.call_count == 0
    assert [r for r in caplog.records if getattr(r, "event", None) == "unsubscribed_event"]
