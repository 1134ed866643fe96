"""app.incall.session against a real local WebSocket server (tests/e2e/fake_realtime.py).

The sideband client is the production one (`WebSocketConnector`); call control is a fake
that records every request and, like OpenAI, ends the call at the fake server when a
hangup or a transfer succeeds. Nothing here asserts on time: waits poll a condition, with
a bound, and the delays injected (connect retries, end_call, max duration) are fractions
of a second.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pytest

from app.incall.dialects import SAID
from app.incall.session import (
    MAX_EVENTS_PER_CALL,
    InCallManager,
    RecentIds,
    RejoinPolicy,
)
from app.openai.callcontrol import CallGone, UpstreamRejected, UpstreamUnavailable
from app.openai.sideband import Sideband, SidebandError, WebSocketConnector
from app.ops.metrics import Metrics
from app.records.calllog import CallApi, CallLog, CallRecord, CallStatus
from app.rules.ruleset import CallFeatures, Destination, MaxDuration
from app.state.livecalls import LiveCall, MemoryLiveCalls
from tests.e2e.fake_realtime import (
    Close,
    Drop,
    EndCall,
    FakeRealtime,
    Refuse,
    Send,
    SendRaw,
    Sleep,
    WaitFor,
    dtmf,
    error,
    function_call,
    function_call_events,
)
from tests.support import new_id

pytestmark = pytest.mark.anyio

API_KEY = "sk-incall-test"
SALES = "sip:sales@pbx.example.com"
SUPPORT = "tel:+18005550199"
DESK = "sip:desk@pbx.example.com"
TRANSFERS = {
    "sales": Destination(SALES, "Buying something"),
    "support": Destination(SUPPORT),
}
T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- fakes ---------------------------------------------------------------------------------


@dataclass
class Op:
    operation: str
    call_id: str
    argument: Any
    client_events: list[str]
    """Event types the fake server had received for the call when the request was made."""
    server_events: list[dict[str, Any]]
    """Events the fake server had sent for the call by then."""


class FakeController:
    """Records accept/reject/refer/hangup; scripted failures are raised in order.

    Like OpenAI, a successful hangup or refer ends the call: the fake server closes the
    call's sideband with 1000. With `close_before_answer`, the close completes before the
    request returns (the sideband's end overtakes the API's answer).
    """

    def __init__(self, fake: FakeRealtime | None, *, close_before_answer: bool = False) -> None:
        self.fake = fake
        self.close_before_answer = close_before_answer
        self.ops: list[Op] = []
        self._failures: dict[tuple[str, str], list[Exception]] = {}
        self.gate: asyncio.Event | None = None

    def fail(self, operation: str, call_id: str, *errors: Exception) -> None:
        self._failures.setdefault((operation, call_id), []).extend(errors)

    def for_call(self, call_id: str) -> list[tuple[str, Any]]:
        return [(op.operation, op.argument) for op in self.ops if op.call_id == call_id]

    def op(self, call_id: str, operation: str) -> Op:
        found = [op for op in self.ops if op.call_id == call_id and op.operation == operation]
        assert len(found) == 1, found
        return found[0]

    async def _do(self, operation: str, call_id: str, argument: Any) -> None:
        fake = self.fake
        self.ops.append(
            Op(
                operation,
                call_id,
                argument,
                fake.types(call_id) if fake else [],
                [e for log in fake.sidebands(call_id) for e in log.sent] if fake else [],
            )
        )
        if self.gate is not None:
            await self.gate.wait()
        failures = self._failures.get((operation, call_id))
        if failures:
            raise failures.pop(0)
        if fake is not None and operation in ("refer", "hangup"):
            fake.end(call_id)
            if self.close_before_answer:
                await eventually(lambda: not fake.is_open(call_id), "the sideband to close")

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None:
        await self._do("accept", call_id, body)

    async def reject(self, call_id: str, status_code: int, deadline: float) -> None:
        await self._do("reject", call_id, status_code)

    async def refer(self, call_id: str, target_uri: str, deadline: float) -> None:
        await self._do("refer", call_id, target_uri)

    async def hangup(self, call_id: str, deadline: float) -> None:
        await self._do("hangup", call_id, None)


@dataclass
class LoggedCall:
    records: list[CallRecord] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    statuses: list[CallStatus] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)


class RecordingCallLog:
    """A CallLog that keeps every write, in order, per call."""

    def __init__(self) -> None:
        self.calls: dict[str, LoggedCall] = {}

    def __getitem__(self, call_id: str) -> LoggedCall:
        return self.calls.setdefault(call_id, LoggedCall())

    def started(self, record: CallRecord) -> None:
        self[record.call_id].records.append(record)

    def event(self, call_id: str, kind: str, data: Mapping[str, Any] | None = None) -> None:
        self[call_id].events.append((kind, dict(data or {})))

    def status(self, call_id: str, status: CallStatus) -> None:
        self[call_id].statuses.append(status)

    def ended(self, call_id: str, reason: str) -> None:
        self[call_id].endings.append(reason)

    async def get(self, call_id: str) -> CallRecord | None:
        return None

    async def recent(
        self,
        *,
        status: CallStatus | None = None,
        route: str | None = None,
        since: float | None = None,
        limit: int = 100,
        api: CallApi | None = None,
    ) -> list[CallRecord]:
        return []

    def kinds(self, call_id: str) -> list[str]:
        return [kind for kind, _ in self[call_id].events]

    def data(self, call_id: str, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self[call_id].events if k == kind]

    def ended_with(self, call_id: str) -> str | None:
        endings = self[call_id].endings
        return endings[0] if endings else None


async def eventually(
    check: Callable[[], T | Literal[False] | None], what: str, within: float = 5.0
) -> T:
    """Poll until `check()` is truthy (bounded), and return it."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def said(instructions: str) -> dict[str, Any]:
    """A line Switchboard has the agent say: tagged, so that its response.done is known."""
    return {"type": "response.create", "response": {"instructions": instructions, "metadata": SAID}}


