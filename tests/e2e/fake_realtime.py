"""A real local WebSocket server standing in for a call's sideband: `GET /v1/realtime?call_id=`.

It checks the bearer token, records every client event per call id, and plays a scripted
scenario per connection, with the Realtime API's event shapes:

    fake.call("rtc_1", [*function_call("transfer_call", {"destination": "sales"})])
    fake.call("rtc_2", [dtmf("5")])
    fake.call("rtc_3", [Drop()], Refuse(404))  # drops; the reconnection is refused
    fake.call("rtc_4", then=[Drop()])  # every connection drops at once

Each argument after the call id is one connection: a list of steps, or `Refuse(status)`;
`then` is the plan of every connection after those.
On every connection the server first sends `session.created`, and it answers every client
`response.create` with `response.created` and `response.done` on its own, alongside the
script. A call that was never registered, or that has ended (`fake.end`, an `EndCall()`
step, or a `/hangup` / successful `/refer` on a linked FakeOpenAI), is refused with 404;
a registered call whose scripted connections are used up gets its `then` plan, or else an
idle connection.

Runs inside a test's event loop (`async with FakeRealtime() as fake`) or in a thread with
its own loop (`fake.start_in_thread()` / `fake.stop_thread()`) for tests that drive a
separate process. Reads (`events`, `types`, `sidebands`, `errors`) are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.e2e.fake_openai import FakeOpenAI, Recorded, Reply

Event = dict[str, Any]

# --- scenario steps ---------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send a server event (an `event_id` is added when missing)."""

    event: Event


@dataclass(frozen=True)
class SendRaw:
    """Send a text frame as is (e.g. JSON that does not parse)."""

    data: str


@dataclass(frozen=True)
class WaitFor:
    """Wait until the client sends an event of this type (on this connection).

    Each WaitFor consumes the event it matched: two WaitFor("response.create") need two.
    A timeout is a scenario error (see `FakeRealtime.errors`) and ends the script.
    """

    type: str
    where: Callable[[Event], bool] | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the socket with a close frame: 1000 as when the call ends, 1011 on a failure."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class Drop:
    """Drop the TCP connection: no close frame (the client sees 1006)."""


@dataclass(frozen=True)
class EndCall:
    """The call ends: its sockets close with 1000 and later connections are refused (404)."""


@dataclass(frozen=True)
class Refuse:
    """A whole connection: answer the handshake with this HTTP status."""

    status: int = 404


Step = Send | SendRaw | WaitFor | Sleep | Close | Drop | EndCall
Plan = Sequence[Step] | Refuse


# --- server events, as the Realtime API shapes them ---------------------------------------

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


def session_created(model: str = "gpt-realtime") -> Event:
    return {
        "type": "session.created",
        "event_id": _id("event"),
        "session": {
            "type": "realtime",
            "object": "realtime.session",
            "id": _id("sess"),
            "model": model,
            "output_modalities": ["audio"],
            "tools": [],
        },
    }


def function_call_events(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    call_id: str | None = None,
    response_id: str | None = None,
    status: str = "completed",
    item_status: str = "completed",
) -> tuple[Event, Event]:
    """`response.function_call_arguments.done` and the `response.done` that carries it.

    `status` is the response's (completed, cancelled, incomplete, failed), `item_status`
    the function call item's (completed, incomplete): an interrupted response still sends
    both events, with these saying it did not complete."""
    call_id = call_id or _id("call")
    response_id = response_id or _id("resp")
    item_id = _id("item")
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    arguments_done = {
        "type": "response.function_call_arguments.done",
        "event_id": _id("event"),
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "call_id": call_id,
        "name": name,
        "arguments": args,
    }
    response_done = {
        "type": "response.done",
        "event_id": _id("event"),
        "response": {
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "status_details": None
            if status == "completed"
            else {
                "type": status,
                "reason": {"cancelled": "turn_detected", "incomplete": "max_output_tokens"}.get(
                    status
                ),
            },
            "output": [
                {
                    "type": "function_call",
                    "object": "realtime.item",
                    "id": item_id,
                    "call_id": call_id,
                    "name": name,
                    "arguments": args,
                    "status": item_status,
                }
            ],
            "metadata": None,
            "usage": None,
        },
    }
    return arguments_done, response_done


