"""The two sideband dialects against the official SDK's event types.

Every client event Switchboard sends must be one the API takes (the SDK's client event
union accepts it), and the server events the fakes play (tests/e2e) must be ones the API
sends, read into the signals the session acts on.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.live import ConnectClientEvent, ConnectServerEvent
from openai.types.realtime import RealtimeClientEvent
from pydantic import TypeAdapter

from app.incall.dialects import (
    Busy,
    Failure,
    Idle,
    Keypress,
    LineSaid,
    LiveDialect,
    RealtimeDialect,
    Speaking,
    ToolCall,
    ToolInterrupted,
)
from tests.e2e.fake_live import FakeLive, dtmf, function_call
from tests.e2e.fake_realtime import Send

LIVE_CLIENT: TypeAdapter[Any] = TypeAdapter(ConnectClientEvent)
LIVE_SERVER: TypeAdapter[Any] = TypeAdapter(ConnectServerEvent)
REALTIME_CLIENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)


def live_client_events() -> list[dict[str, Any]]:
    d = LiveDialect()
    line, _ = d.line("Tell the caller you are putting them through.")
    return [
        d.greeting("Welcome the caller."),
        d.greeting(None),
        line,
        d.warning("Say the call ends soon."),
        *d.tool_output("call_1", {"error": "unknown destination"}, respond=True),
    ]


def realtime_client_events() -> list[dict[str, Any]]:
    d = RealtimeDialect()
    line, _ = d.line("Tell the caller.")
    return [
        d.greeting("Welcome."),
        d.greeting(None),
        line,
        d.warning("Soon."),
        *d.tool_output("call_1", {"status": "ok"}, respond=True),
    ]


@pytest.mark.parametrize("event", live_client_events(), ids=lambda e: e["type"])
def test_live_client_events_are_the_sdks(event: dict[str, Any]) -> None:
    parsed = LIVE_CLIENT.validate_python(event)
    assert parsed.type == event["type"]
    assert parsed.model_dump(exclude_unset=True) == event  # nothing we send is dropped


@pytest.mark.parametrize("event", realtime_client_events(), ids=lambda e: e["type"])
def test_realtime_client_events_are_the_sdks(event: dict[str, Any]) -> None:
    assert REALTIME_CLIENT.validate_python(event).type == event["type"]


def test_live_lines_carry_their_own_event_id_and_its_ack_ends_the_wait() -> None:
    d = LiveDialect()
    (first, tag1), (second, tag2) = d.line("one"), d.line("two")
    assert first["event_id"] == tag1 != tag2 == second["event_id"]
    appended, spoken = FakeLive()._replies(first)
    ack = {**appended, "event_id": "evt_1"}
    LIVE_SERVER.validate_python(ack)
    LIVE_SERVER.validate_python({**spoken, "event_id": "evt_2"})
    assert d.read(ack) == [LineSaid(tag1)]
    assert d.read({**spoken, "event_id": "evt_2"}) == [Speaking()]


def test_live_server_events_of_the_fake_are_the_sdks_and_read_as_signals() -> None:
    (call,) = function_call("transfer_call", {"destination": "sales"}, call_id="call_9")
    keypress = dtmf("5")
    assert isinstance(call, Send)
    events = [{**call.event, "event_id": "evt_1"}, {**keypress.event, "event_id": "evt_2"}]
    error = {
        "type": "error",
        "event_id": "evt_3",
        "error": {"type": "invalid_request_error", "code": "x", "message": "bad"},
    }
    for event in [*events, error]:
        LIVE_SERVER.validate_python(event)
    d = LiveDialect()
    assert d.read(events[0]) == [ToolCall("call_9", "transfer_call", '{"destination": "sales"}')]
    assert d.read(events[1]) == [Keypress("5")]
    assert isinstance(d.read(error)[0], Failure)
    # Realtime's events mean nothing on a Live sideband, and the reverse.
    assert d.read({"type": "input_audio_buffer.dtmf_event_received", "event": "1"}) == []
    assert RealtimeDialect().read(events[1]) == []


def test_live_ignores_what_is_not_a_function_call() -> None:
    d = LiveDialect()
    message = {"type": "response.output_item.done", "item": {"type": "message", "content": []}}
    assert d.read({"type": "response.event", "event": message}) == []
    assert d.read({"type": "response.event", "event": "nonsense"}) == []
    no_id = {"type": "response.output_item.done", "item": {"type": "function_call", "name": "x"}}
    assert d.read({"type": "response.event", "event": no_id}) == []
    assert d.read({"type": "transport.dtmf.received", "event": 5}) == []


def test_realtime_reads_as_before() -> None:
    d = RealtimeDialect()
    assert d.read({"type": "response.created"}) == [Busy()]
    call = {
        "type": "function_call",
        "call_id": "c",
        "name": "end_call",
        "arguments": "{}",
        "status": "completed",
    }
    response = {"status": "completed", "metadata": {"switchboard": "say"}, "output": [call]}
    done = {"type": "response.done", "response": response}
    assert d.read(done) == [Idle(), LineSaid("said"), ToolCall("c", "end_call", "{}")]
    cancelled = {"type": "response.done", "response": {**response, "status": "cancelled"}}
    assert d.read(cancelled)[2] == ToolInterrupted(
        {"name": "end_call", "response_status": "cancelled", "item_status": "completed"}
    )
    arguments = {"type": "response.function_call_arguments.done", **call}
    assert d.read(arguments) == []  # only the completed response.done acts


def test_live_acts_only_on_a_completed_function_call() -> None:
    (step,) = function_call("end_call", {}, call_id="call_1")
    assert isinstance(step, Send)
    event = step.event
    item = {**event["event"]["item"], "status": "incomplete"}
    cut = {**event, "event": {**event["event"], "item": item}}
    assert LiveDialect().read(cut) == [
        ToolInterrupted(
            {"name": "end_call", "response_status": "completed", "item_status": "incomplete"}
        )
    ]
