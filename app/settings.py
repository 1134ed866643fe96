"""Service settings, read once from the environment and `.env`.

OpenAI's own variables keep their usual names (OPENAI_API_KEY, OPENAI_BASE_URL,
OPENAI_WEBHOOK_SECRET); everything of ours is prefixed SWITCHBOARD_.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MIN_ADMIN_TOKEN = 16
PAST_DEADLINE_SECONDS = 4.5
"""The most a webhook is answered after its call's deadline: the clean-ups that get time
of their own (a fallback transfer that fails, then its hang-up: app.router.CLEANUP_SECONDS
each) and the kept answer's grace (app.router.FINISH_GRACE_SECONDS)."""
MIN_SHUTDOWN_SECONDS = 10


class MissingWebhookSecret(Exception):
    """The service would take unverified webhooks."""


CommaList = Annotated[tuple[str, ...], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    # --- OpenAI -------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    """Without a key the service runs in dry-run mode: it decides and logs, calls nothing."""

    openai_base_url: str = Field(
        default=DEFAULT_BASE_URL,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
    )
    webhook_secrets: CommaList = Field(
        default=(),
        validation_alias=AliasChoices("OPENAI_WEBHOOK_SECRET", "webhook_secrets"),
    )
    """One or more `whsec_...` secrets, comma-separated while a secret is being rotated."""

    # --- Webhook ------------------------------------------------------------
    insecure_skip_signature: bool = False
    """Development only: accept unsigned webhooks when no secret is configured."""
    webhook_tolerance_seconds: int = Field(default=300, ge=1, le=86400)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    # --- Routing ------------------------------------------------------------
    routes_file: Path = Path("routes.yaml")
    default_region: str = "US"
    caller_id_headers: CommaList = ("P-Asserted-Identity", "Remote-Party-ID", "From")
    anonymous_numbers: CommaList = ()
    """Fixed numbers some carriers send for withheld callers (e.g. +266696687)."""

    # --- Rules reload and admin ----------------------------------------------
    watch_rules: bool = True
    """Reload when the routes file (or a file it uses) changes; SIGHUP and the admin API
    reload either way."""
    watch_debounce_ms: int = Field(default=300, ge=10, le=60_000)
    """How long the files must be quiet after a change before they are read."""
    admin_token: SecretStr | None = None
    """Bearer token for /admin/*; without one the admin endpoints answer 403."""

    # --- Both APIs ----------------------------------------------------------
    subscribed_events: CommaList = ("realtime.call.incoming", "live.transport.incoming")
    """The incoming-call events the project's webhook subscribes to (docs/webhooks.md, "One
    handler per call"): an event whose API the route did not choose waits for the chosen
    API's event only when that API's event is listed here."""
    pair_wait_seconds: float = Field(default=1.0, ge=0, le=10)
    """How long such an event waits for the chosen API's event before it acts itself."""

    # --- Call control -------------------------------------------------------
    call_deadline_seconds: float = Field(default=5.0, gt=0)
    """Overall budget for one call's API requests, retries included. A graceful stop waits
    for the webhooks in flight accordingly (`shutdown_seconds`)."""
    upstream_timeout_seconds: float = Field(default=2.0, gt=0)
    """Timeout of a single API request."""
    dedupe_horizon_seconds: int = Field(default=72 * 3600, ge=1)

    # --- Call log -----------------------------------------------------------
    calls_db: str = "calls.db"
    """SQLite file of every call's record and events (relative to the working directory;
    the container image uses /data/calls.db on a volume). `:memory:` keeps them in memory
    only, lost at exit."""
    calls_retention_days: int = Field(default=30, ge=1, le=36500)
    """Calls older than this are deleted (at start-up, then hourly)."""
    database_url: SecretStr | None = None
    """postgresql://user:password@host:5432/name: the call records go to PostgreSQL, shared
    by every replica, instead of SWITCHBOARD_CALLS_DB."""
    calls_queue_max: int = Field(default=100_000, ge=100, le=10_000_000)
    """PostgreSQL: call-log writes held in memory while the database is away; more are
    dropped (and counted)."""
    database_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    """PostgreSQL: time limit of each database operation (connect, a write batch, a read)."""
    recover_open_calls: bool = True
    """Internal: `serve --workers N` sets it false for its workers, having ended the calls a
    previous run left open itself before starting them; a worker that uvicorn restarts
    must not end the calls its siblings are handling. Not a setting to change."""

    # --- Replicas -----------------------------------------------------------
    redis_url: SecretStr | None = None
    """redis:// or rediss:// URL (password, db) shared by every replica; unset: one node."""
    replica_id: str = ""
    """This replica's name in the live-call registry; empty: host name plus a random part."""
    live_lease_seconds: float = Field(default=15.0, gt=0, le=3600)
    """How long a replica holds a live call without a heartbeat: after that, another
    replica takes the call over."""
    live_heartbeat_seconds: float = Field(default=5.0, gt=0, le=600)
    """How often a replica renews its calls' leases and looks for calls to take over."""
    # --- Exactly-once state ---------------------------------------------------
    state_db: str | None = None
    """SQLite file of the exactly-once claims and rate-limit counts, shared by every process
    on this data directory. Default: `state.db` beside SWITCHBOARD_CALLS_DB (in memory when
    the call log is). `:memory:` keeps them in this process only: a restart forgets them."""
    state_timeout_seconds: float = Field(default=0.5, gt=0, le=30)
    """Timeout of one state-store command (always within the call's deadline too)."""
    claim_lease_seconds: float = Field(default=5.0, ge=0.1, le=600)
    """How long a claim outlives a process that stopped renewing it (a crash, kill -9):
    renewed every third of it while the process lives."""

    # --- Logging ------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_phone_numbers: bool = False
    """Log phone numbers in full; masked by default since they are personal data."""

    # --- Server (used by `switchboard serve`) ---------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    _split = field_validator(
        "subscribed_events",
        "webhook_secrets",
        "caller_id_headers",
        "anonymous_numbers",
        mode="before",
    )(_split_commas)

    @field_validator("subscribed_events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from app.intake.events import INCOMING_EVENTS

        if not value:
            # Every incoming call would be answered "ignored": refused rather than silent.
            raise ValueError(f"name at least one of {', '.join(sorted(INCOMING_EVENTS))}")
        unknown = [name for name in value if name not in INCOMING_EVENTS]
        if unknown:
            raise ValueError(
                f"unknown event {unknown[0]!r}: use {', '.join(sorted(INCOMING_EVENTS))}"
            )
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("calls_db")
    @classmethod
    def _calls_db(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must be a file path, or :memory:")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # `SWITCHBOARD_DATABASE_URL=` in .env: the SQLite default
        url = value.get_secret_value().strip()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql://user:password@host:port/name URL")
        try:
            urlsplit(url).port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise ValueError(f"is not a valid URL: {exc}") from None
        return SecretStr(url)

    @field_validator("state_db")
    @classmethod
    def _state_db(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # `SWITCHBOARD_STATE_DB=` means the default
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        from app.state.redis import RedisConfigError, parse_url

        try:
            parse_url(url)  # the host, the port and the database number
        except RedisConfigError as exc:
            raise ValueError(str(exc)) from None
        return SecretStr(url)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.live_heartbeat_seconds * 2 > self.live_lease_seconds:
            raise ValueError(
                "SWITCHBOARD_LIVE_HEARTBEAT_SECONDS must be at most half of "
                "SWITCHBOARD_LIVE_LEASE_SECONDS (a late heartbeat must not lose the calls)"
            )
        return self

    @property
    def state_path(self) -> str:
        """SWITCHBOARD_STATE_DB, or `state.db` beside the call log (memory beside memory)."""
        if self.state_db is not None:
            return self.state_db
        if self.calls_db == ":memory:":
            return ":memory:"
        return str(Path(self.calls_db).with_name("state.db"))

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str) -> str:
        import phonenumbers

        value = value.strip().upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not an ISO 3166 region phonenumbers knows")
        return value

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # `SWITCHBOARD_ADMIN_TOKEN=` in .env means "no admin API"
        token = value.get_secret_value().strip()
        if len(token) < MIN_ADMIN_TOKEN:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN} characters (e.g. `openssl rand -hex 32`)"
            )
        return SecretStr(token)

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from app.intake.webhook import decode_secret

        for secret in value:
            decode_secret(secret)  # raises ValueError with a precise message
        return value

    @property
    def shutdown_seconds(self) -> int:
        """How long a graceful stop (SIGTERM) waits for the webhooks in flight before it
        cancels them: the longest one can take, half a second to spare, and never less
        than uvicorn's usual 10 s. A webhook cancelled after its request was sent is
        answered 'uncertain' when redelivered (the call may be lost)."""
        longest = self.call_deadline_seconds + PAST_DEADLINE_SECONDS + 0.5
        return max(MIN_SHUTDOWN_SECONDS, math.ceil(longest))

    def check_can_serve(self) -> None:
        """Refuse to take webhooks that nobody verifies, unless told so explicitly."""
        if not self.webhook_secrets and not self.insecure_skip_signature:
            raise MissingWebhookSecret(
                "OPENAI_WEBHOOK_SECRET is not set. Set it to the webhook's signing secret "
                "(whsec_...), or set SWITCHBOARD_INSECURE_SKIP_SIGNATURE=true for local "
                "development only."
            )

    @property
    def single_replica(self) -> bool:
        """No other replica shares the records' database (they would share Redis)."""
        return self.redis_url is None

    @property
    def dry_run(self) -> bool:
        return self.openai_api_key is None or not self.openai_api_key.get_secret_value()
