"""In-call features end to end: a real `switchboard serve`, signed webhooks, and one fake
OpenAI at one base URL — FakeOpenAI answers call control and passes the sideband WebSocket
(`GET /v1/realtime?call_id=`) through to a FakeRealtime server running in a thread. A
hangup, or a transfer that succeeds, ends the call at the fake (its sideband closes with
1000), as at OpenAI. Every wait polls a condition, with a bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.openai.sideband import SidebandError, SidebandRefused, WebSocketConnector
from tests.e2e.conftest import Service, start_service, stop_service
from tests.e2e.fake_openai import FakeOpenAI
from tests.e2e.fake_realtime import (
    Drop,
    FakeRealtime,
    Refuse,
    WaitFor,
    dtmf,
    function_call,
)
from tests.support import HTTP, SECRET, incoming_event, new_id, signed

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-incall"
TOKEN = "e2e-incall-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SALES = "sip:sales@pbx.example.com"
SUPPORT = "tel:+18005550199"
DESK = "sip:desk@pbx.example.com"
FRONT_DESK = "+18005550101"
LIMITED = "+18005550102"
TRANSFER_LINE = "+18005550103"
STORMY = "+18005550104"

ROUTES = f"""
sessions:
  front:
    model: gpt-realtime
    instructions: You are the front desk.
    call:
      greeting: Welcome the caller.
      transfers:
        sales: {{uri: "{SALES}", description: buying something}}
        support: "{SUPPORT}"
      transfer_message: Tell the caller you are putting them through.
      end_call: true
      dtmf:
        "5": {{transfer: support}}
        "0": hangup
routes:
  - name: front-desk
    match: {{called: "{FRONT_DESK}"}}
    accept: front
  - name: limited
    match: {{called: "{LIMITED}"}}
    accept:
      instructions: Be quick.
      call:
        max_duration: {{seconds: 1.5, warning_before: 0.75, warning: Say the call ends soon.}}
  - name: stormy
    match: {{called: "{STORMY}"}}
    accept:
      instructions: Be quick.
      call:
        dtmf: {{"0": hangup}}
        max_duration: {{seconds: 3}}
  - name: transfer-line
    match: {{called: "{TRANSFER_LINE}"}}
    refer: {{target_uri: "{DESK}", announce: Say you are putting them through to the desk.}}
"""

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], what: str, within: float = 15.0) -> T:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Fakes:
    api: FakeOpenAI
    realtime: FakeRealtime

    def ops(self, call_id: str) -> list[tuple[str, Any]]:
        return [(r.operation, r.body) for r in self.api.for_call(call_id)]

    def of_type(self, call_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.realtime.events(call_id) if e.get("type") == kind]

    def at_least(self, call_id: str, kind: str, count: int = 1) -> list[dict[str, Any]] | None:
        """The client events of a type, once there are `count` of them (for wait_until)."""
        found = self.of_type(call_id, kind)
        return found if len(found) >= count else None


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    api = FakeOpenAI().start()
    realtime = FakeRealtime(api_key=API_KEY).start_in_thread()
    api.websocket_backend = ("127.0.0.1", realtime.port)
    realtime.link(api)
    yield Fakes(api, realtime)
    realtime.stop_thread()
    api.stop()
    assert realtime.errors == []


def incall_env(fakes: Fakes, calls_db: Path, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": fakes.api.base_url,
        "OPENAI_WEBHOOK_SECRET": SECRET,
        "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
        "SWITCHBOARD_CALLS_DB": str(calls_db),
        **extra,
    }


@pytest.fixture(scope="module")
def incall(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("incall")
    running = start_service(workdir, ROUTES, env=incall_env(fakes, workdir / "calls.db"))
    yield running
    stop_service(running)


def call(service: Service, call_id: str, called: str) -> dict[str, Any]:
    body, headers = signed(incoming_event(call_id, called=called))
    response = HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def record(service: Service, call_id: str) -> dict[str, Any] | None:
    response = HTTP.get(f"{service.url}/admin/calls/{call_id}", headers=AUTH, timeout=5)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def ended(service: Service, call_id: str) -> dict[str, Any]:
    """The call's record once it has ended."""

    def check() -> dict[str, Any] | None:
        found = record(service, call_id)
        return found if found is not None and found["status"] == "ended" else None

    return wait_until(check, f"{call_id} to end")


def kinds(found: dict[str, Any]) -> list[str]:
    return [event["kind"] for event in found["events"]]


# --- the fakes themselves -------------------------------------------------------------------


