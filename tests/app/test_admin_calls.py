"""The admin API's call endpoints through the ASGI app: GET /admin/calls, GET
/admin/calls/{call_id}, POST .../hangup and .../transfer, with a fake in-call control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.ops.admin import CallsControl
from app.records.calllog import (
    CallApi,
    CallEvent,
    CallLog,
    CallLogError,
    CallRecord,
    CallStatus,
)
from app.records.memory import InMemoryCallLog
from app.records.sqlite import SqliteCallLog
from app.rules import compile_rules
from tests.app.test_app import ROUTES, make_settings

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = float(int(time.time())) - 3600  # within the retention


class FakeControl:
    """In-call control over a fixed set of live calls, each with its allowlist."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[str, ...]] = {"rtc_live": ("sales", "billing")}
        self.requests: list[tuple[str, ...]] = []

    async def hangup(self, call_id: str) -> str | None:
        self.requests.append(("hangup", call_id))
        if self.live.pop(call_id, None) is None:
            return None
        return "hung_up"

    async def transfer(self, call_id: str, destination: str) -> str:
        self.requests.append(("transfer", call_id, destination))
        if call_id not in self.live:
            raise LookupError(call_id)
        if destination not in self.live[call_id]:
            raise ValueError(f"{destination!r} is not a destination of this call")
        return "referred"


_: CallsControl = FakeControl()  # mypy checks the fake against the protocol


def record(
    call_id: str,
    minutes: float,
    *,
    route: str = "support",
    status: CallStatus = "active",
    outcome: str = "accepted",
    api: CallApi = "realtime",
) -> CallRecord:
    return CallRecord(
        call_id=call_id,
        started_at=T0 + 60 * minutes,
        route=route,
        action="accept",
        outcome=outcome,
        status=status,
        caller="+1415*****23",
        called="+18005550100",
        rules_version="v1",
        api=api,
        events=(CallEvent(T0 + 60 * minutes, "decision", {"route": route}),),
    )


def populate(log: CallLog) -> None:
    log.started(record("rtc_old", 0, route="sales"))
    log.ended("rtc_old", "end_call")
    log.started(record("rtc_rejected", 1, route="spam", status="ended", outcome="rejected"))
    log.started(record("rtc_answered", 2, status="answered", api="live"))
    log.started(record("rtc_live", 3))
    log.event("rtc_live", "greeting", {"text": "Hello"})


def client_for(
    tmp_path: Path,
    *,
    call_log: CallLog | None = None,
    calls_control: CallsControl | None = None,
    **overrides: Any,
) -> TestClient:
    settings = make_settings(**{"admin_token": TOKEN, **overrides})
    if call_log is None:
        call_log = SqliteCallLog(tmp_path / "admin-calls.db")
    populate(call_log)  # queued until the app opens it
    app = create_app(
        settings,
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
        call_log=call_log,
        calls_control=calls_control,
    )
    return TestClient(app)


@pytest.fixture
def fake() -> FakeControl:
    return FakeControl()


@pytest.fixture
def client(tmp_path: Path, fake: FakeControl) -> Iterator[TestClient]:
    with client_for(tmp_path, calls_control=fake) as test_client:
        yield test_client


ENDPOINTS = [
    ("GET", "/admin/calls", None),
    ("GET", "/admin/calls/rtc_live", None),
    ("POST", "/admin/calls/rtc_live/hangup", None),
    ("POST", "/admin/calls/rtc_live/transfer", {"destination": "sales"}),
]


# --- the door ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "a bearer token is required"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401, "invalid token"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "a bearer token is required"),
        (AUTH, 200, None),
    ],
    ids=["missing", "wrong", "not-bearer", "right"],
)
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_token(
    tmp_path: Path,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    error: str | None,
) -> None:
    fake = FakeControl()
    with client_for(tmp_path, calls_control=fake) as client:
        response = client.request(method, path, headers=headers, json=body)
    assert response.status_code == status, response.text
    if error is not None:
        assert response.json() == {"error": error}
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert fake.requests == [], "nothing is done without the token"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_disabled_without_a_token(tmp_path: Path, method: str, path: str, body: Any) -> None:
    with client_for(tmp_path, admin_token=None, calls_control=FakeControl()) as client:
        response = client.request(method, path, headers=AUTH, json=body)
    assert response.status_code == 403
    assert "SWITCHBOARD_ADMIN_TOKEN" in response.json()["error"]


# --- GET /admin/calls ------------------------------------------------------------------------


