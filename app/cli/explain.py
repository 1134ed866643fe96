"""Why a call goes where it goes: the parsed identity, the deciding route, and for every
earlier route the condition that failed. Used by `switchboard explain` and `test`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.cli.simulate import invite_headers
from app.rules import Accept, Action, Decision, Reject, RuleSet
from app.rules.conditions import first_failing
from app.sip.identity import Address, CallIdentity, Headers, IdentityPolicy, identify


@dataclass(frozen=True, slots=True)
class RouteCheck:
    name: str
    matched: bool
    reason: str | None
    """For a route that did not match: the first condition that failed."""


@dataclass(frozen=True, slots=True)
class Explanation:
    call: CallIdentity
    now: datetime
    checks: tuple[RouteCheck, ...]
    decision: Decision


def checked_time(value: datetime, offset_hint: str) -> datetime:
    """A sample call's time, or ValueError: naive, or too near datetime's limits (years 1
    and 9999) for a schedule, which looks at the day before and after in its timezone."""
    if value.tzinfo is None:
        raise ValueError(offset_hint)
    try:
        year = value.astimezone(UTC).year
    except OverflowError:
        year = datetime.min.year
    if not datetime.min.year < year < datetime.max.year:
        raise ValueError(f"the time must be in the years {MIN_YEAR} to {MAX_YEAR}")
    return value


MIN_YEAR, MAX_YEAR = datetime.min.year + 1, datetime.max.year - 1


def sample_call(
    policy: IdentityPolicy,
    *,
    caller: str,
    called: str,
    caller_name: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    media_security: str | None = "srtp",
) -> CallIdentity:
    """A call as a trunk would present it, with any raw headers given taking precedence."""
    items = invite_headers(
        caller=caller, called=called, caller_name=caller_name, extra_headers=headers
    )
    return identify(Headers(items), policy, media_security)


def explain(rules: RuleSet, call: CallIdentity, now: datetime) -> Explanation:
    checks: list[RouteCheck] = []
    for route in rules.routes:
        failed = first_failing(route.conditions, call, now)
        if failed is None:
            checks.append(RouteCheck(route.name, True, None))
            break
        checks.append(RouteCheck(route.name, False, f"not: {failed.describe()}"))
    return Explanation(call, now, tuple(checks), rules.decide(call, now, "explain"))


def describe_action(action: Action) -> str:
    """The action in a line; a GPT-Live one says so (Realtime is the default API)."""
    if isinstance(action, Reject):
        return f"reject with SIP {action.status_code}"
    through = " through GPT-Live" if action.api == "live" else ""
    if isinstance(action, Accept):
        return f"accept{through} with session {json.dumps(action.session, ensure_ascii=False)}"
    return f"accept{through}, then refer to {action.target_uri}"


def action_fields(action: Action) -> dict[str, Any]:
    """The action's fields; `api`: the API it goes through (a reject: either, null)."""
    if isinstance(action, Accept):
        return {"action": "accept", "api": action.api, "session": action.session}
    if isinstance(action, Reject):
        return {"action": "reject", "api": None, "status_code": action.status_code}
    return {
        "action": "refer",
        "api": action.api,
        "target_uri": action.target_uri,
        "accept_session": json.loads(action.accept_body),
    }


def to_json(result: Explanation, rules: RuleSet) -> dict[str, Any]:
    call = result.call
    decision = result.decision
    return {
        "call": {
            "caller": _address(call.caller),
            "caller_header": call.caller_header,
            "caller_name": call.display_name,
            "called": _address(call.called),
            "forwarded_from": _address(call.forwarded_from),
            "anonymous": call.anonymous,
            "media_security": call.media_security,
            "time": result.now.isoformat(),
        },
        "rules": {"source": rules.source, "version": rules.version},
        "routes": [
            {"name": c.name, "matched": c.matched, "reason": c.reason} for c in result.checks
        ],
        "decision": {
            "route": decision.route,
            "arm": decision.arm,
            "note": decision.note,
            **action_fields(decision.action),
            "rate_limit": (
                {"calls": decision.rate_limit.calls, "per_seconds": decision.rate_limit.per_seconds}
                if decision.rate_limit
                else None
            ),
            "fallback": action_fields(decision.fallback) if decision.fallback else None,
        },
    }


def to_text(result: Explanation, rules: RuleSet) -> str:
    call = result.call
    decision = result.decision
    lines = [
        "Call",
        f"  caller:          {_show(call.caller)}"
        + (f"  (from the {call.caller_header} header)" if call.caller_header else ""),
        f"  caller name:     {call.display_name or '-'}",
        f"  called:          {_show(call.called)}",
        f"  forwarded from:  {_show(call.forwarded_from)}",
        f"  anonymous:       {'yes' if call.anonymous else 'no'}",
        f"  media security:  {call.media_security or '-'}",
        f"  time:            {result.now.isoformat()}",
        "",
        f"Routes ({rules.source}, version {rules.version})",
    ]
    width = max((len(c.name) for c in result.checks), default=0)
    for number, check in enumerate(result.checks, start=1):
        status = "MATCH" if check.matched else check.reason
        lines.append(f"  {number:>3}. {check.name:<{width}}  {status}")
    if not any(c.matched for c in result.checks):
        lines.append("  (no route matched: the default applies)")
    lines += ["", f"Decision: route {decision.route}"]
    if decision.arm:
        lines.append(f"  split arm:   {decision.arm}")
    lines.append(f"  action:      {describe_action(decision.action)}")
    if decision.note:
        lines.append(f"  note:        {decision.note}")
    if decision.rate_limit:
        limit = decision.rate_limit
        lines.append(
            f"  rate limit:  {limit.calls} calls per {limit.per_seconds:g} s per caller, "
            f"then {describe_action(limit.over_limit)}"
        )
    if decision.fallback:
        lines.append(f"  fallback:    {describe_action(decision.fallback)}")
    return "\n".join(lines)


def _address(address: Address | None) -> dict[str, Any] | None:
    if address is None:
        return None
    return {
        "uri": address.uri,
        "user": address.user,
        "number": address.number,
        "display_name": address.display_name,
    }


def _show(address: Address | None) -> str:
    if address is None:
        return "-"
    return address.number or address.user or address.uri
