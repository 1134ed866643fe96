"""The function tools Switchboard adds to an accepted session, and their names."""

from __future__ import annotations

from typing import Any

from app.rules.ruleset import CallFeatures

TRANSFER_TOOL = "transfer_call"
END_CALL_TOOL = "end_call"


def in_call_tools(features: CallFeatures) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    if features.transfers:
        names = sorted(features.transfers)
        described = "; ".join(
            f"{name}: {features.transfers[name].description}"
            if features.transfers[name].description
            else name
            for name in names
        )
        tools.append(
            {
                "type": "function",
                "name": TRANSFER_TOOL,
                "description": (
                    "Transfer the caller to a person or team. Only these destinations exist: "
                    f"{described}. Tell the caller before you transfer."
                ),
                "parameters": {
                    "type": "object",
                    "properties": {"destination": {"type": "string", "enum": names}},
                    "required": ["destination"],
                    "additionalProperties": False,
                },
            }
        )
    if features.end_call:
        tools.append(
            {
                "type": "function",
                "name": END_CALL_TOOL,
                "description": "Hang up the call. Use it only after you have said goodbye.",
                "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
            }
        )
    return tools
