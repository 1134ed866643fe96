"""routes.yaml text -> validated spec -> immutable RuleSet.

Every problem in a file is reported at once, each with file, line, column and key path:
schema errors from pydantic, and references (sessions, lists, schedules, route names)
checked on the raw data so that they show up even when the schema check failed too.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path as FilePath
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, Tag, ValidationError

from app.rules import schema
from app.rules.conditions import (
    AllOf,
    AnonymousIs,
    AnyOf,
    Condition,
    ForwardedIs,
    InSchedule,
    MediaSecurityIs,
    NotOf,
    NumberMatches,
    TextMatches,
)
from app.rules.errors import ConfigIssue, RulesError
from app.rules.files import FileChanged, Snapshot, read_rules_text
from app.rules.gcpause import full_collections_paused
from app.rules.numbers import ListFileError, NumberSet, e164_prefix_hint, load_number_file
from app.rules.regex import compile_regex
from app.rules.ruleset import (
    Accept,
    Action,
    Api,
    Arm,
    CallFeatures,
    Destination,
    MaxDuration,
    RateLimit,
    Refer,
    Reject,
    Route,
    RouteIndex,
    RuleSet,
    SessionTemplate,
    Split,
    indexable,
    session_payload,
)
from app.rules.schedule import build_schedule, parse_timezone
from app.rules.sessions import api_of
from app.rules.source import Document, Path, format_path, parse_yaml
from app.rules.teardown import dismantle
from app.rules.templates import Template
from app.rules.tools import in_call_tools

# Session strings that may hold {placeholders} (the schema checks exactly these).
TEMPLATED_KEYS: tuple[tuple[str, ...], ...] = (
    ("instructions",),
    ("prompt", "variables"),
    ("tracing",),
)


# Pauses before each new attempt at a load that saw a file change (load_rules): an edit
# written in several steps usually ends within them.
CHANGED_RETRY_DELAYS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)


def load_rules(path: FilePath, *, region: str) -> RuleSet:
    """The rules of the routes file `path` and the files it names, all as they were at one
    moment: a load that saw any of them change is done again, up to
    len(CHANGED_RETRY_DELAYS) times; then RulesError (the previous rules stay)."""
    changed = str(path)
    for delay in (*CHANGED_RETRY_DELAYS, None):
        snapshot = Snapshot()
        try:
            text = read_rules_text(path, snapshot)
            rules = compile_rules(text, str(path), region=region, snapshot=snapshot)
        except FileChanged as exc:
            changed = exc.path
        except RulesError:
            # A half-written file is often invalid: an error counts only if nothing moved.
            found = snapshot.changed()
            if found is None:
                raise
            changed = found
        else:
            found = snapshot.changed()
            if found is None:
                return rules
            changed = found
            del rules
        if delay is not None:
            time.sleep(delay)  # a worker thread's (see app.ops.reload), or the CLI's
    attempts = len(CHANGED_RETRY_DELAYS) + 1
    message = (
        f"the file changed while it was read, {attempts} times in a row: not used. Replace it"
        " in one step (write another file, then rename it over this one)"
    )
    raise RulesError([ConfigIssue(changed, None, None, "", message)])


def compile_rules(
    text: str, file: str, *, region: str, snapshot: Snapshot | None = None
) -> RuleSet:
    """`snapshot`: note each list file read there (see load_rules)."""
    # Millions of objects for a large file: without the pause CPython runs several full
    # collections in the middle, a third of the time at 10,000 routes (see app.rules.gcpause).
    with full_collections_paused():
        return _compile(text, file, region, snapshot)


def _compile(text: str, file: str, region: str, snapshot: Snapshot | None = None) -> RuleSet:
    doc = parse_yaml(text, file)
    # Both hold only what the RuleSet copied out: freed a piece at a time (see teardown).
    garbage: list[Any] = []
    try:
        return _validate_and_build(doc, text, region, garbage, snapshot)
    finally:
        garbage += (doc.data, doc.positions)
        doc.data, doc.positions = None, {}
        dismantle(garbage)


def _validate_and_build(
    doc: Document, text: str, region: str, garbage: list[Any], snapshot: Snapshot | None
) -> RuleSet:
    """The RuleSet of `doc`; the validated spec is left in `garbage` (not in a frame)."""
    if doc.data is None:
        raise RulesError([ConfigIssue(doc.file, None, None, "", "the file is empty: add routes:")])
    if not isinstance(doc.data, dict):
        raise RulesError([doc.issue((), "the top level must be a mapping with routes:")])
    issues = list(_reference_issues(doc))
    try:
        context = schema.validation_context(doc.data, region)
        garbage.append(schema.RoutesFile.model_validate(doc.data, context=context))
    except ValidationError as exc:
        issues.extend(_validation_issues(exc, doc))
    if issues or not garbage:
        raise RulesError(sorted(issues, key=lambda i: (i.line or 0, i.column or 0)))
    return _Compiler(doc, garbage[0], region, snapshot).build(text)


class _Compiler:
    def __init__(
        self,
        doc: Document,
        spec: schema.RoutesFile,
        region: str,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.doc = doc
        self.snapshot = snapshot
        self.spec = spec
        self.region = region
        self.base = FilePath(doc.file).parent
        self.issues: list[ConfigIssue] = []
        self.files: list[str] = [doc.file]
        self.warnings: list[str] = []
        self.digest = hashlib.sha256()

    def build(self, text: str) -> RuleSet:
        self.digest.update(text.encode())
        self.lists = self._lists()
        self.schedules = {
            name: build_schedule(name, s.timezone, s.weekly, s.include, s.exclude)
            for name, s in self.spec.schedules.items()
        }
        routes = []
        for position, route in enumerate(self.spec.routes):
            built = self._route(route, ("routes", position))
            if built is not None:
                routes.append(built)
        default = self._action(self.spec.default, ("default",))
        if self.issues or default is None:
            raise RulesError(self.issues)
        index = _build_index(routes)
        return RuleSet(
            routes=tuple(routes),
            default=default,
            version=self.digest.hexdigest()[:12],
            source=self.doc.file,
            loaded_at=time.time(),
            files=tuple(self.files),
            timezone=parse_timezone(self.spec.timezone),
            index=index,
            warnings=(*dict.fromkeys(self.warnings), *_unreachable(routes, index)),
        )

    # --- lists, routes, actions ---------------------------------------------------------

    def _lists(self) -> dict[str, NumberSet]:
        lists: dict[str, NumberSet] = {}
        for name, spec in self.spec.lists.items():
            if isinstance(spec, schema.InlineList):
                lists[name] = NumberSet.of(spec.root)
                continue
            path = self.base / spec.file
            self.files.append(str(path))
            try:
                lists[name] = load_number_file(
                    path,
                    self.region,
                    column=spec.column,
                    digest=self.digest,
                    snapshot=self.snapshot,
                )
            except ListFileError as exc:
                for line, message in exc.problems:
                    self.issues.append(ConfigIssue(str(path), line, None, f"lists.{name}", message))
        return lists

    def _route(self, spec: schema.RouteSpec, path: Path) -> Route | None:
        action: Action | Split | None
        if spec.split is not None:
            arms = []
            for i, arm in enumerate(spec.split):
                built = self._action(arm, (*path, "split", i))
                if built is not None:
                    arms.append(Arm(arm.name or chr(ord("a") + i), arm.weight, built))
            action = Split(tuple(arms), sum(a.weight for a in arms)) if arms else None
        else:
            action = self._action(spec, path)
        rate_limit = None
        if spec.rate_limit is not None:
            over = self._action(spec.rate_limit.over_limit, (*path, "rate_limit", "over_limit"))
            if over is not None:
                rate_limit = RateLimit(spec.rate_limit.calls, spec.rate_limit.per, over)
        fallback = self._action(spec.fallback, (*path, "fallback")) if spec.fallback else None
        if action is None:
            return None
        conditions = self._conditions(spec.match) if spec.match is not None else ()
        return Route(spec.name, conditions, action, rate_limit, fallback)

    def _action(self, spec: schema.ActionSpec, path: Path) -> Action | None:
        if spec.reject is not None:
            return Reject(spec.reject.status_code)
        if spec.accept is not None:
            where = (*path, "accept")
            api = api_of(spec.accept)
            named = self._named(spec.accept.session)
            if named is not None and api_of(named) != api:
                # Only without the validation context (it makes the accept the session's API).
                message = f"session {spec.accept.session!r} is a {api_of(named)} session"
                self.issues.append(self.doc.issue(where, message))
                return None
            session = _dump(named) if named is not None else {}
            overrides = _dump(spec.accept, exclude={"session", "type"})
            merged = _deep_merge(session, overrides)
            merged.pop("type", None)
            # Both parts were validated, and a mapping of another `type` replaces rather than
            # merges (_same_kind): the merge is a valid session. (Validating each merge again
            # cost a quarter of the load time of a 10,000-route file.) What only the merge can
            # lack is the model of an inline Live accept.
            if api == "live" and "model" not in merged:
                message = "required key is missing (a Live accept without session: gives one)"
                self.issues.append(self.doc.issue((*where, "model"), message))
                return None
            features = self._features(merged.pop("call", None), where)
            if features is not None and api == "realtime":
                merged = self._with_tools(merged, features, where)
            elif features is not None:
                merged = self._with_live_tools(merged, features, where)
            body, template = _session_body(merged, api)
            return Accept(body, template, features, api)
        assert spec.refer is not None
        named = self._named(spec.refer.session)
        api = api_of(named) if named is not None else "realtime"
        session = _dump(named) if named is not None else {}
        session.pop("type", None)
        session.pop("call", None)  # a transfer route's short session has no in-call features
        body, template = _session_body(session, api)
        target = spec.refer.target_uri
        target_template = Template.parse(target) if "{" in target else None
        return Refer(target, body, target_template, template, spec.refer.announce, api)

    def _features(self, raw: dict[str, Any] | None, path: Path) -> CallFeatures | None:
        if not raw:
            return None
        try:
            spec = schema.CallFeaturesSpec.model_validate(raw)
        except ValidationError as exc:
            # Each part was valid; only their merge (session + route override) is not.
            for error in exc.errors(include_url=False):
                message = str(error["msg"]).removeprefix("Value error, ")
                self.issues.append(self.doc.issue((*path, "call"), message))
            return None
        duration = spec.max_duration
        if isinstance(duration, float | int):
            duration = schema.MaxDuration(seconds=float(duration))
        return CallFeatures(
            greeting=bool(spec.greeting),
            greeting_instructions=spec.greeting if isinstance(spec.greeting, str) else None,
            transfers=MappingProxyType(
                {name: _destination(d) for name, d in (spec.transfers or {}).items()}
            ),
            transfer_message=spec.transfer_message,
            end_call=bool(spec.end_call),
            dtmf=MappingProxyType(
                {
                    key: None if isinstance(action, str) else action.transfer
                    for key, action in (spec.dtmf or {}).items()
                }
            ),
            max_duration=(
                MaxDuration(duration.seconds, duration.warning_before, duration.warning)
                if duration is not None
                else None
            ),
        )

    def _with_tools(
        self, session: dict[str, Any], features: CallFeatures, path: Path
    ) -> dict[str, Any]:
        """The model's side of the features: a transfer_call and an end_call tool."""
        tools = list(session.get("tools") or [])
        taken = {tool.get("name") for tool in tools}
        for tool in in_call_tools(features):
            if tool["name"] in taken:
                self.issues.append(
                    self.doc.issue(
                        (*path, "tools"),
                        f"the tool name {tool['name']} is Switchboard's (call: features)",
                    )
                )
            tools.append(tool)
        return {**session, "tools": tools} if tools else session

    def _with_live_tools(
        self, session: dict[str, Any], features: CallFeatures, path: Path
    ) -> dict[str, Any]:
        """GPT-Live: the model asks the application to run a function through its Responses
        delegation (function tools there come back over the sideband), so transfer_call and
        end_call are tools of `delegation.responses`; client delegation names no function."""
        wanted = in_call_tools(features)
        if not wanted:
            return session
        delegation = session.get("delegation")
        responses = delegation.get("responses") if isinstance(delegation, dict) else None
        if not isinstance(delegation, dict) or delegation.get("type") != "responses":
            names = " and ".join(tool["name"] for tool in wanted)
            self.issues.append(
                self.doc.issue(
                    (*path, "call"),
                    f"{names} on a GPT-Live session need `delegation: {{type: responses, "
                    "responses: {model: ...}}`: the model asks for them as function tools of "
                    "the Responses backend",
                )
            )
            return session
        assert isinstance(responses, dict)
        backend = self._with_tools(responses, features, (*path, "delegation", "responses"))
        return {**session, "delegation": {**delegation, "responses": backend}}

    def _named(self, name: str | None) -> schema.SessionConfig | schema.LiveSession | None:
        # References were checked before compiling: the name exists.
        return None if name is None else self.spec.sessions[name]

    # --- conditions ----------------------------------------------------------------------

    def _conditions(self, match: schema.MatchSpec) -> tuple[Condition, ...]:
        found: list[Condition] = []
        for party in ("caller", "called", "forwarded_from"):
            value = getattr(match, party)
            if value is not None:
                found.append(self._number(party, value))
        if match.caller_name is not None:
            found.append(_text(None, match.caller_name))
        for name, condition in (match.headers or {}).items():
            found.append(_text(name, condition))
        if match.anonymous is not None:
            found.append(AnonymousIs(match.anonymous))
        if match.forwarded is not None:
            found.append(ForwardedIs(match.forwarded))
        if match.media_security is not None:
            found.append(MediaSecurityIs(frozenset({match.media_security})))
        if match.schedule is not None:
            found.append(InSchedule(self.schedules[match.schedule], inside=True))
        if match.outside_schedule is not None:
            found.append(InSchedule(self.schedules[match.outside_schedule], inside=False))
        for sub in match.all or ():
            found.extend(self._conditions(sub))
        if match.any is not None:
            found.append(AnyOf(tuple(self._one(sub) for sub in match.any)))
        if match.not_ is not None:
            found.append(NotOf(self._one(match.not_)))
        return tuple(found)

    def _one(self, match: schema.MatchSpec) -> Condition:
        conditions = self._conditions(match)
        return conditions[0] if len(conditions) == 1 else AllOf(conditions)

    def _number(self, party: Any, value: tuple[str, ...] | schema.NumberCondition) -> NumberMatches:
        patterns = value if isinstance(value, tuple) else (value.prefix or ())
        for pattern in patterns:
            hint = e164_prefix_hint(pattern[:-1], self.region) if pattern.endswith("*") else None
            if hint is not None:
                self.warnings.append(
                    f"prefix {pattern} is compared as dialled (extensions, short codes), but "
                    f"numbers arrive in E.164: for national numbers write {hint}*"
                )
        if isinstance(value, tuple):
            return NumberMatches(party, (NumberSet.of(value),), label=_patterns_label(value))
        sets: list[NumberSet] = []
        labels: list[str] = []
        if value.equals is not None:
            sets.append(NumberSet.of(value.equals))
            labels.append(_patterns_label(value.equals))
        if value.prefix is not None:
            sets.append(NumberSet.of(value.prefix))
            labels.append(_patterns_label(value.prefix))
        if value.list is not None:
            named = [self.lists.get(n, NumberSet()) for n in value.list]
            sets.append(named[0].union(*named[1:]))
            labels.append("in list " + " or ".join(value.list))
        if value.regex is not None:
            labels.append(f"matches /{value.regex}/")
        if value.country is not None:
            labels.append("in " + " or ".join(value.country))
        if value.type is not None:
            labels.append("is " + " or ".join(value.type))
        return NumberMatches(
            party,
            tuple(sets),
            compile_regex(value.regex) if value.regex is not None else None,
            frozenset(value.country or ()),
            frozenset(value.type or ()),
            label=" and ".join(labels),
        )


