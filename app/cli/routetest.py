"""`switchboard test`: sample calls with their expected route and action, checked against
a routes file before it is deployed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from app.cli.explain import action_fields, checked_time, sample_call
from app.cli.simulate import parse_header_line
from app.rules import RulesError, RuleSet
from app.rules.source import parse_yaml
from app.sip.identity import IdentityPolicy


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    route: str | None = None
    action: Literal["accept", "reject", "refer"] | None = None
    api: Literal["realtime", "live"] | None = None
    """The API the call is answered through (accept and refer)."""
    status_code: int | None = None
    target_uri: str | None = None
    arm: str | None = None
    instructions_contain: str | None = None


class SampleCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    caller: str = "+14155550123"
    called: str = "+18005550100"
    caller_name: str | None = None
    headers: list[str] | dict[str, str] = Field(default_factory=list)
    """Raw `Name: value` lines, or a mapping of name to value."""
    media_security: str | None = "srtp"
    time: datetime | None = None
    expect: Expectation

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        hint = "give the time with its UTC offset, e.g. 2026-11-24T10:00:00-08:00"
        return value if value is None else checked_time(value, hint)

    def header_items(self) -> list[tuple[str, str]]:
        if isinstance(self.headers, dict):
            return [(k, str(v)) for k, v in self.headers.items()]
        return [parse_header_line(line) for line in self.headers]


_SAMPLES = TypeAdapter(list[SampleCall])


class SampleFileError(Exception):
    pass


def load_samples(path: Path) -> list[SampleCall]:
    try:
        # The routes file's loader: `+14155550123` unquoted stays text, not a number.
        data = parse_yaml(path.read_text(encoding="utf-8"), str(path)).data
    except (OSError, UnicodeDecodeError) as exc:
        raise SampleFileError(f"{path}: cannot read: {exc}") from None
    except RulesError as exc:
        raise SampleFileError(str(exc)) from None
    if isinstance(data, dict) and "calls" in data:
        data = data["calls"]
    try:
        samples = _SAMPLES.validate_python(data)
        for sample in samples:
            sample.header_items()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise SampleFileError(f"{path}: {problems}") from None
    except ValueError as exc:
        raise SampleFileError(f"{path}: {exc}") from None
    return samples


@dataclass(frozen=True, slots=True)
class Result:
    sample: SampleCall
    differences: tuple[tuple[str, Any, Any], ...]
    """(field, expected, actual) for every expectation not met."""

    @property
    def passed(self) -> bool:
        return not self.differences


def run_samples(rules: RuleSet, samples: list[SampleCall], policy: IdentityPolicy) -> list[Result]:
    results = []
    for sample in samples:
        call = sample_call(
            policy,
            caller=sample.caller,
            called=sample.called,
            caller_name=sample.caller_name,
            headers=sample.header_items(),
            media_security=sample.media_security,
        )
        decision = rules.decide(call, sample.time or datetime.now(UTC), sample.name)
        actual: dict[str, Any] = {"route": decision.route, "arm": decision.arm}
        actual.update(action_fields(decision.action))
        differences: list[tuple[str, Any, Any]] = []
        for field, expected in sample.expect.model_dump(exclude_none=True).items():
            if field == "instructions_contain":
                text = str(actual.get("session", {}).get("instructions", ""))
                if expected not in text:
                    differences.append((field, expected, text))
            elif actual.get(field) != expected:
                differences.append((field, expected, actual.get(field)))
        results.append(Result(sample, tuple(differences)))
    return results


def report(results: list[Result]) -> str:
    lines = []
    for result in results:
        if result.passed:
            lines.append(f"PASS  {result.sample.name}")
            continue
        lines.append(f"FAIL  {result.sample.name}")
        for field, expected, actual in result.differences:
            lines.append(f"      - expected {field}: {expected}")
            lines.append(f"      + actual   {field}: {actual}")
    failed = sum(1 for r in results if not r.passed)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
