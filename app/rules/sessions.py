"""Session configs: what an accept sends to OpenAI, for the Realtime API and for GPT-Live.

A named session under `sessions:` is a Realtime session unless it says `type: live`.
Each model follows the official SDK's param types, which are the reference for the API
(Realtime: openai.types.realtime.call_accept_params.CallAcceptParams; Live:
openai.types.live.session_accept_params.Session). tests/rules/test_sessions_sdk.py walks
those types and fails the day the SDK gains a field we do not know, or a value we take
stops being one it takes. Limits the API documents in prose (an 8 kHz PCM rate, VAD keys
of the other VAD type) are enforced here, since a refused accept drops a ringing call.

`call:` is Switchboard's own (in-call features over the sideband) and is never sent.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Final, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from app.rules.ruleset import Api
from app.rules.strict import Strict
from app.rules.templates import placeholders, validate_target_uri


def _templates(value: Any) -> Any:
    """Check {placeholders} in every string of a value (load-time errors)."""
    if isinstance(value, str):
        placeholders(value)
    elif isinstance(value, dict):
        for item in value.values():
            _templates(item)
    return value


def _type_of(value: Any, default: str) -> Any:
    if isinstance(value, dict):
        return value.get("type", default)
    return getattr(value, "type", None) or default


# --- shared -----------------------------------------------------------------------------

MCP_CONNECTORS = Literal[
    "connector_dropbox",
    "connector_gmail",
    "connector_googlecalendar",
    "connector_googledrive",
    "connector_microsoftteams",
    "connector_outlookcalendar",
    "connector_outlookemail",
    "connector_sharepoint",
]


MCP_SERVER_KEYS: Final = ("server_url", "connector_id", "tunnel_id")


def _one_mcp_server(tool: McpTool | LiveMcpTool) -> None:
    """An MCP tool names its server one way (both APIs): a URL, a connector or a tunnel."""
    if sum(1 for key in MCP_SERVER_KEYS if getattr(tool, key)) != 1:
        raise ValueError(f"give exactly one of: {', '.join(MCP_SERVER_KEYS)}")


class McpToolFilter(Strict):
    read_only: bool | None = None
    tool_names: list[str] | None = None


class McpApprovalFilter(Strict):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


class CustomVoice(Strict):
    """A custom voice by its ID (`voice_1234`)."""

    id: str = Field(min_length=1)


# --- Realtime: the body of POST /v1/realtime/calls/{call_id}/accept ------------------------

# Known names, for editors and the SDK comparison; any other name is sent as written (the
# API may know newer ones than this file).
REALTIME_MODELS = Literal[
    "gpt-realtime",
    "gpt-realtime-1.5",
    "gpt-realtime-2",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
    "gpt-realtime-2025-08-28",
    "gpt-4o-realtime-preview",
    "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-realtime-preview-2025-06-03",
    "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-realtime-preview-2024-12-17",
    "gpt-realtime-mini",
    "gpt-realtime-mini-2025-10-06",
    "gpt-realtime-mini-2025-12-15",
    "gpt-audio-1.5",
    "gpt-audio-mini",
    "gpt-audio-mini-2025-10-06",
    "gpt-audio-mini-2025-12-15",
]
TRANSCRIPTION_MODELS = Literal[
    "whisper-1",
    "gpt-transcribe",
    "gpt-live-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
]
REALTIME_VOICES = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"
]


class PcmFormat(Strict):
    type: Literal["audio/pcm"]
    rate: Literal[24000] | None = None
    """PCM is 24 kHz only; for 8 kHz telephone audio use audio/pcmu or audio/pcma."""

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        if value not in (None, 24000):
            raise ValueError(
                f"audio/pcm is 24000 Hz only, not {value}: for 8 kHz audio use audio/pcmu "
                "or audio/pcma"
            )
        return value


class PcmuFormat(Strict):
    type: Literal["audio/pcmu"]


class PcmaFormat(Strict):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[PcmFormat | PcmuFormat | PcmaFormat, Field(discriminator="type")]


class NoiseReduction(Strict):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = Field(default=None, ge=0)
    """Suppression strength; higher suppresses more (1 when first enabled)."""


class Transcription(Strict):
    model: TRANSCRIPTION_MODELS | str | None = None
    language: str | None = None
    languages: list[str] | None = None
    """Possible languages (ISO-639-1), for gpt-transcribe and gpt-live-transcribe."""
    prompt: str | None = None
    keywords: list[str] | None = None
    """Words or phrases that guide transcription (gpt-transcribe, gpt-live-transcribe)."""
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    """How long to wait before emitting text (gpt-realtime-whisper only)."""


class ServerVad(Strict):
    type: Literal["server_vad"]
    threshold: float | None = Field(default=None, ge=0, le=1)
    prefix_padding_ms: int | None = Field(default=None, ge=0)
    silence_duration_ms: int | None = Field(default=None, ge=0)
    idle_timeout_ms: int | None = Field(default=None, ge=0)
    """Only server_vad has an idle timeout."""
    create_response: bool | None = None
    interrupt_response: bool | None = None


class SemanticVad(Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AudioInput(Strict):
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    """null turns turn detection off."""


class AudioOutput(Strict):
    format: AudioFormat | None = None
    voice: REALTIME_VOICES | str | CustomVoice | None = None
    """A built-in voice (marin, cedar, ...) or a custom voice {id: voice_...}."""
    speed: float | None = Field(default=None, ge=0.25, le=1.5)


class Audio(Strict):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpTool(Strict):
    type: Literal["mcp"]
    server_label: str
    server_url: str | None = None
    connector_id: MCP_CONNECTORS | None = None
    tunnel_id: str | None = None
    """A Secure MCP Tunnel instead of a server URL."""
    server_description: str | None = None
    authorization: str | None = None
    headers: dict[str, str] | None = None
    allowed_tools: list[str] | McpToolFilter | None = None
    allowed_callers: list[Literal["direct", "programmatic"]] | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = None
    defer_loading: bool | None = None
    """Discovered through tool search rather than loaded up front."""

    @model_validator(mode="after")
    def _server(self) -> McpTool:
        _one_mcp_server(self)
        return self


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


class McpChoice(Strict):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


class Prompt(Strict):
    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None

    _tmpl = field_validator("variables")(_templates)


class Tracing(Strict):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None

    _tmpl = field_validator("workflow_name", "group_id", "metadata")(_templates)


class TokenLimits(Strict):
    post_instructions: int | None = Field(default=None, ge=1)
    """Tokens allowed after the instructions before truncation happens."""


class Truncation(Strict):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0, le=1)
    token_limits: TokenLimits | None = None


class Reasoning(Strict):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


# --- in-call features: Switchboard's, over the sideband; never sent to OpenAI --------

_DESTINATION = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DTMF_KEYS = frozenset("0123456789*#ABCD")


class Destination(Strict):
    uri: str
    """tel:, sip: or sips: URI (no placeholders: the model picks names, never addresses)."""
    description: str | None = None
    """What the model is told this destination is for."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return validate_target_uri(value)