def _destination(spec: str | schema.Destination) -> Destination:
    if isinstance(spec, str):
        return Destination(spec)
    return Destination(spec.uri, spec.description)


def _text(header: str | None, spec: str | schema.TextCondition) -> TextMatches:
    if isinstance(spec, str):
        return TextMatches(header, equals=spec.strip())
    present = (
        spec.present
        if spec.present is not None
        else (None if spec.absent is None else not spec.absent)
    )
    return TextMatches(
        header,
        equals=spec.equals.strip() if spec.equals is not None else None,
        contains=spec.contains,
        regex=(compile_regex(spec.regex, spec.ignore_case) if spec.regex is not None else None),
        present=present,
        ignore_case=spec.ignore_case,
    )


def _patterns_label(patterns: tuple[str, ...]) -> str:
    shown = ", ".join(patterns[:5]) + (
        f", ... ({len(patterns)} in all)" if len(patterns) > 5 else ""
    )
    return f"is {shown}" if len(patterns) == 1 else f"in [{shown}]"


# --- sessions ------------------------------------------------------------------------------


def _dump(model: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_unset=True, exclude=exclude, by_alias=True)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and _same_kind(merged[key], value)
        ):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _same_kind(base: dict[str, Any], override: dict[str, Any]) -> bool:
    """A mapping of another `type` (server_vad over semantic_vad, responses over client
    delegation) replaces the session's: their keys do not mix."""
    return "type" not in override or base.get("type", override["type"]) == override["type"]


