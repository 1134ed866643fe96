"""Our session schemas against the official SDK's param types, for both APIs.

The `openai` package (a test dependency) is generated from OpenAI's API spec; its TypedDicts
are the reference for what an accept may carry:
- Realtime: openai.types.realtime.call_accept_params.CallAcceptParams, the body of
  POST /v1/realtime/calls/{call_id}/accept;
- GPT-Live: openai.types.live.session_accept_params.Session, the `session` of
  POST /v1/live/sessions/{session_id}/accept.

Three checks, so that the day the package changes the suite says where we fell behind:
(a) every key the SDK defines, at every depth and in every member of every union, is a key
    of our schema, and every key of ours is one the SDK defines (we never send what the API
    does not take); every SDK union member has a counterpart;
(b) the bodies we compile for a set of sessions that uses every key conform to the SDK's
    types (checked here, strictly: unknown keys, missing required keys, wrong literals), and
    the SDK's own client sends exactly that session;
(c) wherever the SDK lists values (voices, models, formats, efforts), we list the same ones.
"""

from __future__ import annotations

import collections.abc
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, NotRequired, Required

import httpx2
import openai
import pytest
from openai._types import SequenceNotStr
from openai.types.live import session_accept_params
from openai.types.realtime.call_accept_params import CallAcceptParams
from pydantic import BaseModel
from typing_extensions import is_typeddict

from app.rules import Accept, compile_rules
from app.rules.sessions import LiveSession, SessionConfig

LiveSessionParams = session_accept_params.Session

SWITCHBOARD_KEYS = frozenset({"call"})
"""Ours, never sent: in-call features."""

OPAQUE: dict[str, str] = {
    "prompt.variables": "values are passed through as written (Responses input types)",
}
"""Where our schema deliberately takes any JSON while the SDK has typed members."""


# --- walking types ------------------------------------------------------------------------


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) in (Required, NotRequired, typing.Annotated):
        tp = typing.get_args(tp)[0]
    return tp


CONTAINERS = (
    list,
    tuple,
    collections.abc.Iterable,
    collections.abc.Sequence,
    SequenceNotStr,
)


def members(tp: Any) -> list[Any]:
    """The leaf types of an annotation: unions flattened, list and dict items unwrapped."""
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in members(arg)]
    if origin in CONTAINERS:
        return members(typing.get_args(tp)[0])
    if origin is dict:
        return members(typing.get_args(tp)[1])
    return [tp]


def literals(tp: Any) -> set[Any]:
    return {
        value
        for member in members(tp)
        if typing.get_origin(member) is typing.Literal
        for value in typing.get_args(member)
    }


def open_ended(tp: Any) -> bool:
    """Whether any string is taken (a `str` beside the listed literals)."""
    return str in members(tp)


def sdk_keys(td: Any) -> dict[str, Any]:
    return typing.get_type_hints(td, include_extras=True)


def sdk_required(td: Any) -> set[str]:
    return {k for k, tp in sdk_keys(td).items() if typing.get_origin(tp) is Required}


def our_keys(model: type[BaseModel]) -> dict[str, Any]:
    return {
        (info.alias or name): info.annotation
        for name, info in model.model_fields.items()
        if name not in SWITCHBOARD_KEYS
    }


def discriminators(td_or_model: Any) -> dict[str, set[Any]]:
    """The literal `type` (or `role`) values a TypedDict or model takes."""
    keys = sdk_keys(td_or_model) if is_typeddict(td_or_model) else our_keys(td_or_model)
    return {k: literals(keys[k]) for k in ("type", "role") if k in keys and literals(keys[k])}


def counterparts(td: Any, ours: list[type[BaseModel]]) -> list[type[BaseModel]]:
    """Our models that stand for an SDK TypedDict: the same discriminator value."""
    if len(ours) == 1:
        return ours
    wanted = discriminators(td)
    found = []
    for model in ours:
        theirs = discriminators(model)
        shared = set(wanted) & set(theirs)
        if shared and all(wanted[key] & theirs[key] for key in shared):
            found.append(model)
    return found


