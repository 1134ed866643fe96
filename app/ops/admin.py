"""Admin API behind a bearer token: GET /admin/status, POST /admin/reload, GET /admin/routes,
and the calls: GET /admin/calls, GET /admin/calls/{call_id}, POST
/admin/calls/{call_id}/hangup and POST /admin/calls/{call_id}/transfer.

Without SWITCHBOARD_ADMIN_TOKEN the endpoints answer 403: they exist, and say why they are
closed, rather than a 404 that looks like a wrong URL or an old version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hmac
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Protocol

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from app.ops.logs import LogThrottle
from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.records.calllog import CallApi, CallLog, CallLogError, CallRecord, CallStatus
from app.rules import RuleSet
from app.rules.gcpause import full_collections_paused, switching_often
from app.state.claims import StateUnavailable
from app.state.livecalls import LiveCallError

logger = logging.getLogger("switchboard.admin")

REALM = 'Bearer realm="switchboard"'
# Collections longer than this (number lists) are shown by their size only.
MAX_ITEMS = 20
MAX_DEPTH = 6


MAX_CALLS = 1000
"""Most calls GET /admin/calls lists at once."""


class CallsControl(Protocol):
    """In-call control of the calls in progress (the in-call manager provides it)."""

    async def hangup(self, call_id: str) -> str | None:
        """Hang up; None when the call is unknown or not active, else the outcome."""
        ...

    async def transfer(self, call_id: str, destination: str) -> str:
        """Transfer to one of the call's allowed destinations; returns the outcome.

        Raises LookupError for an unknown or inactive call, ValueError for a destination
        that is not on the call's allowlist."""
        ...


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    destination: str = Field(min_length=1, max_length=256)
    """A destination name from the call's route (its allowlist), e.g. `sales`."""


class AdminRefused(Exception):
    def __init__(
        self, status_code: int, reason: str, error: str, challenge: str | None = None
    ) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.reason = reason
        """The metric's label (app.ops.metrics.ADMIN_REFUSALS)."""
        self.error = error
        self.challenge = challenge