def function_call(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    call_id: str | None = None,
    via: str = "both",
    status: str = "completed",
    item_status: str = "completed",
) -> list[Step]:
    """The model calls a tool: via "arguments" (the .done event), "response" or "both"."""
    arguments_done, response_done = function_call_events(
        name, arguments, call_id=call_id, status=status, item_status=item_status
    )
    steps: list[Step] = []
    if via in ("both", "arguments"):
        steps.append(Send(arguments_done))
    if via in ("both", "response"):
        steps.append(Send(response_done))
    return steps


def dtmf(digit: str) -> Send:
    return Send(
        {
            "type": "input_audio_buffer.dtmf_event_received",
            "event": digit,
            "received_at": int(time.time()),
        }
    )


def error(message: str, *, code: str | None = None, kind: str = "invalid_request_error") -> Send:
    return Send(
        {
            "type": "error",
            "event_id": _id("event"),
            "error": {
                "type": kind,
                "code": code,
                "message": message,
                "param": None,
                "event_id": None,
            },
        }
    )


def response_events(request: Event) -> tuple[Event, Event]:
    """`response.created` and `response.done` answering a client `response.create`."""
    asked = request.get("response")
    metadata = asked.get("metadata") if isinstance(asked, dict) else None
    response: Event = {
        "object": "realtime.response",
        "id": _id("resp"),
        "status": "in_progress",
        "status_details": None,
        "output": [],
        "metadata": metadata,
        "usage": None,
    }
    created = {"type": "response.created", "event_id": _id("event"), "response": response}
    done_response = {
        **response,
        "status": "completed",
        "output": [
            {
                "type": "message",
                "object": "realtime.item",
                "id": _id("item"),
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_audio", "transcript": "(spoken)"}],
            }
        ],
    }
    done = {"type": "response.done", "event_id": _id("event"), "response": done_response}
    return created, done


# --- what the server saw ----------------------------------------------------------------


@dataclass
class SidebandLog:
    """One WebSocket connection for a call."""

    call_id: str
    index: int
    """0 for the call's first connection, 1 for the next..."""
    authorization: str | None
    events: list[Event] = field(default_factory=list)
    """Client events, in order."""
    garbage: list[str] = field(default_factory=list)
    """Client frames that were not JSON objects."""
    sent: list[Event] = field(default_factory=list)
    """Server events, in order."""
    open: bool = True
    close_code: int | None = None
    """The client's close code (1006: no close frame); None while open."""
    closed_by_client: bool | None = None


@dataclass(frozen=True)
class Refusal:
    call_id: str | None
    status: int
    authorization: str | None


