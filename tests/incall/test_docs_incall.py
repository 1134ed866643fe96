"""The routes.yaml examples in docs/in-call.md load, and do what the page says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.rules import Accept, Refer, compile_rules

DOC = Path(__file__).resolve().parents[2] / "docs" / "in-call.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_every_example_compiles_with_its_features() -> None:
    (block,) = yaml_blocks()
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