def output_of(event: dict[str, Any]) -> dict[str, Any]:
    """The decoded output of a function_call_output item."""
    assert event["type"] == "conversation.item.create"
    item = event["item"]
    assert item["type"] == "function_call_output"
    result: dict[str, Any] = json.loads(item["output"])
    return result


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def answers(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's response.done events answering a response.create (not a tool call)."""
    return [
        e
        for e in of_type(events, "response.done")
        if all(item.get("type") == "message" for item in e["response"]["output"])
    ]


# --- the harness ----------------------------------------------------------------------------


@dataclass
class Harness:
    fake: FakeRealtime
    controller: FakeController
    log: RecordingCallLog
    metrics: Metrics
    manager: InCallManager

    def start(
        self,
        features: CallFeatures,
        *connections: Any,
        call_id: str | None = None,
        then: Any = None,
    ) -> str:
        call_id = call_id or new_id()
        if connections or then is not None:
            self.fake.call(call_id, *connections, then=then)
        assert self.manager.start(call_id, features)
        return call_id

    async def ended(self, call_id: str) -> str:
        return await eventually(lambda: self.log.ended_with(call_id), f"{call_id} to end")

    async def gone(self, call_id: str) -> None:
        """The session is over (ended, detached, or given up on)."""
        await eventually(lambda: call_id not in self.manager, f"{call_id}'s session to finish")

    async def sent(self, call_id: str, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """Client events of a type, once the fake has `count` of them."""

        def found() -> list[dict[str, Any]] | None:
            events = of_type(self.fake.events(call_id), kind)
            return events if len(events) >= count else None

        return await eventually(found, f"{count} {kind} from {call_id}")


def make_manager(
    fake: FakeRealtime,
    controller: FakeController,
    log: RecordingCallLog,
    metrics: Metrics,
    *,
    base_url: str | None = None,
    connector: Any = None,
    **options: Any,
) -> InCallManager:
    call_log: CallLog = log
    options.setdefault("rejoin", FAST_REJOIN)
    return InCallManager(
        connector=connector or WebSocketConnector(base_url or fake.base_url, API_KEY),
        controller=controller,
        call_log=call_log,
        metrics=metrics,
        connect_delays=(0.01, 0.02),
        end_call_delay=0.05,
        **options,
    )


FAST_REJOIN = RejoinPolicy(first_pause=0.01, max_pause=0.05, max_rejoins=5)


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtime]:
    async with FakeRealtime(api_key=API_KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
async def harness(fake: FakeRealtime) -> AsyncIterator[Harness]:
    controller = FakeController(fake)
    log = RecordingCallLog()
    metrics = Metrics()
    manager = make_manager(fake, controller, log, metrics)
    yield Harness(fake, controller, log, metrics, manager)
    await manager.shutdown()


# --- greeting ---------------------------------------------------------------------------------


async def test_greeting_without_instructions(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(greeting=True), [])
    (create,) = await harness.sent(call_id, "response.create")
    assert create == {"type": "response.create", "response": {}}
    (sideband,) = harness.fake.sidebands(call_id)
    assert sideband.authorization == f"Bearer {API_KEY}"
    await eventually(
        lambda: harness.log.kinds(call_id) == ["sideband_connected", "greeting"], "the log"
    )
    assert metric(harness.metrics, "switchboard_active_calls") == 1


async def test_greeting_with_instructions(harness: Harness) -> None:
    features = CallFeatures(greeting=True, greeting_instructions="Greet the caller by name.")
    call_id = harness.start(features, [])
    (create,) = await harness.sent(call_id, "response.create")
    assert create == {
        "type": "response.create",
        "response": {"instructions": "Greet the caller by name."},
    }


async def test_no_greeting_sends_nothing(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(end_call=True), [*function_call("end_call", {})])
    await harness.ended(call_id)
    assert "response.create" not in harness.fake.types(call_id)


# --- the transfer_call tool -------------------------------------------------------------------


async def test_transfer_tool_to_an_allowlisted_name(harness: Harness) -> None:
    features = CallFeatures(
        greeting=True,
        transfers=TRANSFERS,
        transfer_message="Tell the caller you are transferring them.",
    )
    steps = function_call("transfer_call", {"destination": "sales"}, call_id="call_tool_1")
    call_id = harness.start(features, [WaitFor("response.create"), *steps])

    assert await harness.ended(call_id) == "transferred"
    assert harness.controller.for_call(call_id) == [("refer", SALES)]
    events = harness.fake.events(call_id)
    assert [e["type"] for e in events] == [
        "response.create",  # greeting
        "conversation.item.create",
        "response.create",  # transfer_message
    ]
    assert events[1]["item"]["call_id"] == "call_tool_1"
    assert output_of(events[1]) == {"status": "transferring", "destination": "sales"}
    assert events[2] == said("Tell the caller you are transferring them.")
    assert SAID == {"switchboard": "say"}
    # The line was said (its response.done came back) before the transfer.
    refer = harness.controller.op(call_id, "refer")
    assert len(answers(refer.server_events)) == 2  # the greeting's and the line's
    assert harness.log.data(call_id, "transfer") == [
        {"destination": "sales", "outcome": "referred", "by": "tool", "uri": SALES}
    ]
    assert harness.log.data(call_id, "tool_call") == [
        {"name": "transfer_call", "arguments": {"destination": "sales"}}
    ]
    assert metric(harness.metrics, "switchboard_transfers_total", outcome="referred") == 1
    # The fake notes the close when its side of the handshake is done: a moment after.
    (sideband,) = await eventually(
        lambda: [log for log in harness.fake.sidebands(call_id) if not log.open],
        "the sideband's close at the fake",
    )
    assert sideband.close_code == 1000 and not sideband.closed_by_client


async def test_transfer_tool_without_transfer_message_refers_at_once(harness: Harness) -> None:
    call_id = harness.start(
        CallFeatures(transfers=TRANSFERS),
        function_call("transfer_call", {"destination": "support"}),
    )
    assert await harness.ended(call_id) == "transferred"
    assert harness.controller.for_call(call_id) == [("refer", SUPPORT)]
    assert harness.fake.types(call_id) == ["conversation.item.create"]


@pytest.mark.parametrize("destination", ["ceo", "", None, "SALES"])
async def test_transfer_tool_to_an_unknown_name(harness: Harness, destination: Any) -> None:
    features = CallFeatures(transfers=TRANSFERS, transfer_message="Say you transfer.")
    arguments = {} if destination is None else {"destination": destination}
    call_id = harness.start(features, function_call("transfer_call", arguments))

    item, create = await eventually(
        lambda: len(harness.fake.events(call_id)) >= 2 and harness.fake.events(call_id),
        "the tool's answer",
    )
    result = output_of(item)
    assert set(result) == {"error"}
    assert "sales" in result["error"] and "support" in result["error"]
    assert create == {"type": "response.create"}  # the model tries again, no transfer line
    await eventually(lambda: harness.log.data(call_id, "transfer"), "the transfer record")
    assert harness.log.data(call_id, "transfer") == [
        {"destination": str(destination), "outcome": "rejected_destination", "by": "tool"}
    ]
    assert harness.controller.ops == []
    assert call_id in harness.manager  # the call goes on
    assert metric(harness.metrics, "switchboard_transfers_total", outcome="referred") == 0


async def test_transfer_tool_with_arguments_that_are_not_json(harness: Harness) -> None:
    call_id = harness.start(
        CallFeatures(transfers=TRANSFERS), function_call("transfer_call", "{destination: sales")
    )
    (item,) = await harness.sent(call_id, "conversation.item.create")
    assert "error" in output_of(item)
    assert harness.log.data(call_id, "tool_call") == [{"name": "transfer_call", "arguments": None}]
    assert harness.controller.ops == []


@pytest.mark.parametrize("via", ["both", "response"])
async def test_a_tool_call_acts_once_whichever_events_carry_it(harness: Harness, via: str) -> None:
    steps = function_call("transfer_call", {"destination": "sales"}, via=via)
    # The same call again, later: still once.
    call_id = harness.start(CallFeatures(transfers=TRANSFERS), [*steps, Sleep(0.05), *steps])
    assert await harness.ended(call_id) == "transferred"
    assert harness.controller.for_call(call_id) == [("refer", SALES)]
    assert harness.fake.types(call_id) == ["conversation.item.create"]
    assert len(harness.log.data(call_id, "tool_call")) == 1


async def test_tools_not_offered_are_left_alone(harness: Harness) -> None:
    """Another tool of the session, or end_call on a call without it: not Switchboard's."""
    call_id = harness.start(
        CallFeatures(transfers=TRANSFERS, dtmf={"1": "sales"}),
        [*function_call("lookup_order", {"id": 7}), *function_call("end_call", {}), dtmf("1")],
    )
    assert await harness.ended(call_id) == "transferred"
    assert harness.fake.types(call_id) == []  # no function_call_output for either
    assert harness.controller.for_call(call_id) == [("refer", SALES)]


async def test_a_failed_transfer_is_recorded_and_the_call_goes_on(harness: Harness) -> None:
    call_id = new_id()
    harness.controller.fail("refer", call_id, UpstreamRejected("refer", "HTTP 400: bad uri", 400))
    harness.start(
        CallFeatures(transfers=TRANSFERS),
        function_call("transfer_call", {"destination": "sales"}),
        call_id=call_id,
    )
    await eventually(lambda: harness.log.data(call_id, "transfer"), "the transfer")
    assert harness.log.data(call_id, "transfer")[0]["outcome"] == "failed"
    assert "bad uri" in harness.log.data(call_id, "error")[0]["error"]
    assert call_id in harness.manager
    assert harness.fake.is_open(call_id)
    assert metric(harness.metrics, "switchboard_transfers_total", outcome="failed") == 1


async def test_a_transfer_to_a_caller_who_is_gone(harness: Harness) -> None:
    call_id = new_id()
    harness.controller.fail("refer", call_id, CallGone("refer", "HTTP 404", 404))
    harness.start(
        CallFeatures(transfers=TRANSFERS),
        function_call("transfer_call", {"destination": "sales"}),
        call_id=call_id,
    )
    await eventually(lambda: harness.log.data(call_id, "transfer"), "the transfer")
    assert harness.log.data(call_id, "transfer")[0]["outcome"] == "caller_gone"
    harness.fake.end(call_id)
    assert await harness.ended(call_id) == "ended"


# --- keypad -------------------------------------------------------------------------------------


async def test_dtmf_digit_mapped_to_a_transfer(harness: Harness) -> None:
    features = CallFeatures(transfers=TRANSFERS, dtmf={"5": "support", "0": None})
    call_id = harness.start(features, [dtmf("5")])
    assert await harness.ended(call_id) == "transferred"
    assert harness.controller.for_call(call_id) == [("refer", SUPPORT)]
    assert harness.log.data(call_id, "dtmf") == [{"digit": "5"}]
    assert harness.log.data(call_id, "transfer") == [
        {"destination": "support", "outcome": "referred", "by": "dtmf", "uri": SUPPORT}
    ]


async def test_dtmf_transfer_says_the_transfer_message_first(harness: Harness) -> None:
    features = CallFeatures(transfers=TRANSFERS, dtmf={"5": "sales"}, transfer_message="Say it.")
    call_id = harness.start(features, [dtmf("5")])
    assert await harness.ended(call_id) == "transferred"
    assert harness.fake.events(call_id) == [said("Say it.")]
    assert answers(harness.controller.op(call_id, "refer").server_events)


async def test_dtmf_digit_mapped_to_hangup(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(dtmf={"#": None}), [dtmf("#")])
    assert await harness.ended(call_id) == "dtmf"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert harness.log.data(call_id, "hangup") == [{"reason": "dtmf", "outcome": "hung_up"}]
    assert metric(harness.metrics, "switchboard_hangups_total", reason="dtmf") == 1


async def test_an_unmapped_digit_is_only_recorded(harness: Harness) -> None:
    features = CallFeatures(transfers=TRANSFERS, dtmf={"5": "sales"})
    # Digits are handled in order: by the time 5 transfers, 7 has been dealt with.
    call_id = harness.start(features, [dtmf("7"), dtmf("5")])
    assert await harness.ended(call_id) == "transferred"
    assert harness.log.data(call_id, "dtmf") == [{"digit": "7"}, {"digit": "5"}]
    assert harness.controller.for_call(call_id) == [("refer", SALES)]
    assert harness.fake.types(call_id) == []


# --- limits and ending --------------------------------------------------------------------------


async def test_max_duration_warns_then_hangs_up(harness: Harness) -> None:
    limit = MaxDuration(seconds=0.3, warning_before=0.15, warning="Say the call ends soon.")
    call_id = harness.start(CallFeatures(max_duration=limit), [])
    assert await harness.ended(call_id) == "max_duration"
    hangup = harness.controller.op(call_id, "hangup")
    assert hangup.client_events == ["response.create"]  # the warning came first
    assert harness.fake.events(call_id) == [
        {"type": "response.create", "response": {"instructions": "Say the call ends soon."}}
    ]
    assert harness.log.kinds(call_id) == ["sideband_connected", "warning", "hangup"]
    assert harness.log.data(call_id, "hangup") == [{"reason": "max_duration", "outcome": "hung_up"}]
    assert metric(harness.metrics, "switchboard_hangups_total", reason="max_duration") == 1
    assert metric(harness.metrics, "switchboard_call_duration_seconds_count") == 1


async def test_max_duration_alone_needs_no_sideband(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(max_duration=MaxDuration(seconds=0.1)))
    assert await harness.ended(call_id) == "max_duration"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert harness.fake.sidebands(call_id) == [] and harness.fake.refusals == []
    assert harness.log[call_id].statuses == []


async def test_max_duration_on_a_call_that_ends_first(harness: Harness) -> None:
    features = CallFeatures(greeting=True, max_duration=MaxDuration(seconds=0.2))
    call_id = harness.start(features, [WaitFor("response.create"), EndCall()])
    assert await harness.ended(call_id) == "ended"
    await harness.gone(call_id)
    await asyncio.sleep(0.3)  # past the limit: the timer went with the call
    assert harness.controller.ops == []


async def test_end_call_tool_answers_then_hangs_up(harness: Harness) -> None:
    call_id = harness.start(
        CallFeatures(end_call=True), function_call("end_call", {}, call_id="c9")
    )
    assert await harness.ended(call_id) == "end_call"
    (item,) = harness.fake.events(call_id)
    assert item["item"]["call_id"] == "c9"
    assert output_of(item) == {"status": "ending the call"}
    hangup = harness.controller.op(call_id, "hangup")
    assert hangup.client_events == ["conversation.item.create"]  # no response.create
    assert harness.log.data(call_id, "hangup") == [{"reason": "end_call", "outcome": "hung_up"}]
    assert metric(harness.metrics, "switchboard_hangups_total", reason="end_call") == 1


async def test_a_refer_route_announces_then_transfers(harness: Harness) -> None:
    features = CallFeatures(announce="Say you put them through to the desk.", refer_to=DESK)
    call_id = harness.start(features, [])
    assert await harness.ended(call_id) == "transferred"
    assert harness.fake.events(call_id) == [said("Say you put them through to the desk.")]
    refer = harness.controller.op(call_id, "refer")
    assert refer.argument == DESK
    assert answers(refer.server_events)  # said before the REFER
    assert harness.log.data(call_id, "transfer") == [
        {"destination": DESK, "outcome": "referred", "by": "route", "uri": DESK}
    ]


@pytest.mark.parametrize("refusal", [Refuse(404), Refuse(503)])
async def test_a_refer_route_transfers_even_without_a_sideband(
    harness: Harness, refusal: Refuse
) -> None:
    """The line cannot be said: the caller must still be transferred, not left hanging."""
    features = CallFeatures(announce="Say you put them through.", refer_to=DESK)
    call_id = harness.start(features, refusal, refusal, refusal)
    assert await harness.ended(call_id) == "transferred"
    assert harness.controller.for_call(call_id) == [("refer", DESK)]
    assert harness.log.data(call_id, "transfer")[0]["by"] == "route"


async def test_a_refer_route_whose_transfer_fails_hangs_up(harness: Harness) -> None:
    call_id = new_id()
    harness.controller.fail("refer", call_id, UpstreamRejected("refer", "HTTP 400", 400))
    harness.start(CallFeatures(announce="Say it.", refer_to=DESK), [], call_id=call_id)
    assert await harness.ended(call_id) == "refer_failed"
    assert harness.controller.for_call(call_id) == [("refer", DESK), ("hangup", None)]


# --- the sideband's life ------------------------------------------------------------------------


async def test_the_sideband_closes_normally(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(greeting=True), [WaitFor("response.create"), Close(1000)])
    assert await harness.ended(call_id) == "ended"
    await harness.gone(call_id)
    assert harness.controller.ops == []
    assert metric(harness.metrics, "switchboard_active_calls") == 0
    assert metric(harness.metrics, "switchboard_call_duration_seconds_count") == 1
    assert len(harness.fake.sidebands(call_id)) == 1  # no reconnection after a normal close


async def test_server_errors_are_recorded(harness: Harness) -> None:
    call_id = harness.start(
        CallFeatures(greeting=True),
        [error("Unknown parameter: 'response.foo'.", code="unknown_parameter"), Close()],
    )
    assert await harness.ended(call_id) == "ended"
    (recorded,) = harness.log.data(call_id, "error")
    assert recorded["code"] == "unknown_parameter"
    assert recorded["message"] == "Unknown parameter: 'response.foo'."


@pytest.mark.parametrize("breaks", [Drop(), Close(1011, "internal error")], ids=["drop", "1011"])
async def test_a_dropped_sideband_is_rejoined(harness: Harness, breaks: Any) -> None:
    features = CallFeatures(greeting=True, dtmf={"0": None})
    call_id = harness.start(features, [WaitFor("response.create"), breaks], [dtmf("0")])
    assert await harness.ended(call_id) == "dtmf"
    assert len(harness.fake.sidebands(call_id)) == 2
    assert harness.fake.types(call_id) == ["response.create"]  # no second greeting
    assert harness.log.kinds(call_id)[:4] == [
        "sideband_connected",
        "greeting",
        "sideband_dropped",
        "sideband_connected",
    ]
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="dropped") == 1
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="connect") == 0


