"""GPT-Live routing end to end: a real `switchboard serve`, independently signed webhooks of
both APIs, and the local stand-in serving both call-control APIs.

A call may be announced by a `realtime.call.incoming` and a `live.transport.incoming` of the
same INVITE: whatever the order, exactly one API is asked to act, the one the route chose.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, start_service, stop_service, switchboard_command
from tests.e2e.fake_openai import FakeOpenAI, Recorded, Reply
from tests.support import HTTP, SECRET, incoming_event, live_event, new_id, signed

pytestmark = pytest.mark.e2e

LIVE_LINE = "+18005550100"
REALTIME_LINE = "+18005550101"
BLOCKED = "+18005550102"
TRANSFER = "+18005550103"
LIVE_SESSION = {
    "type": "live",
    "model": "gpt-live-1",
    "instructions": "You answer the phone for Example Co.",
    "audio": {"output": {"voice": "marin"}},
}
ROUTES = f"""
sessions:
  live-desk:
    type: live
    model: gpt-live-1
    instructions: You answer the phone for Example Co.
    audio: {{output: {{voice: marin}}}}
  realtime-desk:
    model: gpt-realtime
    instructions: You are the front desk.
  live-short:
    type: live
    model: gpt-live-1
routes:
  - name: live-line
    match: {{called: "{LIVE_LINE}"}}
    accept: live-desk
  - name: realtime-line
    match: {{called: "{REALTIME_LINE}"}}
    accept: realtime-desk
  - name: blocked
    match: {{called: "{BLOCKED}"}}
    reject: {{status_code: 486}}
  - name: transfer
    match: {{called: "{TRANSFER}"}}
    refer: {{target_uri: "sip:desk@pbx.example.com", session: live-short}}
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    api = FakeOpenAI().start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def service(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = start_service(
        tmp_path_factory.mktemp("live"),
        ROUTES,
        env={
            "OPENAI_API_KEY": "sk-e2e-live",
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_UPSTREAM_TIMEOUT_SECONDS": "0.5",
            "SWITCHBOARD_CALL_DEADLINE_SECONDS": "3",
            "SWITCHBOARD_PAIR_WAIT_SECONDS": "1.5",
        },
    )
    yield running
    stop_service(running)


def deliver(service: Service, event: dict[str, Any]) -> httpx.Response:
    body, headers = signed(event)
    return HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)


def both(called: str) -> tuple[dict[str, Any], dict[str, Any]]:
    realtime = incoming_event(new_id("rtc"), called=called)
    return realtime, live_event(new_id("live"), like=realtime)


