"""A real `switchboard serve` process, a real local API stand-in, independently signed webhooks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, start_service, stop_service, switchboard_command
from tests.e2e.fake_openai import FakeOpenAI, Reply
from tests.support import HTTP, SECRET, incoming_event, new_id, signed

pytestmark = pytest.mark.e2e


def deliver(service: Service, event: dict[str, Any], **sign_args: Any) -> httpx.Response:
    body, headers = signed(event, **sign_args)
    return HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)


def service_version(service: Service) -> str:
    version: str = HTTP.get(f"{service.url}/readyz").json()["rules_version"]
    return version


def ops(fake: FakeOpenAI, call_id: str) -> list[tuple[str, Any]]:
    return [(r.operation, r.body) for r in fake.for_call(call_id)]


def test_accept(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    response = deliver(service, incoming_event(call_id, called="+1 (800) 555-0100"))
    assert response.status_code == 200
    assert response.json() == {
        "call_id": call_id,
        "api": "realtime",
        "route": "support",
        "action": "accept",
        "outcome": "accepted",
        "rules_version": service_version(service),
    }
    assert ops(fake_api, call_id) == [
        (
            "accept",
            {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "You are the support line.",
            },
        ),
    ]
    assert fake_api.for_call(call_id)[0].authorization == "Bearer sk-e2e"


def test_reject(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    event = incoming_event(call_id, from_value="<sip:anonymous@anonymous.invalid>;tag=9")
    response = deliver(service, event)
    assert response.json()["route"] == "anonymous"
    assert ops(fake_api, call_id) == [("reject", {"status_code": 486})]


def test_refer(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    response = deliver(service, incoming_event(call_id, headers=[("X-Customer-Tier", "gold")]))
    assert response.json()["outcome"] == "referred"
    assert ops(fake_api, call_id) == [
        ("accept", {"type": "realtime"}),
        ("refer", {"target_uri": "sip:desk@pbx.example.com"}),
    ]


def test_no_match_is_declined(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    response = deliver(service, incoming_event(call_id, called="+442079460958"))
    assert response.json()["route"] == "default"
    assert ops(fake_api, call_id) == [("reject", {"status_code": 603})]


def test_duplicate_delivery(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    body, headers = signed(incoming_event(call_id))
    first = HTTP.post(service.webhook_url, content=body, headers=headers)
    second = HTTP.post(service.webhook_url, content=body, headers=headers)
    assert first.json()["outcome"] == "accepted"
    assert second.json() == {**first.json(), "duplicate": True}
    assert len(fake_api.for_call(call_id)) == 1


def test_retry_after_zero_does_not_storm_the_api(service: Service, fake_api: FakeOpenAI) -> None:
    """Issue 11: `429` with `Retry-After: 0` made 4,111 accepts for one call in 5 s."""
    call_id = new_id()
    busy = Reply(429, {"error": {"message": "Rate limit"}}, headers=(("Retry-After", "0"),))
    fake_api.script(call_id, "accept", *[busy] * 100)
    response = deliver(service, incoming_event(call_id))
    assert response.status_code == 503
    assert response.json()["outcome"] == "upstream_error"
    assert [op for op, _ in ops(fake_api, call_id)] == ["accept"] * 4  # RetryPolicy.max_sends


def test_a_trickling_answer_does_not_hold_the_webhook(
    service: Service, fake_api: FakeOpenAI
) -> None:
    """Issue 11: an answer trickling a byte at a time held the webhook 20 s past a 5 s
    deadline. Both copies of the delivery are answered well before the trickle would end
    (15 s), and the accept, which may have taken effect, is not sent again."""
    call_id = new_id()
    fake_api.script(call_id, "accept", Reply(200, trickle=0.25, trickle_bytes=60))
    body, headers = signed(incoming_event(call_id))
    before = fake_api.trickled

    async def send_both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            first = asyncio.create_task(
                client.post(service.webhook_url, content=body, headers=headers)
            )
            await asyncio.sleep(0.1)  # the first copy is in flight
            second = client.post(service.webhook_url, content=body, headers=headers)
            return [*await asyncio.gather(first, second)]

    first, second = asyncio.run(send_both())
    assert first.status_code == 503, first.text
    assert first.json()["outcome"] == "upstream_error"
    assert "no complete answer" in first.json()["error"]
    assert second.status_code == 503, second.text
    assert second.json()["duplicate"] is True
    assert [op for op, _ in ops(fake_api, call_id)] == ["accept"]
    assert fake_api.trickled - before < 60  # the router left before the body ended


def test_twenty_concurrent_copies_accept_once(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    fake_api.script(call_id, "accept", Reply(200, delay=0.3))  # keep the first one in flight
    body, headers = signed(incoming_event(call_id))

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:
            return await asyncio.gather(
                *(
                    client.post(service.webhook_url, content=body, headers=headers)
                    for _ in range(20)
                )
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 20
    assert {r.json()["outcome"] for r in responses} == {"accepted"}
    assert sum(1 for r in responses if not r.json().get("duplicate")) == 1
    assert ops(fake_api, call_id) == [
        (
            "accept",
            {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "You are the support line.",
            },
        ),
    ]


def test_upstream_500_then_success(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    fake_api.script(call_id, "accept", Reply(500), Reply(200))
    response = deliver(service, incoming_event(call_id))
    assert response.status_code == 200
    assert response.json()["outcome"] == "accepted"
    assert [op for op, _ in ops(fake_api, call_id)] == ["accept", "accept"]


def test_upstream_timeout_asks_for_redelivery(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    fake_api.script(call_id, "accept", Reply(200, delay=1.5))  # past the 0.5 s attempt timeout
    event = incoming_event(call_id)
    body, headers = signed(event)
    first = HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)
    assert first.status_code == 503
    assert first.json()["outcome"] == "upstream_error"
    assert "Timeout" in first.json()["error"]  # httpx's read timeout or the request's own
    assert len(fake_api.for_call(call_id)) == 1  # a sent request is not repeated blindly
    # OpenAI redelivers the same webhook: this time the API answers in time.
    second = HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)
    assert second.status_code == 200
    assert second.json()["outcome"] == "accepted"


def test_caller_gone(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    fake_api.script(call_id, "accept", Reply(404, {"error": {"message": "call not found"}}))
    response = deliver(service, incoming_event(call_id))
    assert response.status_code == 200
    assert response.json()["outcome"] == "caller_gone"
    assert len(fake_api.for_call(call_id)) == 1


def test_bad_signature_is_refused(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    body, headers = signed(incoming_event(call_id))
    headers["webhook-signature"] = "v1,AAAA"
    response = HTTP.post(service.webhook_url, content=body, headers=headers)
    assert response.status_code == 401
    assert fake_api.for_call(call_id) == []


def test_simulate_against_the_running_service(service: Service, fake_api: FakeOpenAI) -> None:
    call_id = new_id()
    result = subprocess.run(
        [
            *switchboard_command(),
            "simulate",
            "--url",
            service.webhook_url,
            "--call-id",
            call_id,
            "--caller",
            "+14155550123",
            "--called",
            "+18005550100",
            "-H",
            "X-Customer-Tier: gold",
        ],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=service.log.parent,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.split("\n", 1)[1])
    assert answer["route"] == "vip" and answer["outcome"] == "referred"
    assert [op for op, _ in ops(fake_api, call_id)] == ["accept", "refer"]


def test_one_log_line_per_call_with_masked_numbers(service: Service) -> None:
    call_id = new_id()
    deliver(service, incoming_event(call_id, caller="+14155550123"))
    deadline = time.monotonic() + 5
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not lines:
        lines = [
            json.loads(line)
            for line in service.logs().splitlines()
            if call_id in line and '"event": "call"' in line
        ]
        time.sleep(0.05)
    assert len(lines) == 1
    assert lines[0]["route"] == "support"
    assert lines[0]["caller"] == "+1415*****23"
    assert "4155550123" not in service.logs()


def test_admin_calls_without_a_configured_token(service: Service) -> None:
    """The shared e2e service has no SWITCHBOARD_ADMIN_TOKEN: closed, and says why. (Here,
    beside the other tests of the shared service: in tests/e2e/test_incall_e2e.py, whose
    own service has a token, it started a second service on its worker for this alone.)"""
    auth = {"Authorization": "Bearer e2e-some-admin-token-0123456789"}
    for method, path in (
        ("GET", "/admin/calls"),
        ("GET", "/admin/calls/rtc_x"),
        ("POST", "/admin/calls/rtc_x/hangup"),
    ):
        response = HTTP.request(method, f"{service.url}{path}", headers=auth)
        assert response.status_code == 403, (method, path)
        assert "SWITCHBOARD_ADMIN_TOKEN" in response.json()["error"]


# --- start-up ------------------------------------------------------------------------


def test_dry_run_without_api_key(tmp_path: Path, fake_api: FakeOpenAI) -> None:
    service = start_service(
        tmp_path,
        "routes:\n  - name: all\n    accept: {}\n",
        env={"OPENAI_WEBHOOK_SECRET": SECRET, "OPENAI_BASE_URL": fake_api.base_url},
    )
    try:
        call_id = new_id()
        response = deliver(service, incoming_event(call_id))
        assert response.json()["outcome"] == "dry_run"
        assert fake_api.for_call(call_id) == []
        assert "dry-run mode" in service.logs()
    finally:
        stop_service(service)


@pytest.mark.parametrize(
    ("routes", "env", "code", "message"),
    [
        (
            "routes:\n  - name: x\n    reject: {status_code: 200}\n",
            {"OPENAI_WEBHOOK_SECRET": SECRET},
            1,
            "routes.yaml:3:14: routes[0].reject.status_code: "
            "Input should be greater than or equal to 400",
        ),
        ("routes: []\n", {}, 2, "OPENAI_WEBHOOK_SECRET is not set"),
        ("routes: []\n", {"OPENAI_WEBHOOK_SECRET": "nope!"}, 2, "not whsec_ followed by base64"),
    ],
    ids=["invalid-routes", "no-secret", "bad-secret"],
)
def test_refuses_to_start(
    tmp_path: Path, routes: str, env: dict[str, str], code: int, message: str
) -> None:
    from tests.e2e.conftest import base_env

    (tmp_path / "routes.yaml").write_text(routes)
    result = subprocess.run(
        [*switchboard_command(), "serve"],
        cwd=tmp_path,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == code
    assert message in result.stderr


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    service = start_service(
        tmp_path,
        "routes: []\n",
        env={"OPENAI_WEBHOOK_SECRET": SECRET},
    )
    stop_service(service)
    # uvicorn finishes the shutdown, then re-raises SIGTERM so the exit status tells why.
    assert service.process.returncode in (0, -15)
    assert "Application shutdown complete" in service.logs()
