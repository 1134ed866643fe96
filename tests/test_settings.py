from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.settings import MissingWebhookSecret, Settings
from tests.support import OTHER_SECRET, SECRET

REPO = Path(__file__).resolve().parents[1]


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SWITCHBOARD_")):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = settings()
    assert s.openai_base_url == "https://api.openai.com/v1"
    assert s.dry_run
    assert s.webhook_tolerance_seconds == 300
    assert s.max_body_bytes == 1024 * 1024
    assert s.caller_id_headers == ("P-Asserted-Identity", "Remote-Party-ID", "From")
    assert s.dedupe_horizon_seconds == 72 * 3600
    assert (s.calls_db, s.calls_retention_days) == ("calls.db", 30)


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", f"{SECRET}, {OTHER_SECRET}")
    monkeypatch.setenv("SWITCHBOARD_CALLER_ID_HEADERS", "From, P-Asserted-Identity")
    monkeypatch.setenv("SWITCHBOARD_ANONYMOUS_NUMBERS", "+266696687")
    monkeypatch.setenv("SWITCHBOARD_DEFAULT_REGION", "gb")
    s = settings()
    assert not s.dry_run
    assert s.openai_base_url == "http://127.0.0.1:9/v1"
    assert s.webhook_secrets == (SECRET, OTHER_SECRET)
    assert s.caller_id_headers == ("From", "P-Asserted-Identity")
    assert s.anonymous_numbers == ("+266696687",)
    assert s.default_region == "GB"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"openai_base_url": "ftp://x"}, "must start with http:// or https://"),
        ({"default_region": "XX"}, "'XX' is not an ISO 3166 region"),
        ({"webhook_secrets": "whsec_!!"}, "webhook secret is not whsec_ followed by base64"),
        ({"webhook_secrets": "whsec_c2hvcnQ="}, "webhook secret is too short"),
        ({"webhook_tolerance_seconds": 0}, "greater than or equal to 1"),
        ({"webhook_tolerance_seconds": 10**9}, "less than or equal to 86400"),
        ({"call_deadline_seconds": 0}, "greater than 0"),
        ({"calls_retention_days": 0}, "greater than or equal to 1"),
        ({"calls_db": "  "}, "must be a file path, or :memory:"),
        ({"database_url": "mysql://db/x"}, "must be a postgresql://user:password@host"),
        ({"database_url": "postgresql://db:port/x"}, "is not a valid URL"),
        ({"calls_queue_max": 10}, "greater than or equal to 100"),
        ({"subscribed_events": ""}, "name at least one of live.call.incoming"),
    ],
    ids=[
        "base-url",
        "region",
        "secret-not-base64",
        "secret-short",
        "tolerance-0",
        "tolerance-huge",
        "deadline-0",
        "retention-0",
        "calls-db-blank",
        "database-url-not-postgresql",
        "database-url-bad-port",
        "queue-max-tiny",
        "no-subscribed-event",
    ],
)
def test_invalid_settings(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        settings(**values)


def test_refuses_to_serve_without_secret_unless_insecure() -> None:
    with pytest.raises(MissingWebhookSecret, match="OPENAI_WEBHOOK_SECRET is not set"):
        settings().check_can_serve()
    settings(insecure_skip_signature=True).check_can_serve()
    settings(webhook_secrets=SECRET).check_can_serve()


def test_env_example_documents_every_setting_and_loads() -> None:
    text = (REPO / ".env.example").read_text()
    names = set(re.findall(r"^#? ?([A-Z_]+)=", text, flags=re.M))
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = (
            alias.choices[0]  # type: ignore[union-attr]
            if alias is not None
            else f"SWITCHBOARD_{name.upper()}"
        )
        assert env in names, f"{env} is not documented in .env.example"
    loaded = Settings(_env_file=REPO / ".env.example")
    assert loaded.dry_run and loaded.webhook_secrets == ()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", None),
        ("  ", None),
        ("postgresql://sb:pw@db:5432/switchboard", "postgresql://sb:pw@db:5432/switchboard"),
        (" postgres://db/switchboard ", "postgres://db/switchboard"),
    ],
    ids=["empty", "blank", "postgresql", "postgres-stripped"],
)
def test_database_url(given: str, expected: str | None) -> None:
    value = settings(database_url=given).database_url
    assert (value.get_secret_value() if value else None) == expected
    assert "pw" not in repr(settings(database_url=given))


def test_the_time_past_a_deadline_is_the_routers() -> None:
    """Settings.shutdown_seconds counts on it: a fallback transfer that fails and its
    hang-up (CLEANUP_SECONDS each), then the kept answer's grace."""
    from app import router
    from app.settings import PAST_DEADLINE_SECONDS

    assert PAST_DEADLINE_SECONDS == 2 * router.CLEANUP_SECONDS + router.FINISH_GRACE_SECONDS
