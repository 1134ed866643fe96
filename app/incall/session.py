"""During an accepted call: greet, transfer when asked, end calls, enforce limits.

One `CallSession` task per call that needs it, owned by `InCallManager`. A session joins
the call's sideband WebSocket, answers the model's `transfer_call` / `end_call` tools and
keypad presses, runs the max-duration timer, and records everything in the call log. Its
failures stay inside it: they are logged and counted, never felt by other calls or by the
webhook path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from app.incall.dialects import (
    Busy,
    Dialect,
    Idle,
    Keypress,
    LineSaid,
    Speaking,
    ToolCall,
    ToolInterrupted,
    dialect_for,
)
from app.intake.events import Api
from app.openai.callcontrol import CallController, CallGone
from app.openai.sideband import Sideband, SidebandConnector, SidebandError, SidebandRefused
from app.ops.metrics import Metrics
from app.records.calllog import CallLog
from app.rules.ruleset import CallFeatures
from app.rules.tools import END_CALL_TOOL, TRANSFER_TOOL
from app.state.livecalls import LiveCall, LiveCallError, LiveCallRegistry

logger = logging.getLogger("switchboard.incall")

CONNECT_DELAYS = (0.2, 0.5, 1.0)
"""Pauses between sideband connection attempts: brief, the caller is on the line."""
SAY_TIMEOUT = 8.0
"""How long to wait for the agent to finish a line before transferring anyway."""
SEND_TIMEOUT = 2.0
"""Bound on one send on the sideband: one that stalls (a peer taking nothing in, until the
socket's keepalive gives up) must not hold a transfer or a hangup behind it."""
END_CALL_DELAY = 1.5
"""After `end_call`, let the goodbye play out before hanging up."""
API_DEADLINE = 5.0
REGISTRY_DEADLINE = 2.0
"""Bound on one live-call registry request: a call never waits on the registry for long."""
MAX_EVENTS_PER_CALL = 500
"""Events a session records for one call; past it they are counted, not written (a caller
pressing keys for an hour, a sideband dropping again and again, an error flood)."""
MAX_EVENT_DATA_CHARS = 4000
"""The JSON of one recorded event's data, at most: upstream errors and the model's tool
arguments are recorded as sent, and a frame may hold megabytes."""
MAX_HANDLED_TOOL_CALLS = 256
"""Tool call ids remembered per call to act once on each (the most recent ones)."""
HANGUP_TRIES = 3
"""Times the max-duration timer asks for its hang-up when the API fails (each one a full
call-control request with its own retries)."""


@dataclass(frozen=True, slots=True)
class RejoinPolicy:
    """How a sideband that dropped is rejoined: in a loop, with jittered exponential
    backoff between rejoins, and a cap on how many a call gets."""

    first_pause: float = 0.5
    max_pause: float = 10.0
    max_rejoins: int = 20
    """Rejoins in the whole call; then the call is left (`sideband_lost`) and only its
    max-duration timer still acts on it."""
    stable_seconds: float = 30.0
    """A connection that stayed up this long starts the backoff over."""

    def pause(self, streak: int) -> float:
        """Before the `streak`-th rejoin in a row (1, 2...): between half and all of
        first_pause * 2 ** (streak - 1), at most max_pause."""
        ceiling = min(self.max_pause, self.first_pause * 2 ** min(streak - 1, 32))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto


class RecentIds:
    """A set that keeps the `limit` most recent ids: bounded memory for dedupe."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)


class InCallManager:
    def __init__(
        self,
        *,
        connector: SidebandConnector,
        controller: CallController,
        call_log: CallLog,
        metrics: Metrics,
        connect_delays: Sequence[float] = CONNECT_DELAYS,
        end_call_delay: float = END_CALL_DELAY,
        clock: Callable[[], float] = time.monotonic,
        registry: LiveCallRegistry | None = None,
        wall_clock: Callable[[], float] = time.time,
        rejoin: RejoinPolicy | None = None,
        max_events: int = MAX_EVENTS_PER_CALL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        live_connector: SidebandConnector | None = None,
        live_controller: CallController | None = None,
    ) -> None:
        self.registry = registry
        """Where this replica records the calls it holds, so that another can carry them on."""
        self.wall_clock = wall_clock
        self.connector = connector
        self.controller = controller
        # GPT-Live calls: their own sideband path and call control (tests may share one).
        self.live_connector = live_connector if live_connector is not None else connector
        self.live_controller = live_controller if live_controller is not None else controller
        self.call_log = call_log
        self.metrics = metrics
        self.connect_delays = tuple(connect_delays)
        self.end_call_delay = end_call_delay
        self.clock = clock
        self.rejoin = rejoin or RejoinPolicy()
        self.max_events = max_events
        self.sleep = sleep
        """Pauses between rejoins (tests record them)."""
        self._sessions: dict[str, CallSession] = {}
        self._leaving: set[asyncio.Task[None]] = set()
        self._closing = False

    def connector_for(self, api: str) -> SidebandConnector:
        return self.live_connector if api == "live" else self.connector

    def controller_for(self, api: str) -> CallController:
        return self.live_controller if api == "live" else self.controller

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._sessions

    def start(self, call_id: str, features: CallFeatures, api: Api = "realtime") -> bool:
        """Begin in-call handling; False when shutting down or already running."""
        if self._closing or call_id in self._sessions:
            return False
        started = self.wall_clock()
        limit = features.max_duration
        live = LiveCall(
            call_id,
            api,
            started,
            features,
            deadline=None if limit is None else started + limit.seconds,
        )
        self._begin(CallSession(self, call_id, features, api=api), live, resumed=False)
        return True

    def resume(self, live: LiveCall) -> bool:
        """Carry on a call another replica held (its lease ran out): rejoin its sideband,
        run its max duration to the same deadline, no greeting again."""
        if self._closing or live.call_id in self._sessions:
            return False
        api: Api = "live" if live.api == "live" else "realtime"
        session = CallSession(self, live.call_id, live.features, resumed=live, api=api)
        self._begin(session, live, resumed=True)
        return True

    def _begin(self, session: CallSession, live: LiveCall, *, resumed: bool) -> None:
        session.live = live
        self._sessions[session.call_id] = session
        self.metrics.active_calls.inc()
        session.task = asyncio.create_task(
            self._run(session, live, resumed), name=f"call {session.call_id}"
        )

    def held(self) -> list[str]:
        """The calls this replica holds (for the registry's heartbeat)."""
        return [c for c, s in self._sessions.items() if not s.detached]

    def live_call(self, call_id: str) -> LiveCall | None:
        """The registry record of a call this replica holds."""
        session = self._sessions.get(call_id)
        return None if session is None or session.detached else session.live

    def lose(self, call_id: str, *, fenced: bool = False) -> None:
        """Another replica holds the call now (or may: `fenced`, this replica could not
        renew its lease in time): leave it as it is, without ending or releasing it. The
        sideband closes in the background: a heartbeat never waits on a socket."""
        session = self._sessions.get(call_id)
        if session is None or session.detached:
            return
        logger.warning(
            "the call's lease is lost: leaving it to another replica",
            extra={"event": "call_lost", "call_id": call_id, "fenced": fenced},
        )
        self.metrics.live_calls.labels("fenced" if fenced else "lost").inc()
        session.detached = True
        session.lost = True
        task = asyncio.create_task(session.detach())
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _run(self, session: CallSession, live: LiveCall, resumed: bool) -> None:
        registering: asyncio.Task[None] | None = None
        try:
            if resumed:
                self.metrics.live_calls.labels("taken_over").inc()
                self.call_log.status(session.call_id, "active")  # watched again
                self.call_log.event(
                    session.call_id, "resumed", {"replica": self._replica(), "from": live.owner}
                )
            elif self.registry is not None:
                # Alongside, not first: the greeting and the time limit never wait on it.
                registering = asyncio.create_task(
                    self._registry("register", self.registry.register(live), session.call_id)
                )
            await session.run()
        except Exception:  # a bug in one call must not touch the others
            logger.exception("in-call handling failed", extra={"call_id": session.call_id})
            session.end_reason = session.end_reason or "error"
        finally:
            self._sessions.pop(session.call_id, None)
            self.metrics.active_calls.dec()
            if session.events_dropped:
                self.call_log.event(
                    session.call_id, "events_dropped", {"count": session.events_dropped}
                )
            if not session.detached:
                self.metrics.call_duration.observe(self.clock() - session.started)
                self.call_log.ended(session.call_id, session.end_reason or "ended")
            if registering is not None:
                await asyncio.wait([registering])  # released after it is registered
            if self.registry is not None and not session.lost:
                # Shutting down: hand the call over now. Otherwise it is over for us.
                leave = self.registry.disown if session.handover else self.registry.release
                if session.handover:
                    self.metrics.live_calls.labels("handed_over").inc()
                await self._registry("release", leave(session.call_id), session.call_id)

    def _replica(self) -> str:
        return self.registry.replica if self.registry is not None else ""

    async def _registry(self, what: str, request: Coroutine[Any, Any, None], call_id: str) -> None:
        """A registry failure costs the call its takeover, never the call itself."""
        try:
            # timeout(), not wait_for(): Python 3.11's wait_for drops a cancellation (the
            # shutdown's) that comes as the registry answers.
            async with asyncio.timeout(REGISTRY_DEADLINE):
                await request
        except (LiveCallError, TimeoutError) as exc:
            self.metrics.live_calls.labels("registry_error").inc()
            logger.warning(
                f"live call registry: {what} failed",
                extra={"event": "livecalls_failed", "call_id": call_id, "error": str(exc)},
            )
        except Exception:  # a bug here must not take the call down with it
            self.metrics.live_calls.labels("registry_error").inc()
            logger.exception(f"live call registry: {what} failed", extra={"call_id": call_id})

    async def hangup(self, call_id: str) -> str | None:
        session = self._sessions.get(call_id)
        return None if session is None else await session.hangup("operator")

    async def transfer(self, call_id: str, destination: str) -> str:
        session = self._sessions.get(call_id)
        if session is None:
            raise LookupError(call_id)
        if destination not in session.features.transfers:
            raise ValueError(
                f"{destination!r} is not a destination of this call "
                f"({', '.join(sorted(session.features.transfers)) or 'none'})"
            )
        return await session.transfer(destination, reason="operator")

    async def shutdown(self) -> None:
        """Leave every call: close the sidebands cleanly; the calls carry on at OpenAI."""
        self._closing = True
        sessions = list(self._sessions.values())
        for session in sessions:
            session.handover = not session.detached
            session.detached = True
            await session.detach()
            # The call goes on at OpenAI, unwatched: "answered", not "active" (which says
            # a sideband sees its end). The next start ends it as unknown, unless another
            # replica takes it over (handover) and makes it "active" again.
            self.call_log.status(session.call_id, "answered")
            self.call_log.event(session.call_id, "detached", {"reason": "shutdown"})
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Transfers and hangups already sent finish before the HTTP client closes.
        actions = [a for s in sessions for a in s.actions]
        if actions:
            _, late = await asyncio.wait(actions, timeout=API_DEADLINE)
            for action in late:
                action.cancel()
            await asyncio.gather(*late, return_exceptions=True)


class CallSession:
    def __init__(
        self,
        manager: InCallManager,
        call_id: str,
        features: CallFeatures,
        *,
        resumed: LiveCall | None = None,
        api: Api = "realtime",
    ) -> None:
        self.manager = manager
        self.call_id = call_id
        self.dialect: Dialect = dialect_for(api)
        self._line: str | None = None
        """The tag of the line being said (its LineSaid ends the wait)."""
        self._last_speech = 0.0
        self.api = api
        self.features = features
        self.started = manager.clock()
        self.resumed = resumed is not None
        """Taken over from another replica: the greeting was said, the time limit runs on."""
        self.limit_seconds: float | None = (
            None if features.max_duration is None else features.max_duration.seconds
        )
        if resumed is not None:
            elapsed = max(0.0, manager.wall_clock() - resumed.started_at)
            self.started -= elapsed
            if resumed.deadline is not None and features.max_duration is not None:
                self.limit_seconds = max(0.0, resumed.deadline - manager.wall_clock())
        self.task: asyncio.Task[None] | None = None
        self.live: LiveCall | None = None
        """What the live-call registry holds for this call."""
        self.sideband: Sideband | None = None
        self.end_reason: str | None = None
        self.detached = False
        self.handover = False
        """Left at shutdown: another replica should take the call over now."""
        self.lost = False
        """Another replica took the call over: not ours to end or release."""
        self._gone = False
        self._handled_tools = RecentIds(MAX_HANDLED_TOOL_CALLS)
        self.events_recorded = 0
        self.events_dropped = 0
        """Events past the manager's `max_events`: counted, not written."""
        self._response_done = asyncio.Event()
        self._idle = asyncio.Event()
        """Set while the agent is not producing a response (a new one would be refused)."""
        self._idle.set()
        self._children: set[asyncio.Task[Any]] = set()
        self._actions: set[asyncio.Task[str]] = set()
        self._hung_up = False
        """Hung up, or a hangup in flight (set before its request: no transfer starts)."""
        self._acting = asyncio.Lock()
        """One call-control request (REFER, hangup) at a time: the next sees its outcome."""
        self._transferring = False
        self._transferred = False

    # --- the call's life ------------------------------------------------------------------

    async def run(self) -> None:
        features = self.features
        timer = self._spawn(self._max_duration()) if features.max_duration is not None else None
        try:
            try:
                await self._follow(timer)
            except Exception as exc:
                if timer is None or timer.done() or self.detached:
                    raise
                # A bug in the sideband's handling must not take the time limit with it.
                logger.exception(
                    "in-call handling failed: the call's time limit still holds",
                    extra={"call_id": self.call_id},
                )
                self._event("error", {"error": f"in-call handling failed: {exc!r}"[:500]})
                self.sideband, sideband = None, self.sideband
                if sideband is not None:
                    with contextlib.suppress(Exception):
                        await sideband.close()
                await asyncio.wait([timer])
                self.end_reason = self.end_reason or "error"
        finally:
            for child in list(self._children):
                child.cancel()
            if self._actions:  # OpenAI may close the sideband before it answers
                await asyncio.wait(list(self._actions), timeout=2 * API_DEADLINE)
            if self.sideband is not None:
                with contextlib.suppress(Exception):
                    await self.sideband.close()

    async def _follow(self, timer: asyncio.Task[None] | None) -> None:
        """Join the sideband and follow the call on it; with the sideband lost, the
        max-duration timer (a task of its own, acting over the REST API) still runs."""
        features = self.features
        if features.sideband:
            self.sideband = await self._connect()
        if self.detached:
            return  # shut down while joining: leave the call as it is
        if self.sideband is None and self.resumed and self._gone:
            self.end_reason = self.end_reason or "caller_gone"  # ended while unheld
            return
        if self.sideband is None:
            if features.refer_to is not None:
                # The line cannot be said: transfer the caller all the same.
                await self._refer(features.refer_to, destination=None, reason="route")
                return
            if timer is None:
                self.end_reason = "sideband_unavailable"
                self.manager.call_log.status(self.call_id, "answered")
                self.detached = True  # the end cannot be seen: do not invent one
                return
            await asyncio.wait([timer])  # ends at the limit, or early on a hangup
            return
        if not self.resumed:
            await self._greet()
        if features.refer_to is not None:
            self._spawn(self._announce_and_refer(features.refer_to))
        await self._listen()
        if self.end_reason == "sideband_lost" and timer is not None and not timer.done():
            # The call may well go on without us: its time limit still holds, and ends it.
            self.end_reason = None
            await asyncio.wait([timer])
            self.end_reason = self.end_reason or "sideband_lost"

    async def _connect(self) -> Sideband | None:
        metrics = self.manager.metrics
        attempts = (0.0, *self.manager.connect_delays)
        last = "no attempt"
        for pause in attempts:
            if pause:
                await asyncio.sleep(pause)
            if self.detached:
                return None
            try:
                sideband = await self.manager.connector_for(self.api).connect(self.call_id)
            except SidebandRefused as exc:
                last = str(exc)
                if exc.status == 404:
                    self._gone = True
                    break  # the call is gone: nothing to retry
            except SidebandError as exc:
                last = str(exc)
            else:
                self._event("sideband_connected")
                return sideband
        metrics.sideband_failures.labels("connect").inc()
        self._event("sideband_failed", {"error": last})
        logger.warning(
            "sideband unavailable",
            extra={"event": "sideband_failed", "call_id": self.call_id, "error": last},
        )
        return None

    async def _listen(self) -> None:
        """Follow the sideband until the call ends; rejoin it when it drops (a loop, with
        backoff, at most `RejoinPolicy.max_rejoins` times in the call)."""
        policy = self.manager.rejoin
        rejoins = streak = 0
        while True:
            sideband = self.sideband
            assert sideband is not None
            joined = self.manager.clock()
            try:
                async for event in sideband.events():
                    self._dispatch(event)
                return  # closed normally: the call ended
            except SidebandError as exc:
                if self.detached:
                    return
                self.manager.metrics.sideband_failures.labels("dropped").inc()
                self._event("sideband_dropped", {"error": str(exc)})
            with contextlib.suppress(Exception):
                await sideband.close()
            if self._actions:
                # A hangup or REFER under way decides: one that fails leaves the call on,
                # to rejoin (and the timer, a child of this session, to try again).
                await asyncio.wait(list(self._actions))
            if self._hung_up or self._transferred:
                return  # the call is over for us: nothing to rejoin
            if rejoins >= policy.max_rejoins:
                self._event("sideband_given_up", {"rejoins": rejoins})
                logger.warning(
                    "sideband keeps dropping: left",
                    extra={"event": "sideband_given_up", "call_id": self.call_id},
                )
                self.end_reason = self.end_reason or "sideband_lost"
                return
            # Try to rejoin: the call may well go on without us. A connection that drops at
            # once is not rejoined at once: the pauses grow, so a broken sideband cannot spin.
            streak = 1 if self.manager.clock() - joined >= policy.stable_seconds else streak + 1
            rejoins += 1
            await self.manager.sleep(policy.pause(streak))
            if self.detached:
                return
            rejoined = await self._connect()
            if rejoined is None:
                # Refused with 404: the call ended while the sideband was away (nothing
                # to wait for, nor to hang up at its limit); else it may go on without us.
                self.end_reason = self.end_reason or (
                    "caller_gone" if self._gone else "sideband_lost"
                )
                return
            self.sideband = rejoined

    def _dispatch(self, event: dict[str, Any]) -> None:
        for signal in self.dialect.read(event):
            if isinstance(signal, Busy):
                self._idle.clear()
            elif isinstance(signal, Idle):
                self._idle.set()
            elif isinstance(signal, LineSaid):
                if signal.line is not None and signal.line == self._line:
                    self._response_done.set()  # our line, not another response finishing
            elif isinstance(signal, Speaking):
                self._last_speech = self.manager.clock()
            elif isinstance(signal, ToolCall):
                self._tool_call(signal)
            elif isinstance(signal, ToolInterrupted):
                self._event("tool_call_interrupted", signal.detail)
            elif isinstance(signal, Keypress):
                self._spawn(self._dtmf(signal.digit))
            else:
                self._event("error", signal.detail)

    def _event(
        self, kind: str, data: dict[str, Any] | None = None, *, always: bool = False
    ) -> None:
        """Record an event of this call, up to the manager's `max_events`; `always`: what
        ended or moved the call (few by construction), written past the cap too."""
        if always:
            self.manager.call_log.event(self.call_id, kind, _bounded(data))
            return
        limit = self.manager.max_events
        if self.events_recorded >= limit:
            self.events_dropped += 1
            return
        self.events_recorded += 1
        if self.events_recorded == limit:
            self.manager.call_log.event(self.call_id, "events_capped", {"limit": limit})
            self.events_dropped += 1  # this one is not written, the cap is
            return
        self.manager.call_log.event(self.call_id, kind, _bounded(data))

    # --- what the agent says ----------------------------------------------------------------

    async def _greet(self) -> None:
        if not self.features.greeting:
            return
        await self._send(self.dialect.greeting(self.features.greeting_instructions))
        self._event("greeting")

    async def _say(self, instructions: str) -> None:
        """Have the agent say a short line, and wait (bounded) until it has."""
        # While a response is running (the one that called a tool) a new one is refused.
        with contextlib.suppress(TimeoutError):
            # timeout(), not wait_for(): Python 3.11's wait_for drops a cancellation (the
            # call ending) that comes as the agent falls idle.
            async with asyncio.timeout(SAY_TIMEOUT):
                await self._idle.wait()
        self._response_done.clear()
        event, self._line = self.dialect.line(instructions)
        if await self._send(event):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAY_TIMEOUT):
                    await self._response_done.wait()
                    await self._settled()

    async def _settled(self) -> None:
        """Until the agent's speech has been quiet for the dialect's settle time (Live takes
        a line before it is spoken; its transcript fragments show the speech going out)."""
        settle = self.dialect.settle_seconds
        if not settle:
            return
        self._last_speech = max(self._last_speech, self.manager.clock())
        # A timestamp the reader moves on, not a state to wait for: sleep until it is old.
        while (quiet := self.manager.clock() - self._last_speech) < settle:  # noqa: ASYNC110
            await asyncio.sleep(settle - quiet)

    async def _send(self, event: dict[str, Any]) -> bool:
        if self.sideband is None:
            return False
        try:
            # A single frame: cancelling it while it drains leaves the connection sound.
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.sideband.send(event)
        except (SidebandError, TimeoutError):
            return False
        return True

    # --- tools, keys and timers ---------------------------------------------------------------

    def _tool_call(self, call: ToolCall) -> None:
        tool_call, name = call.call_id, call.name
        if tool_call in self._handled_tools:
            return  # a call seen again (a rejoined sideband replays it): act once
        self._handled_tools.add(tool_call)
        raw = call.arguments
        try:
            arguments = json.loads(raw) if isinstance(raw, str) and raw else {}
        except (ValueError, RecursionError):  # the model's text, nested past the stack
            arguments = None
        self._event("tool_call", {"name": name, "arguments": arguments})
        if name == TRANSFER_TOOL and self.features.transfers:
            self._spawn(self._transfer_tool(tool_call, arguments))
        elif name == END_CALL_TOOL and self.features.end_call:
            self._spawn(self._end_call_tool(tool_call))

    async def _tool_output(self, tool_call: str, output: dict[str, Any], *, respond: bool) -> None:
        for event in self.dialect.tool_output(tool_call, output, respond=respond):
            await self._send(event)

    async def _transfer_tool(self, tool_call: str, arguments: Any) -> None:
        name = arguments.get("destination") if isinstance(arguments, dict) else None
        if not isinstance(name, str) or name not in self.features.transfers:
            known = ", ".join(sorted(self.features.transfers))
            await self._tool_output(
                tool_call,
                {"error": f"unknown destination {name!r}: use one of {known}"},
                respond=True,
            )
            self._transfer_recorded(str(name), "rejected_destination", "tool")
            return
        blocked = self._transfer_blocked()
        if blocked is not None:
            # The model must not be told it is transferring when it is not.
            await self._tool_output(tool_call, {"error": _BLOCKED[blocked]}, respond=False)
            self._event("transfer", {"destination": name, "outcome": blocked, "by": "tool"})
            return
        self._transferring = True  # claimed before the first await: no other may start
        await self._transfer_claimed(
            name,
            reason="tool",
            first=self._tool_output(
                tool_call, {"status": "transferring", "destination": name}, respond=False
            ),
        )

    async def _end_call_tool(self, tool_call: str) -> None:
        if self._transferring or self._transferred:
            await self._tool_output(
                tool_call, {"error": _BLOCKED["already_transferring"]}, respond=False
            )
            return
        await self._tool_output(tool_call, {"status": "ending the call"}, respond=False)
        await asyncio.sleep(self.manager.end_call_delay)
        await self.hangup("end_call")

    async def _dtmf(self, digit: str) -> None:
        self._event("dtmf", {"digit": digit})
        if digit not in self.features.dtmf:
            return
        destination = self.features.dtmf[digit]
        if destination is None:
            await self.hangup("dtmf")
        else:
            await self.transfer(destination, reason="dtmf")

    async def _max_duration(self) -> None:
        limit = self.features.max_duration
        assert limit is not None and self.limit_seconds is not None
        seconds = self.limit_seconds  # less than the limit for a call taken over
        if limit.warning_before and seconds > limit.warning_before:
            await asyncio.sleep(seconds - limit.warning_before)
            if limit.warning:
                # Not awaited: a sideband that takes nothing in must not hold the hangup.
                self._spawn(self._warn(limit.warning))
            await asyncio.sleep(limit.warning_before)
        else:
            await asyncio.sleep(seconds)
        # Over the REST API, sideband or not; asked again if the API fails.
        for attempt in range(HANGUP_TRIES):
            if attempt:
                await asyncio.sleep(self.manager.rejoin.pause(attempt))
            if await self.hangup("max_duration") != "failed":
                return

    async def _warn(self, warning: str) -> None:
        if await self._send(self.dialect.warning(warning)):
            self._event("warning")

    async def _announce_and_refer(self, target: str) -> None:
        if self.features.announce and not self.resumed:
            await self._say(self.features.announce)
        await self._refer(target, destination=None, reason="route")

    # --- acting on the call ---------------------------------------------------------------------

    def _transfer_blocked(self) -> str | None:
        """Why a transfer cannot start now, or None.

        Keys pressed twice, the model and a keypress, an operator: one REFER at a time,
        and none once the caller has left for a transfer or a hangup."""
        if self._transferring:
            return "already_transferring"
        if self._transferred or self._hung_up:
            return "call_left"
        return None

    async def transfer(self, destination: str, *, reason: str) -> str:
        blocked = self._transfer_blocked()
        if blocked is not None:
            return blocked
        self._transferring = True
        return await self._transfer_claimed(destination, reason=reason)

    async def _transfer_claimed(
        self,
        destination: str,
        *,
        reason: str,
        first: Coroutine[Any, Any, None] | None = None,
    ) -> str:
        """The transfer, once `_transferring` is set (by the caller, with no await between
        the check and the claim); `first` runs before it (the tool's answer)."""
        try:
            if first is not None:
                await first
            if self.features.transfer_message:
                await self._say(self.features.transfer_message)
            return await self._refer(
                self.features.transfers[destination].uri, destination=destination, reason=reason
            )
        finally:
            self._transferring = False

    async def _refer(self, uri: str, *, destination: str | None, reason: str) -> str:
        return await self._settle(self._refer_now(uri, destination=destination, reason=reason))

    async def _refer_now(self, uri: str, *, destination: str | None, reason: str) -> str:
        controller = self.manager.controller_for(self.api)
        async with self._acting:
            if self._hung_up:  # while the transfer line was said: the call is over
                data = {"destination": destination or uri, "outcome": "call_left", "by": reason}
                self._event("transfer", data)
                return "call_left"
            try:
                await controller.refer(self.call_id, uri, self.manager.clock() + API_DEADLINE)
                outcome = "referred"
                self._transferred = True  # before the lock is let go
            except CallGone:
                outcome = "caller_gone"
            except Exception as exc:  # recorded as failed; also a client closed at shutdown
                outcome = "failed"
                self._event("error", {"error": str(exc)})
        self._transfer_recorded(destination or uri, outcome, reason, uri=uri)
        if outcome == "referred":
            self.end_reason = self.end_reason or "transferred"
        elif outcome == "failed" and reason == "route":
            await self.hangup("refer_failed")  # a bare transfer session must not linger
        return outcome

    def _transfer_recorded(
        self, destination: str, outcome: str, reason: str, *, uri: str | None = None
    ) -> None:
        self.manager.metrics.transfers.labels(outcome).inc()
        data = {"destination": destination, "outcome": outcome, "by": reason}
        if uri is not None:
            data["uri"] = uri
        self._event("transfer", data, always=outcome == "referred")

    async def hangup(self, reason: str) -> str:
        return await self._settle(self._hangup(reason))

    async def _hangup(self, reason: str) -> str:
        # After the REFER or hangup in flight: its outcome decides (one that failed leaves
        # this hangup to be tried, e.g. the time limit's).
        async with self._acting:
            if self._hung_up:
                return "already_hung_up"
            if self._transferred:
                return "call_left"  # transferred away: not ours to hang up any more
            self._hung_up = True
            try:
                controller = self.manager.controller_for(self.api)
                await controller.hangup(self.call_id, self.manager.clock() + API_DEADLINE)
                outcome = "hung_up"
            except CallGone:
                outcome = "caller_gone"
            except Exception as exc:  # recorded as failed; also a client closed at shutdown
                outcome = "failed"
                self._hung_up = False
                self._event("error", {"error": str(exc)})
        self.manager.metrics.hangups.labels(reason).inc()
        self._event("hangup", {"reason": reason, "outcome": outcome}, always=outcome != "failed")
        if outcome != "failed":
            self.end_reason = self.end_reason or reason
            if self.sideband is None and self.task is not None:
                # Nothing will tell us the call ended: it did, now.
                for child in list(self._children):
                    if child is not asyncio.current_task():
                        child.cancel()
        return outcome

    async def detach(self) -> None:
        for child in list(self._children):
            child.cancel()
        if self.sideband is not None:
            with contextlib.suppress(Exception):
                await self.sideband.close()

    async def _settle(self, action: Coroutine[Any, Any, str]) -> str:
        """Carry a hangup or transfer through to its record even if the call ends meanwhile:
        not cancelled with the session's tasks, and waited for before the call is ended."""
        task = asyncio.create_task(action)
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)
        return await asyncio.shield(task)

    @property
    def actions(self) -> tuple[asyncio.Task[str], ...]:
        return tuple(self._actions)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._children.add(task)
        task.add_done_callback(self._children.discard)
        return task


def _bounded(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """`data`, or its JSON cut to MAX_EVENT_DATA_CHARS when longer (or nested too deep)."""
    if data is None:
        return None
    try:
        text = json.dumps(data, default=str, ensure_ascii=False)
    except (ValueError, RecursionError):
        return {"truncated": "(not encodable)"}
    return data if len(text) <= MAX_EVENT_DATA_CHARS else {"truncated": text[:MAX_EVENT_DATA_CHARS]}


_BLOCKED = {
    "already_transferring": "a transfer is already in progress",
    "call_left": "the call is already ending (transferred or hung up)",
}
"""What the model is told when its transfer cannot start."""
