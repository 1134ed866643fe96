"""What the two APIs' sidebands say differently, behind one interface.

`CallSession` runs the same call logic (greeting, tools, keys, limits) for both APIs; a
dialect turns its intentions into the API's client events and the API's server events into
a few signals:

- Realtime (`wss://.../v1/realtime?call_id=`): lines are `response.create`; the model's tools
  come back as function calls in responses; keys as `input_audio_buffer.dtmf_event_received`.
- GPT-Live (`wss://.../v1/live/sessions/{id}/attach`): lines are speakable context
  (`session.commentary.append`, acknowledged by `session.commentary.appended`); Switchboard's
  tools are function tools of the session's Responses delegation, whose calls arrive as a
  nested `response.event` (`response.output_item.done` with a `function_call` item) and are
  answered with `response.item.create` + `response.create`; keys as
  `transport.dtmf.received`. (docs/in-call.md, /work/notes/live-api.md)
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Final, Protocol

from app.intake.events import Api

SAID: Final = {"switchboard": "say"}
"""Metadata of the lines Switchboard asks for on Realtime: their `response.done` carries it."""


@dataclass(frozen=True, slots=True)
class Busy:
    """The agent started a response: a new one would be refused until it is done."""


@dataclass(frozen=True, slots=True)
class Idle:
    """The agent's response ended."""


@dataclass(frozen=True, slots=True)
class LineSaid:
    """A line Switchboard asked for has been taken (and, on Realtime, generated)."""

    line: str | None = None


@dataclass(frozen=True, slots=True)
class Speaking:
    """The agent's speech is still going out (Live transcript fragments)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: object
    arguments: object
    """The raw JSON text of the arguments, as the API sent it."""


@dataclass(frozen=True, slots=True)
class ToolInterrupted:
    """A function call the model did not finish asking for (the caller spoke over it, the
    response was cut short): never acted on, since ending or transferring on it is a guess."""

    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Keypress:
    digit: str


@dataclass(frozen=True, slots=True)
class Failure:
    detail: dict[str, Any]


Signal = Busy | Idle | LineSaid | Speaking | ToolCall | ToolInterrupted | Keypress | Failure
Event = dict[str, Any]


class Dialect(Protocol):
    api: Api
    settle_seconds: float
    """After a line is taken, how long the speech must have been quiet before it counts as
    said (Live acknowledges a line before it is spoken)."""

    def greeting(self, instructions: str | None) -> Event: ...

    def line(self, instructions: str) -> tuple[Event, str]:
        """A line to say and wait for: the event, and the tag its LineSaid will carry."""
        ...

    def warning(self, text: str) -> Event: ...

    def tool_output(
        self, call_id: str, output: dict[str, Any], *, respond: bool
    ) -> list[Event]: ...

    def read(self, event: Event) -> list[Signal]: ...


def _error(event: Event) -> list[Signal]:
    error = event.get("error")
    return [Failure(error if isinstance(error, dict) else {"error": str(error)})]


def _keypress(value: object) -> list[Signal]:
    return [Keypress(value[:1])] if isinstance(value, str) and value else []


def _output(call_id: str, output: dict[str, Any]) -> Event:
    return {"type": "function_call_output", "call_id": call_id, "output": json.dumps(output)}


def _function_call(item: object, response_status: object = "completed") -> list[Signal]:
    """A function call item, acted on only when it and its response completed."""
    if not isinstance(item, dict) or item.get("type") != "function_call":
        return []
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        return []
    if response_status == "completed" and item.get("status") == "completed":
        return [ToolCall(call_id, item.get("name"), item.get("arguments"))]
    detail = {
        "name": item.get("name"),
        "response_status": response_status,
        "item_status": item.get("status"),
    }
    return [ToolInterrupted(detail)]


class RealtimeDialect:
    api: Api = "realtime"
    settle_seconds = 0.0

    def greeting(self, instructions: str | None) -> Event:
        response: dict[str, Any] = {}
        if instructions:
            response["instructions"] = instructions
        return {"type": "response.create", "response": response}

    def line(self, instructions: str) -> tuple[Event, str]:
        event = {
            "type": "response.create",
            "response": {"instructions": instructions, "metadata": SAID},
        }
        return event, "said"

    def warning(self, text: str) -> Event:
        return {"type": "response.create", "response": {"instructions": text}}

    def tool_output(self, call_id: str, output: dict[str, Any], *, respond: bool) -> list[Event]:
        events: list[Event] = [
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call_id,
                    "output": json.dumps(output),
                },
            }
        ]
        if respond:
            events.append({"type": "response.create"})
        return events

    def read(self, event: Event) -> list[Signal]:
        kind = event.get("type")
        if kind == "response.created":
            return [Busy()]
        if kind == "response.done":
            signals: list[Signal] = [Idle()]
            response = event.get("response")
            if not isinstance(response, dict):
                return signals
            if response.get("metadata") == SAID:
                signals.append(LineSaid("said"))  # our line, not a response still finishing
            output = response.get("output")
            status = response.get("status")
            for item in output if isinstance(output, list) else ():
                signals.extend(_function_call(item, status))
            return signals
        # `response.function_call_arguments.done` is not acted on: it is also sent for
        # responses that were interrupted. Only the completed `response.done` acts.
        if kind == "input_audio_buffer.dtmf_event_received":
            return _keypress(event.get("event"))
        if kind == "error":
            return _error(event)
        return []


class LiveDialect:
    api: Api = "live"
    settle_seconds = 0.6

    def __init__(self) -> None:
        self._tags = itertools.count(1)

    def _commentary(self, content: str, event_id: str | None = None) -> Event:
        event: Event = {
            "type": "session.commentary.append",
            "content": content,
            "delegation_id": None,
        }
        if event_id is not None:
            event["event_id"] = event_id
        return event

    def greeting(self, instructions: str | None) -> Event:
        return self._commentary(instructions or "Greet the caller.")

    def line(self, instructions: str) -> tuple[Event, str]:
        tag = f"switchboard_say_{next(self._tags)}"
        return self._commentary(instructions, tag), tag

    def warning(self, text: str) -> Event:
        return self._commentary(text)

    def tool_output(self, call_id: str, output: dict[str, Any], *, respond: bool) -> list[Event]:
        events: list[Event] = [
            {
                "type": "response.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call_id,
                    "output": json.dumps(output),
                },
            }
        ]
        if respond:
            # The delegated response waits for its tool results: let it carry on.
            events.append({"type": "response.create"})
        return events

    def read(self, event: Event) -> list[Signal]:
        kind = event.get("type")
        if kind == "response.event":
            nested = event.get("event")
            if isinstance(nested, dict) and nested.get("type") == "response.output_item.done":
                # The item's own status says whether the backend finished asking.
                return _function_call(nested.get("item"))
            return []
        if kind == "session.commentary.appended":
            tag = event.get("client_event_id")
            return [LineSaid(tag)] if isinstance(tag, str) else []
        if kind == "session.output_transcript.delta":
            return [Speaking()]
        if kind == "transport.dtmf.received":
            return _keypress(event.get("event"))
        if kind == "error":
            return _error(event)
        return []


def dialect_for(api: Api) -> Dialect:
    return LiveDialect() if api == "live" else RealtimeDialect()