def test_one_base_url_serves_call_control_and_the_sideband(fakes: Fakes) -> None:
    """Through FakeOpenAI's pass-through: refusals and a drop look as the fake sent them."""
    call_id = new_id()
    fakes.realtime.call(call_id, [dtmf("1"), WaitFor("response.create"), Drop()], Refuse(404))

    async def scenario() -> list[str]:
        connector = WebSocketConnector(fakes.api.base_url, API_KEY)
        with pytest.raises(SidebandRefused) as refused:
            await WebSocketConnector(fakes.api.base_url, "sk-wrong").connect(call_id)
        assert refused.value.status == 401
        sideband = await connector.connect(call_id)
        seen = []
        with pytest.raises(SidebandError, match="dropped"):
            async for event in sideband.events():
                seen.append(event["type"])
                if event["type"] == "input_audio_buffer.dtmf_event_received":
                    await sideband.send({"type": "response.create"})
        with pytest.raises(SidebandRefused) as gone:
            await connector.connect(call_id)
        assert gone.value.status == 404
        return seen

    seen = asyncio.run(scenario())
    assert seen[:2] == ["session.created", "input_audio_buffer.dtmf_event_received"]
    assert fakes.realtime.types(call_id) == ["response.create"]
    assert [r.status for r in fakes.realtime.refusals if r.call_id == call_id] == [401, 404]


# --- in-call features -------------------------------------------------------------------------


def test_greeting_and_the_tools_in_the_session(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [])
    answer = call(incall, call_id, FRONT_DESK)
    assert (answer["route"], answer["outcome"]) == ("front-desk", "accepted")
    (accept,) = fakes.ops(call_id)
    session = accept[1]
    assert "call" not in session  # Switchboard's, never sent to OpenAI
    assert sorted(tool["name"] for tool in session["tools"]) == ["end_call", "transfer_call"]

    (greeting,) = wait_until(lambda: fakes.of_type(call_id, "response.create"), "the greeting")
    assert greeting == {
        "type": "response.create",
        "response": {"instructions": "Welcome the caller."},
    }
    (sideband,) = fakes.realtime.sidebands(call_id)
    assert sideband.authorization == f"Bearer {API_KEY}"
    active = wait_until(lambda: record(incall, call_id), "the record")
    assert active["status"] == "active" and active["route"] == "front-desk"

    fakes.realtime.end(call_id)  # the caller hangs up
    found = ended(incall, call_id)
    assert found["end_reason"] == "ended"
    assert kinds(found)[:4] == ["decision", "accepted", "sideband_connected", "greeting"]