@pytest.mark.parametrize("breaks", [Drop(), Close(1011)], ids=["drop", "1011"])
async def test_a_dropped_sideband_that_cannot_be_rejoined(harness: Harness, breaks: Any) -> None:
    refused = (Refuse(503), Refuse(500), Refuse(503))  # the first try and its 2 retries
    call_id = harness.start(CallFeatures(greeting=True), [breaks], *refused)
    assert await harness.ended(call_id) == "sideband_lost"
    assert [r.status for r in harness.fake.refusals] == [503, 500, 503]
    assert "sideband_dropped" in harness.log.kinds(call_id)
    assert harness.log.kinds(call_id)[-1] == "sideband_failed"
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="dropped") == 1
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="connect") == 1


@pytest.mark.parametrize("breaks", [Drop(), Close(1001)], ids=["drop", "1001"])
async def test_a_sideband_whose_call_is_gone_when_rejoined_ends_the_call_at_once(
    harness: Harness, breaks: Any
) -> None:
    """A rejoin refused with 404: the call ended while the sideband was away. It was left
    'sideband_lost', its max-duration timer running on to hang up a call long gone at its
    limit (and the call counted live until then)."""
    features = CallFeatures(greeting=True, max_duration=MaxDuration(seconds=30))
    call_id = harness.start(features, [WaitFor("response.create"), breaks], Refuse(404))
    assert await asyncio.wait_for(harness.ended(call_id), 5) == "caller_gone"
    assert harness.controller.for_call(call_id) == []  # no hangup of a call gone
    assert [r.status for r in harness.fake.refusals] == [404]  # a 404 is not retried
    assert "sideband_dropped" in harness.log.kinds(call_id)
    assert harness.log.kinds(call_id)[-1] == "sideband_failed"
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="dropped") == 1
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="connect") == 1