class DtmfAction(Strict):
    transfer: str | None = None
    """A destination name from `transfers:`."""
    hangup: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> DtmfAction:
        if (self.transfer is None) == (self.hangup is None):
            raise ValueError("give exactly one of: transfer, hangup")
        if self.hangup is False:
            raise ValueError("hangup: true, or leave the key out")
        return self


class MaxDuration(Strict):
    seconds: float = Field(gt=0, le=24 * 3600)
    warning_before: float | None = Field(default=None, gt=0)
    """Seconds before the end to say `warning`."""
    warning: str = "Tell the caller politely that the call has to end in a moment."
    """Instructions for the spoken warning."""

    @model_validator(mode="after")
    def _order(self) -> MaxDuration:
        if self.warning_before is not None and self.warning_before >= self.seconds:
            raise ValueError("warning_before must be shorter than seconds")
        return self


class CallFeaturesSpec(Strict):
    """What Switchboard does during an accepted call, over the sideband WebSocket."""

    greeting: bool | str | None = None
    """The agent speaks first: true, or instructions for what to say."""
    transfers: dict[str, Destination | str] | None = None
    """Names the model may transfer to (a `transfer_call` tool): a URI or {uri, description}."""
    transfer_message: str | None = None
    """Instructions for a short line the agent says before a transfer."""
    end_call: bool | None = None
    """Give the model an `end_call` tool to hang up after saying goodbye."""
    dtmf: dict[str, Literal["hangup"] | DtmfAction] | None = None
    """Keypad digits -> `hangup` or {transfer: name}."""
    max_duration: float | MaxDuration | None = None
    """Hang up after this many seconds (optionally with a spoken warning)."""

    @field_validator("transfers")
    @classmethod
    def _names(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, destination in (value or {}).items():
            if not _DESTINATION.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a destination name (lower-case letters, digits, - and _)"
                )
            if isinstance(destination, str):
                validate_target_uri(destination)
        return value

    @field_validator("dtmf", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if str(key) not in DTMF_KEYS:
                    raise ValueError(f"{key!r} is not a keypad key (0-9, *, #, A-D)")
            return {str(k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _dtmf_targets(self) -> CallFeaturesSpec:
        names = set(self.transfers or {})
        for key, action in (self.dtmf or {}).items():
            if isinstance(action, DtmfAction) and action.transfer not in (None, *names):
                raise ValueError(
                    f"dtmf {key!r} transfers to {action.transfer!r}, which is not in transfers"
                    + (f" ({', '.join(sorted(names))})" if names else "")
                )
        return self


class SessionConfig(Strict):
    """A Realtime session; the router adds `type: realtime` when accepting.

    `instructions`, `prompt.variables` and `tracing` strings may hold {placeholders}.
    `call:` holds Switchboard's in-call features and is not sent to OpenAI."""

    type: Literal["realtime"] | None = None
    """Optional: a session without `type` is a Realtime session."""
    model: REALTIME_MODELS | str | None = None
    instructions: str | None = None
    audio: Audio | None = None
    tools: list[Tool] | None = None
    tool_choice: (
        Literal["auto", "none", "required"]
        | Annotated[FunctionChoice | McpChoice, Field(discriminator="type")]
        | None
    ) = None
    prompt: Prompt | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=4096)] | Literal["inf"] | None = None
    output_modalities: list[Literal["audio", "text"]] | None = Field(
        default=None, min_length=1, max_length=1
    )
    """["audio"] (with a transcript) or ["text"]: the API takes one, not both."""
    tracing: Literal["auto"] | Tracing | None = None
    truncation: Literal["auto", "disabled"] | Truncation | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None
    call: CallFeaturesSpec | None = None

    _tmpl = field_validator("instructions")(_templates)


RealtimeSession = SessionConfig


# --- GPT-Live: the `session` of POST /v1/live/sessions/{session_id}/accept -----------------

LIVE_MODELS = Literal["gpt-live-1", "gpt-live-1.1"]

LIVE_VOICES = Literal[
    "alloy",
    "ash",
    "ballad",
    "beacon",
    "bossa",
    "cedar",
    "cinder",
    "coral",
    "delta",
    "echo",
    "gleam",
    "marin",
    "meridian",
    "quartz",
    "ripple",
    "sage",
    "shida",
    "shimmer",
    "stone",
    "tempo",
    "verse",
    "vesper",
    "willow",
]


class LiveAudioOutput(Strict):
    voice: LIVE_VOICES | str | CustomVoice | None = None
    """A built-in voice (marin by default) or {id: voice_...}; fixed once the call starts."""


class LiveAudio(Strict):
    """Only the voice: SIP negotiates the media format (audio.format is refused)."""

    output: LiveAudioOutput | None = None


# Initial conversation history: text only, one part per message.


class InputText(Strict):
    text: str
    type: Literal["input_text"] | None = None


class AssistantText(Strict):
    text: str
    type: Literal["text"] | None = None


class AssistantOutputText(Strict):
    text: str
    type: Literal["output_text"]


class _Message(Strict):
    type: Literal["message"] | None = None
    id: str | None = None
    status: Literal["incomplete", "completed"] | None = None


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: list[InputText] = Field(min_length=1, max_length=1)


class UserMessage(_Message):
    role: Literal["user"]
    content: list[InputText] = Field(min_length=1, max_length=1)


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: list[
        Annotated[
            Annotated[AssistantText, Tag("text")]
            | Annotated[AssistantOutputText, Tag("output_text")],
            Discriminator(lambda value: _type_of(value, "text")),
        ]
    ] = Field(min_length=1, max_length=1)


InitialItem = Annotated[
    DeveloperMessage | UserMessage | AssistantMessage, Field(discriminator="role")
]


# Decisions: questions a Decisions model answers (delegation and triggers).


class DecisionInputText(Strict):
    type: Literal["input_text"]
    text: str


class DecisionInputImage(Strict):
    type: Literal["input_image"]
    image_url: str
    detail: Literal["low", "high", "auto", "original"] | None = None


class DecisionInputJson(Strict):
    type: Literal["input_json"]
    data: dict[str, Any] | list[dict[str, Any]]


DecisionPart = Annotated[
    DecisionInputText | DecisionInputImage | DecisionInputJson, Field(discriminator="type")
]
DecisionInstructions = str | list[DecisionPart]


class ChoiceOption(Strict):
    value: str | bool
    description: str | None = None


class ScoreLevel(Strict):
    label: str
    description: str | None = None


class ChoiceQuestion(Strict):
    type: Literal["choice"]
    instructions: DecisionInstructions
    choices: list[ChoiceOption] = Field(min_length=1)
    name: str | None = None


class PredicateQuestion(Strict):
    type: Literal["predicate"]
    instructions: DecisionInstructions
    name: str | None = None


class ScoreQuestion(Strict):
    type: Literal["score"]
    instructions: DecisionInstructions
    levels: list[ScoreLevel] = Field(min_length=1)
    name: str | None = None


DecisionQuestion = Annotated[
    ChoiceQuestion | PredicateQuestion | ScoreQuestion, Field(discriminator="type")
]


class DecisionsConfig(Strict):
    model: str
    questions: list[DecisionQuestion] = Field(min_length=1)


class TriggerDecisions(Strict):
    questions: list[DecisionQuestion] = Field(min_length=1)


class DecisionTrigger(Strict):
    type: Literal["decisions"]
    event_type: Literal["session.input_transcript.delta", "session.output_transcript.delta"]
    decisions: TriggerDecisions


# Responses delegation: the backend model, prompt and tools the Live session hands tasks to.


class ResponsesReasoning(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["concise", "detailed", "auto"] | None = None


class ResponsesText(Strict):
    verbosity: Literal["low", "medium", "high"] | None = None


class LiveFunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class LiveMcpTool(Strict):
    type: Literal["mcp"]
    server_label: str | None = None
    server_url: str | None = None
    connector_id: str | None = None
    tunnel_id: str | None = None
    server_description: str | None = None
    authorization: str | None = None
    headers: dict[str, str] | None = None
    allowed_tools: list[str] | McpToolFilter | None = None
    allowed_callers: list[Literal["direct", "programmatic"]] | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = None
    defer_loading: bool | None = None

    @model_validator(mode="after")
    def _server(self) -> LiveMcpTool:
        _one_mcp_server(self)
        return self


class NetworkDisabled(Strict):
    type: Literal["disabled"]


class NetworkAllowlist(Strict):
    type: Literal["allowlist"]
    allowed_domains: list[str]


class SkillReference(Strict):
    type: Literal["skill_reference"]
    skill_id: str
    version: str | None = None


class InlineSkillSource(Strict):
    type: Literal["base64"]
    media_type: Literal["application/zip"]
    data: str


class InlineSkill(Strict):
    type: Literal["inline"]
    name: str
    description: str
    source: InlineSkillSource


class ContainerAuto(Strict):
    type: Literal["container_auto"]
    file_ids: list[str] | None = None
    memory_limit: Literal["1g", "4g", "16g", "64g"] | None = None
    network_policy: (
        Annotated[NetworkDisabled | NetworkAllowlist, Field(discriminator="type")] | None
    ) = None
    skills: list[Annotated[SkillReference | InlineSkill, Field(discriminator="type")]] | None = None


class ContainerReference(Strict):
    type: Literal["container_reference"]
    container_id: str


class LocalSkill(Strict):
    name: str
    description: str
    path: str


class LocalEnvironment(Strict):
    type: Literal["local"]
    skills: list[LocalSkill] | None = None


class ShellTool(Strict):
    type: Literal["shell"]
    environment: (
        Annotated[
            ContainerAuto | ContainerReference | LocalEnvironment, Field(discriminator="type")
        ]
        | None
    ) = None


class HostedTool(Strict):
    """A Responses tool given by its type alone."""

    type: Literal[
        "web_search",
        "file_search",
        "code_interpreter",
        "image_generation",
        "custom",
        "namespace",
        "tool_search",
        "programmatic_tool_calling",
        "computer",
        "apply_patch",
    ]


HOSTED_TOOLS: Final = frozenset(typing.get_args(HostedTool.model_fields["type"].annotation))


def _tool_kind(value: Any) -> str:
    kind = _type_of(value, "")
    return "hosted" if kind in HOSTED_TOOLS else kind


LiveTool = Annotated[
    Annotated[LiveFunctionTool, Tag("function")]
    | Annotated[LiveMcpTool, Tag("mcp")]
    | Annotated[ShellTool, Tag("shell")]
    | Annotated[HostedTool, Tag("hosted")],
    Discriminator(_tool_kind),
]


class NamedChoice(Strict):
    """Force one function or custom tool."""

    type: Literal["function", "custom"]
    name: str


class McpToolChoice(Strict):
    type: Literal["mcp"]
    server_label: str
    name: str


class HostedChoice(Strict):
    type: Literal[
        "file_search",
        "web_search",
        "web_search_preview",
        "image_generation",
        "computer",
        "code_interpreter",
        "programmatic_tool_calling",
        "shell",
        "apply_patch",
    ]


def _choice_kind(value: Any) -> str:
    kind = _type_of(value, "")
    if kind in ("function", "custom"):
        return "named"
    if kind in ("mcp", "allowed_tools"):
        return str(kind)
    return "hosted"


AllowedTool = Annotated[
    Annotated[NamedChoice, Tag("named")]
    | Annotated[McpToolChoice, Tag("mcp")]
    | Annotated[HostedChoice, Tag("hosted")],
    Discriminator(_choice_kind),
]


class AllowedToolsChoice(Strict):
    type: Literal["allowed_tools"]
    tools: list[AllowedTool] = Field(min_length=1)
    mode: Literal["none", "auto", "required"] | None = None


ToolChoice = Annotated[
    Annotated[NamedChoice, Tag("named")]
    | Annotated[McpToolChoice, Tag("mcp")]
    | Annotated[HostedChoice, Tag("hosted")]
    | Annotated[AllowedToolsChoice, Tag("allowed_tools")],
    Discriminator(_choice_kind),
]


class ResponsesConfig(Strict):
    model: str
    """The Responses model that handles delegated tasks."""
    instructions: str | None = None
    """The backend prompt (business rules, tool workflows), separate from the Live one."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    parallel_tool_calls: bool | None = None
    reasoning: ResponsesReasoning | None = None
    service_tier: (
        Literal["auto", "default", "fast_tier_temp_pilot", "flex", "priority", "ultrafast"] | None
    ) = None
    text: ResponsesText | None = None
    tool_choice: Literal["auto", "none", "required"] | ToolChoice | None = None
    tools: list[LiveTool] | None = None


class ClientDelegation(Strict):
    """Delegated tasks come to the application (over the sideband)."""

    type: Literal["client"]
    acknowledgement_delay_ms: int | None = Field(default=None, ge=0)


class ResponsesDelegation(Strict):
    """Delegated tasks go to a Responses model that the Live session runs."""

    type: Literal["responses"]
    responses: ResponsesConfig
    acknowledgement_delay_ms: int | None = Field(default=None, ge=0)


class DecisionsDelegation(Strict):
    type: Literal["decisions"]
    decisions: DecisionsConfig
    acknowledgement_delay_ms: int | None = Field(default=None, ge=0)


Delegation = Annotated[
    ClientDelegation | ResponsesDelegation | DecisionsDelegation, Field(discriminator="type")
]

MAX_INITIAL_ITEMS = 128


class LiveFields(Strict):
    """The keys of a Live session, each optional: what an accept may override."""

    type: Literal["live"]
    model: LIVE_MODELS | str | None = None
    """gpt-live-1, gpt-live-1.1, ..."""
    instructions: str | None = None
    """Frontend instructions (voice, conversation, when to delegate); may hold {placeholders}."""
    audio: LiveAudio | None = None
    delegation: Delegation | None = None
    """Who handles delegated tasks: client (the application; the default), responses or
    decisions."""
    input: list[InitialItem] | None = Field(default=None, max_length=MAX_INITIAL_ITEMS)
    """Text history before the call starts."""
    safety_identifier: str | None = None
    store: bool | None = None
    triggers: list[DecisionTrigger] | None = None
    call: CallFeaturesSpec | None = None

    _tmpl = field_validator("instructions")(_templates)

    @field_validator("triggers")
    @classmethod
    def _one_per_event(cls, value: list[DecisionTrigger] | None) -> list[DecisionTrigger] | None:
        events = [trigger.event_type for trigger in value or ()]
        if len(events) != len(set(events)):
            raise ValueError("at most one trigger per event_type")
        return value


class LiveSession(LiveFields):
    """A GPT-Live session (`type: live`); the accept sends it as `{"session": {...}}`."""

    model: LIVE_MODELS | str
    """gpt-live-1, gpt-live-1.1, ..."""


# --- a named session is one or the other ---------------------------------------------------

Session = Annotated[
    Annotated[SessionConfig, Tag("realtime")] | Annotated[LiveSession, Tag("live")],
    Discriminator(
        lambda value: _type_of(value, "realtime"),
        custom_error_type="session_type",
        custom_error_message="type must be realtime (the default) or live",
    ),
]


def api_of(session: SessionConfig | LiveFields) -> Api:
    return "live" if isinstance(session, LiveFields) else "realtime"


__all__ = [
    "Api",
    "CallFeaturesSpec",
    "Destination",
    "LiveFields",
    "LiveSession",
    "MaxDuration",
    "RealtimeSession",
    "Session",
    "SessionConfig",
    "api_of",
]
