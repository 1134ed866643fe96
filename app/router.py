"""One incoming call: identify -> decide -> act -> answer, exactly once.

The webhook answer contract (docs/webhooks.md):
- 200 when the action succeeded, or can never succeed (the caller is gone, the API
  refused the request for good): a redelivery would not help.
- 503 when it failed in a way that a redelivery may fix (API 5xx/429, timeout, network):
  OpenAI retries, and the retry acts again.

One handler per call across the two APIs (docs/webhooks.md): a call may be announced by a
Realtime and a Live event. The route decides which API answers; the first event of that API
takes the call's SIP dialog (app.state.handlers) and acts, the other is acknowledged without
acting. An event whose API the route did not choose waits (bounded) for the chosen API's
event when that event is expected, and acts itself (a reject, or a fallback it can carry)
only when it does not come.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from app.intake.events import APIS, Api, IncomingCall
from app.openai.callcontrol import CallControlError, CallController, CallGone
from app.ops.later import after_answer, when_answered
from app.ops.logs import mask
from app.ops.metrics import Metrics
from app.records.calllog import CallEvent, CallLog, CallRecord, CallStatus
from app.rules import Accept, Action, Decision, Refer, Reject, RuleSet, caller_key
from app.rules.ruleset import CallFeatures
from app.sip.dialog import dialog_key
from app.sip.identity import CallIdentity, Headers, IdentityPolicy, identify
from app.state.claims import Answer, ClaimLost, ClaimStore, Plan, StateUnavailable, Ticket
from app.state.handlers import PREFIX, DialogHandlers
from app.state.ratelimit import RateLimiter, RateLimits, Twin

logger = logging.getLogger("switchboard.call")

# What a claim in phase `acting` keeps of its delivery, replayed if its process dies.
_CONTEXT_FIELDS = frozenset(("route", "action", "rules_version"))

# Time allowed to hang up a call whose transfer failed, even past the call's deadline.
CLEANUP_SECONDS = 2.0
FINISH_GRACE_SECONDS = 0.5
"""Time the state store gets to keep the answer of a call acted on (or to release a claim
whose `acting` was attempted), even past the call's deadline: without it a redelivery
would find the claim in `acting` and answer 'uncertain' (docs/operations.md,
"Exactly-once state")."""
PENDING = "pending"
"""A call's outcome in its record between the decision and the end of the action."""
# The status a call gets when the route's API cannot answer it (its event never came).
NO_HANDLER_STATUS = 503
OTHER_API = "other_api"
"""The outcome of an event acknowledged because the other API's event handles its call."""
UNCERTAIN_ERROR = (
    "an earlier delivery of this call stopped (the process died) after a request may have "
    "been sent: not sent again"
)
STOPPED_ERROR = (
    "an earlier delivery of this call stopped (an error, or the process stopping) after a "
    "request may have been sent: not sent again"
)


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    retryable: bool = False
    error: str | None = None
    uncertain: bool = False
    """The failed request may still have taken effect (it timed out)."""
    live: bool = False
    """Switchboard stays on the call (in-call features over the sideband)."""


@dataclass(frozen=True, slots=True)
class Pairing:
    """Which APIs' incoming-call events the project subscribes to, and how long an event the
    route did not choose waits for the chosen API's event (docs/webhooks.md)."""

    expected: frozenset[Api] = frozenset(APIS)
    wait_seconds: float = 1.0

    @property
    def untied(self) -> Api:
        """The one API through which a call with nothing to tie its events (an INVITE
        without headers) takes an action either API could (a reject): never both."""
        return "realtime" if "realtime" in self.expected else "live"


@dataclass(frozen=True, slots=True)
class _Decided:
    """A call's decision, made before its claim (rate limits aside)."""

    seconds: float
    """Parsing and matching (switchboard_decision_latency_seconds, `decide_ms`)."""
    identity: CallIdentity
    dialog: str | None
    decision: Decision