async def test_a_sideband_that_cannot_connect_is_retried(harness: Harness) -> None:
    call_id = harness.start(
        CallFeatures(greeting=True), Refuse(503), Refuse(500), Refuse(503), Refuse(503)
    )
    await harness.gone(call_id)
    assert [r.status for r in harness.fake.refusals] == [503, 500, 503]  # 1 + 2 retries
    assert harness.log[call_id].statuses == ["answered"]
    assert harness.log[call_id].endings == []  # the end cannot be seen: not invented
    (failed,) = harness.log.data(call_id, "sideband_failed")
    assert "503" in failed["error"]
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="connect") == 1
    assert metric(harness.metrics, "switchboard_active_calls") == 0


async def test_a_sideband_refused_with_404_is_not_retried(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(greeting=True))  # never registered: 404
    await harness.gone(call_id)
    assert [r.status for r in harness.fake.refusals] == [404]
    assert harness.log[call_id].statuses == ["answered"]
    assert harness.log[call_id].endings == []


async def test_a_wrong_api_key_is_refused(fake: FakeRealtime) -> None:
    log, controller, metrics = RecordingCallLog(), FakeController(fake), Metrics()
    manager = InCallManager(
        connector=WebSocketConnector(fake.base_url, "sk-wrong"),
        controller=controller,
        call_log=log,
        metrics=metrics,
        connect_delays=(),
    )
    call_id = new_id()
    fake.call(call_id, [])
    manager.start(call_id, CallFeatures(greeting=True))
    await eventually(lambda: call_id not in manager, "the session to give up")
    assert [(r.status, r.authorization) for r in fake.refusals] == [(401, "Bearer sk-wrong")]
    assert "401" in log.data(call_id, "sideband_failed")[0]["error"]


async def test_an_unreachable_api_is_retried_and_counted(fake: FakeRealtime) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log, controller, metrics = RecordingCallLog(), FakeController(None), Metrics()
    attempts: list[str] = []
    connector = WebSocketConnector(f"http://127.0.0.1:{port}/v1", API_KEY, open_timeout=1)

    class Counting:
        async def connect(self, call_id: str) -> Sideband:
            attempts.append(call_id)
            return await connector.connect(call_id)

    manager = make_manager(fake, controller, log, metrics, connector=Counting())
    call_id = new_id()
    manager.start(call_id, CallFeatures(transfers=TRANSFERS))
    await eventually(lambda: call_id not in manager, "the session to give up")
    assert attempts == [call_id] * 3
    assert log[call_id].statuses == ["answered"] and log[call_id].endings == []
    assert metric(metrics, "switchboard_sideband_failures_total", stage="connect") == 1


async def test_max_duration_still_hangs_up_without_a_sideband(harness: Harness) -> None:
    limit = MaxDuration(seconds=0.2, warning_before=0.1, warning="Say goodbye.")
    call_id = harness.start(CallFeatures(max_duration=limit), Refuse(503), Refuse(503), Refuse(503))
    assert await harness.ended(call_id) == "max_duration"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert "warning" not in harness.log.kinds(call_id)  # nobody to say it
    assert harness.log[call_id].statuses == []  # active until it ended
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="connect") == 1


# --- operators ------------------------------------------------------------------------------------


async def test_operator_hangup(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(greeting=True), [])
    await harness.sent(call_id, "response.create")
    assert await harness.manager.hangup(call_id) == "hung_up"
    assert await harness.ended(call_id) == "operator"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert metric(harness.metrics, "switchboard_hangups_total", reason="operator") == 1
    assert await harness.manager.hangup(call_id) is None  # over: unknown now


async def test_operator_hangup_of_an_unknown_call(harness: Harness) -> None:
    assert await harness.manager.hangup("rtc_nobody") is None
    assert harness.controller.ops == []


async def test_operator_transfer(harness: Harness) -> None:
    features = CallFeatures(transfers=TRANSFERS, transfer_message="Say you transfer.")
    call_id = harness.start(features, [])
    # Joined on the session's side too (the fake sees the socket a moment before).
    await eventually(lambda: "sideband_connected" in harness.log.kinds(call_id), "the sideband")
    assert await harness.manager.transfer(call_id, "support") == "referred"
    assert harness.controller.for_call(call_id) == [("refer", SUPPORT)]
    assert harness.fake.types(call_id) == ["response.create"]
    assert await harness.ended(call_id) == "transferred"
    assert harness.log.data(call_id, "transfer")[0]["by"] == "operator"


async def test_operator_transfer_refusals(harness: Harness) -> None:
    call_id = harness.start(CallFeatures(transfers=TRANSFERS), [])
    with pytest.raises(ValueError, match="sales, support"):
        await harness.manager.transfer(call_id, "ceo")
    with pytest.raises(LookupError):
        await harness.manager.transfer("rtc_nobody", "sales")
    no_transfers = harness.start(CallFeatures(greeting=True), [])
    with pytest.raises(ValueError, match="none"):
        await harness.manager.transfer(no_transfers, "sales")
    assert harness.controller.ops == []


# --- leaving and isolation ------------------------------------------------------------------------


