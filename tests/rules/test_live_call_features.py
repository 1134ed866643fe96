"""`call:` features on GPT-Live sessions: Switchboard's tools go into the Responses
delegation (where a Live model's function calls come from); client delegation cannot carry
them, and `check` says so at the line."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.live import SessionAcceptParams
from pydantic import TypeAdapter

from app.rules import Accept, RulesError, compile_rules

BASE = """
sessions:
  desk:
    type: live
    model: gpt-live-1
    delegation: {delegation}
    call:
      transfers: {{sales: "sip:sales@pbx.example.com"}}
      end_call: true
routes:
  - name: desk
    match: {{called: "+18005550100"}}
    accept: desk
"""


def accept(delegation: str) -> Accept:
    action = (
        compile_rules(BASE.format(delegation=delegation), "routes.yaml", region="US")
        .routes[0]
        .action
    )
    assert isinstance(action, Accept)
    return action


def test_tools_join_the_responses_delegation_and_the_body_is_the_sdks() -> None:
    action = accept(
        "{type: responses, responses: {model: gpt-5.2, tools: [{type: function, name: lookup}]}}"
    )
    tools = action.session["delegation"]["responses"]["tools"]
    assert [t["name"] for t in tools] == ["lookup", "transfer_call", "end_call"]
    assert "tools" not in action.session and "call" not in action.session
    TypeAdapter(SessionAcceptParams).validate_python({"session": action.session})


@pytest.mark.parametrize("delegation", ["{type: client}", "null"])
def test_client_delegation_cannot_carry_the_tools(delegation: str) -> None:
    with pytest.raises(RulesError) as error:
        accept(delegation)
    assert "routes.yaml:" in str(error.value)
    assert "need `delegation: {type: responses" in str(error.value)


def test_a_tool_name_of_switchboard_is_refused_in_the_delegation() -> None:
    text = (
        "{type: responses, responses: {model: gpt-5.2, tools: [{type: function, name: end_call}]}}"
    )
    with pytest.raises(RulesError, match="the tool name end_call is Switchboard's"):
        accept(text)


def test_features_without_tools_need_no_delegation() -> None:
    text = BASE.format(delegation="null").replace(
        'transfers: {sales: "sip:sales@pbx.example.com"}\n      end_call: true',
        "greeting: Welcome the caller.",
    )
    action: Any = compile_rules(text, "routes.yaml", region="US").routes[0].action
    assert action.features.greeting and action.api == "live"