@dataclass
class Comparison:
    problems: list[str] = field(default_factory=list)
    seen: set[tuple[Any, Any]] = field(default_factory=set)
    keys_compared: int = 0

    def compare(self, td: Any, model: type[BaseModel], path: str, *, full: bool) -> None:
        """`full`: our model is a whole session (not an override), so required-ness counts."""
        if (td, model) in self.seen:
            return
        self.seen.add((td, model))
        theirs, ours = sdk_keys(td), our_keys(model)
        where = path or "(session)"
        for key in sorted(set(theirs) - set(ours)):
            self.problems.append(f"{where}: the SDK's {td.__name__} has {key!r}; we do not")
        for key in sorted(set(ours) - set(theirs)):
            self.problems.append(f"{where}: we take {key!r}; the SDK's {td.__name__} does not")
        for key in sorted(sdk_required(td) & set(ours)):
            if full and not model.model_fields[key].is_required() and (path, key) != ("", "type"):
                self.problems.append(f"{where}.{key}: required by the SDK, optional for us")
        for key in sorted(set(theirs) & set(ours)):
            self.keys_compared += 1
            self.values(theirs[key], ours[key], f"{path}.{key}" if path else key, key, full)

    def values(self, theirs: Any, ours: Any, path: str, key: str, full: bool) -> None:
        their_dicts = [m for m in members(theirs) if is_typeddict(m)]
        our_models = [m for m in members(ours) if isinstance(m, type) and issubclass(m, BaseModel)]
        self.literals(theirs, ours, path, discriminator=key in ("type", "role"))
        if their_dicts and not our_models:
            if path not in OPAQUE:
                self.problems.append(f"{path}: the SDK has {their_dicts}; we take any value")
            return
        for td in their_dicts:
            matched = counterparts(td, our_models)
            if not matched:
                self.problems.append(f"{path}: no counterpart of the SDK's {td.__name__}")
            for model in matched:
                self.compare(td, model, path, full=full)

    def literals(self, theirs: Any, ours: Any, path: str, *, discriminator: bool) -> None:
        their_values, our_values = literals(theirs), literals(ours)
        if not their_values:
            return
        # A discriminator: our model may stand for several of the SDK's (one per value).
        missing = their_values - our_values if discriminator else their_values ^ our_values
        if missing:
            self.problems.append(
                f"{path}: values differ: SDK {sorted(their_values, key=str)},"
                f" ours {sorted(our_values, key=str)}"
            )
        if open_ended(ours) and not open_ended(theirs):
            self.problems.append(f"{path}: we take any string; the SDK only {their_values}")


@pytest.mark.parametrize(
    ("sdk", "ours"),
    [
        pytest.param(CallAcceptParams, SessionConfig, id="realtime"),
        pytest.param(LiveSessionParams, LiveSession, id="live"),
    ],
)
def test_our_schema_knows_every_key_of_the_sdk_and_no_other(sdk: Any, ours: Any) -> None:
    comparison = Comparison()
    comparison.compare(sdk, ours, "", full=True)
    assert comparison.problems == []
    assert comparison.keys_compared > 40  # the walk went deep, not just the top level


def test_the_comparison_catches_a_key_the_sdk_gains() -> None:
    """The check above can fail: an SDK TypedDict with one more key than ours."""

    class Gained(typing.TypedDict, total=False):
        type: Required[typing.Literal["realtime"]]
        model: str
        instructions: str
        brand_new: int

    class Ours(BaseModel):
        type: typing.Literal["realtime"] | None = None
        model: str | None = None
        instructions: str | None = None
        colour: typing.Literal["red", "blue"] | None = None

    comparison = Comparison()
    comparison.compare(Gained, Ours, "", full=True)
    assert comparison.problems == [
        "(session): the SDK's Gained has 'brand_new'; we do not",
        "(session): we take 'colour'; the SDK's Gained does not",
    ]


# --- (b) bodies we compile conform to the SDK's types ----------------------------------------


