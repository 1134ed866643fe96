"""In-call features on GPT-Live calls end to end: a real `switchboard serve`, signed
`live.transport.incoming` webhooks, one base URL serving GPT-Live's call control
(`/v1/live/sessions/{id}/...`) and passing its sideband (`/v1/live/sessions/{id}/attach`)
through to a scripted FakeLive. The same `call:` features as on Realtime, with GPT-Live's
events: lines as session.commentary.append, tools as function calls of the session's
Responses delegation, keys as transport.dtmf.received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Service, start_service, stop_service
from tests.e2e.fake_live import FakeLive, dtmf, function_call
from tests.e2e.fake_openai import FakeOpenAI
from tests.e2e.fake_realtime import WaitFor
from tests.e2e.test_incall_e2e import kinds, wait_until
from tests.support import HTTP, SECRET, live_event, new_id, signed

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-live-incall"
TOKEN = "e2e-live-incall-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SALES = "sip:sales@pbx.example.com"
DESK = "+18005550100"
LIMITED = "+18005550101"

ROUTES = f"""
sessions:
  desk:
    type: live
    model: gpt-live-1
    instructions: You answer the phone for Example Co.
    delegation:
      type: responses
      responses: {{model: gpt-5.2, instructions: Transfer callers who want to buy.}}
    call:
      greeting: Welcome the caller to Example Co.
      transfers:
        sales: {{uri: "{SALES}", description: buying something}}
      transfer_message: Tell the caller you are putting them through.
      end_call: true
      dtmf:
        "5": {{transfer: sales}}
        "0": hangup
routes:
  - name: desk
    match: {{called: "{DESK}"}}
    accept: desk
  - name: limited
    match: {{called: "{LIMITED}"}}
    accept:
      type: live
      model: gpt-live-1
      call:
        max_duration: {{seconds: 1.5, warning_before: 0.75, warning: Say the call ends soon.}}