async def test_shutdown_leaves_calls_cleanly(harness: Harness) -> None:
    limit = MaxDuration(seconds=0.3)
    first = harness.start(CallFeatures(greeting=True, max_duration=limit), [])
    second = harness.start(CallFeatures(transfers=TRANSFERS), [])
    await harness.sent(first, "response.create")
    await eventually(lambda: harness.fake.sidebands(second), "the second sideband")

    await harness.manager.shutdown()

    await eventually(
        lambda: not harness.fake.is_open(first) and not harness.fake.is_open(second),
        "the fake to see both close",
    )
    for call_id in (first, second):
        (sideband,) = harness.fake.sidebands(call_id)
        assert sideband.close_code == 1000 and sideband.closed_by_client
        assert harness.log[call_id].endings == []  # the calls go on without us
        # ... and their records must not say "active" (watched) when nobody watches them.
        assert harness.log[call_id].statuses == ["answered"]
        assert harness.log.data(call_id, "detached") == [{"reason": "shutdown"}]
        assert call_id not in harness.manager
    assert metric(harness.metrics, "switchboard_active_calls") == 0
    assert not harness.manager.start(new_id(), CallFeatures(greeting=True))
    await asyncio.sleep(0.4)  # past the first call's limit: nobody hangs up any more
    assert harness.controller.ops == []


async def test_shutdown_while_a_sideband_is_being_retried(fake: FakeRealtime) -> None:
    log, controller, metrics = RecordingCallLog(), FakeController(fake), Metrics()
    manager = InCallManager(
        connector=WebSocketConnector(fake.base_url, API_KEY),
        controller=controller,
        call_log=log,
        metrics=metrics,
        connect_delays=(0.2,),
    )
    call_id = new_id()
    fake.call(call_id, Refuse(503), [])
    manager.start(call_id, CallFeatures(greeting=True))
    await eventually(lambda: fake.refusals, "the first attempt")
    await manager.shutdown()
    assert call_id not in manager
    # Detached before the retry: it must not join the call (and leave a socket behind).
    await asyncio.sleep(0.3)
    assert [log.open for log in fake.sidebands(call_id)] in ([], [False])
    assert log[call_id].endings == []


async def test_one_calls_failures_do_not_touch_another(harness: Harness) -> None:
    features = CallFeatures(transfers=TRANSFERS, dtmf={"1": "sales", "2": "support"})
    broken = new_id()
    harness.controller.fail("refer", broken, UpstreamRejected("refer", "HTTP 400", 400))
    harness.start(
        features,
        [SendRaw("{not json"), SendRaw("[1, 2]"), SendRaw("null"), dtmf("1")],
        call_id=broken,
    )
    healthy = harness.start(features, [Sleep(0.05), dtmf("2")])

    assert await harness.ended(healthy) == "transferred"
    assert harness.controller.for_call(healthy) == [("refer", SUPPORT)]
    await eventually(lambda: harness.log.data(broken, "transfer"), "the broken call's transfer")
    assert harness.log.data(broken, "transfer")[0]["outcome"] == "failed"
    assert broken in harness.manager and harness.fake.is_open(broken)
    assert harness.log[broken].endings == []


async def test_a_session_that_crashes_ends_alone(harness: Harness) -> None:
    real = WebSocketConnector(harness.fake.base_url, API_KEY)
    crashing = new_id()

    class Crashing:
        async def connect(self, call_id: str) -> Sideband:
            if call_id == crashing:
                raise RuntimeError("a bug")
            return await real.connect(call_id)

    manager = make_manager(
        harness.fake, harness.controller, harness.log, harness.metrics, connector=Crashing()
    )
    manager.start(crashing, CallFeatures(greeting=True))
    healthy = new_id()
    harness.fake.call(healthy, [dtmf("0")])
    manager.start(healthy, CallFeatures(dtmf={"0": None}))
    assert await harness.ended(crashing) == "error"
    assert await harness.ended(healthy) == "dtmf"
    await manager.shutdown()


# --- when the sideband's end overtakes the API's answer ------------------------------------------


@pytest.fixture
async def racing(fake: FakeRealtime) -> AsyncIterator[Harness]:
    """OpenAI ends the call (and its sideband) before it answers the hangup or refer."""
    controller = FakeController(fake, close_before_answer=True)
    log, metrics = RecordingCallLog(), Metrics()
    manager = make_manager(fake, controller, log, metrics)
    yield Harness(fake, controller, log, metrics, manager)
    await manager.shutdown()


async def test_end_call_when_the_sideband_closes_first(racing: Harness) -> None:
    call_id = racing.start(CallFeatures(end_call=True), function_call("end_call", {}))
    assert await racing.ended(call_id) == "end_call"
    assert racing.log.data(call_id, "hangup") == [{"reason": "end_call", "outcome": "hung_up"}]
    assert metric(racing.metrics, "switchboard_hangups_total", reason="end_call") == 1


async def test_transfer_when_the_sideband_closes_first(racing: Harness) -> None:
    call_id = racing.start(CallFeatures(transfers=TRANSFERS, dtmf={"1": "sales"}), [dtmf("1")])
    assert await racing.ended(call_id) == "transferred"
    assert racing.log.data(call_id, "transfer")[0]["outcome"] == "referred"
    assert metric(racing.metrics, "switchboard_transfers_total", outcome="referred") == 1


async def test_operator_hangup_when_the_sideband_closes_first(racing: Harness) -> None:
    call_id = racing.start(CallFeatures(greeting=True), [])
    await racing.sent(call_id, "response.create")
    assert await racing.manager.hangup(call_id) == "hung_up"
    assert await racing.ended(call_id) == "operator"


# --- saying a line: wait for that line, not any response ------------------------------------------


async def test_a_tool_call_acts_on_its_response_done_not_before(harness: Harness) -> None:
    """The arguments are done first; the transfer waits for the response that carries them."""
    arguments_done, response_done = function_call_events("transfer_call", {"destination": "sales"})
    call_id = harness.start(
        CallFeatures(transfers=TRANSFERS, transfer_message="Say it."),
        [Send(arguments_done), Sleep(0.2), Send(response_done)],
    )
    assert await harness.ended(call_id) == "transferred"
    refer = harness.controller.op(call_id, "refer")
    assert response_done["response"]["id"] in [
        e.get("response", {}).get("id") for e in refer.server_events
    ]
    # Nothing was sent before the response.done: the tool's answer, then the line.
    assert harness.fake.types(call_id) == ["conversation.item.create", "response.create"]


async def test_a_call_is_handled_once_and_never_restarted_in_the_log() -> None:
    """The router writes `started`; a session only adds to the record."""
    log = RecordingCallLog()
    manager = InCallManager(
        connector=WebSocketConnector("http://127.0.0.1:9/v1", API_KEY),
        controller=FakeController(None),
        call_log=log,
        metrics=Metrics(),
    )
    assert manager.start("rtc_x", CallFeatures(max_duration=MaxDuration(0.05)))
    assert not manager.start("rtc_x", CallFeatures(max_duration=MaxDuration(0.05)))  # once
    await eventually(lambda: log.ended_with("rtc_x"), "the call to end")
    assert log["rtc_x"].records == []
    await manager.shutdown()


async def test_one_transfer_however_many_ask_for_it(harness: Harness) -> None:
    """Keys pressed twice, the model asking too, then end_call: one REFER, no hangup."""
    features = CallFeatures(transfers=TRANSFERS, dtmf={"5": "support"}, end_call=True)
    steps = [
        dtmf("5"),
        dtmf("5"),
        *function_call("transfer_call", {"destination": "support"}, call_id="call_t"),
        *function_call("end_call", {}, call_id="call_e"),
    ]
    call_id = harness.start(features, steps)
    assert await harness.ended(call_id) == "transferred"
    assert harness.controller.for_call(call_id) == [("refer", SUPPORT)]


# --- only completed function calls of completed responses act (issue 11, item 4) ---------------