def conforms(value: Any, tp: Any, path: str = "") -> list[str]:
    """Why `value` is not a `tp` (strictly: unknown keys are errors), or []."""
    tp = _strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    where = path or "(body)"
    if tp is object or tp is Any:
        return []
    if tp is type(None):
        return [] if value is None else [f"{where}: expected null"]
    if origin in (typing.Union, types.UnionType):
        # A tagged object is checked against the members of its `type` only.
        tagged = [
            arg
            for arg in args
            if isinstance(value, dict)
            and is_typeddict(_strip(arg))
            and value.get("type") in literals(sdk_keys(_strip(arg)).get("type"))
        ]
        found = [conforms(value, arg, path) for arg in tagged or args]
        return [] if any(not f for f in found) else min(found, key=len)
    if origin is typing.Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return [] if ok else [f"{where}: {value!r} is not one of {args}"]
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return [f"{where}: expected an object ({tp.__name__})"]
        keys = sdk_keys(tp)
        problems = [f"{where}.{k}: not a key of {tp.__name__}" for k in value if k not in keys]
        problems += [f"{where}.{k}: required" for k in sorted(sdk_required(tp)) if k not in value]
        for k, item in value.items():
            if k in keys:
                problems += conforms(item, keys[k], f"{path}.{k}" if path else k)
        return problems
    if origin in CONTAINERS:
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in conforms(item, args[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        return [p for k, item in value.items() for p in conforms(item, args[1], f"{path}.{k}")]
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number"]
    if tp in (str, int, bool):
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        return [] if ok else [f"{where}: expected {tp.__name__}"]
    raise AssertionError(f"{where}: no rule for {tp!r}")


REALTIME_SESSIONS = """
sessions:
  everything:
    type: realtime
    model: gpt-realtime-2
    instructions: You answer the phone for Example Co. The caller is {caller_name}.
    audio:
      input:
        format: {type: audio/pcm, rate: 24000}
        noise_reduction: {type: far_field, strength: 0.6}
        transcription:
          model: gpt-transcribe
          language: en
          languages: [en, de]
          prompt: Product names.
          keywords: [Switchboard, Example Co]
          delay: low
        turn_detection:
          type: server_vad
          threshold: 0.6
          prefix_padding_ms: 300
          silence_duration_ms: 500
          idle_timeout_ms: 6000
          create_response: true
          interrupt_response: true
      output: {format: {type: audio/pcmu}, voice: {id: voice_1234}, speed: 1.1}
    tools:
      - type: function
        name: lookup_order
        description: Look an order up.
        parameters: {type: object, properties: {id: {type: string}}}
      - type: mcp
        server_label: crm
        tunnel_id: tunnel_123
        server_description: Orders and customers.
        authorization: token
        headers: {X-Tenant: example}
        allowed_tools: {read_only: true, tool_names: [find_customer]}
        allowed_callers: [direct, programmatic]
        require_approval: {never: {tool_names: [find_customer]}}
        defer_loading: true
      - type: mcp
        server_label: calendar
        connector_id: connector_googlecalendar
        allowed_tools: [list_events]
        require_approval: always
      - type: mcp
        server_label: wiki
        server_url: https://mcp.example.com
        require_approval: {always: {read_only: false, tool_names: [edit]}, never: {read_only: true}}
    tool_choice: {type: mcp, server_label: crm, name: find_customer}
    prompt: {id: pmpt_123, version: "2", variables: {tier: gold}}
    include: [item.input_audio_transcription.logprobs]
    max_output_tokens: 2048
    output_modalities: [audio]
    tracing: {workflow_name: inbound, group_id: desk, metadata: {line: support}}
    truncation:
      type: retention_ratio
      retention_ratio: 0.8
      token_limits: {post_instructions: 8000}
    reasoning: {effort: xhigh}
    parallel_tool_calls: true
    call: {end_call: true, transfers: {sales: "tel:+18005550123"}}
  semantic:
    audio:
      input:
        format: {type: audio/pcma}
        noise_reduction: {type: near_field}
        turn_detection: {type: semantic_vad, eagerness: high, create_response: true}
      output: {format: {type: audio/pcm, rate: 24000}, voice: marin}
    tool_choice: required
    tracing: auto
    truncation: disabled
    max_output_tokens: inf
    output_modalities: [text]
  no_turn_detection:
    audio: {input: {turn_detection: null}}
    tools: [{type: function, name: f}]
    tool_choice: {type: function, name: f}
    truncation: auto
    reasoning: {effort: minimal}
"""

LIVE_SESSIONS = """
sessions:
  responses:
    type: live
    model: gpt-live-1
    instructions: You answer the phone for Café Lumière. The caller is {caller_name}.
    audio: {output: {voice: marin}}
    delegation:
      type: responses
      acknowledgement_delay_ms: 200
      responses:
        model: gpt-5.2
        instructions: Look orders up before you answer.
        max_output_tokens: 1024
        parallel_tool_calls: false
        reasoning: {effort: low, summary: auto}
        service_tier: priority
        text: {verbosity: low}
        tool_choice:
          type: allowed_tools
          mode: auto
          tools:
            - {type: function, name: lookup_order}
            - {type: mcp, server_label: crm, name: find_customer}
            - {type: web_search}
            - {type: custom, name: grammar}
        tools:
          - type: function
            name: lookup_order
            description: Look an order up.
            parameters: {type: object, properties: {id: {type: string}}}
            strict: true
          - type: mcp
            server_label: crm
            server_url: https://mcp.example.com
            allowed_tools: [find_customer]
            allowed_callers: [direct]
            require_approval: {always: {read_only: false}, never: {tool_names: [ping]}}
            defer_loading: false
            headers: {X-Tenant: example}
            authorization: token
            server_description: Customers.
          - {type: mcp, server_label: tunnel, tunnel_id: tunnel_1}
          - {type: mcp, server_label: drive, connector_id: connector_googledrive}
          - {type: web_search}
          - {type: file_search}
          - {type: code_interpreter}
          - {type: image_generation}
          - {type: custom}
          - {type: namespace}
          - {type: tool_search}
          - {type: programmatic_tool_calling}
          - {type: computer}
          - {type: apply_patch}
          - type: shell
            environment:
              type: container_auto
              file_ids: [file_1]
              memory_limit: 4g
              network_policy: {type: allowlist, allowed_domains: [example.com]}
              skills:
                - {type: skill_reference, skill_id: skill_1, version: latest}
                - type: inline
                  name: notes
                  description: Note taking.
                  source: {type: base64, media_type: application/zip, data: UEsDBA==}
          - {type: shell, environment: {type: container_reference, container_id: cntr_1}}
          - type: shell
            environment:
              type: local
              skills: [{name: s, description: d, path: /skills/s}]
          - {type: shell, environment: {type: container_auto, network_policy: {type: disabled}}}
    input:
      - {type: message, role: developer, content: [{type: input_text, text: Account gold.}]}
      - {role: user, id: msg_1, status: completed, content: [{text: Hello}]}
      - {role: assistant, content: [{type: output_text, text: "Hi, how can I help?"}]}
      - {role: assistant, content: [{type: text, text: Anything else?}]}
    safety_identifier: caller-hash-1
    store: true
    triggers:
      - type: decisions
        event_type: session.input_transcript.delta
        decisions:
          questions:
            - {type: predicate, name: angry, instructions: Is the caller angry?}
    call: {end_call: true}
  forced:
    type: live
    model: gpt-live-1
    delegation:
      type: responses
      responses:
        model: gpt-5.2
        tool_choice: {type: mcp, server_label: crm, name: find_customer}
        tools:
          - type: mcp
            server_label: crm
            server_url: https://mcp.example.com
            allowed_tools: {read_only: true, tool_names: [find_customer]}
            require_approval: {always: {tool_names: [delete]}, never: {read_only: true}}
    triggers:
      - type: decisions
        event_type: session.input_transcript.delta
        decisions:
          questions:
            - type: choice
              instructions: [{type: input_text, text: Which department?}]
              choices: [{value: sales, description: Buying.}, {value: support}]
            - type: score
              instructions:
                - {type: input_image, image_url: "https://example.com/a.png", detail: high}
                - {type: input_json, data: [{a: 1}]}
              levels: [{label: calm, description: Calm.}, {label: upset}]
  client:
    type: live
    model: gpt-live-1.1
    audio: {output: {voice: {id: voice_1234}}}
    delegation: {type: client, acknowledgement_delay_ms: 0}
  decisions:
    type: live
    model: gpt-live-1
    delegation:
      type: decisions
      decisions:
        model: gpt-5.2-mini
        questions:
          - type: choice
            name: intent
            instructions: What does the caller want?
            choices: [{value: billing, description: Bills.}, {value: true}]
          - type: score
            instructions:
              - {type: input_text, text: How urgent is it?}
              - {type: input_image, image_url: "https://example.com/a.png", detail: low}
              - {type: input_json, data: {account: gold}}
            levels: [{label: low}, {label: high, description: Now.}]
    triggers:
      - type: decisions
        event_type: session.output_transcript.delta
        decisions:
          questions: [{type: predicate, instructions: Did the agent promise a refund?}]
"""


def compiled(sessions: str) -> dict[str, Accept]:
    """Each named session, accepted by a route of its own name."""
    text = textwrap.dedent(sessions)
    names = [
        line.strip().rstrip(":")
        for line in text.splitlines()
        if line.startswith("  ") and not line.startswith("   ")
    ]
    text += "routes:\n" + "".join(f"  - name: {n}\n    accept: {n}\n" for n in names)
    ruleset = compile_rules(text, "routes.yaml", region="US")
    found: dict[str, Accept] = {}
    for route in ruleset.routes:
        assert isinstance(route.action, Accept)
        found[route.name] = route.action
    return found


def sdk_sends(call: Any) -> Any:
    """The JSON body the official client sends for `call(client)`."""
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200)

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="https://api.openai.test/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )
    call(client)
    (request,) = seen
    return request.url.path, request.content


@pytest.mark.parametrize("name", ["everything", "semantic", "no_turn_detection"])
def test_realtime_bodies_conform_to_the_sdk(name: str) -> None:
    accept = compiled(REALTIME_SESSIONS)[name]
    assert accept.api == "realtime"
    body = json.loads(accept.body)
    assert conforms(body, CallAcceptParams) == []
    path, sent = sdk_sends(lambda client: client.realtime.calls.accept("rtc_1", **body))
    assert path == "/v1/realtime/calls/rtc_1/accept"
    # The same JSON; the SDK orders the keys by its method's parameters.
    assert json.loads(sent) == body


@pytest.mark.parametrize("name", ["responses", "forced", "client", "decisions"])
def test_live_bodies_conform_to_the_sdk(name: str) -> None:
    accept = compiled(LIVE_SESSIONS)[name]
    assert accept.api == "live"
    session = json.loads(accept.body)
    assert conforms(session, LiveSessionParams) == []
    path, sent = sdk_sends(lambda client: client.live.sessions.accept("sess_1", session=session))
    assert path == "/v1/live/sessions/sess_1/accept"
    # Byte for byte what the Live call control sends: the session wrapped, not re-encoded.
    assert sent == b'{"session":' + accept.body + b"}"


@pytest.mark.parametrize(
    ("sessions", "override", "sdk"),
    [
        pytest.param(
            REALTIME_SESSIONS,
            "{session: semantic, audio: {input: {turn_detection: {type: server_vad,"
            " threshold: 0.4}, format: {type: audio/pcm}}}, tool_choice: {type: function,"
            " name: f}}",
            CallAcceptParams,
            id="realtime-other-types",
        ),
        pytest.param(
            REALTIME_SESSIONS,
            "{session: everything, truncation: {type: retention_ratio, retention_ratio: 0.5},"
            " audio: {output: {voice: cedar}}, reasoning: {effort: low}}",
            CallAcceptParams,
            id="realtime-same-types",
        ),
        pytest.param(
            LIVE_SESSIONS,
            # Client delegation has no function tools for Switchboard's: no end_call then.
            "{session: responses, delegation: {type: client}, call: {end_call: false},"
            " audio: {output: {voice: {id: v1}}}}",
            LiveSessionParams,
            id="live-other-delegation",
        ),
        pytest.param(
            LIVE_SESSIONS,
            "{session: responses, delegation: {type: responses, responses: {model: gpt-5.2-mini,"
            " tool_choice: none}}}",
            LiveSessionParams,
            id="live-same-delegation",
        ),
    ],
)
def test_merged_overrides_conform_to_the_sdk(sessions: str, override: str, sdk: Any) -> None:
    """A session merged with a route's overrides is still a body the API takes: a mapping of
    another `type` replaces the session's instead of mixing their keys."""
    text = textwrap.dedent(sessions) + f"routes:\n  - name: only\n    accept: {override}\n"
    (route,) = compile_rules(text, "routes.yaml", region="US").routes
    assert isinstance(route.action, Accept)
    assert conforms(json.loads(route.action.body), sdk) == []


def test_the_sample_sessions_use_every_key_the_sdk_defines() -> None:
    """(b) covers the schema: every key path of the SDK's types appears in some body."""
    for sessions, root in (
        (REALTIME_SESSIONS, CallAcceptParams),
        (LIVE_SESSIONS, LiveSessionParams),
    ):
        used: set[str] = set()
        for accept in compiled(sessions).values():
            used |= key_paths(json.loads(accept.body))
        unused = sorted(defined_paths(root) - used)
        assert unused == [], f"{root.__name__}: no sample body uses {unused}"


def key_paths(value: Any, path: str = "") -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            found |= {here} | (set() if here in OPAQUE else key_paths(item, here))
    elif isinstance(value, list):
        for item in value:
            found |= key_paths(item, path)
    return found


def defined_paths(td: Any, path: str = "", seen: frozenset[Any] = frozenset()) -> set[str]:
    found: set[str] = set()
    for key, tp in sdk_keys(td).items():
        here = f"{path}.{key}" if path else key
        found.add(here)
        if here in OPAQUE:
            continue
        for member in members(tp):
            if is_typeddict(member) and member not in seen:
                found |= defined_paths(member, here, seen | {td})
    return found


def test_the_conformance_check_refuses_what_the_api_refuses() -> None:
    """`conforms` can fail: bodies our schema refuses are refused by the SDK's types too."""
    refused = {
        "type": "realtime",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 8000},
                "turn_detection": {"type": "semantic_vad", "threshold": 0.5},
            }
        },
        "reasoning": {"effort": "maximal"},
    }
    assert conforms(refused, CallAcceptParams) == [
        "audio.input.format.rate: 8000 is not one of (24000,)",
        "audio.input.turn_detection.threshold: not a key of SemanticVad",
        "reasoning.effort: 'maximal' is not one of ('minimal', 'low', 'medium', 'high', 'xhigh')",
    ]
    assert conforms({"session": {}}, LiveSessionParams) == [
        "(body).session: not a key of Session",
        "(body).model: required",
        "(body).type: required",
    ]


