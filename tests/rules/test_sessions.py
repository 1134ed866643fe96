"""Sessions in routes.yaml: Realtime ones (the default) and GPT-Live ones (`type: live`).

What each compiles to (the accept body and the API it goes through), and what `check`
refuses, each error with its file:line:column. The comparison with the official SDK's
types is tests/rules/test_sessions_sdk.py.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.rules import Accept, Refer, RulesError, RuleSet, compile_rules
from app.rules.ruleset import render
from app.rules.templates import call_values
from app.sip.identity import Headers, IdentityPolicy, identify

FILE = "routes.yaml"

LIVE = """
sessions:
  desk:
    type: live
    model: gpt-live-1
    instructions: You answer the phone for Example Co.
    audio: {output: {voice: marin}}
    delegation:
      type: responses
      responses:
        model: gpt-5.2
        instructions: Look orders up before you answer.
        tools:
          - {type: function, name: lookup_order, parameters: {type: object}}
  realtime:
    model: gpt-realtime
    instructions: You are the front desk.
"""


def rules(text: str) -> RuleSet:
    return compile_rules(textwrap.dedent(text), FILE, region="US")


def issues(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        rules(text)
    return [str(issue) for issue in caught.value.issues]


def action(sessions: str, route: str) -> Any:
    """The action of a single route `only` (route: its YAML lines below `- name: only`)."""
    text = (
        textwrap.dedent(sessions)
        + "routes:\n  - name: only\n"
        + textwrap.indent(textwrap.dedent(route).strip(), "    ")
        + "\n"
    )
    return rules(text).routes[0].action


# --- what an accept compiles to --------------------------------------------------------


def test_a_live_session_is_accepted_through_the_live_api() -> None:
    accept = action(LIVE, "accept: desk")
    assert isinstance(accept, Accept)
    assert accept.api == "live"
    # The session itself: the Live call control sends it as {"session": ...}.
    assert json.loads(accept.body) == {
        "type": "live",
        "model": "gpt-live-1",
        "instructions": "You answer the phone for Example Co.",
        "audio": {"output": {"voice": "marin"}},
        "delegation": {
            "type": "responses",
            "responses": {
                "model": "gpt-5.2",
                "instructions": "Look orders up before you answer.",
                "tools": [
                    {"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}
                ],
            },
        },
    }
    assert accept.body.startswith(b'{"type":"live","model":"gpt-live-1",')


def test_a_session_without_type_is_realtime() -> None:
    accept = action(LIVE, "accept: realtime")
    assert accept.api == "realtime"
    assert accept.body == (
        b'{"type":"realtime","model":"gpt-realtime","instructions":"You are the front desk."}'
    )
    assert action(LIVE, "accept: {}").api == "realtime"


@pytest.mark.parametrize(
    "route",
    [
        "accept: {session: desk, instructions: Be brief.}",
        "accept: {session: desk, type: live, instructions: Be brief.}",
    ],
)
def test_overrides_of_a_live_session_are_live_keys(route: str) -> None:
    accept = action(LIVE, route)
    assert accept.api == "live"
    assert accept.session["instructions"] == "Be brief."
    assert accept.session["delegation"]["type"] == "responses"


def test_an_override_of_another_type_replaces_the_mapping() -> None:
    accept = action(LIVE, "accept: {session: desk, delegation: {type: client}}")
    assert accept.session["delegation"] == {"type": "client"}


def test_an_inline_live_accept() -> None:
    accept = action("", "accept: {type: live, model: gpt-live-1.1, store: false}")
    assert accept.api == "live"
    assert json.loads(accept.body) == {"type": "live", "model": "gpt-live-1.1", "store": False}


def test_a_refer_through_a_live_session_carries_its_api() -> None:
    refer = action(LIVE, "refer: {target_uri: 'tel:+18005550199', session: desk}")
    assert isinstance(refer, Refer)
    assert refer.api == "live"
    assert json.loads(refer.accept_body)["model"] == "gpt-live-1"
    plain = action(LIVE, "refer: 'tel:+18005550199'")
    assert plain.api == "realtime"
    assert plain.accept_body == b'{"type":"realtime"}'


def test_live_in_call_features_add_no_tools_to_the_session() -> None:
    accept = action(
        LIVE,
        """
        accept:
          session: desk
          call: {end_call: true, transfers: {sales: "tel:+18005550123"}}
        """,
    )
    assert accept.api == "live"
    assert accept.features is not None and accept.features.end_call
    assert "tools" not in accept.session
    assert "call" not in accept.session


def test_a_templated_live_session_renders_inside_the_envelope() -> None:
    accept = action(
        """
        sessions:
          desk: {type: live, model: gpt-live-1, instructions: "Caller {caller_name}."}
        """,
        "accept: desk",
    )
    assert accept.template is not None
    headers = Headers(
        [
            ("From", '"Alice" <sip:+14155550100@trunk.example.net>;tag=1'),
            ("To", "<sip:+18005550100@sip.api.openai.com>"),
        ]
    )
    call = identify(headers, IdentityPolicy(default_region="US"))
    now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    rendered, _ = render(accept, call_values(call, "only", now, ZoneInfo("UTC")))
    assert isinstance(rendered, Accept)
    assert rendered.api == "live"
    assert json.loads(rendered.body) == {
        "type": "live",
        "model": "gpt-live-1",
        "instructions": 'Caller "Alice".',
    }


# --- the Realtime keys the API gained -------------------------------------------------


def test_current_realtime_keys_are_accepted_and_sent() -> None:
    accept = action(
        """
        sessions:
          agent:
            type: realtime
            model: gpt-realtime-2
            audio:
              input:
                noise_reduction: {type: far_field, strength: 0.6}
                transcription:
                  model: gpt-transcribe
                  keywords: [Switchboard]
                  languages: [en, de]
                  delay: low
                turn_detection: {type: server_vad, threshold: 0.6, idle_timeout_ms: 6000}
              output: {voice: {id: voice_1234}}
            truncation:
              type: retention_ratio
              retention_ratio: 0.8
              token_limits: {post_instructions: 8000}
            reasoning: {effort: xhigh}
            tools:
              - type: mcp
                server_label: crm
                tunnel_id: tunnel_123
                allowed_callers: [direct]
                defer_loading: true
        """,
        "accept: agent",
    )
    session = json.loads(accept.body)
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["noise_reduction"]["strength"] == 0.6
    assert session["audio"]["output"]["voice"] == {"id": "voice_1234"}
    assert session["truncation"]["token_limits"] == {"post_instructions": 8000}
    assert session["reasoning"] == {"effort": "xhigh"}
    assert session["tools"][0]["tunnel_id"] == "tunnel_123"


# --- what check refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        pytest.param(
            "audio: {input: {format: {type: audio/pcm, rate: 8000}}}",
            "routes.yaml:2:49: sessions.s.audio.input.format.rate: audio/pcm is 24000 Hz only,"
            " not 8000: for 8 kHz audio use audio/pcmu or audio/pcma",
            id="pcm-8khz",
        ),
        pytest.param(
            "audio: {input: {format: {type: audio/pcmu, rate: 8000}}}",
            "routes.yaml:2:50: sessions.s.audio.input.format.rate: unknown key"
            " for this type (rate is a key of type audio/pcm)",
            id="pcmu-rate",
        ),
        pytest.param(
            "audio: {input: {turn_detection: {type: semantic_vad, threshold: 0.5}}}",
            "routes.yaml:2:60: sessions.s.audio.input.turn_detection.threshold: unknown key"
            " for this type (threshold is a key of type server_vad)",
            id="semantic-vad-threshold",
        ),
        pytest.param(
            "audio: {input: {turn_detection: {type: semantic_vad, idle_timeout_ms: 5}}}",
            "routes.yaml:2:60: sessions.s.audio.input.turn_detection.idle_timeout_ms: unknown"
            " key for this type (idle_timeout_ms is a key of type server_vad)",
            id="semantic-vad-idle-timeout",
        ),
        pytest.param(
            "audio: {input: {turn_detection: {type: server_vad, eagerness: low}}}",
            "routes.yaml:2:58: sessions.s.audio.input.turn_detection.eagerness: unknown key"
            " for this type (eagerness is a key of type semantic_vad)",
            id="server-vad-eagerness",
        ),
        pytest.param(
            "output_modalities: [audio, text]",
            "routes.yaml:2:7: sessions.s.output_modalities: List should have at most 1 item"
            " after validation, not 2",
            id="both-modalities",
        ),
        pytest.param(
            "tools: [{type: mcp, server_label: crm}]",
            "routes.yaml:2:15: sessions.s.tools[0]: give exactly one of: server_url,"
            " connector_id, tunnel_id",
            id="mcp-without-server",
        ),
        pytest.param(
            "reasoning: {effort: maximal}",
            "routes.yaml:2:19: sessions.s.reasoning.effort: Input should be 'minimal', 'low',"
            " 'medium', 'high' or 'xhigh'",
            id="reasoning-effort",
        ),
        pytest.param(
            "type: lvie",
            "routes.yaml:2:3: sessions.s: type must be realtime (the default) or live",
            id="unknown-type",
        ),
        pytest.param(
            "type: live",
            "routes.yaml:2:3: sessions.s.model: required key is missing",
            id="live-without-model",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, tools: []",
            "routes.yaml:2:38: sessions.s.tools: unknown key here: tools belongs under"
            " delegation.responses",
            id="live-tools-at-the-top",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, audio: {input: {}}",
            "routes.yaml:2:46: sessions.s.audio.input: unknown key (expected one of: output)",
            id="live-audio-input",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, delegaton: {type: client}",
            "routes.yaml:2:38: sessions.s.delegaton: unknown key (did you mean 'delegation'?)",
            id="live-misspelt",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, delegation: {type: responses}",
            "routes.yaml:2:38: sessions.s.delegation.responses: required key is missing",
            id="responses-without-config",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, delegation: {type: responses, responses: {model:"
            ' gpt-5, tools: [{type: mcp, server_url: "https://mcp.example.com", tunnel_id: t1}]}}',
            "routes.yaml:2:102: sessions.s.delegation.responses.tools[0]: give exactly one of:"
            " server_url, connector_id, tunnel_id",
            id="live-mcp-two-servers",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, delegation: {type: client, tools: []}",
            "routes.yaml:2:65: sessions.s.delegation.tools: unknown key"
            " (expected one of: acknowledgement_delay_ms, type)",
            id="client-delegation-tools",
        ),
        pytest.param(
            "type: live, model: gpt-live-1, input: [{role: user, content: [{text: a}, {text: b}]}]",
            "routes.yaml:2:59: sessions.s.input[0].content: List should have at most 1 item"
            " after validation, not 2",
            id="history-one-part",
        ),
    ],
)
def test_check_refuses(session: str, expected: str) -> None:
    found = issues(f"sessions:\n  s: {{{session}}}\nroutes: []\n")
    assert found == [expected]


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        pytest.param(
            "accept: {session: realtime, type: live}",
            "routes.yaml:20:5: routes[0].accept: session 'realtime' is a realtime session:"
            " leave out type (or write type: realtime)",
            id="type-against-the-session",
        ),
        pytest.param(
            "accept: {session: desk, voice: sage}",
            "routes.yaml:20:29: routes[0].accept.voice: unknown key here: voice belongs under"
            " audio.output",
            id="live-override-misplaced",
        ),
        pytest.param(
            "accept: {session: desk, tools: []}",
            "routes.yaml:20:29: routes[0].accept.tools: unknown key here: tools belongs under"
            " delegation.responses",
            id="realtime-key-on-a-live-session",
        ),
        pytest.param(
            "accept: {type: live, instructions: Hi.}",
            "routes.yaml:20:5: routes[0].accept.model: required key is missing"
            " (a Live accept without session: gives one)",
            id="inline-live-without-model",
        ),
    ],
)
def test_check_refuses_accepts(route: str, expected: str) -> None:
    text = LIVE + f"routes:\n  - name: only\n    {route}\n"
    assert expected in issues(text), issues(text)


def test_the_editor_schema_takes_live_overrides_and_refuses_unknown_keys() -> None:
    """routes.schema.json cannot know that a named session is Live: an override without
    `type` fits a Live accept too, while a misspelt key still fits neither."""
    import jsonschema
    import yaml

    from app.rules.schema import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    data = yaml.safe_load(
        LIVE
        + """
routes:
  - name: live-override
    accept: {session: desk, delegation: {type: client}}
  - name: shared-key
    accept: {session: desk, instructions: Be brief.}
  - name: realtime-override
    accept: {session: realtime, audio: {output: {voice: cedar}}}
  - name: misspelt
    accept: {sesion: desk}
"""
    )
    found = [list(error.absolute_path) for error in validator.iter_errors(data)]
    assert found == [["routes", 3, "accept"]]