@pytest.mark.parametrize(
    ("status", "item_status"),
    [
        pytest.param("cancelled", "incomplete", id="cancelled"),
        pytest.param("incomplete", "incomplete", id="incomplete"),
        pytest.param("failed", "incomplete", id="failed"),
        pytest.param("cancelled", "completed", id="cancelled-response-completed-item"),
        pytest.param("completed", "incomplete", id="completed-response-incomplete-item"),
    ],
)
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [("end_call", {}), ("transfer_call", {"destination": "sales"})],
)
async def test_an_interrupted_tool_call_does_not_act(
    harness: Harness, status: str, item_status: str, tool: str, arguments: dict[str, Any]
) -> None:
    """The caller spoke over the model: its end_call or transfer_call was never finished."""
    features = CallFeatures(transfers=TRANSFERS, end_call=True, dtmf={"0": None})
    steps = function_call(tool, arguments, status=status, item_status=item_status)
    call_id = harness.start(features, [*steps, Sleep(0.2), dtmf("0")])
    assert await harness.ended(call_id) == "dtmf"  # the call went on until the caller left
    assert harness.controller.for_call(call_id) == [("hangup", None)]  # the keypad's
    assert harness.fake.types(call_id) == []  # no tool answer: there was no tool call
    assert harness.log.data(call_id, "tool_call") == []
    assert harness.log.data(call_id, "tool_call_interrupted") == [
        {"name": tool, "response_status": status, "item_status": item_status}
    ]


async def test_arguments_done_alone_does_not_act(harness: Harness) -> None:
    """`response.function_call_arguments.done` is also sent for interrupted responses."""
    features = CallFeatures(transfers=TRANSFERS, end_call=True, dtmf={"0": None})
    steps = [
        *function_call("end_call", {}, via="arguments"),
        *function_call("transfer_call", {"destination": "sales"}, via="arguments"),
        Sleep(0.2),
        dtmf("0"),
    ]
    call_id = harness.start(features, steps)
    assert await harness.ended(call_id) == "dtmf"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert harness.fake.types(call_id) == []


async def test_a_second_transfer_while_one_is_in_progress_is_told_so() -> None:
    """The first transfer is saying its line: the second ask gets the truth, not
    "transferring", and only one REFER is sent."""
    async with FakeRealtime(api_key=API_KEY, respond_delay=0.3) as fake:
        controller, log, metrics = FakeController(fake), RecordingCallLog(), Metrics()
        manager = make_manager(fake, controller, log, metrics)
        call_id = new_id()
        fake.call(
            call_id,
            [
                *function_call("transfer_call", {"destination": "sales"}, call_id="first"),
                WaitFor("response.create"),  # the transfer line is being said
                *function_call("transfer_call", {"destination": "support"}, call_id="second"),
                *function_call("end_call", {}, call_id="bye"),
            ],
        )
        manager.start(
            call_id, CallFeatures(transfers=TRANSFERS, end_call=True, transfer_message="Say it.")
        )
        await eventually(lambda: log.ended_with(call_id), "the call to end")
        outputs = {
            e["item"]["call_id"]: output_of(e)
            for e in of_type(fake.events(call_id), "conversation.item.create")
        }
        assert outputs == {
            "first": {"status": "transferring", "destination": "sales"},
            "second": {"error": "a transfer is already in progress"},
            "bye": {"error": "a transfer is already in progress"},
        }
        assert controller.for_call(call_id) == [("refer", SALES)]
        assert log.ended_with(call_id) == "transferred"
        assert [d["outcome"] for d in log.data(call_id, "transfer")] == [
            "already_transferring",
            "referred",
        ]
        await manager.shutdown()
        assert fake.errors == []


async def test_an_operator_transfer_after_the_models_is_refused(harness: Harness) -> None:
    features = CallFeatures(transfers=TRANSFERS, transfer_message="Say it.")
    call_id = harness.start(features, [])
    await eventually(lambda: "sideband_connected" in harness.log.kinds(call_id), "the sideband")
    harness.controller.gate = asyncio.Event()  # the REFER waits
    first = asyncio.create_task(harness.manager.transfer(call_id, "sales"))
    await eventually(lambda: harness.controller.ops, "the first REFER")
    assert await harness.manager.transfer(call_id, "support") == "already_transferring"
    harness.controller.gate.set()
    assert await first == "referred"
    assert harness.controller.for_call(call_id) == [("refer", SALES)]


# --- the sideband cannot spin, and the time limit outlives it (issue 11, item 3) --------------


async def test_a_sideband_that_drops_at_once_is_rejoined_a_bounded_number_of_times(
    harness: Harness,
) -> None:
    """It was rejoined 977 times at 542/s, then the session died of a RecursionError."""
    call_id = harness.start(CallFeatures(greeting=True), then=[Drop()])
    assert await harness.ended(call_id) == "sideband_lost"
    assert len(harness.fake.sidebands(call_id)) == 1 + FAST_REJOIN.max_rejoins
    assert harness.log.kinds(call_id).count("sideband_dropped") == 1 + FAST_REJOIN.max_rejoins
    assert harness.log.data(call_id, "sideband_given_up") == [{"rejoins": 5}]
    # Greeted once at most (the first socket may drop before it), never once per rejoin.
    assert harness.fake.types(call_id) in ([], ["response.create"])
    assert metric(harness.metrics, "switchboard_sideband_failures_total", stage="dropped") == 6


async def test_a_rejoin_storm_with_a_deep_cap_does_not_recurse(harness: Harness) -> None:
    """More rejoins than the interpreter's recursion limit allows frames for."""
    manager = make_manager(
        harness.fake,
        harness.controller,
        harness.log,
        harness.metrics,
        rejoin=RejoinPolicy(first_pause=0.0001, max_pause=0.0001, max_rejoins=1200),
        connector=(connector := DroppingConnector()),
    )
    call_id = new_id()
    manager.start(call_id, CallFeatures(greeting=True))
    assert await eventually(lambda: harness.log.ended_with(call_id), "the end", 30) == (
        "sideband_lost"
    )
    assert connector.connects == 1201
    # Two events per drop: the records stop at the cap, with a count of the rest.
    assert len(harness.log[call_id].events) == MAX_EVENTS_PER_CALL + 1
    assert harness.log.kinds(call_id)[-2:] == ["events_capped", "events_dropped"]
    await manager.shutdown()


class DroppingSideband:
    """A sideband that opens and drops at once, without a network (fast enough to outrun
    the recursion limit in a test)."""

    async def send(self, event: dict[str, Any]) -> None:
        pass

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        raise SidebandError("sideband dropped: no close frame received or sent")
        yield {}  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        pass


class DroppingConnector:
    def __init__(self) -> None:
        self.connects = 0

    async def connect(self, call_id: str) -> Sideband:
        self.connects += 1
        return DroppingSideband()


@pytest.mark.parametrize("with_warning", [False, True])
async def test_max_duration_hangs_up_through_a_rejoin_storm(
    harness: Harness, with_warning: bool
) -> None:
    limit = (
        MaxDuration(seconds=0.6, warning_before=0.3, warning="Say goodbye.")
        if with_warning
        else MaxDuration(seconds=0.6)
    )
    manager = make_manager(
        harness.fake,
        harness.controller,
        harness.log,
        harness.metrics,
        rejoin=RejoinPolicy(first_pause=0.01, max_pause=0.02, max_rejoins=10_000),
        connector=DroppingConnector(),  # no network: a storm as fast as the loop runs
    )
    call_id = new_id()
    manager.start(call_id, CallFeatures(greeting=True, max_duration=limit))
    assert await eventually(lambda: harness.log.ended_with(call_id), "the end") == "max_duration"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert harness.log.data(call_id, "hangup") == [{"reason": "max_duration", "outcome": "hung_up"}]
    await manager.shutdown()


