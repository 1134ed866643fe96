"""The shape of routes.yaml, as pydantic models. Unknown keys are errors everywhere.

Validation here is per value (a status code, a URI, a number pattern); relations between
parts of the file (a route naming a session that does not exist) are checked by compile.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.sip import canonical_name, to_e164


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- session config: the body of POST /realtime/calls/{id}/accept -----------------


class AudioFormat(Strict):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int | None = None


class NoiseReduction(Strict):
    type: Literal["near_field", "far_field"]


class Transcription(Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class TurnDetection(Strict):
    type: Literal["server_vad", "semantic_vad"]
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class AudioInput(Strict):
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None


class AudioOutput(Strict):
    format: AudioFormat | None = None
    voice: str | None = None
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
    connector_id: str | None = None
    server_description: str | None = None
    authorization: str | None = None
    headers: dict[str, str] | None = None
    allowed_tools: list[str] | dict[str, Any] | None = None
    require_approval: Literal["always", "never"] | dict[str, Any] | None = None


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


class Tracing(Strict):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


class Truncation(Strict):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(gt=0, le=1)


class Reasoning(Strict):
    effort: Literal["minimal", "low", "medium", "high"]


class SessionConfig(Strict):
    """A realtime session; the router adds `type: realtime` when accepting."""

    model: str | None = None
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
    output_modalities: list[Literal["audio", "text"]] | None = None
    tracing: Literal["auto"] | Tracing | None = None
    truncation: Literal["auto", "disabled"] | Truncation | None = None
    reasoning: Reasoning | None = None
    parallel_tool_calls: bool | None = None


# --- matchers ---------------------------------------------------------------------

_PREFIX = re.compile(r"\+?[0-9]{1,20}")
_SEPARATORS = re.compile(r"[\s\-.()]")


def normalise_number_pattern(pattern: str, region: str) -> str:
    """`+1 415 555 0100` -> `+14155550100`; `+1415*` stays a prefix; `1001` an extension."""
    text = _SEPARATORS.sub("", pattern.strip())
    if text.endswith("*"):
        stem = text[:-1]
        if not _PREFIX.fullmatch(stem):
            raise ValueError(f"{pattern!r} is not a number prefix (digits, optional +, then *)")
        return text
    if not _PREFIX.fullmatch(text):
        raise ValueError(f"{pattern!r} is not a phone number")
    e164 = to_e164(text, region)
    if e164 is None and text.startswith("+"):
        raise ValueError(f"{pattern!r} is not a possible E.164 number")
    return e164 or text  # short codes and extensions are compared as dialled


def _number_patterns(value: Any, info: ValidationInfo) -> Any:
    region = (info.context or {}).get("region", "US")
    items = [value] if isinstance(value, str | int) else value
    if not isinstance(items, list) or not items:
        raise ValueError("expected a number, a prefix ending in *, or a non-empty list of them")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ValueError("numbers must be written as strings, e.g. '+14155550123'")
        out.append(normalise_number_pattern(str(item), region))
    return tuple(out)


class HeaderCondition(Strict):
    equals: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderCondition:
        if (self.equals is None) == (self.present is None):
            raise ValueError("give exactly one of: equals, present")
        return self


class MatchSpec(Strict):
    """All conditions given must hold."""

    caller: tuple[str, ...] | None = None
    called: tuple[str, ...] | None = None
    headers: dict[str, str | HeaderCondition] | None = None
    anonymous: bool | None = None

    _numbers = field_validator("caller", "called", mode="before")(_number_patterns)

    @field_validator("headers")
    @classmethod
    def _header_names(
        cls, value: dict[str, str | HeaderCondition] | None
    ) -> dict[str, str | HeaderCondition] | None:
        if value is not None:
            seen: set[str] = set()
            for name in value:
                if not re.fullmatch(r"[A-Za-z0-9!%*_+`'~.-]+", name):
                    raise ValueError(f"{name!r} is not a SIP header name")
                if canonical_name(name) in seen:
                    raise ValueError(f"header {name!r} is given twice")
                seen.add(canonical_name(name))
        return value


# --- actions ----------------------------------------------------------------------

_TEL = re.compile(r"tel:\+?[0-9][0-9\-.()]{1,30}(;[A-Za-z0-9\-]+(=[A-Za-z0-9\-+.%]+)?)*")
_SIP = re.compile(
    r"sips?:([A-Za-z0-9\-_.!~*'()&=+$,;?/%]+@)?"
    r"([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
    r"(;[A-Za-z0-9\-_.!~*'()%]+(=[A-Za-z0-9\-_.!~*'()%\[\]:]+)?)*"
)


def validate_target_uri(uri: str) -> str:
    """A single tel:, sip: or sips: URI with no embedded headers, spaces or brackets."""
    text = uri.strip()
    if _TEL.fullmatch(text) or (_SIP.fullmatch(text) and "?" not in text.partition("@")[2]):
        return text
    raise ValueError(
        f"{uri!r} is not a transfer target: use tel:+14155550123, sip:user@host or sips:user@host"
    )


class AcceptAction(SessionConfig):
    session: str | None = None
    """Name of a session under `sessions:`; the other keys here override it."""


class RejectAction(Strict):
    status_code: int = Field(default=603, ge=400, le=699)


class ReferAction(Strict):
    target_uri: str
    session: str | None = None
    """Session for the short accept that REFER needs; a minimal one by default."""

    _uri = field_validator("target_uri")(validate_target_uri)


class ActionSpec(Strict):
    accept: AcceptAction | None = None
    reject: RejectAction | None = None
    refer: ReferAction | None = None

    @field_validator("accept", mode="before")
    @classmethod
    def _session_shorthand(cls, value: Any) -> Any:
        return {"session": value} if isinstance(value, str) else value

    @field_validator("reject", mode="before")
    @classmethod
    def _reject_shorthand(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, int) and not isinstance(value, bool):
            return {"status_code": value}
        return value

    @field_validator("refer", mode="before")
    @classmethod
    def _refer_shorthand(cls, value: Any) -> Any:
        return {"target_uri": value} if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _keep_bare_reject(cls, data: Any) -> Any:
        # `reject:` with nothing after it means "reject with the default code".
        if isinstance(data, dict) and "reject" in data and data["reject"] is None:
            return {**data, "reject": {}}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionSpec:
        given = [n for n in ("accept", "reject", "refer") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one action: accept, reject or refer"
                + (f" (found {', '.join(given)})" if given else "")
            )
        return self


class RouteSpec(ActionSpec):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    match: MatchSpec | None = None
    """Absent: the route matches every call."""


class RoutesFile(Strict):
    version: Literal[1] = 1
    sessions: dict[str, SessionConfig] = Field(default_factory=dict)
    routes: list[RouteSpec] = Field(default_factory=list)
    default: ActionSpec = Field(default_factory=lambda: ActionSpec(reject=RejectAction()))
    """What happens to a call no route matches."""
