"""routes.yaml text -> validated spec -> immutable RuleSet."""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Any

from pydantic import BaseModel, ValidationError

from app.rules import schema
from app.rules.errors import ConfigIssue, RulesError
from app.rules.ruleset import (
    Accept,
    Action,
    AnonymousIs,
    Condition,
    HeaderEquals,
    HeaderPresent,
    NumberIs,
    Refer,
    Reject,
    Route,
    RuleSet,
)
from app.rules.source import Document, Path, parse_yaml


def load_rules(path: FilePath, *, region: str) -> RuleSet:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RulesError(
            [ConfigIssue(str(path), None, None, "", f"cannot read: {reason}")]
        ) from None
    return compile_rules(text, str(path), region=region)


def compile_rules(text: str, file: str, *, region: str) -> RuleSet:
    doc = parse_yaml(text, file)
    if doc.data is None:
        raise RulesError([ConfigIssue(file, None, None, "", "the file is empty: add routes:")])
    if not isinstance(doc.data, dict):
        raise RulesError([doc.issue((), "the top level must be a mapping with routes:")])
    try:
        spec = schema.RoutesFile.model_validate(doc.data, context={"region": region})
    except ValidationError as exc:
        raise RulesError(list(_validation_issues(exc, doc))) from None
    return _Compiler(doc, spec).build(version=hashlib.sha256(text.encode()).hexdigest()[:12])


class _Compiler:
    def __init__(self, doc: Document, spec: schema.RoutesFile) -> None:
        self.doc = doc
        self.spec = spec
        self.issues: list[ConfigIssue] = []

    def build(self, version: str) -> RuleSet:
        routes = []
        seen: dict[str, int] = {}
        for index, route in enumerate(self.spec.routes):
            path: Path = ("routes", index)
            if route.name in seen:
                self.issues.append(
                    self.doc.issue(
                        (*path, "name"),
                        f"duplicate route name {route.name!r} "
                        f"(first used by routes[{seen[route.name]}])",
                    )
                )
            seen.setdefault(route.name, index)
            action = self._action(route, path)
            if action is not None:
                routes.append(Route(route.name, self._conditions(route.match), action))
        default = self._action(self.spec.default, ("default",))
        if self.issues or default is None:
            raise RulesError(self.issues)
        return RuleSet(
            routes=tuple(routes),
            default=default,
            version=version,
            source=self.doc.file,
            loaded_at=time.time(),
            files=(self.doc.file,),
        )

    def _action(self, spec: schema.ActionSpec, path: Path) -> Action | None:
        if spec.reject is not None:
            return Reject(spec.reject.status_code)
        if spec.accept is not None:
            session = self._session(spec.accept.session, (*path, "accept", "session"))
            if session is None:
                return None
            overrides = _dump(spec.accept, exclude={"session"})
            return Accept(_accept_body(_deep_merge(session, overrides)))
        assert spec.refer is not None
        session = self._session(spec.refer.session, (*path, "refer", "session"))
        if session is None:
            return None
        return Refer(spec.refer.target_uri, _accept_body(session))

    def _session(self, name: str | None, path: Path) -> dict[str, Any] | None:
        if name is None:
            return {}
        found = self.spec.sessions.get(name)
        if found is None:
            known = sorted(self.spec.sessions)
            hint = _did_you_mean(name, known) or (
                f" (defined: {', '.join(known)})" if known else " (no sessions are defined)"
            )
            self.issues.append(self.doc.issue(path, f"unknown session {name!r}{hint}"))
            return None
        return _dump(found)

    @staticmethod
    def _conditions(match: schema.MatchSpec | None) -> tuple[Condition, ...]:
        if match is None:
            return ()
        conditions: list[Condition] = []
        for party in ("caller", "called"):
            patterns = getattr(match, party)
            if patterns is not None:
                exact = frozenset(p for p in patterns if not p.endswith("*"))
                prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
                conditions.append(NumberIs(party, exact, prefixes))
        for name, condition in (match.headers or {}).items():
            if isinstance(condition, str):
                conditions.append(HeaderEquals(name, condition.strip()))
            elif condition.equals is not None:
                conditions.append(HeaderEquals(name, condition.equals.strip()))
            else:
                conditions.append(HeaderPresent(name, bool(condition.present)))
        if match.anonymous is not None:
            conditions.append(AnonymousIs(match.anonymous))
        return tuple(conditions)


def _dump(model: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True, exclude=exclude)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _accept_body(session: dict[str, Any]) -> bytes:
    return json.dumps({"type": "realtime", **session}, separators=(",", ":")).encode()


# --- error reporting ---------------------------------------------------------------


def _validation_issues(exc: ValidationError, doc: Document) -> Iterator[ConfigIssue]:
    seen: dict[Path, list[str]] = {}
    for error in exc.errors(include_url=False):
        path = _data_path(doc.data, error["loc"], missing=error["type"] == "missing")
        message = _message(error, path)
        messages = seen.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    issues = [doc.issue(path, "; ".join(messages[:3])) for path, messages in seen.items()]
    yield from sorted(issues, key=lambda i: (i.line or 0, i.column or 0))


def _data_path(data: Any, loc: tuple[int | str, ...], *, missing: bool) -> Path:
    """Drop the parts of a pydantic location that name union members, not keys."""
    path: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        if _has(node, part):
            node = node[part]
            path.append(part)
        elif missing and isinstance(node, dict) and position == len(loc) - 1:
            path.append(part)  # a missing key: point at it by name
    return tuple(path)


def _has(node: Any, part: int | str) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _message(error: Any, path: Path) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        if key in _KNOWN_KEYS:  # e.g. `voice:` directly in a session, not under audio.output
            return "unknown key (valid elsewhere in the file, not at this level)"
        return "unknown key" + _did_you_mean(key, _KNOWN_KEYS)
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _all_keys() -> frozenset[str]:
    keys: set[str] = set()
    pending: list[type[BaseModel]] = [schema.RoutesFile]
    seen: set[type[BaseModel]] = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        keys.update(model.model_fields)
        for value in vars(schema).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value not in seen:
                pending.append(value)
    return frozenset(keys)


_KNOWN_KEYS = _all_keys()