async def test_max_duration_hangs_up_after_the_sideband_is_given_up(harness: Harness) -> None:
    call_id = harness.start(
        CallFeatures(greeting=True, max_duration=MaxDuration(seconds=0.5)), then=[Drop()]
    )
    assert await harness.ended(call_id) == "max_duration"
    assert harness.log.data(call_id, "sideband_given_up") == [{"rejoins": 5}]
    assert harness.controller.for_call(call_id) == [("hangup", None)]


async def test_max_duration_outlives_a_crash_of_the_sideband_handling(harness: Harness) -> None:
    class Broken:
        async def send(self, event: dict[str, Any]) -> None:
            pass

        async def events(self) -> AsyncIterator[dict[str, Any]]:
            raise RuntimeError("a bug")
            yield {}  # pragma: no cover

        async def close(self) -> None:
            pass

    class BrokenConnector:
        async def connect(self, call_id: str) -> Sideband:
            return Broken()

    manager = make_manager(
        harness.fake, harness.controller, harness.log, harness.metrics, connector=BrokenConnector()
    )
    call_id = new_id()
    manager.start(call_id, CallFeatures(greeting=True, max_duration=MaxDuration(seconds=0.2)))
    assert await eventually(lambda: harness.log.ended_with(call_id), "the end") == "max_duration"
    assert harness.controller.for_call(call_id) == [("hangup", None)]
    assert "in-call handling failed" in harness.log.data(call_id, "error")[0]["error"]
    await manager.shutdown()


async def test_a_failed_max_duration_hangup_is_asked_again(harness: Harness) -> None:
    call_id = new_id()
    harness.controller.fail(
        "hangup", call_id, UpstreamUnavailable("hangup", "HTTP 503: overloaded", 503)
    )
    harness.start(CallFeatures(max_duration=MaxDuration(seconds=0.1)), call_id=call_id)
    assert await harness.ended(call_id) == "max_duration"
    assert harness.controller.for_call(call_id) == [("hangup", None), ("hangup", None)]
    assert [d["outcome"] for d in harness.log.data(call_id, "hangup")] == ["failed", "hung_up"]


async def test_rejoin_pauses_grow_with_jitter_up_to_the_cap(harness: Harness) -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0)

    policy = RejoinPolicy(first_pause=0.1, max_pause=0.4, max_rejoins=6)
    manager = make_manager(
        harness.fake,
        harness.controller,
        harness.log,
        harness.metrics,
        rejoin=policy,
        sleep=sleep,
        connector=DroppingConnector(),
    )
    call_id = new_id()
    manager.start(call_id, CallFeatures(greeting=True))
    assert await eventually(lambda: harness.log.ended_with(call_id), "the end") == "sideband_lost"
    ceilings = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert len(pauses) == 6
    assert all(c / 2 <= p <= c for p, c in zip(pauses, ceilings, strict=True))
    await manager.shutdown()


async def test_a_connection_that_stayed_up_starts_the_backoff_over(harness: Harness) -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        await asyncio.sleep(0)

    policy = RejoinPolicy(first_pause=0.1, max_pause=0.4, max_rejoins=4, stable_seconds=0)
    manager = make_manager(
        harness.fake,
        harness.controller,
        harness.log,
        harness.metrics,
        rejoin=policy,
        sleep=sleep,
        connector=DroppingConnector(),
    )
    call_id = new_id()
    manager.start(call_id, CallFeatures(greeting=True))
    await eventually(lambda: harness.log.ended_with(call_id), "the end")
    assert len(pauses) == 4 and all(0.05 <= p <= 0.1 for p in pauses)
    await manager.shutdown()


def test_rejoin_policy_pauses() -> None:
    policy = RejoinPolicy(first_pause=1.0, max_pause=5.0)
    for streak, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0)]:
        pauses = {policy.pause(streak) for _ in range(50)}
        assert all(ceiling / 2 <= p <= ceiling for p in pauses)
        assert len(pauses) > 1  # jittered


# --- bounded memory and records per call ----------------------------------------------------------


async def test_events_recorded_per_call_are_capped(harness: Harness) -> None:
    manager = make_manager(
        harness.fake, harness.controller, harness.log, harness.metrics, max_events=10
    )
    call_id = new_id()
    harness.fake.call(call_id, [*[dtmf("7") for _ in range(30)], Sleep(0.1), EndCall()])
    manager.start(call_id, CallFeatures(dtmf={"5": None}))
    assert await eventually(lambda: harness.log.ended_with(call_id), "the end") == "ended"
    kinds = harness.log.kinds(call_id)
    # sideband_connected, 8 digits, the cap, then the count of what was not written
    assert kinds == ["sideband_connected", *["dtmf"] * 8, "events_capped", "events_dropped"]
    assert harness.log.data(call_id, "events_capped") == [{"limit": 10}]
    assert harness.log.data(call_id, "events_dropped") == [{"count": 22}]
    await manager.shutdown()


async def test_the_end_of_a_call_is_recorded_past_the_cap(harness: Harness) -> None:
    """What ended the call is never among the events dropped."""
    manager = make_manager(
        harness.fake, harness.controller, harness.log, harness.metrics, max_events=5
    )
    call_id = new_id()
    harness.fake.call(call_id, [*[dtmf("7") for _ in range(10)], dtmf("0")])
    manager.start(call_id, CallFeatures(dtmf={"0": None}))
    assert await eventually(lambda: harness.log.ended_with(call_id), "the end") == "dtmf"
    assert harness.log.data(call_id, "hangup") == [{"reason": "dtmf", "outcome": "hung_up"}]
    assert harness.log.kinds(call_id)[-2:] == ["hangup", "events_dropped"]
    await manager.shutdown()


def test_recent_ids_keep_the_newest_only() -> None:
    ids = RecentIds(3)
    for n in range(1000):
        ids.add(f"call_{n}")
    assert len(ids) == 3
    assert "call_999" in ids and "call_997" in ids and "call_996" not in ids
    ids.add("call_997")  # seen again: the newest now
    ids.add("call_1000")
    assert "call_997" in ids and "call_998" not in ids


# --- crafted events -----------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
"""JSON nested past the interpreter's recursion limit: json.loads raises RecursionError."""


@pytest.mark.parametrize(
    "step",
    [SendRaw(DEEP), *function_call("transfer_call", DEEP, via="response")],
    ids=["event", "tool-arguments"],
)
async def test_json_nested_too_deep_is_ignored_not_a_crash(harness: Harness, step: Any) -> None:
    """Before: the RecursionError ended the session ("error"), leaving the call unwatched."""
    features = CallFeatures(transfers=TRANSFERS, dtmf={"0": None})
    call_id = harness.start(features, [step, dtmf("0")])
    assert await harness.ended(call_id) == "dtmf"
    assert harness.controller.for_call(call_id) == [("hangup", None)]


@pytest.mark.parametrize("first", ["transfer", "hangup"])
async def test_a_transfer_and_a_hangup_racing_act_once(first: str) -> None:
    """An operator's transfer and hangup (or the time limit, a key) at once: whichever
    asked first acts, the other is told the call left. Before, a hangup went out while a
    REFER was in flight, and a transfer whose line was being said sent its REFER after the
    call was hung up."""
    async with FakeRealtime(api_key=API_KEY, respond_delay=0.3) as fake:
        controller, log, metrics = FakeController(fake), RecordingCallLog(), Metrics()
        manager = make_manager(fake, controller, log, metrics)
        call_id = new_id()
        fake.call(call_id, [])
        message = "Say it." if first == "hangup" else None
        manager.start(call_id, CallFeatures(transfers=TRANSFERS, transfer_message=message))
        await eventually(lambda: "sideband_connected" in log.kinds(call_id), "the sideband")
        controller.gate = asyncio.Event()  # requests wait
        transfer = asyncio.create_task(manager.transfer(call_id, "sales"))
        if first == "transfer":
            await eventually(lambda: controller.ops, "the REFER")
            hangup = asyncio.create_task(manager.hangup(call_id))
        else:
            await eventually(lambda: fake.types(call_id), "the transfer line")
            hangup = asyncio.create_task(manager.hangup(call_id))
            await eventually(lambda: controller.ops, "the hangup")
        await asyncio.sleep(0.5)  # the line is said meanwhile
        assert len(controller.ops) == 1
        controller.gate.set()
        outcomes = {"transfer": await transfer, "hangup": await hangup}
        assert outcomes == (
            {"transfer": "referred", "hangup": "call_left"}
            if first == "transfer"
            else {"transfer": "call_left", "hangup": "hung_up"}
        )
        assert len(controller.ops) == 1
        await manager.shutdown()
        assert fake.errors == []


