"""One incoming call: identify -> decide -> act -> answer, exactly once.

The webhook answer contract (docs/webhooks.md):
- 200 when the action succeeded, or can never succeed (the caller is gone, the API
  refused the request for good): a redelivery would not help.
- 503 when it failed in a way that a redelivery may fix (API 5xx/429, timeout, network):
  OpenAI retries, and the retry acts again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from app.intake.events import IncomingCall
from app.openai.callcontrol import CallControlError, CallController, CallGone
from app.ops.logs import mask
from app.ops.metrics import Metrics
from app.records.calllog import CallEvent, CallLog, CallRecord, CallStatus
from app.rules import Accept, Action, Decision, Refer, Reject, RuleSet, caller_key
from app.rules.ruleset import CallFeatures
from app.sip.identity import CallIdentity, Headers, IdentityPolicy, identify
from app.state.claims import Answer, ClaimLost, ClaimStore, StateUnavailable, Ticket
from app.state.ratelimit import RateLimiter, RateLimits

logger = logging.getLogger("switchboard.call")

# What a claim in phase `acting` keeps of its delivery, replayed if its process dies.
_CONTEXT_FIELDS = frozenset(("route", "action", "rules_version"))

# Time allowed to hang up a call whose transfer failed, even past the call's deadline.
CLEANUP_SECONDS = 2.0
PENDING = "pending"
"""A call's outcome in its record between the decision and the end of the action."""
UNCERTAIN_ERROR = (
    "an earlier delivery of this call stopped (the process died) after a request may have "
    "been sent: not sent again"
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


class InCallStarter(Protocol):
    def start(self, call_id: str, features: CallFeatures) -> bool: ...


class CallRouter:
    def __init__(
        self,
        *,
        controller: CallController,
        store: ClaimStore,
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
        self._controller = controller
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
        keys = (f"webhook:{call.webhook_id}", f"call:{call.call_id}")
        try:
            claim = await self._store.claim(keys, time.monotonic() + self._deadline_seconds)
        except StateUnavailable as exc:
            return self._unavailable(call, exc)
        if isinstance(claim, Answer):
            self._metrics.duplicates.inc()
            self._metrics.webhooks.labels("duplicate").inc()
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
        remember = uncertain = False
        try:
            if claim.orphan is not None:
                answer, remember = self._orphaned(call, claim.orphan), True
            else:
                answer, remember, uncertain = await self._route(call, rules, claim, deadline)
        except (StateUnavailable, ClaimLost) as exc:
            # Nothing was sent: the claim could not be moved to `acting`.
            answer = self._unavailable(call, exc)
        finally:
            try:
                await self._store.finish(claim, answer, remember=remember, uncertain=uncertain)
            except StateUnavailable as exc:
                # The lease runs out; a redelivery finds the claim as this delivery left it.
                logger.error(
                    "answer not stored in the state store",
                    extra={
                        "event": "state_unavailable",
                        "call_id": call.call_id,
                        "error": str(exc),
                    },
                )
        return answer

    def _unavailable(self, call: IncomingCall, exc: Exception) -> Answer:
        """No claim, no action: 503, and OpenAI redelivers."""
        self._metrics.webhooks.labels("retry").inc()
        logger.warning(
            "webhook not acted on: exactly-once state unavailable",
            extra={"event": "state_unavailable", "call_id": call.call_id, "error": str(exc)},
        )
        return Answer(503, {"call_id": call.call_id, "error": f"state store unavailable: {exc}"})

    def _orphaned(self, call: IncomingCall, context: Mapping[str, Any]) -> Answer:
        """A delivery of this call was acting when its process died: its request may have
        taken effect (the call may be answered), so nothing is sent again; 200, since a
        redelivery could not know more."""
        body: dict[str, Any] = {"call_id": call.call_id}
        body.update((k, v) for k, v in context.items() if k in _CONTEXT_FIELDS)
        body.update(outcome="uncertain", error=UNCERTAIN_ERROR)
        route, action = str(body.get("route", "")), str(body.get("action", ""))
        self._metrics.outcomes.labels(action, "uncertain").inc()
        self._metrics.webhooks.labels("routed").inc()
        logger.warning(
            "call routed",
            extra={
                "event": "call",
                "call_id": call.call_id,
                "webhook_id": call.webhook_id,
                "route": route,
                "action": action,
                "outcome": "uncertain",
                "error": UNCERTAIN_ERROR,
            },
        )
        if self._call_log is not None:
            now = time.time()
            result = {"outcome": "uncertain", "error": UNCERTAIN_ERROR}
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
                    events=(CallEvent(now, "uncertain", result),),
                )
            )
        return Answer(200, body)

    async def _route(
        self, call: IncomingCall, rules: RuleSet, ticket: Ticket, deadline: float
    ) -> tuple[Answer, bool, bool]:
        """(answer, remember it, a request may have taken effect)."""
        started = time.perf_counter()
        identity = identify(
            Headers((h.name, h.value) for h in call.sip_headers), self._policy, call.media_security
        )
        decision = await self._limit(
            rules.decide(identity, datetime.now(UTC), call.call_id),
            identity,
            call.call_id,
            time.monotonic() + max(0.0, deadline - self._clock()),
        )
        decided = time.perf_counter()
        self._metrics.decision_latency.observe(decided - started)
        self._metrics.decisions.labels(decision.route, decision.action.kind).inc()
        if decision.arm is not None:
            self._metrics.split_arms.labels(decision.route, decision.arm).inc()

        body: dict[str, Any] = {
            "call_id": call.call_id,
            "route": decision.route,
            "action": decision.action.kind,
            "rules_version": decision.rules_version,
        }
        numbers = self._numbers(identity)  # masked once, for the log line and the record
        if not self._dry_run:
            # Written before the first request: a crash from here on is "uncertain".
            await self._store.acting(ticket, body)
        # Recorded before acting: a crash in the middle leaves the call in the log (still
        # `active`, ended as unknown at the next start), not nothing.
        self._record(call, decision, None, numbers)
        outcome = await self._act(call.call_id, decision, deadline, ticket)
        acted = time.perf_counter()
        self._metrics.outcomes.labels(decision.action.kind, outcome.name).inc()
        self._metrics.webhooks.labels("retry" if outcome.retryable else "routed").inc()

        body["outcome"] = outcome.name
        for key, value in (
            ("arm", decision.arm),
            ("note", decision.note),
            ("error", outcome.error),
        ):
            if value:
                body[key] = value
        self._log(call, identity, decision, outcome, numbers, decided - started, acted - decided)
        self._record(call, decision, outcome, numbers)
        status = 503 if outcome.retryable else 200
        return Answer(status, body), not outcome.retryable, outcome.uncertain

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
            decided = {"route": decision.route, "action": decision.action.kind}
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
        self, decision: Decision, identity: CallIdentity, call_id: str, deadline: float
    ) -> Decision:
        limit = decision.rate_limit
        if limit is None:
            return decision
        caller = caller_key(identity) or "anonymous"
        if await self._limiter.allow(decision.route, caller, limit, call_id, deadline=deadline):
            return decision
        self._metrics.rate_limited.labels(decision.route).inc()
        # The caller did not get the split arm's action: do not count it as that arm.
        return decision._replace(
            action=limit.over_limit, arm=None, fallback=None, note="rate limited"
        )

    async def _act(
        self, call_id: str, decision: Decision, deadline: float, ticket: Ticket
    ) -> Outcome:
        if self._dry_run:
            return Outcome("dry_run")
        outcome = await self._perform(call_id, decision.action, deadline)
        fallback = decision.fallback
        if fallback is None or outcome.name not in ("failed", "upstream_error"):
            return outcome
        if outcome.uncertain or ticket.uncertain:
            # A request for this call timed out, in this delivery or an earlier one: the call
            # may be answered already, and a fallback could act on a live call.
            return outcome
        # The route's own action failed: the fallback gets its own short budget.
        budget = max(deadline, self._clock() + CLEANUP_SECONDS)
        second = await self._perform(call_id, fallback, budget)
        if second.name in ("accepted", "rejected", "referred", "transferring"):
            return Outcome(f"fallback_{second.name}", error=outcome.error, live=second.live)
        if second.name == "caller_gone":
            return second
        return outcome

    async def _perform(self, call_id: str, action: Action, deadline: float) -> Outcome:
        try:
            if isinstance(action, Accept):
                await self._controller.accept(call_id, action.body, deadline)
                return Outcome("accepted", live=self._stay_on(call_id, action.features))
            if isinstance(action, Reject):
                await self._controller.reject(call_id, action.status_code, deadline)
                return Outcome("rejected")
            await self._controller.accept(call_id, action.accept_body, deadline)
        except CallGone:
            return Outcome("caller_gone")
        except CallControlError as exc:
            name = "upstream_error" if exc.retryable else "failed"
            return Outcome(name, exc.retryable, str(exc), exc.uncertain)
        if action.announce and self._stay_on(
            call_id, CallFeatures(announce=action.announce, refer_to=action.target_uri)
        ):
            return Outcome("transferring", live=True)  # after the line is said
        return await self._transfer(call_id, action, deadline)

    def _stay_on(self, call_id: str, features: CallFeatures | None) -> bool:
        if features is None or self._incall is None:
            return False
        return self._incall.start(call_id, features)

    async def _transfer(self, call_id: str, action: Refer, deadline: float) -> Outcome:
        """The call is answered now: a failed transfer cannot be undone by a redelivery."""
        try:
            await self._controller.refer(call_id, action.target_uri, deadline)
            return Outcome("referred")
        except CallGone:
            return Outcome("caller_gone")
        except CallControlError as exc:
            error = str(exc)
        # Do not leave the caller in dead air with a bare session.
        try:
            await self._controller.hangup(call_id, self._clock() + CLEANUP_SECONDS)
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
