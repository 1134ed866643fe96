"""A real local WebSocket server standing in for a GPT-Live session's sideband:
`GET /v1/live/sessions/{session_id}/attach`.

The same scripting, recording and call ending as FakeRealtime (it is one, with GPT-Live's
events): no opening event (a sideband attaches to a session already started), and each
`session.commentary.append` is answered with its `session.commentary.appended` (echoing the
client's `event_id` as `client_event_id`) and then a `session.output_transcript.delta`, the
speech going out. Scripted steps use GPT-Live's shapes:

    fake.call("live_1", [*function_call("transfer_call", {"destination": "sales"})])
    fake.call("live_2", [dtmf("5")])
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from tests.e2e.fake_realtime import Event, FakeRealtime, Send, Step

_ATTACH = re.compile(r"^/v1/live/sessions/(?P<session_id>[^/?]+)/attach(\?.*)?$")
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_live_{next(_ids):06d}"


def function_call(
    name: str, arguments: dict[str, Any] | str, *, call_id: str | None = None
) -> list[Step]:
    """The Responses backend of the session calls a function tool: a `response.event` whose
    nested Responses event is the `response.output_item.done` of a `function_call` item."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    item = {
        "type": "function_call",
        "id": _id("fc"),
        "call_id": call_id or _id("call"),
        "name": name,
        "arguments": args,
        "status": "completed",
    }
    return [
        Send(
            {
                "type": "response.event",
                "delegation_id": _id("dlg"),
                "event": {
                    "type": "response.output_item.done",
                    "output_index": 0,
                    "sequence_number": 3,
                    "item": item,
                },
            }
        )
    ]


def dtmf(digit: str) -> Send:
    return Send({"type": "transport.dtmf.received", "event": digit})


class FakeLive(FakeRealtime):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("session_created", False)
        super().__init__(**kwargs)

    def _target(self, path: str) -> tuple[bool, str | None]:
        match = _ATTACH.match(path)
        return (True, match["session_id"]) if match else (False, None)

    def _answers(self, event: Event) -> bool:
        return event.get("type") == "session.commentary.append"

    def _replies(self, request: Event) -> tuple[Event, Event]:
        appended: Event = {"type": "session.commentary.appended", "start_ms": 1000, "end_ms": 1000}
        if isinstance(request.get("event_id"), str):
            appended["client_event_id"] = request["event_id"]
        spoken = {
            "type": "session.output_transcript.delta",
            "delta": "(spoken)",
            "start_ms": 1000,
            "end_ms": 1800,
        }
        return appended, spoken