async def test_the_time_limit_holds_when_a_hangup_in_flight_at_the_limit_fails(
    harness: Harness,
) -> None:
    """end_call's hangup is in flight as the limit comes, then fails: the limit's own
    hangup goes out. Before, it was told "already_hung_up" and gave up: no limit."""
    call_id = new_id()
    harness.controller.fail(
        "hangup", call_id, UpstreamUnavailable("hangup", "HTTP 503: overloaded", 503)
    )
    harness.controller.gate = asyncio.Event()
    features = CallFeatures(end_call=True, max_duration=MaxDuration(seconds=0.3))
    harness.start(features, function_call("end_call", {}), call_id=call_id)
    await eventually(lambda: harness.controller.ops, "end_call's hangup")
    await asyncio.sleep(0.4)  # the limit comes while it is in flight
    harness.controller.gate.set()
    assert await harness.ended(call_id) == "max_duration"
    assert [d["outcome"] for d in harness.log.data(call_id, "hangup")] == ["failed", "hung_up"]


async def test_what_a_call_records_of_huge_events_is_bounded(harness: Harness) -> None:
    """Upstream errors and tool arguments are recorded as sent: 500 of them at 1 MB each
    was 500 MB of one call's record, queued in memory first. Now each is cut short."""
    call_id = harness.start(
        CallFeatures(transfers=TRANSFERS, dtmf={"0": None}),
        [
            error("x" * 1_000_000),
            *function_call("transfer_call", {"destination": "y" * 1_000_000}, via="response"),
            dtmf("0"),
        ],
    )
    assert await harness.ended(call_id) == "dtmf"
    events = harness.log[call_id].events
    assert [kind for kind, _ in events][-2:] == ["dtmf", "hangup"]
    assert max(len(json.dumps(data)) for _, data in events) < 5_000
    (recorded,) = harness.log.data(call_id, "error")
    assert recorded["truncated"].startswith('{"type": "invalid_request_error"')


async def test_the_time_limit_holds_when_the_sideband_drops_during_a_failing_hangup(
    harness: Harness,
) -> None:
    """The limit's hangup is slow and fails; the sideband drops meanwhile. Before, the
    drop ended the session (a hangup was under way), which cancelled the timer's retries:
    the call went on with no limit, recorded as ended."""
    call_id = new_id()
    harness.controller.fail(
        "hangup", call_id, UpstreamUnavailable("hangup", "HTTP 503: overloaded", 503)
    )
    harness.controller.gate = asyncio.Event()
    harness.start(
        CallFeatures(greeting=True, max_duration=MaxDuration(seconds=0.2)),
        [WaitFor("response.create"), Sleep(0.4), Drop()],
        call_id=call_id,
    )
    await eventually(lambda: "sideband_dropped" in harness.log.kinds(call_id), "the drop")
    harness.controller.gate.set()
    assert await harness.ended(call_id) == "max_duration"
    assert [d["outcome"] for d in harness.log.data(call_id, "hangup")] == ["failed", "hung_up"]


class StalledSideband:
    """A sideband that stays up but takes nothing: each send waits (a full TCP window)."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.closed = asyncio.Event()
        self._events = events

    async def send(self, event: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        for event in self._events:
            yield event
        await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()


class StalledConnector:
    def __init__(self, *events: dict[str, Any]) -> None:
        self._events = list(events)

    async def connect(self, call_id: str) -> Sideband:
        return StalledSideband(self._events)


async def test_the_time_limit_does_not_wait_for_its_warning_to_be_sent(harness: Harness) -> None:
    """Before, the timer awaited the warning's send: a sideband that stalled held the
    hangup for as long as the send took (until the socket's keepalive gave up)."""
    manager = make_manager(
        harness.fake,
        harness.controller,
        harness.log,
        harness.metrics,
        connector=StalledConnector(),
    )
    call_id = new_id()
    limit = MaxDuration(seconds=0.3, warning_before=0.15, warning="Say goodbye.")
    manager.start(call_id, CallFeatures(max_duration=limit))
    await eventually(lambda: harness.log.data(call_id, "hangup"), "the hangup", within=2.0)
    assert harness.log.data(call_id, "hangup") == [{"reason": "max_duration", "outcome": "hung_up"}]
    await manager.shutdown()


@pytest.mark.parametrize("how", ["tool", "operator"])
async def test_a_stalled_sideband_does_not_hold_a_transfer(
    harness: Harness, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, each send (the tool's answer, the transfer line) waited as long as the
    socket took, and the REFER behind it with them (until the keepalive gave up)."""
    monkeypatch.setattr("app.incall.session.SEND_TIMEOUT", 0.1)
    _, response_done = function_call_events("transfer_call", {"destination": "sales"})
    manager = make_manager(
        harness.fake,
        harness.controller,
        harness.log,
        harness.metrics,
        connector=StalledConnector(*([response_done] if how == "tool" else [])),
    )
    call_id = new_id()
    manager.start(call_id, CallFeatures(transfers=TRANSFERS, transfer_message="Say it."))
    await eventually(lambda: "sideband_connected" in harness.log.kinds(call_id), "the sideband")
    if how == "tool":
        await eventually(lambda: harness.controller.ops, "the REFER", within=2.0)
    else:
        async with asyncio.timeout(2.0):
            assert await manager.transfer(call_id, "sales") == "referred"
    assert harness.controller.for_call(call_id) == [("refer", SALES)]
    await manager.shutdown()


async def test_a_sideband_closed_as_going_away_is_rejoined(harness: Harness) -> None:
    """1001 is the server going away (a restart, a drained balancer), not the call ending
    (1000). Before, websockets reads both as a clean close: the session ended, its time
    limit and keys with it, while the call went on."""
    features = CallFeatures(greeting=True, dtmf={"0": None})
    call_id = harness.start(
        features, [WaitFor("response.create"), Close(1001, "going away")], [dtmf("0")]
    )
    assert await harness.ended(call_id) == "dtmf"
    assert len(harness.fake.sidebands(call_id)) == 2


async def test_a_slow_registry_does_not_hold_the_call(harness: Harness) -> None:
    """Before, the call was registered first (bounded at 2 s), and only then greeted and
    its time limit started: a slow registry made the caller wait, and the limit late."""
    gate = asyncio.Event()

    class SlowRegistry(MemoryLiveCalls):
        async def register(self, call: LiveCall) -> None:
            await gate.wait()
            await super().register(call)

    registry = SlowRegistry("r1", lease_seconds=10)
    manager = make_manager(
        harness.fake, harness.controller, harness.log, harness.metrics, registry=registry
    )
    call_id = new_id()
    harness.fake.call(call_id, [])
    manager.start(call_id, CallFeatures(greeting=True, max_duration=MaxDuration(seconds=0.2)))
    await eventually(lambda: harness.log.data(call_id, "hangup"), "the hangup", within=1.5)
    assert harness.fake.types(call_id) == ["response.create"]  # greeted meanwhile
    gate.set()
    assert await harness.ended(call_id) == "max_duration"
    await eventually(lambda: call_id not in manager, "the session to finish")
    assert call_id not in registry.hub.entries  # registered, then released
    await manager.shutdown()