class FakeRealtime:
    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        session_created: bool = True,
        auto_respond: bool = True,
        respond_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.session_created = session_created
        self.auto_respond = auto_respond
        self.respond_delay = respond_delay
        """Pause before answering a `response.create` (how long a line takes to say)."""
        self._lock = threading.Lock()
        self._plans: dict[str, deque[Plan]] = {}
        self._then: dict[str, Plan] = {}
        self._ended: set[str] = set()
        self._logs: dict[str, list[SidebandLog]] = defaultdict(list)
        self._open: dict[str, set[ServerConnection]] = defaultdict(set)
        self._accepted: dict[ServerConnection, tuple[str, Sequence[Step], str | None]] = {}
        self._refusals: list[Refusal] = []
        self._errors: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    # --- scripting ------------------------------------------------------------------------

    def call(self, call_id: str, *connections: Plan, then: Plan | None = None) -> None:
        """Register a call (known from now on) and script its next connections; `then`:
        the plan of every connection after those."""
        with self._lock:
            self._plans.setdefault(call_id, deque()).extend(connections)
            if then is not None:
                self._then[call_id] = then
            self._ended.discard(call_id)

    def end(self, call_id: str, code: int = 1000, reason: str = "call ended") -> None:
        """The call is over: close its sockets; refuse it with 404 from now on (thread-safe)."""
        with self._lock:
            self._ended.add(call_id)
        self._run(self._close_call(call_id, code, reason))

    def close(self, call_id: str, code: int = 1000, reason: str = "") -> None:
        """Close the call's open sockets without ending the call (thread-safe)."""
        self._run(self._close_call(call_id, code, reason))

    def link(self, api: FakeOpenAI) -> None:
        """A `/hangup`, or a `/refer` answered 2xx, on `api` ends the call here."""
        api.on_request(self._call_control)

    def _call_control(self, request: Recorded, reply: Reply) -> None:
        if request.operation in ("hangup", "refer") and reply.status < 300:
            self.end(request.call_id)

    # --- what happened --------------------------------------------------------------------

    def events(self, call_id: str) -> list[Event]:
        """Every client event for the call, over all its connections."""
        with self._lock:
            return [event for log in self._logs.get(call_id, ()) for event in log.events]

    def types(self, call_id: str) -> list[str]:
        return [str(event.get("type")) for event in self.events(call_id)]

    def sidebands(self, call_id: str) -> list[SidebandLog]:
        with self._lock:
            return list(self._logs.get(call_id, ()))

    def is_open(self, call_id: str) -> bool:
        return any(log.open for log in self.sidebands(call_id))

    @property
    def refusals(self) -> list[Refusal]:
        with self._lock:
            return list(self._refusals)

    @property
    def errors(self) -> list[str]:
        """Scenario failures (a WaitFor that timed out, a step that raised)."""
        with self._lock:
            return list(self._errors)

    # --- addresses --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL would be: the sideband is `{base_url}/realtime?call_id=`."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- running ----------------------------------------------------------------------------

    async def start(self) -> FakeRealtime:
        self._loop = asyncio.get_running_loop()
        self._server = await serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def __aenter__(self) -> FakeRealtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> FakeRealtime:
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise
            ready.set()
            await self._stop.wait()
            await self.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop_thread(self) -> None:
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def _run(self, coro: Any) -> None:
        """Run a coroutine on the server's loop, from its thread or any other."""
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._track(loop.create_task(coro))
        else:
            asyncio.run_coroutine_threadsafe(coro, loop)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the protocol -----------------------------------------------------------------------

    def _target(self, path: str) -> tuple[bool, str | None]:
        """Whether the path is this API's sideband, and the call id it names."""
        parts = urlsplit(path)
        return parts.path == "/v1/realtime", parse_qs(parts.query).get("call_id", [None])[0]

    def _opening(self) -> Event:
        """The event the server sends first on every connection."""
        return session_created()

    def _answers(self, event: Event) -> bool:
        """Whether the server answers this client event on its own (see _respond)."""
        return event.get("type") == "response.create"

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        found, call_id = self._target(request.path)
        authorization = request.headers.get("Authorization")
        status = 0
        steps: Sequence[Step] = ()
        with self._lock:
            if not found:
                status = 404
            elif authorization != f"Bearer {self.api_key}":
                status = 401
            elif call_id is None or call_id not in self._plans or call_id in self._ended:
                status = 404
            else:
                queue = self._plans[call_id]
                plan = queue.popleft() if queue else self._then.get(call_id, ())
                if isinstance(plan, Refuse):
                    status = plan.status
                else:
                    steps = plan
            if status:
                self._refusals.append(Refusal(call_id, status, authorization))
            else:
                assert call_id is not None
                self._accepted[connection] = (call_id, steps, authorization)
        if status:
            message = {401: "Incorrect API key provided", 404: "Call not found"}.get(
                status, "refused"
            )
            return connection.respond(status, json.dumps({"error": {"message": message}}))
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        with self._lock:
            call_id, steps, authorization = self._accepted.pop(connection)
            log = SidebandLog(call_id, len(self._logs[call_id]), authorization)
            self._logs[call_id].append(log)
            self._open[call_id].add(connection)
        arrived = asyncio.Event()
        script: asyncio.Task[None] | None = None
        try:
            if self.session_created:
                await self._send(connection, log, self._opening())
            script = asyncio.create_task(self._play(connection, log, steps, arrived))
            async for message in connection:
                try:
                    event = json.loads(message)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    with self._lock:
                        log.garbage.append(str(message))
                    continue
                with self._lock:
                    log.events.append(event)
                arrived.set()
                if self.auto_respond and self._answers(event):
                    self._track(asyncio.create_task(self._respond(connection, log, event)))
        except ConnectionClosed:
            pass
        finally:
            if script is not None:
                script.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await script
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.wait_closed(), 5)
            protocol = connection.protocol
            with self._lock:
                self._open[call_id].discard(connection)
                log.open = False
                log.close_code = protocol.close_rcvd.code if protocol.close_rcvd else 1006
                log.closed_by_client = bool(protocol.close_rcvd_then_sent)

    async def _play(
        self,
        connection: ServerConnection,
        log: SidebandLog,
        steps: Sequence[Step],
        arrived: asyncio.Event,
    ) -> None:
        cursor = 0
        for step in steps:
            try:
                if isinstance(step, Send):
                    await self._send(connection, log, step.event)
                elif isinstance(step, SendRaw):
                    await connection.send(step.data)
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, WaitFor):
                    cursor = await self._wait_for(log, step, cursor, arrived)
                elif isinstance(step, Close):
                    await connection.close(step.code, step.reason)
                    return
                elif isinstance(step, Drop):
                    connection.transport.abort()
                    return
                elif isinstance(step, EndCall):
                    with self._lock:
                        self._ended.add(log.call_id)
                    await self._close_call(log.call_id, 1000, "call ended")
                    return
            except ConnectionClosed:
                return
            except TimeoutError:
                self._error(log, f"no {getattr(step, 'type', step)!s} from the client in time")
                return
            except Exception as exc:
                self._error(log, f"{step!r} failed: {type(exc).__name__}: {exc}")
                return

    async def _wait_for(
        self, log: SidebandLog, step: WaitFor, cursor: int, arrived: asyncio.Event
    ) -> int:
        async with asyncio.timeout(step.timeout):
            while True:
                with self._lock:
                    seen = log.events[cursor:]
                for offset, event in enumerate(seen):
                    if event.get("type") == step.type and (step.where is None or step.where(event)):
                        return cursor + offset + 1
                cursor += len(seen)
                arrived.clear()
                await arrived.wait()

    async def _respond(
        self, connection: ServerConnection, log: SidebandLog, request: Event
    ) -> None:
        first, last = self._replies(request)
        with contextlib.suppress(ConnectionClosed):
            await self._send(connection, log, first)
            if self.respond_delay:
                await asyncio.sleep(self.respond_delay)
            await self._send(connection, log, last)

    def _replies(self, request: Event) -> tuple[Event, Event]:
        """The two server events that answer a client event, `respond_delay` apart."""
        return response_events(request)

    async def _send(self, connection: ServerConnection, log: SidebandLog, event: Event) -> None:
        if "event_id" not in event:
            event = {**event, "event_id": _id("event")}
        await connection.send(json.dumps(event))
        with self._lock:
            log.sent.append(event)

    async def _close_call(self, call_id: str, code: int, reason: str) -> None:
        with self._lock:
            connections = list(self._open.get(call_id, ()))
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close(code, reason)

    def _error(self, log: SidebandLog, message: str) -> None:
        with self._lock:
            self._errors.append(f"{log.call_id} (connection {log.index}): {message}")
