"""Admin API behind a bearer token: POST /admin/reload, GET /admin/routes.

Without SWITCHBOARD_ADMIN_TOKEN the endpoints answer 403: they exist, and say why they are
closed, rather than a 404 that looks like a wrong URL or an old version.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr

from app.reload import RulesManager
from app.rules import RuleSet

logger = logging.getLogger("switchboard.admin")

REALM = 'Bearer realm="switchboard"'
# Collections longer than this (number lists) are shown by their size only.
MAX_ITEMS = 20
MAX_DEPTH = 6


class AdminRefused(Exception):
    def __init__(self, status_code: int, error: str, challenge: str | None = None) -> None:
        super().__init__(error)
        self.status_code = status_code
        self.error = error
        self.challenge = challenge


def install_admin(app: FastAPI, manager: RulesManager, token: SecretStr | None) -> None:
    expected = token.get_secret_value().encode() if token is not None else None

    async def authorize(request: Request) -> None:
        if expected is None:
            raise AdminRefused(
                403, "the admin API is disabled: set SWITCHBOARD_ADMIN_TOKEN to enable it"
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise AdminRefused(401, "a bearer token is required", REALM)
        # Headers arrive decoded as latin-1: compare the bytes that were sent.
        if not hmac.compare_digest(given.strip().encode("latin-1"), expected):
            raise AdminRefused(401, "invalid token", f'{REALM}, error="invalid_token"')

    @app.exception_handler(AdminRefused)
    async def _refused(request: Request, exc: AdminRefused) -> Response:
        logger.warning(
            "admin request refused",
            extra={
                "event": "admin_refused",
                "path": request.url.path,
                "status": exc.status_code,
                "reason": exc.error,
            },
        )
        headers = {"WWW-Authenticate": exc.challenge} if exc.challenge else None
        return JSONResponse({"error": exc.error}, status_code=exc.status_code, headers=headers)

    @app.post("/admin/reload", dependencies=[Depends(authorize)])
    async def reload() -> Response:
        logger.info(
            "reload requested", extra={"event": "rules_reload_requested", "trigger": "admin"}
        )
        status = await manager.reload("admin")
        # 422: the request was fine, the files are not (and the old rules still serve).
        return JSONResponse(status.as_dict(), status_code=200 if status.ok else 422)

    @app.get("/admin/routes", dependencies=[Depends(authorize)])
    async def routes() -> dict[str, Any]:
        rules = manager.current
        last = manager.last_reload
        return {
            "rules": describe_rules(rules) if rules is not None else None,
            "last_reload": last.as_dict() if last is not None else None,
            "watching": manager.watching,
            "watched_files": list(manager.watched_files()),
        }


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
    if isinstance(value, set | frozenset | list | tuple):
        if len(value) > MAX_ITEMS:
            return f"<{len(value)} items>"
        items = [_plain(v, depth + 1) for v in value]
        return sorted(items, key=str) if isinstance(value, set | frozenset) else items
    return str(value)