class _Once:
    """`fn(*args)` at the first call, nothing at the next ones."""

    __slots__ = ("_args", "_fn")

    def __init__(self, fn: Callable[..., None], *args: Any) -> None:
        self._fn: Callable[..., None] | None = fn
        self._args = args

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn(*self._args)


def _context(call: IncomingCall, decision: Decision) -> dict[str, Any]:
    """The answer's body as decided: also what `acting` keeps of the delivery."""
    return {
        "call_id": call.call_id,
        "api": call.api,
        "route": decision.route,
        "action": decision.action.kind,
        "rules_version": decision.rules_version,
    }


def _uncertain(call: IncomingCall, context: Mapping[str, Any], error: str) -> Answer:
    """The answer kept for a call whose request may have taken effect: never sent again."""
    body: dict[str, Any] = {"call_id": call.call_id, "api": call.api}
    body.update((k, v) for k, v in context.items() if k in _CONTEXT_FIELDS)
    body.update(outcome="uncertain", error=error)
    return Answer(200, body)


def action_api(action: Action) -> Api | None:
    """The API an action must go through: its session's; None for a reject (either can)."""
    return None if isinstance(action, Reject) else action.api


class InCallStarter(Protocol):
    def start(self, call_id: str, features: CallFeatures, api: Api = "realtime") -> bool: ...