def test_the_model_transfers_to_an_allowlisted_name(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    tool = function_call("transfer_call", {"destination": "sales"}, call_id="call_e2e_1")
    fakes.realtime.call(call_id, [WaitFor("response.create"), *tool])
    call(incall, call_id, FRONT_DESK)

    found = ended(incall, call_id)
    assert found["end_reason"] == "transferred"
    assert fakes.ops(call_id)[1:] == [("refer", {"target_uri": SALES})]
    item, line = fakes.realtime.events(call_id)[1:]
    assert item["item"]["call_id"] == "call_e2e_1"
    assert json.loads(item["item"]["output"]) == {"status": "transferring", "destination": "sales"}
    assert line["response"]["instructions"] == "Tell the caller you are putting them through."
    (transfer,) = [e["data"] for e in found["events"] if e["kind"] == "transfer"]
    assert transfer == {"destination": "sales", "outcome": "referred", "by": "tool", "uri": SALES}


def test_an_unknown_name_gets_a_tool_error_and_no_transfer(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    tool = function_call("transfer_call", {"destination": "ceo"})
    fakes.realtime.call(call_id, [WaitFor("response.create"), *tool])
    call(incall, call_id, FRONT_DESK)

    creates = wait_until(lambda: fakes.at_least(call_id, "response.create", 2), "a retry")
    assert creates[1] == {"type": "response.create"}
    (item,) = fakes.of_type(call_id, "conversation.item.create")
    assert "unknown destination 'ceo'" in json.loads(item["item"]["output"])["error"]
    assert [op for op, _ in fakes.ops(call_id)] == ["accept"]
    fakes.realtime.end(call_id)
    found = ended(incall, call_id)
    (transfer,) = [e["data"] for e in found["events"] if e["kind"] == "transfer"]
    assert transfer["outcome"] == "rejected_destination"
    assert [op for op, _ in fakes.ops(call_id)] == ["accept"]


def test_a_keypad_digit_transfers(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [WaitFor("response.create"), dtmf("5")])
    call(incall, call_id, FRONT_DESK)
    found = ended(incall, call_id)
    assert found["end_reason"] == "transferred"
    assert fakes.ops(call_id)[1:] == [("refer", {"target_uri": SUPPORT})]
    assert {"kind": "dtmf", "data": {"digit": "5"}} in [
        {"kind": e["kind"], "data": e["data"]} for e in found["events"]
    ]


def test_max_duration_warns_then_hangs_up(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [])
    call(incall, call_id, LIMITED)
    found = ended(incall, call_id)
    assert found["end_reason"] == "max_duration"
    assert fakes.ops(call_id)[1:] == [("hangup", None)]
    assert fakes.realtime.events(call_id) == [
        {"type": "response.create", "response": {"instructions": "Say the call ends soon."}}
    ]
    assert kinds(found).index("warning") < kinds(found).index("hangup")


def test_end_call_hangs_up(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [WaitFor("response.create"), *function_call("end_call", {})])
    call(incall, call_id, FRONT_DESK)
    found = ended(incall, call_id)
    assert found["end_reason"] == "end_call"
    assert fakes.ops(call_id)[1:] == [("hangup", None)]
    (item,) = fakes.of_type(call_id, "conversation.item.create")
    assert json.loads(item["item"]["output"]) == {"status": "ending the call"}


def test_a_transfer_route_announces_then_refers(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [])
    answer = call(incall, call_id, TRANSFER_LINE)
    assert (answer["action"], answer["outcome"]) == ("refer", "transferring")
    found = ended(incall, call_id)
    assert found["end_reason"] == "transferred"
    assert [op for op, _ in fakes.ops(call_id)] == ["accept", "refer"]
    assert fakes.ops(call_id)[1] == ("refer", {"target_uri": DESK})
    (line,) = fakes.realtime.events(call_id)
    assert line["response"]["instructions"] == "Say you are putting them through to the desk."


def test_a_dropped_sideband_is_rejoined(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [WaitFor("response.create"), Drop()], [dtmf("0")])
    call(incall, call_id, FRONT_DESK)
    found = ended(incall, call_id)
    assert found["end_reason"] == "dtmf"
    assert len(fakes.realtime.sidebands(call_id)) == 2
    assert kinds(found).count("sideband_connected") == 2
    assert "sideband_dropped" in kinds(found)
    assert fakes.ops(call_id)[1:] == [("hangup", None)]


def test_a_sideband_whose_call_is_gone_when_rejoined(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [WaitFor("response.create"), Drop()], Refuse(404))
    call(incall, call_id, FRONT_DESK)
    found = ended(incall, call_id)
    assert found["end_reason"] == "caller_gone"  # the 404: the call ended meanwhile
    assert kinds(found).index("sideband_dropped") < kinds(found).index("sideband_failed")
    assert [r.status for r in fakes.realtime.refusals if r.call_id == call_id] == [404]
    metrics = HTTP.get(f"{incall.url}/metrics").text
    assert 'switchboard_sideband_failures_total{stage="dropped"}' in metrics


# --- the admin API ----------------------------------------------------------------------------


def test_admin_calls_with_the_token(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [])
    call(incall, call_id, FRONT_DESK)
    wait_until(lambda: fakes.of_type(call_id, "response.create"), "the greeting")

    listed = HTTP.get(f"{incall.url}/admin/calls", params={"status": "active"}, headers=AUTH)
    assert listed.status_code == 200
    assert call_id in [c["call_id"] for c in listed.json()]

    url = f"{incall.url}/admin/calls/{call_id}"
    wrong = HTTP.post(f"{url}/transfer", json={"destination": "ceo"}, headers=AUTH)
    assert wrong.status_code == 422
    assert "sales" in wrong.json()["error"]
    unknown = HTTP.post(
        f"{incall.url}/admin/calls/rtc_nobody/transfer", json={"destination": "sales"}, headers=AUTH
    )
    assert unknown.status_code == 404
    assert [op for op, _ in fakes.ops(call_id)] == ["accept"]

    done = HTTP.post(f"{url}/transfer", json={"destination": "sales"}, headers=AUTH, timeout=15)
    assert done.status_code == 200
    assert done.json() == {"call_id": call_id, "destination": "sales", "outcome": "referred"}
    assert fakes.ops(call_id)[1:] == [("refer", {"target_uri": SALES})]
    assert ended(incall, call_id)["end_reason"] == "transferred"
    again = HTTP.post(f"{url}/hangup", headers=AUTH)
    assert again.status_code == 404  # no longer active


def test_admin_hangup(incall: Service, fakes: Fakes) -> None:
    call_id = new_id()
    fakes.realtime.call(call_id, [])
    call(incall, call_id, FRONT_DESK)
    wait_until(lambda: fakes.of_type(call_id, "response.create"), "the greeting")
    response = HTTP.post(f"{incall.url}/admin/calls/{call_id}/hangup", headers=AUTH, timeout=15)
    assert response.json() == {"call_id": call_id, "outcome": "hung_up"}
    assert ended(incall, call_id)["end_reason"] == "operator"
    assert fakes.ops(call_id)[1:] == [("hangup", None)]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"}]
)
def test_admin_calls_refuse_a_missing_or_wrong_token(
    incall: Service, fakes: Fakes, headers: dict[str, str]
) -> None:
    for method, path in (
        ("GET", "/admin/calls"),
        ("GET", "/admin/calls/rtc_x"),
        ("POST", "/admin/calls/rtc_x/hangup"),
    ):
        response = HTTP.request(method, f"{incall.url}{path}", headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")


# --- a restart ------------------------------------------------------------------------------------


def test_a_restart_with_a_call_open(fakes: Fakes, tmp_path: Path) -> None:
    env = incall_env(fakes, tmp_path / "calls.db")
    first = start_service(tmp_path / "run", ROUTES, env=env)
    call_id = new_id()
    try:
        fakes.realtime.call(call_id, [])
        call(first, call_id, FRONT_DESK)
        wait_until(lambda: fakes.of_type(call_id, "response.create"), "the greeting")
        assert wait_until(lambda: record(first, call_id), "the record")["status"] == "active"
    finally:
        stop_service(first)
    assert "Application shutdown complete" in first.logs()  # a clean stop, not a kill
    # It left the call cleanly: the sideband closed with 1000, and the call goes on.
    (sideband,) = wait_until(
        lambda: [s for s in fakes.realtime.sidebands(call_id) if not s.open], "the close"
    )
    assert (sideband.close_code, sideband.closed_by_client) == (1000, True)
    assert [op for op, _ in fakes.ops(call_id)] == ["accept"]

    second = start_service(tmp_path / "run", ROUTES, env=env)
    try:
        found = record(second, call_id)
        assert found is not None
        assert (found["status"], found["end_reason"]) == ("ended", "unknown")
    finally:
        stop_service(second)
    fakes.realtime.end(call_id)


# --- issue 11: a spinning sideband, an interrupted model ------------------------------------------


def test_a_sideband_that_drops_at_once_cannot_spin_nor_lose_the_time_limit(
    incall: Service, fakes: Fakes
) -> None:
    """It was rejoined 977 times at 542/s, then the session died of a RecursionError and
    the max-duration hangup with it. Now: rejoins with growing pauses, and the hangup."""
    call_id = new_id()
    fakes.realtime.call(call_id, then=[Drop()])  # every connection drops at once
    call(incall, call_id, STORMY)
    found = ended(incall, call_id)
    assert found["end_reason"] == "max_duration"
    assert fakes.ops(call_id)[1:] == [("hangup", None)]  # POST .../hangup at the stand-in
    connections = len(fakes.realtime.sidebands(call_id))
    # 3 s of backoff from 0.5 s doubling: a handful, never hundreds (RejoinPolicy caps 20).
    assert 2 <= connections <= 10, connections
    assert kinds(found).count("sideband_dropped") == connections
    metrics = HTTP.get(f"{incall.url}/metrics").text
    assert 'switchboard_hangups_total{reason="max_duration"}' in metrics


def test_an_interrupted_end_call_does_not_hang_up(incall: Service, fakes: Fakes) -> None:
    """A cancelled response whose end_call item is incomplete made a real POST .../hangup."""
    call_id = new_id()
    interrupted = function_call("end_call", {}, status="cancelled", item_status="incomplete")
    fakes.realtime.call(call_id, [WaitFor("response.create"), *interrupted])
    call(incall, call_id, FRONT_DESK)

    def interrupted_in_record() -> dict[str, Any] | None:
        found = record(incall, call_id)
        return found if found and "tool_call_interrupted" in kinds(found) else None

    found = wait_until(interrupted_in_record, "the interrupted tool call in the record")
    (interrupted_call,) = [
        e["data"] for e in found["events"] if e["kind"] == "tool_call_interrupted"
    ]
    assert interrupted_call == {
        "name": "end_call",
        "response_status": "cancelled",
        "item_status": "incomplete",
    }
    assert "tool_call" not in kinds(found)  # not taken as a call of the tool
    assert [op for op, _ in fakes.ops(call_id)] == ["accept"]
    assert fakes.of_type(call_id, "conversation.item.create") == []
    fakes.realtime.end(call_id)
    found = ended(incall, call_id)
    assert found["end_reason"] == "ended"
    assert [op for op, _ in fakes.ops(call_id)] == ["accept"]