LISTINGS: list[Any] = [
    pytest.param("", ["rtc_live", "rtc_answered", "rtc_rejected", "rtc_old"], id="all"),
    pytest.param("?status=active", ["rtc_live"], id="active"),
    pytest.param("?status=ended", ["rtc_rejected", "rtc_old"], id="ended"),
    pytest.param("?route=support", ["rtc_live", "rtc_answered"], id="route"),
    pytest.param(f"?since={T0 + 60}", ["rtc_live", "rtc_answered", "rtc_rejected"], id="since"),
    pytest.param("?limit=1", ["rtc_live"], id="limit"),
    pytest.param(
        f"?status=ended&route=sales&since={T0:.0f}&limit=1000", ["rtc_old"], id="every-filter"
    ),
    pytest.param("?route=nope", [], id="none"),
    pytest.param("?api=live", ["rtc_answered"], id="api-live"),
    pytest.param("?api=realtime", ["rtc_live", "rtc_rejected", "rtc_old"], id="api-realtime"),
    pytest.param("?api=live&status=ended", [], id="api-and-status"),
]


@pytest.mark.parametrize(("query", "expected"), LISTINGS)
def test_listing(client: TestClient, query: str, expected: list[str]) -> None:
    response = client.get(f"/admin/calls{query}", headers=AUTH)
    assert response.status_code == 200, response.text
    assert [call["call_id"] for call in response.json()] == expected


def test_listing_shows_each_record_with_its_duration(client: TestClient) -> None:
    calls = {c["call_id"]: c for c in client.get("/admin/calls", headers=AUTH).json()}
    assert calls["rtc_live"] == {
        "call_id": "rtc_live",
        "started_at": T0 + 180,
        "route": "support",
        "action": "accept",
        "outcome": "accepted",
        "status": "active",
        "caller": "+1415*****23",
        "called": "+18005550100",
        "rules_version": "v1",
        "ended_at": None,
        "end_reason": None,
        "api": "realtime",
        "duration": None,
    }
    assert calls["rtc_answered"]["api"] == "live"
    old = calls["rtc_old"]
    assert (old["status"], old["end_reason"]) == ("ended", "end_call")
    assert old["duration"] == pytest.approx(old["ended_at"] - old["started_at"])
    assert "events" not in old


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=ten", "limit"),
        ("?status=ringing", "status"),
        ("?since=-1", "since"),
        ("?since=nan", "since"),
        ("?route=", "route"),
        ("?api=gpt-live", "api"),
    ],
)
def test_listing_refuses_bad_filters(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/admin/calls{query}", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"].startswith(f"query.{field}: ")


# --- GET /admin/calls/{call_id} --------------------------------------------------------------


def test_detail_has_the_events(client: TestClient) -> None:
    response = client.get("/admin/calls/rtc_live", headers=AUTH)
    assert response.status_code == 200
    call = response.json()
    assert (call["call_id"], call["status"], call["duration"]) == ("rtc_live", "active", None)
    assert call["api"] == "realtime"
    assert client.get("/admin/calls/rtc_answered", headers=AUTH).json()["api"] == "live"
    assert [(e["kind"], e["data"]) for e in call["events"]] == [
        ("decision", {"route": "support"}),
        ("greeting", {"text": "Hello"}),
    ]
    ended = client.get("/admin/calls/rtc_old", headers=AUTH).json()
    assert [e["kind"] for e in ended["events"]] == ["decision", "ended"]
    assert ended["events"][-1]["data"] == {"reason": "end_call"}


def test_detail_of_an_unknown_call_is_404(client: TestClient) -> None:
    response = client.get("/admin/calls/rtc_nope", headers=AUTH)
    assert (response.status_code, response.json()) == (404, {"error": "no such call"})


# --- POST hangup and transfer ----------------------------------------------------------------


def test_hangup(client: TestClient, fake: FakeControl) -> None:
    response = client.post("/admin/calls/rtc_live/hangup", headers=AUTH)
    assert (response.status_code, response.json()) == (
        200,
        {"call_id": "rtc_live", "outcome": "hung_up"},
    )
    again = client.post("/admin/calls/rtc_live/hangup", headers=AUTH)
    assert (again.status_code, again.json()) == (404, {"error": "no such active call"})
    assert fake.requests == [("hangup", "rtc_live"), ("hangup", "rtc_live")]


@pytest.mark.parametrize("call_id", ["rtc_nope", "rtc_old"], ids=["unknown", "ended"])
def test_hangup_of_a_call_not_active_is_404(client: TestClient, call_id: str) -> None:
    response = client.post(f"/admin/calls/{call_id}/hangup", headers=AUTH)
    assert response.status_code == 404