class CallRouter:
    def __init__(
        self,
        *,
        controller: CallController,
        store: ClaimStore,
        live_controller: CallController | None = None,
        pairing: Pairing | None = None,
        metrics: Metrics,
        policy: IdentityPolicy,
        deadline_seconds: float,
        dry_run: bool,
        log_numbers: bool = False,
        limiter: RateLimits | None = None,
        call_log: CallLog | None = None,
        incall: InCallStarter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call_log = call_log
        self._incall = incall
        # Not `limiter or ...`: an empty RateLimiter has len() 0 and is falsy.
        self._limiter = limiter if limiter is not None else RateLimiter()
        # One controller per API; a test's fake may serve both.
        self._controllers: dict[Api, CallController] = {
            "realtime": controller,
            "live": live_controller if live_controller is not None else controller,
        }
        self._pairing = pairing or Pairing()
        self._handlers = DialogHandlers(store)
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._deadline_seconds = deadline_seconds
        self._dry_run = dry_run
        self._log_numbers = log_numbers
        self._clock = clock

    async def handle(self, call: IncomingCall, rules: RuleSet) -> Answer:
        received = self._clock()
        deadline = received + self._deadline_seconds
        # The same deadline for the state store (time.monotonic(); self._clock may be a
        # test's): no store call may wait past it.
        until = time.monotonic() + self._deadline_seconds
        keys = (f"webhook:{call.webhook_id}", f"call:{call.call_id}")
        # Decided before the claim (CPU only, no store): the claim can then carry what
        # follows it (the dialog taken, `acting`) in one trip of the store.
        decided = self._decide(call, rules)
        plan = self._plan(call, decided)
        try:
            if plan is None:
                claim = await self._store.claim(keys, until)
            else:
                claim = await self._store.claim_acting(keys, until, plan)
        except StateUnavailable as exc:
            return self._unavailable(call, exc)
        if isinstance(claim, Answer):
            self._metrics.duplicates.inc()
            self._metrics.webhook_result("duplicate").inc()
            logger.info(
                "duplicate delivery",
                extra={
                    "event": "duplicate",
                    "call_id": call.call_id,
                    "webhook_id": call.webhook_id,
                    "status": claim.status_code,
                },
            )
            return Answer(claim.status_code, {**claim.body, "duplicate": True})
        answer = Answer(503, {"call_id": call.call_id, "error": "internal error"})
        try:
            if claim.orphan is not None:
                answer, remember, uncertain = self._orphaned(call, claim.orphan), True, False
            else:
                answer, remember, uncertain = await self._route(
                    call, decided, claim, deadline, until
                )
        except (StateUnavailable, ClaimLost) as exc:
            # Nothing was sent: the claim could not be moved to `acting`.
            answer, remember, uncertain = self._unavailable(call, exc), False, False
        except BaseException:
            remember = uncertain = False
            if claim.requested:
                # Stopped once a request may have been sent (a defect of ours, a cancellation
                # as the process stops): kept as a crash leaves it, 'uncertain', so that no
                # redelivery sends it again. Freeing the claim let one send it twice.
                answer, remember, uncertain = self._stopped(call, decided.decision), True, True
            await self._finish(call, claim, answer, deadline, until, remember, uncertain)
            raise
        if remember:
            # Kept once the answer is sent (app.ops.later): the webhook's answer does not
            # wait for a commit or a round trip. A duplicate in this process has the answer
            # now (the ticket's result), one in another process finds the claim held and
            # waits for it; a crash before it is kept leaves the claim as a crash before the
            # answer would ('uncertain' once `acting` is written): never acted on twice.
            if claim.result is not None and not claim.result.done():
                claim.result.set_result(answer)
            await when_answered(
                self._finish, call, claim, answer, deadline, until, remember, uncertain
            )
        else:
            # Freed (a redelivery may act again) before the answer that invites it.
            await self._finish(call, claim, answer, deadline, until, remember, uncertain)
        return answer

    async def _finish(
        self,
        call: IncomingCall,
        claim: Ticket,
        answer: Answer,
        deadline: float,
        until: float,
        remember: bool,
        uncertain: bool,
    ) -> None:
        """The claim's last write: the answer kept, or the keys freed. Once `acting` was
        written it gets FINISH_GRACE_SECONDS even past the call's deadline."""
        stop = self._until(deadline, until)
        if claim.sent:
            stop = max(stop, time.monotonic() + FINISH_GRACE_SECONDS)
        try:
            await self._store.finish(
                claim, answer, remember=remember, uncertain=uncertain, deadline=stop
            )
        except StateUnavailable as exc:
            # Kept by the store to write when it can (Redis back, SQLite's file free).
            logger.error(
                "answer not stored in the state store",
                extra={
                    "event": "state_unavailable",
                    "call_id": call.call_id,
                    "error": str(exc),
                },
            )

    def _until(self, deadline: float, until: float) -> float:
        """The call's deadline for a store call: `until`, or sooner when self._clock (a
        test's) says that less time is left."""
        return min(until, time.monotonic() + max(0.0, deadline - self._clock()))

    def _unavailable(self, call: IncomingCall, exc: Exception) -> Answer:
        """No claim, no action: 503, and OpenAI redelivers."""
        self._metrics.webhook_result("retry").inc()
        logger.warning(
            "webhook not acted on: exactly-once state unavailable",
            extra={"event": "state_unavailable", "call_id": call.call_id, "error": str(exc)},
        )
        return Answer(503, {"call_id": call.call_id, "error": f"state store unavailable: {exc}"})

    def _stopped(self, call: IncomingCall, decision: Decision) -> Answer:
        """This delivery stopped after writing `acting`: answered for its redeliveries as
        an orphan of it would be (its answer first: the record and log lines may fail)."""
        answer = _uncertain(call, _context(call, decision), STOPPED_ERROR)
        try:
            self._orphaned(call, answer.body, STOPPED_ERROR)
        except Exception:
            logger.exception("uncertain call not recorded", extra={"call_id": call.call_id})
        return answer

    def _orphaned(
        self, call: IncomingCall, context: Mapping[str, Any], error: str = UNCERTAIN_ERROR
    ) -> Answer:
        """A delivery of this call was acting when its process died: its request may have
        taken effect (the call may be answered), so nothing is sent again; 200, since a
        redelivery could not know more."""
        answer = _uncertain(call, context, error)
        body = answer.body
        route, action = str(body.get("route", "")), str(body.get("action", ""))
        self._metrics.outcome(call.api, action, "uncertain").inc()
        self._metrics.webhook_result("routed").inc()
        logger.warning(
            "call routed",
            extra={
                "event": "call",
                "call_id": call.call_id,
                "webhook_id": call.webhook_id,
                "route": route,
                "action": action,
                "outcome": "uncertain",
                "error": error,
            },
        )
        if self._call_log is not None:
            now = time.time()
            result = {"outcome": "uncertain", "error": error}
            self._call_log.started(
                CallRecord(
                    call_id=call.call_id,
                    started_at=now,
                    route=route,
                    action=action,
                    outcome="uncertain",
                    status="ended",
                    caller=None,
                    called=None,
                    rules_version=str(body.get("rules_version", "")),
                    ended_at=now,
                    end_reason="uncertain",
                    api=call.api,
                    events=(CallEvent(now, "uncertain", result),),
                )
            )
        return answer

    def _decide(self, call: IncomingCall, rules: RuleSet) -> _Decided:
        started = time.perf_counter()
        headers = Headers(call.sip_headers)
        identity = identify(headers, self._policy, call.media_security)
        # Both events of one call decide alike: splits and rate limits key on the dialog.
        dialog = dialog_key(headers)
        # Without one (no headers) nothing ties the two events, so nothing of this event's
        # own may choose: an arm keyed on the API's id sent a cross-API split's two events
        # to different arms (accepted through both APIs, or through neither).
        untied = call.call_id if not self._pairing.expected - {call.api} else ""
        decision = rules.decide(identity, datetime.now(UTC), dialog or untied)
        seconds = time.perf_counter() - started
        return _Decided(seconds, identity, dialog, decision)

    def _plan(self, call: IncomingCall, decided: _Decided) -> Plan | None:
        """What the claim can carry: the dialog taken and `acting`, when this event is
        to act on a decision final before the claim. None (claim alone, then each step
        in turn): a rate limit (counted after the claim), or a route of the other API."""
        decision, dialog = decided.decision, decided.dialog
        if decision.rate_limit is not None or self._wanted(call, decision, dialog) != call.api:
            return None
        take = dialog is not None and bool(self._pairing.expected - {call.api})
        return Plan(
            api=call.api,
            dialog=PREFIX + dialog if take and dialog is not None else None,
            context=None if self._dry_run else _context(call, decision),
        )

    async def _route(
        self, call: IncomingCall, made: _Decided, ticket: Ticket, deadline: float, until: float
    ) -> tuple[Answer, bool, bool]:
        """(answer, remember it, a request may have taken effect). `until`: the deadline
        on time.monotonic() for the state store's calls."""
        identity, dialog, decide_seconds = made.identity, made.dialog, made.seconds
        decision = await self._limit(
            call, made.decision, identity, dialog, self._until(deadline, until)
        )
        handler: Api | None
        if ticket.acting or ticket.handler == call.api:
            handler = call.api  # taken with the claim (claim_acting)
            if dialog is not None:
                self._handlers.taken(dialog)
        elif ticket.handler is not None:
            handler = ticket.handler if ticket.handler in APIS else None
        else:
            handler = await self._handler(call, decision, dialog, deadline, until)
        if handler != call.api:
            return self._acknowledge(call, decision, handler), handler is not None, False
        if action_api(decision.action) not in (None, call.api):
            decision = self._unanswerable(call, decision)
        decided = time.perf_counter()
        body = _context(call, decision)
        numbers = self._numbers(identity)  # masked once, for the log line and the record
        if not self._dry_run and not ticket.acting:
            # Written before the first request: a crash from here on is "uncertain". Not
            # written by the call's deadline: nothing is sent (503, OpenAI redelivers).
            # Set first: an `acting` that timed out may still land, and the claim's release
            # then needs its grace, or a redelivery would find it `acting`.
            ticket.sent = True
            await self._store.acting(ticket, body, deadline=self._until(deadline, until))
        # Recorded as the action starts, once its request is on its way (the action's
        # first wait: the loop runs what was scheduled): building and queueing the record
        # no longer delay the request. A crash in the middle still leaves the call in the
        # log (`active`, ended as unknown at the next start): the record was only ever
        # queued before the request, never written.
        pending = _Once(self._record, call, decision, None, numbers)
        asyncio.get_running_loop().call_soon(pending)
        ticket.requested = not self._dry_run
        try:
            outcome = await self._act(call, decision, deadline, ticket)
        finally:
            # Not run yet (the action never waited, or raised before it did): now, before
            # the outcome's record or the one an interrupted delivery leaves (handle()).
            pending()
        acted = time.perf_counter()

        body["outcome"] = outcome.name
        for key, value in (
            ("arm", decision.arm),
            ("note", decision.note),
            ("error", outcome.error),
        ):
            if value:
                body[key] = value
        # Once the webhook's answer is sent (app.ops.later): nothing here decides it.
        after_answer(self._count, call, decision, outcome, decide_seconds)
        after_answer(
            self._log, call, identity, decision, outcome, numbers, decide_seconds, acted - decided
        )
        after_answer(self._record, call, decision, outcome, numbers)
        status = 503 if outcome.retryable else 200
        return Answer(status, body), not outcome.retryable, outcome.uncertain

    def _count(
        self, call: IncomingCall, decision: Decision, outcome: Outcome, decide_seconds: float
    ) -> None:
        """The metrics of a call acted on (or dry-run)."""
        metrics = self._metrics
        metrics.decision_latency.observe(decide_seconds)
        metrics.decision(decision.route, decision.action.kind).inc()
        if decision.arm is not None:
            metrics.split_arm(decision.route, decision.arm).inc()
        metrics.incoming_call(call.api, "handled").inc()
        metrics.outcome(call.api, decision.action.kind, outcome.name).inc()
        metrics.webhook_result("retry" if outcome.retryable else "routed").inc()

    def _record(
        self,
        call: IncomingCall,
        decision: Decision,
        outcome: Outcome | None,
        numbers: tuple[str | None, str | None],
    ) -> None:
        """The call's record as decided (`outcome` None: about to act), then as acted on.
        The second write replaces the first's outcome and status, and adds its event."""
        if self._call_log is None:
            return
        now = time.time()
        status: CallStatus
        if outcome is None:
            decided = {"route": decision.route, "action": decision.action.kind, "api": call.api}
            decided.update((k, v) for k, v in (("arm", decision.arm), ("note", decision.note)) if v)
            name, status, event = PENDING, "active", CallEvent(now, "decision", decided)
        else:
            answered = outcome.name in ("accepted", "fallback_accepted")
            status = "active" if outcome.live else ("answered" if answered else "ended")
            # A retryable failure ends the record too: a redelivery writes it again, and
            # without one the call is over (OpenAI gave up on it).
            result = {"outcome": outcome.name}
            if outcome.error:
                result["error"] = outcome.error
            name, event = outcome.name, CallEvent(now, outcome.name, result)
        caller, called = numbers
        self._call_log.started(
            CallRecord(
                call_id=call.call_id,
                started_at=now,
                route=decision.route,
                action=decision.action.kind,
                outcome=name,
                status=status,
                caller=caller,
                called=called,
                rules_version=decision.rules_version,
                ended_at=now if status == "ended" else None,
                end_reason=name if status == "ended" else None,
                api=call.api,
                events=(event,),
            )
        )

    def _numbers(self, identity: CallIdentity) -> tuple[str | None, str | None]:
        """Caller and called as logs may show them (masked unless configured)."""
        reveal = self._log_numbers
        caller, called = identity.caller, identity.called
        return (
            mask(caller.number_key or caller.user, reveal=reveal) if caller else None,
            mask(called.number_key or called.user, reveal=reveal) if called else None,
        )

    async def _limit(
        self,
        call: IncomingCall,
        decision: Decision,
        identity: CallIdentity,
        dialog: str | None,
        deadline: float,
    ) -> Decision:
        limit = decision.rate_limit
        if limit is None:
            return decision
        caller = caller_key(identity) or "anonymous"
        # One count per INVITE: the other API's event, if one comes, takes this verdict.
        # The dialog is the caller's: a verdict kept under it alone was replayed to every
        # INVITE reusing its Call-ID and From tag (the limit bypassed).
        others = self._pairing.expected - {call.api}
        twin = Twin.of(dialog, call.api, min(others)) if dialog and others else None
        allowed = await self._limiter.allow(
            decision.route, caller, limit, call.call_id, deadline=deadline, twin=twin
        )
        if allowed:
            return decision
        self._metrics.rate_limited.labels(decision.route).inc()
        # The caller did not get the split arm's action: do not count it as that arm.
        return decision._replace(
            action=limit.over_limit, arm=None, fallback=None, note="rate limited"
        )

    async def _handler(
        self,
        call: IncomingCall,
        decision: Decision,
        dialog: str | None,
        deadline: float,
        until: float,
    ) -> Api | None:
        """The API that handles this call (None: not known yet, answer 503 and retry)."""
        wanted = self._wanted(call, decision, dialog)
        if wanted != call.api and wanted in self._pairing.expected:
            if dialog is None:
                # Nothing ties this event to the other one: it must not act (the other API's
                # event, expected, decides the same and answers the call).
                return wanted
            # Leave the chosen API's event the time to take the call; act only without it.
            pause = min(self._pairing.wait_seconds, deadline - CLEANUP_SECONDS - self._clock())
            if pause > 0:
                await self._handlers.wait_taken(dialog, pause)
        if dialog is None or not self._pairing.expected - {call.api}:
            # Only this API's events come: no other event to tie (and no store trip).
            return call.api
        return await self._handlers.take(dialog, call.api, self._until(deadline, until))

    def _wanted(self, call: IncomingCall, decision: Decision, dialog: str | None) -> Api:
        """The API the decision wants to act through."""
        return action_api(decision.action) or (
            call.api if dialog is not None else self._pairing.untied
        )

    def _acknowledge(self, call: IncomingCall, decision: Decision, handler: Api | None) -> Answer:
        """This event's call is (or may be) another event's: answered without acting."""
        self._metrics.incoming_call(call.api, OTHER_API if handler else "undecided").inc()
        self._metrics.webhook_result("routed" if handler else "retry").inc()
        logger.info(
            "call handled through the other API" if handler else "call handler not known yet",
            extra={
                "event": "call",
                "call_id": call.call_id,
                "webhook_id": call.webhook_id,
                "api": call.api,
                "handled_by": handler,
                "route": decision.route,
                "outcome": OTHER_API,
            },
        )
        if handler is None:
            return Answer(503, {"call_id": call.call_id, "error": "call handler not known yet"})
        return Answer(
            200,
            {
                "call_id": call.call_id,
                "api": call.api,
                "route": decision.route,
                "outcome": OTHER_API,
                "handled_by": handler,
                "rules_version": decision.rules_version,
            },
        )

    def _unanswerable(self, call: IncomingCall, decision: Decision) -> Decision:
        """The route's API never announced this call: act through this event's API, with the
        route's fallback when it can go through it, else a reject."""
        wanted = action_api(decision.action)
        fallback = decision.fallback
        usable = fallback is not None and action_api(fallback) in (None, call.api)
        action = fallback if usable and fallback is not None else Reject(NO_HANDLER_STATUS)
        note = f"no {wanted} event for this call"
        return decision._replace(action=action, arm=None, fallback=None, note=note)

    async def _act(
        self, call: IncomingCall, decision: Decision, deadline: float, ticket: Ticket
    ) -> Outcome:
        if self._dry_run:
            return Outcome("dry_run")
        call_id, api = call.call_id, call.api
        outcome = await self._perform(call_id, decision.action, deadline, api)
        fallback = decision.fallback
        if fallback is None or outcome.name not in ("failed", "upstream_error"):
            return outcome
        if action_api(fallback) not in (None, api):
            return outcome  # the fallback's session is of the other API: not on this call
        if outcome.uncertain or ticket.uncertain:
            # A request for this call timed out, in this delivery or an earlier one: the call
            # may be answered already, and a fallback could act on a live call.
            return outcome
        # The route's own action failed: the fallback gets its own short budget.
        budget = max(deadline, self._clock() + CLEANUP_SECONDS)
        second = await self._perform(call_id, fallback, budget, api)
        if second.name in ("accepted", "rejected", "referred", "transferring"):
            return Outcome(f"fallback_{second.name}", error=outcome.error, live=second.live)
        if second.name == "caller_gone":
            return second
        return outcome

    async def _perform(self, call_id: str, action: Action, deadline: float, api: Api) -> Outcome:
        controller = self._controllers[api]
        try:
            if isinstance(action, Accept):
                await controller.accept(call_id, action.body, deadline)
                return Outcome("accepted", live=self._stay_on(call_id, action.features, api))
            if isinstance(action, Reject):
                await controller.reject(call_id, action.status_code, deadline)
                return Outcome("rejected")
            await controller.accept(call_id, action.accept_body, deadline)
        except CallGone:
            return Outcome("caller_gone")
        except CallControlError as exc:
            name = "upstream_error" if exc.retryable else "failed"
            return Outcome(name, exc.retryable, str(exc), exc.uncertain)
        if action.announce and self._stay_on(
            call_id, CallFeatures(announce=action.announce, refer_to=action.target_uri), api
        ):
            return Outcome("transferring", live=True)  # after the line is said
        return await self._transfer(call_id, action, deadline, controller)

    def _stay_on(self, call_id: str, features: CallFeatures | None, api: Api) -> bool:
        if features is None or self._incall is None:
            return False
        return self._incall.start(call_id, features, api)

    async def _transfer(
        self, call_id: str, action: Refer, deadline: float, controller: CallController
    ) -> Outcome:
        """The call is answered now: a failed transfer cannot be undone by a redelivery."""
        try:
            await controller.refer(call_id, action.target_uri, deadline)
            return Outcome("referred")
        except CallGone:
            return Outcome("caller_gone")
        except CallControlError as exc:
            error = str(exc)
        # Do not leave the caller in dead air with a bare session.
        try:
            await controller.hangup(call_id, self._clock() + CLEANUP_SECONDS)
        except CallControlError as exc:
            error += f"; hangup also failed: {exc.detail}"
        return Outcome("refer_failed", error=error)

    def _log(
        self,
        call: IncomingCall,
        identity: CallIdentity,
        decision: Decision,
        outcome: Outcome,
        numbers: tuple[str | None, str | None],
        decide: float,
        act: float,
    ) -> None:
        caller, called = numbers
        logger.log(
            logging.WARNING if outcome.error else logging.INFO,
            "call routed",
            extra={
                "event": "call",
                "call_id": call.call_id,
                "webhook_id": call.webhook_id,
                "api": call.api,
                "route": decision.route,
                "arm": decision.arm,
                "action": decision.action.kind,
                "outcome": outcome.name,
                "note": decision.note,
                "error": outcome.error,
                "rules_version": decision.rules_version,
                "caller": caller,
                "called": called,
                "anonymous": identity.anonymous,
                "decide_ms": round(decide * 1000, 3),
                "act_ms": round(act * 1000, 1),
            },
        )
