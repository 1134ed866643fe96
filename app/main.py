"""The ASGI application: create_app(settings) wires the pieces; errors map to HTTP here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from app.endpoint import WEBHOOK_PATH, SwitchboardApp, WebhookEndpoint
from app.incall.control import AnyReplicaControl
from app.incall.keeper import LiveCallKeeper
from app.incall.session import InCallManager
from app.intake.events import INCOMING_EVENTS
from app.intake.webhook import SignatureVerifier
from app.openai.callcontrol import (
    CallControl,
    CallController,
    DryRunCallControl,
    LiveCallControl,
    RetryPolicy,
    build_http_client,
)
from app.openai.sideband import WebSocketConnector
from app.ops.admin import CallsControl, install_admin
from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.records.build import build_call_log, close_call_log, open_call_log
from app.records.calllog import CallLog, ReportsBacklog, WritesWhenIdle
from app.router import CallRouter, Pairing
from app.rules import RuleSet
from app.settings import Settings
from app.sip.identity import IdentityPolicy
from app.state.build import State, build_state
from app.state.claims import ClaimStore, StateUnavailable
from app.state.livecalls import (
    LiveCallRegistry,
    MemoryLiveCalls,
    RedisLiveCalls,
    new_replica_id,
)
from app.state.ratelimit import RateLimits

logger = logging.getLogger("switchboard")


def create_app(
    settings: Settings,
    *,
    rules: RuleSet | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    store: ClaimStore | None = None,
    limits: RateLimits | None = None,
    call_log: CallLog | None = None,
    calls_control: CallsControl | None = None,
) -> FastAPI:
    """The app. `call_log`: where every call is recorded, by default the one
    SWITCHBOARD_CALLS_DB names; either way it is opened at start-up and closed last at
    shutdown when it has open()/close() (ManagedCallLog). `calls_control`: what the admin
    API's hang-up and transfer use (tests inject one; else the in-call manager).
    `store`, `limits`: the exactly-once state, by default the one the settings name
    (app.state.build); an injected store is opened and closed with the app too."""
    settings.check_can_serve()
    metrics = Metrics()
    if call_log is None:
        call_log = build_call_log(
            settings.calls_db,
            settings.calls_retention_days,
            database_url=settings.database_url.get_secret_value()
            if settings.database_url
            else None,
            queue_max=settings.calls_queue_max,
            timeout=settings.database_timeout_seconds,
            single_replica=settings.single_replica,
            recover_open_calls=settings.recover_open_calls,
        )
    metrics.watch_call_log(call_log)
    manager = RulesManager(
        settings.routes_file,
        region=settings.default_region,
        metrics=metrics,
        rules=rules,
        on_activate=metrics.routes_loaded,
    )
    verifier = (
        SignatureVerifier(
            settings.webhook_secrets, tolerance_seconds=settings.webhook_tolerance_seconds
        )
        if settings.webhook_secrets
        else None
    )
    client: httpx.AsyncClient | None = None
    incall: InCallManager | None = None
    keeper: LiveCallKeeper | None = None
    registry: LiveCallRegistry | None = None
    state: State | None = build_state(settings) if store is None else None
    if settings.dry_run:
        controller: CallController = DryRunCallControl()
        live_controller: CallController = controller
    else:
        assert settings.openai_api_key is not None
        client = build_http_client(
            settings.openai_base_url,
            settings.openai_api_key.get_secret_value(),
            transport=transport,
        )
        retry = RetryPolicy(attempt_timeout=settings.upstream_timeout_seconds)
        controller = CallControl(
            client, policy=retry, observer=metrics.upstream_observer("realtime")
        )
        live_controller = LiveCallControl(
            client, policy=retry, observer=metrics.upstream_observer("live")
        )
        replica = settings.replica_id or new_replica_id()
        if state is not None and state.redis is not None:
            # Replicas share the registry of live calls: any one carries on a dead one's.
            registry = RedisLiveCalls(
                state.redis, replica, lease_seconds=settings.live_lease_seconds
            )
        else:
            registry = MemoryLiveCalls(replica, lease_seconds=settings.live_lease_seconds)
        key = settings.openai_api_key.get_secret_value()
        incall = InCallManager(
            connector=WebSocketConnector(settings.openai_base_url, key),
            controller=controller,
            live_connector=WebSocketConnector(settings.openai_base_url, key, api="live"),
            live_controller=live_controller,
            call_log=call_log,
            metrics=metrics,
            registry=registry,
        )
        if isinstance(registry, RedisLiveCalls):
            keeper = LiveCallKeeper(
                registry,
                incall,
                metrics,
                heartbeat_seconds=settings.live_heartbeat_seconds,
                lease_seconds=settings.live_lease_seconds,
            )
        if calls_control is None:
            calls_control = AnyReplicaControl(incall, registry)
    if state is not None:
        store = state.claims
        limits = limits if limits is not None else state.limits
    assert store is not None
    claims: ClaimStore = store
    subscribed = frozenset(INCOMING_EVENTS[name] for name in settings.subscribed_events)
    router = CallRouter(
        controller=controller,
        live_controller=live_controller,
        pairing=Pairing(expected=subscribed, wait_seconds=settings.pair_wait_seconds),
        store=claims,
        limiter=limits,
        metrics=metrics,
        policy=IdentityPolicy(
            default_region=settings.default_region,
            caller_headers=settings.caller_id_headers,
            anonymous_numbers=frozenset(settings.anonymous_numbers),
        ),
        deadline_seconds=settings.call_deadline_seconds,
        dry_run=settings.dry_run,
        log_numbers=settings.log_phone_numbers,
        call_log=call_log,
        incall=incall,
    )
    metrics.dry_run.set(1 if settings.dry_run else 0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Opened first and closed last: everything else may write to it until it stops.
        await open_call_log(call_log)
        try:
            # Redis unreachable: not ready (/readyz) until it answers. Refused (password,
            # database) or an unusable SQLite file: the service does not start.
            await claims.open()
        except Exception as exc:
            # Here, not at the top: redis is imported by a deployment that has Redis only.
            from app.state.redis import RedisConfigError

            if isinstance(exc, RedisConfigError):
                logger.error(
                    "cannot use SWITCHBOARD_REDIS_URL: %s", exc, extra={"event": "state_refused"}
                )
            await close_call_log(call_log)
            raise
        if settings.dry_run:
            logger.warning(
                "OPENAI_API_KEY is not set: dry-run mode, calls are decided and logged "
                "but no call-control request is made",
                extra={"event": "dry_run"},
            )
        if verifier is None:
            logger.warning(
                "INSECURE: webhook signatures are not verified (no OPENAI_WEBHOOK_SECRET)",
                extra={"event": "insecure"},
            )
        try:
            async with manager.running(
                watch=settings.watch_rules, debounce_ms=settings.watch_debounce_ms
            ):
                if keeper is not None:
                    keeper.start()
                yield
        finally:
            # Uvicorn gets here once the requests in flight (webhooks) have finished.
            try:
                if keeper is not None:
                    await keeper.stop()  # take no more calls over while leaving
                if incall is not None:
                    # The calls carry on at OpenAI, without us; another replica (if any)
                    # takes them over at its next heartbeat.
                    await incall.shutdown()
                if registry is not None:
                    await registry.close()
                if client is not None:
                    await client.aclose()
                await claims.close()
            finally:
                await close_call_log(call_log)

    app = SwitchboardApp(
        title="Switchboard",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    # POST /webhooks/openai: served ahead of FastAPI's stack (app.endpoint); the route
    # registered here is what FastAPI answers for the path's other methods (405).
    webhook = WebhookEndpoint(
        route=router.handle,
        rules=lambda: manager.current,
        metrics=metrics,
        verifier=verifier,
        subscribed=subscribed,
        max_body_bytes=settings.max_body_bytes,
        # The SQLite call log writes while no webhook is in flight, not during calls.
        on_idle=call_log.idle if isinstance(call_log, WritesWhenIdle) else None,
    )
    app.webhook = webhook
    app.router.routes.append(Route(WEBHOOK_PATH, webhook, methods=["POST"]))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        # Public, like /healthz: status and rules version only. What the routes file is
        # called, and the errors of a refused reload (values from the file), are admin
        # business: GET /admin/status.
        rules = manager.current
        if rules is None:
            return JSONResponse({"status": "not ready", "detail": "rules not loaded"}, 503)
        try:
            await claims.ping()
        except StateUnavailable:
            # Its error names the store's host: GET /admin/status shows it.
            return JSONResponse({"status": "not ready", "detail": "state store unavailable"}, 503)
        ready = {"status": "ready", "rules_version": rules.version}
        if isinstance(call_log, ReportsBacklog) and call_log.backlog().stalled:
            # Said, still 200: calls route without their records, and an instance taken
            # out of the load balancer for its call log would miss calls.
            ready["call_log"] = "not writing"
        return JSONResponse(ready)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    install_admin(
        app,
        manager,
        settings.admin_token,
        call_log=call_log,
        metrics=metrics,
        state_check=claims.ping,
        calls_control=calls_control,
        dry_run=settings.dry_run,
    )

    app.state.rules = manager
    app.state.metrics = metrics
    app.state.call_log = call_log
    app.state.claims = claims
    app.state.shared = state
    return app
