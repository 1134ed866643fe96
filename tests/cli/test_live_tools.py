"""The tools with GPT-Live routes: explain and test show the API; simulate --live sends
GPT-Live's event, signed, shaped as the official SDK reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai.types.webhooks import LiveTransportIncomingWebhookEvent

from app.cli.main import main
from app.cli.simulate import incoming_call_event
from app.intake.events import IncomingCall, parse_event

ROUTES = """\
sessions:
  live-desk: {type: live, model: gpt-live-1, instructions: You answer.}
  short: {type: live, model: gpt-live-1}
routes:
  - name: live-line
    match: {called: "+18005550100"}
    accept: live-desk
  - name: live-transfer
    match: {called: "+18005550101"}
    refer: {target_uri: "tel:+14155550199", session: short}
  - name: realtime-line
    match: {called: "+18005550102"}
    accept: {model: gpt-realtime}
"""


@pytest.fixture(autouse=True)
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SWITCHBOARD_")):
            monkeypatch.delenv(key)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    return tmp_path


def test_explain_says_a_live_accept_goes_through_gpt_live(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["explain", "--called", "+18005550100"]) == 0
    out = capsys.readouterr().out
    assert 'action:      accept through GPT-Live with session {"type": "live"' in out
    assert main(["explain", "--called", "+18005550101"]) == 0
    assert "action:      accept through GPT-Live, then refer to tel:+14155550199" in (
        capsys.readouterr().out
    )
    assert main(["explain", "--called", "+18005550102"]) == 0
    assert "action:      accept with session" in capsys.readouterr().out


def test_explain_json_carries_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    for called, api in (("+18005550100", "live"), ("+18005550102", "realtime")):
        assert main(["explain", "--json", "--called", called]) == 0
        decision = json.loads(capsys.readouterr().out)["decision"]
        assert decision["api"] == api
    assert main(["explain", "--json", "--called", "+18005550199"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"]["api"] is None  # a reject


def test_switchboard_test_checks_the_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "calls.yaml").write_text(
        """\
- name: live line
  called: "+18005550100"
  expect: {route: live-line, action: accept, api: live}
- name: wrong api expected
  called: "+18005550102"
  expect: {api: live}
"""
    )
    assert main(["test", "calls.yaml"]) == 1
    out = capsys.readouterr().out
    assert "PASS  live line" in out
    assert "expected api: live" in out


def test_simulate_live_builds_the_event_the_sdk_reads() -> None:
    event = incoming_call_event(caller="+14155550123", called="+18005550100", live=True)
    LiveTransportIncomingWebhookEvent.model_validate(event)
    assert event["type"] == "live.transport.incoming"
    parsed = parse_event(json.dumps(event).encode(), "wh_1")
    assert isinstance(parsed, IncomingCall) and parsed.api == "live"
    assert parsed.call_id.startswith("live_")