TRANSFERS: list[Any] = [
    pytest.param(
        "rtc_live",
        {"destination": "sales"},
        200,
        {"call_id": "rtc_live", "destination": "sales", "outcome": "referred"},
        id="allowed",
    ),
    pytest.param(
        "rtc_nope", {"destination": "sales"}, 404, {"error": "no such active call"}, id="unknown"
    ),
    pytest.param(
        "rtc_live",
        {"destination": "premium"},
        422,
        {"error": "'premium' is not a destination of this call"},
        id="not-on-the-allowlist",
    ),
]


@pytest.mark.parametrize(("call_id", "body", "status", "answer"), TRANSFERS)
def test_transfer(
    client: TestClient,
    fake: FakeControl,
    call_id: str,
    body: dict[str, Any],
    status: int,
    answer: dict[str, Any],
) -> None:
    response = client.post(f"/admin/calls/{call_id}/transfer", headers=AUTH, json=body)
    assert (response.status_code, response.json()) == (status, answer)
    assert fake.requests == [("transfer", call_id, body["destination"])]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'"sales"',
        b"{}",
        b'{"destination": ""}',
        b'{"destination": 7}',
        b'{"destination": "sales", "extra": 1}',
        b'{"destination": "' + b"x" * 300 + b'"}',
    ],
    ids=[
        "empty",
        "not-json",
        "array",
        "string",
        "no-destination",
        "blank",
        "number",
        "extra",
        "long",
    ],
)
def test_transfer_refuses_a_malformed_body(
    client: TestClient, fake: FakeControl, content: bytes
) -> None:
    response = client.post(
        "/admin/calls/rtc_live/transfer",
        headers={**AUTH, "content-type": "application/json"},
        content=content,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/calls/rtc_live/hangup", None),
        ("/admin/calls/rtc_live/transfer", {"destination": "sales"}),
    ],
    ids=["hangup", "transfer"],
)
def test_control_unavailable_is_503(tmp_path: Path, path: str, body: Any) -> None:
    # In dry-run mode (no API key) nothing stays on calls: there is nothing to control.
    with client_for(tmp_path, openai_api_key=None) as client:
        response = client.post(path, headers=AUTH, json=body)
        assert (response.status_code, response.json()) == (
            503,
            {"error": "in-call control is not available"},
        )
        assert client.get("/admin/calls/rtc_live", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/calls/rtc_live/hangup", None),
        ("/admin/calls/rtc_live/transfer", {"destination": "sales"}),
    ],
    ids=["hangup", "transfer"],
)
def test_the_in_call_manager_answers_for_calls_it_is_not_on(
    tmp_path: Path, path: str, body: Any
) -> None:
    # With an API key the app's own in-call manager is the control; rtc_live is in the
    # log but no session of this process is on it.
    with client_for(tmp_path) as client:
        response = client.post(path, headers=AUTH, json=body)
        assert response.status_code == 404, response.text


# --- wiring: the call log's life in the app ----------------------------------------------------


def test_the_default_call_log_is_the_configured_database(calls_db: Path) -> None:
    app = create_app(
        make_settings(admin_token=TOKEN, calls_retention_days=7),
        rules=compile_rules(ROUTES, "routes.yaml", region="US"),
    )
    log = app.state.call_log
    assert isinstance(log, SqliteCallLog)
    assert (log.path, log.retention_days) == (calls_db, 7)
    assert not calls_db.exists(), "opened at start-up, not before"
    with TestClient(app) as client:
        assert calls_db.is_file()
        log.started(record("rtc_x", 0))
        assert client.get("/admin/calls", headers=AUTH).json()[0]["call_id"] == "rtc_x"
    with pytest.raises(CallLogError, match="closed"):
        log.open()  # closed at shutdown
    reopened = SqliteCallLog(calls_db)
    reopened.open()
    try:
        rows = asyncio.run(reopened.recent())
    finally:
        reopened.close()
    assert [(r.call_id, r.end_reason) for r in rows] == [("rtc_x", "unknown")]


def test_memory_call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", ":memory:")
    app = create_app(
        make_settings(admin_token=TOKEN), rules=compile_rules(ROUTES, "r", region="US")
    )
    assert isinstance(app.state.call_log, InMemoryCallLog)
    with TestClient(app) as client:
        assert client.get("/admin/calls", headers=AUTH).json() == []
    assert list(tmp_path.iterdir()) == []


def test_an_injected_call_log_is_used(tmp_path: Path) -> None:
    log = InMemoryCallLog()
    with client_for(tmp_path, call_log=log) as client:
        assert client.app.state.call_log is log  # type: ignore[attr-defined]
        calls = client.get("/admin/calls?limit=2", headers=AUTH).json()
    assert [c["call_id"] for c in calls] == ["rtc_live", "rtc_answered"]