def seen(fake: FakeOpenAI, *events: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    ids = {e["data"].get("call_id") or e["data"]["session_id"] for e in events}
    requests: list[Recorded] = [r for r in fake.requests if r.call_id in ids]
    return [(r.api, r.operation, r.call_id, r.body) for r in requests]


async def deliver_all(service: Service, events: list[dict[str, Any]], gap: float) -> list[Any]:
    """Each event signed on its own, sent `gap` seconds after the one before (0: at once)."""

    async def one(client: httpx.AsyncClient, n: int, event: dict[str, Any]) -> Any:
        await asyncio.sleep(n * gap)
        body, headers = signed(event)
        response = await client.post(service.webhook_url, content=body, headers=headers)
        return response.status_code, response.json()

    async with httpx.AsyncClient(timeout=10) as client:
        return list(await asyncio.gather(*(one(client, n, e) for n, e in enumerate(events))))


def test_a_live_route_accepts_at_the_live_path(service: Service, fake: FakeOpenAI) -> None:
    _, live = both(LIVE_LINE)
    response = deliver(service, live)
    assert response.status_code == 200
    assert response.json()["api"] == "live" and response.json()["outcome"] == "accepted"
    session_id = live["data"]["session_id"]
    assert seen(fake, live) == [("live", "accept", session_id, {"session": LIVE_SESSION})]
    assert fake.for_call(session_id)[0].authorization == "Bearer sk-e2e-live"


def test_the_deprecated_live_event_is_routed_too(service: Service, fake: FakeOpenAI) -> None:
    old = live_event(new_id("live"), called=LIVE_LINE, event_type="live.call.incoming")
    assert deliver(service, old).json()["outcome"] == "accepted"
    assert [(a, op) for a, op, _, _ in seen(fake, old)] == [("live", "accept")]


def test_a_realtime_route_accepts_at_the_realtime_path(service: Service, fake: FakeOpenAI) -> None:
    realtime, _ = both(REALTIME_LINE)
    assert deliver(service, realtime).json()["outcome"] == "accepted"
    assert seen(fake, realtime) == [
        (
            "realtime",
            "accept",
            realtime["data"]["call_id"],
            {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "You are the front desk.",
            },
        )
    ]


@pytest.mark.parametrize(
    ("called", "chosen"),
    [(LIVE_LINE, "live"), (REALTIME_LINE, "realtime")],
    ids=["live-route", "realtime-route"],
)
@pytest.mark.parametrize("order", ["realtime-first", "live-first", "concurrent"])
def test_both_events_one_accept_on_the_chosen_api(
    service: Service, fake: FakeOpenAI, called: str, chosen: str, order: str
) -> None:
    realtime, live = both(called)
    events = [realtime, live] if order != "live-first" else [live, realtime]
    answers = asyncio.run(deliver_all(service, events, 0.0 if order == "concurrent" else 0.1))
    acted = seen(fake, realtime, live)
    assert [(api, op) for api, op, _, _ in acted] == [(chosen, "accept")]
    by_api = {body["api"]: (status, body) for status, body in answers}
    other = "realtime" if chosen == "live" else "live"
    assert by_api[chosen] == (200, by_api[chosen][1]) and by_api[chosen][1]["outcome"] == "accepted"
    assert by_api[other][1]["outcome"] == "other_api"
    assert by_api[other][1]["handled_by"] == chosen


def test_duplicates_of_both_events_accept_once(service: Service, fake: FakeOpenAI) -> None:
    realtime, live = both(LIVE_LINE)
    fake.script(live["data"]["session_id"], "accept", Reply(200, delay=0.3))
    answers = asyncio.run(deliver_all(service, [realtime, live] * 3, 0.0))
    assert [(a, op) for a, op, _, _ in seen(fake, realtime, live)] == [("live", "accept")]
    assert {status for status, _ in answers} == {200}


def test_live_reject_and_both_events_reject_once(service: Service, fake: FakeOpenAI) -> None:
    _, live = both(BLOCKED)
    assert deliver(service, live).json()["outcome"] == "rejected"
    assert seen(fake, live) == [
        ("live", "reject", live["data"]["session_id"], {"status_code": 486})
    ]
    realtime, live = both(BLOCKED)
    asyncio.run(deliver_all(service, [realtime, live], 0.0))
    assert [op for _, op, _, _ in seen(fake, realtime, live)] == ["reject"]


def test_live_refer_accepts_then_refers_through_live(service: Service, fake: FakeOpenAI) -> None:
    _, live = both(TRANSFER)
    assert deliver(service, live).json()["outcome"] == "referred"
    session_id = live["data"]["session_id"]
    assert seen(fake, live) == [
        ("live", "accept", session_id, {"session": {"type": "live", "model": "gpt-live-1"}}),
        ("live", "refer", session_id, {"target_uri": "sip:desk@pbx.example.com"}),
    ]


def test_a_failed_live_refer_hangs_up_through_live(service: Service, fake: FakeOpenAI) -> None:
    _, live = both(TRANSFER)
    session_id = live["data"]["session_id"]
    fake.script(session_id, "refer", Reply(400, {"error": {"message": "bad target"}}))
    assert deliver(service, live).json()["outcome"] == "refer_failed"
    assert [(a, op) for a, op, _, _ in seen(fake, live)] == [
        ("live", "accept"),
        ("live", "refer"),
        ("live", "hangup"),
    ]


def test_the_live_event_never_comes_the_realtime_event_rejects(
    service: Service, fake: FakeOpenAI
) -> None:
    realtime, _ = both(LIVE_LINE)
    response = deliver(service, realtime)
    assert response.json()["note"] == "no live event for this call"
    assert seen(fake, realtime) == [
        ("realtime", "reject", realtime["data"]["call_id"], {"status_code": 503})
    ]


def test_simulate_live_against_the_running_service(service: Service, fake: FakeOpenAI) -> None:
    session_id = new_id("live")
    result = subprocess.run(
        [
            *switchboard_command(),
            "simulate",
            "--live",
            "--url",
            service.webhook_url,
            "--call-id",
            session_id,
            "--called",
            LIVE_LINE,
        ],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=service.log.parent,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.split("\n", 1)[1])
    assert (answer["api"], answer["route"], answer["outcome"]) == ("live", "live-line", "accepted")
    assert [(r.api, r.operation) for r in fake.for_call(session_id)] == [("live", "accept")]