def install_admin(
    app: FastAPI,
    manager: RulesManager,
    token: SecretStr | None,
    *,
    call_log: CallLog,
    metrics: Metrics,
    state_check: Callable[[], Awaitable[None]] | None = None,
    calls_control: CallsControl | None = None,
    dry_run: bool = False,
) -> None:
    expected = token.get_secret_value().encode() if token is not None else None

    async def authorize(request: Request) -> None:
        if expected is None:
            raise AdminRefused(
                403,
                "disabled",
                "the admin API is disabled: set SWITCHBOARD_ADMIN_TOKEN to enable it",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AdminRefused(401, "missing_token", "a bearer token is required", REALM)
        # Headers arrive decoded as latin-1: compare the bytes that were sent.
        if not hmac.compare_digest(given.strip().encode("latin-1"), expected):
            raise AdminRefused(
                401, "invalid_token", "invalid token", f'{REALM}, error="invalid_token"'
            )

    refusals = LogThrottle()  # token guessing must not flood the logs

    @app.exception_handler(CallLogError)
    async def _records_unavailable(request: Request, exc: CallLogError) -> Response:
        # The records' database is away (PostgreSQL): calls still route; say so, no 500.
        return JSONResponse({"error": f"call records unavailable: {exc}"}, status_code=503)

    @app.exception_handler(AdminRefused)
    async def _refused(request: Request, exc: AdminRefused) -> Response:
        metrics.admin_refused.labels(exc.reason).inc()  # every refusal, logged or not
        suppressed = refusals.admit()
        if suppressed is not None:
            logger.warning(
                "admin request refused",
                extra={
                    "event": "admin_refused",
                    "path": request.url.path[:200],
                    "status": exc.status_code,
                    "reason": exc.error,
                    "suppressed": suppressed,
                },
            )
        headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        return JSONResponse({"error": exc.error}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if not request.url.path.startswith("/admin/"):
            return await request_validation_exception_handler(request, exc)
        # The admin API's own shape, {"error": ...}, naming each bad field.
        problems = [
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
            for error in exc.errors()
        ]
        return JSONResponse({"error": "; ".join(problems) or "invalid request"}, 422)

    @app.post("/admin/reload", dependencies=[Depends(authorize)])
    async def reload() -> Response:
        logger.info(
            "reload requested", extra={"event": "rules_reload_requested", "trigger": "admin"}
        )
        status = await manager.reload("admin")
        # 422: the request was fine, the files are not (and the old rules still serve).
        return JSONResponse(status.as_dict(), status_code=200 if status.ok else 422)

    @app.get("/admin/status", dependencies=[Depends(authorize)])
    async def status() -> Response:
        rules = manager.current
        last = manager.last_reload
        state = "ok"
        if state_check is not None:
            try:
                await state_check()
            except StateUnavailable as exc:
                state = f"unavailable: {exc}"  # /readyz only says "state store unavailable"
        # Still "ready" after a failed reload: the previous, valid rules keep serving.
        return JSONResponse(
            {
                "status": "ready" if rules is not None else "not ready",
                "rules_version": rules.version if rules is not None else None,
                "rules_source": rules.source if rules is not None else None,
                "routes": len(rules.routes) if rules is not None else 0,
                "dry_run": dry_run,
                "last_reload": last.as_dict() if last is not None else None,
                "state_store": state,
            }
        )

    described = RulesJson()

    @app.get("/admin/routes", dependencies=[Depends(authorize)])
    async def routes() -> Response:
        rules = manager.current
        last = manager.last_reload
        # ~0.7 s of Python at 10,000 routes: in a worker thread, once per rules.
        rules_json = await asyncio.to_thread(described.of, rules)
        rest = _dumps(
            {
                "last_reload": last.as_dict() if last is not None else None,
                "watching": manager.watching,
                "watched_files": list(manager.watched_files()),
            }
        )
        return Response(b'{"rules":' + rules_json + b"," + rest[1:], media_type="application/json")

    @app.get("/admin/calls", dependencies=[Depends(authorize)])
    async def calls(
        status: Annotated[CallStatus | None, Query()] = None,
        route: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        since: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_CALLS)] = 100,
        api: Annotated[CallApi | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        found = await call_log.recent(status=status, route=route, since=since, limit=limit, api=api)
        return [describe_call(record) for record in found]

    @app.get("/admin/calls/{call_id}", dependencies=[Depends(authorize)])
    async def call(call_id: str) -> Response:
        record = await call_log.get(call_id)
        if record is None:
            return JSONResponse({"error": "no such call"}, status_code=404)
        return JSONResponse(describe_call(record, events=True))

    def unavailable() -> Response:
        return JSONResponse({"error": "in-call control is not available"}, status_code=503)

    def not_answered(call_id: str) -> Response:
        _log_control("relay", call_id, "timeout")
        # The replica holding the call got the request: it may still act on it.
        error = "the replica holding the call did not answer in time; the request may still"
        return JSONResponse({"error": f"{error} take effect"}, status_code=504)

    def registry_unavailable(call_id: str, exc: LiveCallError) -> Response:
        _log_control("registry", call_id, "unavailable", error=str(exc))
        return JSONResponse({"error": "the live-call registry is unavailable"}, status_code=503)

    @app.post("/admin/calls/{call_id}/hangup", dependencies=[Depends(authorize)])
    async def hangup(call_id: str) -> Response:
        if calls_control is None:
            return unavailable()
        try:
            outcome = await calls_control.hangup(call_id)
        except TimeoutError:
            return not_answered(call_id)
        except LiveCallError as exc:
            return registry_unavailable(call_id, exc)
        _log_control("hangup", call_id, outcome)
        if outcome is None:
            return JSONResponse({"error": "no such active call"}, status_code=404)
        return JSONResponse({"call_id": call_id, "outcome": outcome})

    @app.post("/admin/calls/{call_id}/transfer", dependencies=[Depends(authorize)])
    async def transfer(call_id: str, body: Annotated[TransferRequest, Body()]) -> Response:
        if calls_control is None:
            return unavailable()
        try:
            outcome = await calls_control.transfer(call_id, body.destination)
        except LookupError:
            _log_control("transfer", call_id, None, destination=body.destination)
            return JSONResponse({"error": "no such active call"}, status_code=404)
        except TimeoutError:
            return not_answered(call_id)
        except LiveCallError as exc:
            return registry_unavailable(call_id, exc)
        except ValueError as exc:
            _log_control("transfer", call_id, "rejected_destination", destination=body.destination)
            message = str(exc) or f"{body.destination!r} is not a destination of this call"
            return JSONResponse({"error": message}, status_code=422)
        _log_control("transfer", call_id, outcome, destination=body.destination)
        return JSONResponse(
            {"call_id": call_id, "destination": body.destination, "outcome": outcome}
        )


def _log_control(action: str, call_id: str, outcome: str | None, **extra: str) -> None:
    logger.info(
        f"admin {action}",
        extra={
            "event": f"admin_{action}",
            "call_id": call_id,
            "outcome": outcome if outcome is not None else "not_active",
            **extra,
        },
    )


CALL_FIELDS = tuple(f.name for f in dataclasses.fields(CallRecord) if f.name != "events")


def describe_call(record: CallRecord, *, events: bool = False) -> dict[str, Any]:
    """A call as the admin API shows it: its fields, its duration (null while it lasts)
    and, for one call, its events in order."""
    out: dict[str, Any] = {name: getattr(record, name) for name in CALL_FIELDS}
    out["duration"] = record.duration
    if events:
        out["events"] = [{"at": e.at, "kind": e.kind, "data": _json(e.data)} for e in record.events]
    return out


def _json(data: Mapping[str, Any]) -> Any:
    """Event data as JSON can carry it (a custom call log may hold other values)."""
    return json.loads(json.dumps(dict(data), default=str))


def _dumps(value: Any) -> bytes:
    # As FastAPI's JSONResponse renders.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode()


class RulesJson:
    """GET /admin/routes' `rules`, rendered for the rules last asked about. Built a route
    at a time: one json.dumps of the whole (~130 ms at 10,000 routes) would hold the GIL
    throughout, and the event loop with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, float] | None = None
        self._json = b"null"

    def of(self, rules: RuleSet | None) -> bytes:
        if rules is None:
            return b"null"
        key = (rules.version, rules.loaded_at)  # not the rules: the old ones must go
        with self._lock:
            if key != self._key:
                # As a load does (app.ops.reload): what it allocates must not set off a
                # full collection, which holds the GIL over every object alive.
                with switching_often(), full_collections_paused():
                    self._json = _rules_json(rules)
                self._key = key
            return self._json


def _rules_json(rules: RuleSet) -> bytes:
    described = describe_rules(rules)
    routes = b",".join(_dumps(route) for route in described.pop("routes"))
    head = _dumps(described)
    return head[:-1] + b',"routes":[' + routes + b"]}"


def describe_rules(rules: RuleSet) -> dict[str, Any]:
    return {
        "version": rules.version,
        "source": rules.source,
        "files": list(rules.files),
        "loaded_at": rules.loaded_at,
        "routes": [describe_route(route) for route in rules.routes],
        "default": {"action": _kind(rules.default)},
        "warnings": list(rules.warnings),
    }


def describe_route(route: Any) -> dict[str, Any]:
    conditions = [describe_condition(c) for c in route.conditions]
    return {
        "name": route.name,
        "action": _kind(route.action),
        "match": " and ".join(c["summary"] for c in conditions) or "every call",
        "conditions": conditions,
    }


def describe_condition(condition: object) -> dict[str, Any]:
    """Its own `describe()` when it has one; otherwise built from its dataclass fields, so
    that a new condition class shows up without changes here."""
    fields = _plain(condition)
    if isinstance(fields, dict):
        fields.pop("type", None)  # said once, next to the summary
    else:
        fields = {"value": fields}
    describe = getattr(condition, "describe", None)
    if callable(describe):
        summary = str(describe())
    else:
        args = ", ".join(f"{k}={v}" for k, v in fields.items() if v not in ([], ""))
        summary = f"{type(condition).__name__}({args})"
    return {"type": type(condition).__name__, "summary": summary, "fields": fields}


def _kind(action: object) -> str:
    return str(getattr(action, "kind", type(action).__name__.lower()))


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON-friendly, bounded rendering of compiled rule parts (dataclasses.asdict-like)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth > MAX_DEPTH:
        return type(value).__name__
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "type": type(value).__name__,
            **{
                f.name: _plain(getattr(value, f.name), depth + 1)
                for f in dataclasses.fields(value)
                if f.repr
            },
        }
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, re.Pattern):
        return f"/{value.pattern}/"
    if isinstance(value, enum.Enum):
        return _plain(value.value, depth + 1)
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            return f"<{len(value)} entries>"
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, AbstractSet | list | tuple):  # sets: also a ShardedSet
        if len(value) > MAX_ITEMS:
            return f"<{len(value)} items>"
        items = [_plain(v, depth + 1) for v in value]
        return sorted(items, key=str) if isinstance(value, AbstractSet) else items
    return str(value)