def _session_body(session: dict[str, Any], api: Api) -> tuple[bytes, SessionTemplate | None]:
    payload = session_payload(api, session)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    paths = [
        path
        for where in TEMPLATED_KEYS
        if _exists(session, where)
        for path in _string_paths(_at(session, where), where)
        if _has_braces(path, session)
    ]
    if not paths:
        return body.encode(), None
    templates = tuple(Template.parse(_at(session, p)) for p in paths)
    return body.encode(), SessionTemplate(session, tuple(paths), templates, api)


def _string_paths(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_paths(item, (*path, key))


def _exists(session: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = session
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _at(session: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
    node: Any = session
    for part in path:
        node = node[part]
    return node


def _has_braces(path: tuple[str | int, ...], session: Mapping[str, Any]) -> bool:
    text = _at(session, path)
    return "{" in text or "}" in text


# --- the route index and unreachable routes ------------------------------------------------


def _build_index(routes: list[Route]) -> RouteIndex:
    always: list[int] = []
    tables: dict[str, dict[str, list[int]]] = {
        "called_exact": {},
        "called_prefix": {},
        "caller_exact": {},
        "caller_prefix": {},
    }
    for i, route in enumerate(routes):
        found = indexable(route)
        if found is None:
            always.append(i)
            continue
        party, condition = found
        numbers = condition.sets[0]
        for number in numbers.exact:
            tables[f"{party}_exact"].setdefault(number, []).append(i)
        for prefix in numbers.prefixes:
            tables[f"{party}_prefix"].setdefault(prefix, []).append(i)
    lengths = {len(p) for key in ("called_prefix", "caller_prefix") for p in tables[key]}
    frozen = {name: {k: tuple(v) for k, v in table.items()} for name, table in tables.items()}
    return RouteIndex(tuple(always), prefix_lengths=tuple(sorted(lengths)), **frozen)


MAX_PAIRWISE = 2000


def _unreachable(routes: list[Route], index: RouteIndex) -> Iterator[str]:
    """Routes that an earlier route always catches first (a warning, not an error)."""
    # Its position, found once: `routes.index()` per route made this quadratic.
    catch_at = next((i for i, r in enumerate(routes) if not r.conditions), None)
    always = set(index.always)
    for j, route in enumerate(routes):
        if catch_at is not None and j > catch_at:
            yield (
                f"route {route.name!r} can never match: route {routes[catch_at].name!r} before "
                "it matches every call"
            )
            continue
        if not route.conditions:
            continue
        earlier = _earlier_candidates(route, j, index, always)
        if earlier is None:
            continue
        for i in earlier:
            if _covers(routes[i], route):
                yield (
                    f"route {route.name!r} can never match: route {routes[i].name!r} before it "
                    "matches every call it would"
                )
                break


def _earlier_candidates(
    route: Route, j: int, index: RouteIndex, always: set[int]
) -> list[int] | None:
    found = indexable(route)
    if found is None:
        earlier = [i for i in index.always if i < j] if j in always else []
        return earlier if len(earlier) <= MAX_PAIRWISE else None
    party, condition = found
    numbers = condition.sets[0]
    exact_table = index.called_exact if party == "called" else index.caller_exact
    prefix_table = index.called_prefix if party == "called" else index.caller_prefix
    hits = {i for i in index.always if i < j}
    lengths = index.prefix_lengths  # only the lengths some prefix has (a few, not 15)
    for key in (*numbers.exact, *numbers.prefixes):
        filed = exact_table.get(key)
        if filed:
            hits.update(i for i in filed if i < j)
        for n in lengths:
            if n > len(key):
                break
            filed = prefix_table.get(key[:n])
            if filed:
                hits.update(i for i in filed if i < j)
    return sorted(hits) if len(hits) <= MAX_PAIRWISE else None


def _covers(first: Route, later: Route) -> bool:
    """Every call `later` matches, `first` matches too (for conditions we can compare)."""
    return all(any(_implies(d, c) for d in later.conditions) for c in first.conditions)


def _implies(d: Condition, c: Condition) -> bool:
    if d == c:
        return True
    if (
        isinstance(d, NumberMatches)
        and isinstance(c, NumberMatches)
        and d.party == c.party
        and len(d.sets) == 1
        and len(c.sets) == 1
        and c.regex is None
        and not c.countries
        and not c.types
    ):
        inner, outer = d.sets[0], c.sets[0]
        return all(n in outer for n in inner.exact) and all(
            any(p.startswith(q) for q in outer.prefixes) for p in inner.prefixes
        )
    return False


# --- references checked on the raw data ----------------------------------------------------


def _reference_issues(doc: Document) -> Iterator[ConfigIssue]:
    data: dict[str, Any] = doc.data
    known = {
        kind: set(data[kind]) if isinstance(data.get(kind), dict) else set()
        for kind in ("sessions", "lists", "schedules")
    }
    routes = data.get("routes")
    seen: dict[str, int] = {}
    if isinstance(routes, list):
        for i, route in enumerate(routes):
            if not isinstance(route, dict):
                continue
            name = route.get("name")
            if isinstance(name, str):
                if name in seen:
                    yield doc.issue(
                        ("routes", i, "name"),
                        f"duplicate route name {name!r} (first used by routes[{seen[name]}])",
                    )
                seen.setdefault(name, i)
            yield from _route_references(doc, route, ("routes", i), known)
    if isinstance(data.get("default"), dict):
        yield from _action_references(doc, data["default"], ("default",), known)


def _route_references(
    doc: Document, route: dict[str, Any], path: Path, known: dict[str, set[str]]
) -> Iterator[ConfigIssue]:
    yield from _action_references(doc, route, path, known)
    for key in ("fallback",):
        if isinstance(route.get(key), dict):
            yield from _action_references(doc, route[key], (*path, key), known)
    limit = route.get("rate_limit")
    if isinstance(limit, dict) and isinstance(limit.get("over_limit"), dict):
        yield from _action_references(
            doc, limit["over_limit"], (*path, "rate_limit", "over_limit"), known
        )
    if isinstance(route.get("split"), list):
        for i, arm in enumerate(route["split"]):
            if isinstance(arm, dict):
                yield from _action_references(doc, arm, (*path, "split", i), known)
    if isinstance(route.get("match"), dict):
        yield from _match_references(doc, route["match"], (*path, "match"), known)


def _action_references(
    doc: Document, action: dict[str, Any], path: Path, known: dict[str, set[str]]
) -> Iterator[ConfigIssue]:
    for kind in ("accept", "refer"):
        value = action.get(kind)
        if kind == "accept" and isinstance(value, str):
            yield from _reference(doc, "sessions", value, (*path, kind, "session"), known)
        elif isinstance(value, dict) and isinstance(value.get("session"), str):
            yield from _reference(
                doc, "sessions", value["session"], (*path, kind, "session"), known
            )


def _match_references(
    doc: Document, match: dict[str, Any], path: Path, known: dict[str, set[str]]
) -> Iterator[ConfigIssue]:
    for party in ("caller", "called", "forwarded_from"):
        value = match.get(party)
        if isinstance(value, dict) and "list" in value:
            names = value["list"] if isinstance(value["list"], list) else [value["list"]]
            for name in names:
                if isinstance(name, str):
                    yield from _reference(doc, "lists", name, (*path, party, "list"), known)
    for key in ("schedule", "outside_schedule"):
        if isinstance(match.get(key), str):
            yield from _reference(doc, "schedules", match[key], (*path, key), known)
    for key in ("all", "any"):
        if isinstance(match.get(key), list):
            for i, sub in enumerate(match[key]):
                if isinstance(sub, dict):
                    yield from _match_references(doc, sub, (*path, key, i), known)
    if isinstance(match.get("not"), dict):
        yield from _match_references(doc, match["not"], (*path, "not"), known)


def _reference(
    doc: Document, kind: str, name: str, path: Path, known: dict[str, set[str]]
) -> Iterator[ConfigIssue]:
    if name in known[kind]:
        return
    singular = kind[:-1]
    names = sorted(known[kind])
    hint = _did_you_mean(name, names) or (
        f" (defined: {', '.join(names)})" if names else f" (no {kind} are defined)"
    )
    yield doc.issue(path, f"unknown {singular} {name!r}{hint}")


# --- error reporting ---------------------------------------------------------------------


def _validation_issues(exc: ValidationError, doc: Document) -> Iterator[ConfigIssue]:
    seen: dict[Path, list[str]] = {}
    for error in exc.errors(include_url=False):
        path = _data_path(doc.data, error["loc"], keep_last=error["type"] == "missing")
        message = _message(error, path)
        messages = seen.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    for path, messages in seen.items():
        yield doc.issue(path, "; ".join(messages[:3]))


def _data_path(data: Any, loc: tuple[int | str, ...], *, keep_last: bool) -> Path:
    """Drop the parts of a pydantic location that name union members, not keys."""
    path: list[str | int] = []
    node = data
    for position, part in enumerate(loc):
        if _has(node, part):
            node = node[part]
            path.append(part)
        elif keep_last and isinstance(part, str) and position == len(loc) - 1:
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
        models, others = _models_at(tuple(error["loc"][:-1]))
        allowed = {key for model in models for key in _fields(model)}
        hint = _did_you_mean(key, allowed)
        if hint:
            return f"unknown key{hint}"
        below = next((p for m in models if (p := _find_below(m, key))), None)
        if below:
            return f"unknown key here: {key} belongs under {below}"
        kinds = [kind for kind, model in others if key in _fields(model)]
        if kinds:
            return f"unknown key for this type ({key} is a key of type {' or '.join(kinds)})"
        return f"unknown key (expected one of: {', '.join(sorted(allowed))})"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _did_you_mean(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _models_at(
    loc: tuple[int | str, ...],
) -> tuple[list[type[BaseModel]], list[tuple[str, type[BaseModel]]]]:
    """The schema models that describe the mapping at pydantic location `loc` (several for
    a union), and the other members of the last union a tag in `loc` chose between, with
    their `type` (to say that a key belongs to another type)."""
    candidates: list[Any] = [schema.RoutesFile]
    others: list[tuple[str, type[BaseModel]]] = []
    for part in loc:
        members = [tagged for tp in candidates for tagged in _tagged(tp)]
        chosen = [m for tags, m in members if part in tags] if len(members) > 1 else []
        if chosen:
            others = [
                (next(iter(sorted(_type_values(m))), m.__name__), m)
                for _, m in members
                if m not in chosen and isinstance(m, type) and issubclass(m, BaseModel)
            ]
            candidates = chosen
            continue
        stepped = [following for _, member in members for following in _step(member, part)]
        # A part that is neither a key nor a tag we know (pydantic names a member with a
        # validator `function-after[...]`): keep every member, as for an untagged union.
        candidates = stepped or candidates
    models = [
        member
        for tp in candidates
        for member in _members(tp)
        if isinstance(member, type) and issubclass(member, BaseModel)
    ]
    return models, others


def _tagged(tp: Any, tags: frozenset[str] = frozenset()) -> list[tuple[frozenset[str], Any]]:
    """The members of a type, each with the names pydantic puts in an error location when
    it picked that member: its Tag, its `type` value, its class name."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(tp)
        return _tagged(inner, tags | {m.tag for m in meta if isinstance(m, Tag)})
    if origin in (typing.Union, types.UnionType):
        return [tagged for arg in typing.get_args(tp) for tagged in _tagged(arg)]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(tags | _type_values(tp) | {tp.__name__}, tp)]
    return [(tags, tp)]


def _type_values(model: type[BaseModel]) -> frozenset[str]:
    field = model.model_fields.get("type")
    if field is None:
        return frozenset()
    return frozenset(
        value
        for member in _members(field.annotation)
        if typing.get_origin(member) is typing.Literal
        for value in typing.get_args(member)
        if isinstance(value, str)
    )


def _fields(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _find_below(model: type[BaseModel], key: str, depth: int = 3) -> str | None:
    """Where under `model` a key is valid (`audio.output` for `voice` in a session)."""
    queue: list[tuple[type[BaseModel], str]] = [(model, "")]
    for _ in range(depth):
        following: list[tuple[type[BaseModel], str]] = []
        for current, where in queue:
            for name, field in current.model_fields.items():
                for member in _members(field.annotation):
                    if isinstance(member, type) and issubclass(member, BaseModel):
                        inner = f"{where}.{name}" if where else name
                        if key in _fields(member):
                            return inner
                        following.append((member, inner))
        queue = following
    return None


def _members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    return [tp]


def _step(tp: Any, part: str | int) -> list[Any]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, field in tp.model_fields.items():
            if part in (name, field.alias):
                return [field.annotation]
        return []
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and isinstance(part, int) and args:
        return [args[0]]
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return [args[1]]
    return []


__all__ = ["compile_rules", "format_path", "load_rules"]
