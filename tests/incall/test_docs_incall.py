"""The routes.yaml examples in docs/in-call.md load, and do what the page says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.rules import Accept, Refer, RulesError, compile_rules

DOC = Path(__file__).resolve().parents[2] / "docs" / "in-call.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_example_compiles_with_its_features() -> None:
    block, _ = yaml_blocks()
    rules = compile_rules(block, str(DOC), region="US")
    support, after_hours = rules.routes
    assert isinstance(support.action, Accept)
    features = support.action.features
    assert features is not None
    assert sorted(features.transfers) == ["human", "sales"]
    assert features.dtmf == {"0": "human", "9": None}
    assert features.max_duration is not None and features.max_duration.seconds == 600
    assert features.max_duration.warning_before == 30  # merged from the session
    tools = {t["name"]: t for t in json.loads(support.action.body)["tools"]}
    assert tools["transfer_call"]["parameters"]["properties"]["destination"]["enum"] == [
        "human",
        "sales",
    ]
    assert "end_call" in tools
    assert "call" not in json.loads(support.action.body)
    assert isinstance(after_hours.action, Refer)
    assert after_hours.action.announce is not None


def test_the_gpt_live_example_puts_the_tools_in_its_responses_delegation() -> None:
    _, block = yaml_blocks()
    rules = compile_rules(block, str(DOC), region="US")
    (route,) = rules.routes
    action = route.action
    assert isinstance(action, Accept) and action.api == "live"
    assert action.features is not None and action.features.greeting
    session = json.loads(action.body)
    assert "call" not in session and "tools" not in session
    tools = session["delegation"]["responses"]["tools"]
    assert [t["name"] for t in tools] == ["transfer_call", "end_call"]
    assert tools[0]["parameters"]["properties"]["destination"]["enum"] == ["sales"]


def test_the_gpt_live_example_without_responses_delegation_is_refused() -> None:
    _, block = yaml_blocks()
    client = re.sub(
        r"delegation:\n(\s+type: responses\n\s+responses: .*\n)",
        "delegation: {type: client}\n",
        block,
    )
    assert client != block
    with pytest.raises(RulesError, match=re.escape("need `delegation: {type: responses")):
        compile_rules(client, str(DOC), region="US")