"""


class Fakes:
    def __init__(self) -> None:
        self.api = FakeOpenAI().start()
        self.live = FakeLive(api_key=API_KEY).start_in_thread()
        self.api.websocket_backend = ("127.0.0.1", self.live.port)
        self.live.link(self.api)

    def ops(self, session_id: str) -> list[tuple[str, str, Any]]:
        return [(r.api, r.operation, r.body) for r in self.api.for_call(session_id)]

    def of_type(self, session_id: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.live.events(session_id) if e.get("type") == kind]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    running = Fakes()
    yield running
    running.live.stop_thread()
    running.api.stop()
    assert running.live.errors == []


@pytest.fixture(scope="module")
def service(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir: Path = tmp_path_factory.mktemp("live-incall")
    running = start_service(
        workdir,
        ROUTES,
        env={
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_BASE_URL": fakes.api.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
            "SWITCHBOARD_CALLS_DB": str(workdir / "calls.db"),
        },
    )
    yield running
    stop_service(running)


def call(service: Service, session_id: str, called: str) -> dict[str, Any]:
    body, headers = signed(live_event(session_id, called=called))
    response = HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def record(service: Service, session_id: str) -> dict[str, Any] | None:
    response = HTTP.get(f"{service.url}/admin/calls/{session_id}", headers=AUTH, timeout=5)
    if response.status_code == 404:
        return None
    found: dict[str, Any] = response.json()
    return found


def ended(service: Service, session_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = record(service, session_id)
        return found if found is not None and found["status"] == "ended" else None

    return wait_until(check, f"{session_id} to end")


def test_greeting_over_the_live_sideband_and_the_tools_in_the_delegation(
    service: Service, fakes: Fakes
) -> None:
    session_id = new_id("live")
    fakes.live.call(session_id, [])
    answer = call(service, session_id, DESK)
    assert (answer["api"], answer["outcome"]) == ("live", "accepted")
    ((api, op, body),) = fakes.ops(session_id)
    assert (api, op) == ("live", "accept")
    session = body["session"]
    assert "call" not in session and "tools" not in session
    tools = session["delegation"]["responses"]["tools"]
    assert sorted(t["name"] for t in tools) == ["end_call", "transfer_call"]
    assert tools[0]["parameters"]["properties"]["destination"]["enum"] == ["sales"]

    (greeting,) = wait_until(
        lambda: fakes.of_type(session_id, "session.commentary.append"), "greeting"
    )
    assert greeting == {
        "type": "session.commentary.append",
        "content": "Welcome the caller to Example Co.",
        "delegation_id": None,
    }
    (sideband,) = fakes.live.sidebands(session_id)
    assert sideband.authorization == f"Bearer {API_KEY}"
    fakes.live.end(session_id)  # the caller hangs up
    found = ended(service, session_id)
    assert kinds(found)[:4] == ["decision", "accepted", "sideband_connected", "greeting"]
    assert found["events"][0]["data"]["api"] == "live"
    assert found["api"] == "live"  # the record itself, not only its decision event
    listed = HTTP.get(
        f"{service.url}/admin/calls", params={"api": "live"}, headers=AUTH, timeout=5
    ).json()
    assert session_id in [c["call_id"] for c in listed]
    assert all(c["api"] == "live" for c in listed)


def test_the_model_transfers_to_an_allowlisted_name(service: Service, fakes: Fakes) -> None:
    session_id = new_id("live")
    tool = function_call("transfer_call", {"destination": "sales"}, call_id="call_live_1")
    fakes.live.call(session_id, [WaitFor("session.commentary.append"), *tool])
    call(service, session_id, DESK)

    found = ended(service, session_id)
    assert found["end_reason"] == "transferred"
    assert fakes.ops(session_id)[1:] == [("live", "refer", {"target_uri": SALES})]
    output, line = fakes.live.events(session_id)[1:3]
    assert output["type"] == "response.item.create"
    assert output["item"]["call_id"] == "call_live_1"
    assert json.loads(output["item"]["output"]) == {
        "status": "transferring",
        "destination": "sales",
    }
    assert line["type"] == "session.commentary.append"
    assert line["content"] == "Tell the caller you are putting them through."
    (transfer,) = [e["data"] for e in found["events"] if e["kind"] == "transfer"]
    assert transfer == {"destination": "sales", "outcome": "referred", "by": "tool", "uri": SALES}


def test_an_unknown_name_gets_a_tool_error_and_no_transfer(service: Service, fakes: Fakes) -> None:
    session_id = new_id("live")
    tool = function_call("transfer_call", {"destination": "ceo"})
    fakes.live.call(session_id, [WaitFor("session.commentary.append"), *tool])
    call(service, session_id, DESK)

    wait_until(lambda: fakes.of_type(session_id, "response.create"), "the response to carry on")
    (item,) = fakes.of_type(session_id, "response.item.create")
    assert "unknown destination 'ceo'" in json.loads(item["item"]["output"])["error"]
    assert [op for _, op, _ in fakes.ops(session_id)] == ["accept"]
    fakes.live.end(session_id)
    found = ended(service, session_id)
    (transfer,) = [e["data"] for e in found["events"] if e["kind"] == "transfer"]
    assert transfer["outcome"] == "rejected_destination"


def test_end_call_hangs_up_through_live(service: Service, fakes: Fakes) -> None:
    session_id = new_id("live")
    fakes.live.call(
        session_id, [WaitFor("session.commentary.append"), *function_call("end_call", {})]
    )
    call(service, session_id, DESK)
    found = ended(service, session_id)
    assert found["end_reason"] == "end_call"
    assert [(a, op) for a, op, _ in fakes.ops(session_id)] == [
        ("live", "accept"),
        ("live", "hangup"),
    ]


@pytest.mark.parametrize(("digit", "expected"), [("5", "refer"), ("0", "hangup")])
def test_keys_transfer_or_hang_up(
    service: Service, fakes: Fakes, digit: str, expected: str
) -> None:
    session_id = new_id("live")
    fakes.live.call(session_id, [WaitFor("session.commentary.append"), dtmf(digit)])
    call(service, session_id, DESK)
    found = ended(service, session_id)
    assert [op for _, op, _ in fakes.ops(session_id)][1:] == [expected]
    assert {"kind": "dtmf", "digit": digit} in [
        {"kind": e["kind"], **e["data"]} for e in found["events"] if e["kind"] == "dtmf"
    ]


def test_max_duration_warns_then_hangs_up(service: Service, fakes: Fakes) -> None:
    session_id = new_id("live")
    fakes.live.call(session_id, [])
    call(service, session_id, LIMITED)
    found = ended(service, session_id)
    assert found["end_reason"] == "max_duration"
    (warning,) = fakes.of_type(session_id, "session.commentary.append")
    assert warning["content"] == "Say the call ends soon."
    assert [(a, op) for a, op, _ in fakes.ops(session_id)] == [
        ("live", "accept"),
        ("live", "hangup"),
    ]


def test_the_admin_api_hangs_up_and_transfers_a_live_call_through_live(
    service: Service, fakes: Fakes
) -> None:
    for action, body, expected in (
        ("hangup", None, ("hangup", None)),
        ("transfer", {"destination": "sales"}, ("refer", {"target_uri": SALES})),
    ):
        session_id = new_id("live")
        fakes.live.call(session_id, [])
        call(service, session_id, DESK)
        wait_until(partial(fakes.live.is_open, session_id), "the sideband")
        response = HTTP.post(
            f"{service.url}/admin/calls/{session_id}/{action}", json=body, headers=AUTH, timeout=10
        )
        assert response.status_code == 200, response.text
        ended(service, session_id)
        api, op, sent = fakes.ops(session_id)[-1]
        assert (api, (op, sent)) == ("live", expected)