# --- (c) listed values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sdk", "ours", "path"),
    [
        pytest.param(CallAcceptParams, SessionConfig, "model", id="realtime-models"),
        pytest.param(CallAcceptParams, SessionConfig, "audio.output.voice", id="realtime-voices"),
        pytest.param(CallAcceptParams, SessionConfig, "audio.input.format", id="realtime-formats"),
        pytest.param(
            CallAcceptParams, SessionConfig, "audio.input.transcription.model", id="transcription"
        ),
        pytest.param(CallAcceptParams, SessionConfig, "reasoning.effort", id="realtime-efforts"),
        pytest.param(LiveSessionParams, LiveSession, "model", id="live-models"),
        pytest.param(LiveSessionParams, LiveSession, "audio.output.voice", id="live-voices"),
        pytest.param(
            LiveSessionParams,
            LiveSession,
            "delegation.responses.reasoning.effort",
            id="responses-efforts",
        ),
    ],
)
def test_listed_values_match_the_sdk(sdk: Any, ours: Any, path: str) -> None:
    theirs, mine = annotation_at(sdk, path), annotation_at(ours, path)
    their_values, our_values = literals(theirs), literals(mine)
    if path == "audio.input.format":
        their_values = {v for m in members(theirs) for v in literals(sdk_keys(m)["type"])}
        our_values = {
            v
            for m in members(mine)
            if isinstance(m, type) and issubclass(m, BaseModel)
            for v in literals(our_keys(m)["type"])
        }
    assert their_values, f"the SDK no longer lists values at {path}"
    assert our_values == their_values


def annotation_at(root: Any, path: str) -> Any:
    current: list[Any] = [root]
    for part in path.split("."):
        following = []
        for tp in current:
            for member in members(tp):
                if is_typeddict(member) and part in sdk_keys(member):
                    following.append(sdk_keys(member)[part])
                elif (
                    isinstance(member, type)
                    and issubclass(member, BaseModel)
                    and part in our_keys(member)
                ):
                    following.append(our_keys(member)[part])
        current = following
    assert current, f"nothing at {path} in {root.__name__}"
    return typing.Union[tuple(current)]  # noqa: UP007 (a runtime union of annotations)
