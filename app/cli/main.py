"""`switchboard` command line: serve, check, simulate."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from app.settings import MissingWebhookSecret, Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.rules import RuleSet
    from app.sip.identity import IdentityPolicy


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        _print_setting_errors(exc)
        return 2
    try:
        result: int = args.handler(args, settings)
    except BrokenPipeError:
        # `switchboard schema | head`: the reader left; there is nobody to tell.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


def _print_setting_errors(exc: ValidationError, *, flags: bool = False) -> None:
    for error in exc.errors(include_url=False):
        name = ".".join(str(p) for p in error["loc"])
        if flags:
            name = f"--{name.replace('routes_file', 'routes').replace('_', '-')}"
        print(f"switchboard: {'' if flags else 'setting '}{name}: {error['msg']}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Route SIP calls arriving at OpenAI's voice APIs (GPT-Live, Realtime).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the webhook service")
    serve.add_argument("--host", help="listen address (default: SWITCHBOARD_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: SWITCHBOARD_PORT or 8000)")
    serve.add_argument("--routes", type=Path, help="routes file (default: SWITCHBOARD_ROUTES_FILE)")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes sharing the port, one per core (default 1); more than one "
        "needs exactly-once state they share (SQLite or Redis, not :memory:)",
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check", help="validate a routes file; exit 0 if valid, 1 if not")
    check.add_argument("routes", nargs="?", type=Path, help="default: SWITCHBOARD_ROUTES_FILE")
    check.set_defaults(handler=_check)

    simulate = commands.add_parser(
        "simulate",
        help="send a signed incoming-call webhook (Realtime, or --live) to a running instance",
    )
    simulate.add_argument("--url", help="webhook URL (default: http://HOST:PORT/webhooks/openai)")
    simulate.add_argument("--caller", default="+14155550123", help="calling number or SIP user")
    simulate.add_argument("--called", default="+18005550100", help="called number")
    simulate.add_argument("--name", help="caller display name")
    simulate.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra SIP header (repeatable), e.g. -H 'X-Customer-Tier: gold'",
    )
    simulate.add_argument(
        "--live",
        action="store_true",
        help="send GPT-Live's live.transport.incoming instead of realtime.call.incoming",
    )
    simulate.add_argument(
        "--call-id",
        help="call id (default: a random rtc_... id; with --live a live_... session id)",
    )
    simulate.add_argument("--webhook-id", help="webhook id (default: random; reuse to redeliver)")
    simulate.add_argument("--media-security", default="srtp", help="srtp, rtp or '' for absent")
    simulate.set_defaults(handler=_simulate)

    explain = commands.add_parser(
        "explain", help="show how a call would be routed, and why earlier routes did not match"
    )
    explain.add_argument("--routes", type=Path, help="default: SWITCHBOARD_ROUTES_FILE")
    explain.add_argument("--caller", default="+14155550123", help="calling number or SIP user")
    explain.add_argument("--called", default="+18005550100", help="called number")
    explain.add_argument("--name", help="caller display name")
    explain.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a SIP header (repeatable); From/To given here replace the made-up ones",
    )
    explain.add_argument(
        "--headers-file",
        type=Path,
        help="raw INVITE header lines ('Name: value'), '-' for standard input",
    )
    explain.add_argument("--time", help="when the call arrives, ISO 8601 with offset (default now)")
    explain.add_argument("--media-security", default="srtp", help="srtp, rtp or '' for absent")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(handler=_explain)

    test = commands.add_parser(
        "test", help="check sample calls against their expected routes; exit 1 on any mismatch"
    )
    test.add_argument("calls", type=Path, help="YAML file of sample calls with expectations")
    test.add_argument("--routes", type=Path, help="default: SWITCHBOARD_ROUTES_FILE")
    test.set_defaults(handler=_test)

    schema = commands.add_parser("schema", help="print the JSON Schema of routes.yaml")
    schema.set_defaults(handler=_schema)
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    # What can refuse the start comes first, before the server's imports (uvicorn, FastAPI,
    # the app: ~0.5 s of CPU), so that a refusal is quick; a `--workers` supervisor never
    # needs the app at all (each worker process imports its own).
    from app.ops.logs import configure_logging
    from app.rules import RulesError, load_rules

    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("routes_file", args.routes))
        if v is not None
    }
    try:
        # Validated like the environment: `--port 99999` is refused, not handed to uvicorn.
        settings = Settings.model_validate({**settings.model_dump(), **overrides})
    except ValidationError as exc:
        _print_setting_errors(exc, flags=True)
        return 2
    configure_logging(settings.log_level)
    if hasattr(signal, "SIGHUP"):
        # Until the app (or the workers' supervisor) takes SIGHUP as "reload", from here
        # through loading the rules, it must not end the process.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers: int = args.workers
    if workers > 1 and not _state_is_shared(settings):
        print(
            f"switchboard: --workers {workers} needs exactly-once state that the worker "
            "processes share, and this one is kept in each process's memory "
            "(SWITCHBOARD_STATE_DB=:memory:): two workers could answer the same call. Serve "
            "with one worker, or keep the state in SQLite (the default) or Redis.",
            file=sys.stderr,
        )
        return 2
    try:
        settings.check_can_serve()
        rules = load_rules(settings.routes_file, region=settings.default_region)
    except MissingWebhookSecret as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    except RulesError as exc:
        print(f"switchboard: cannot start, {settings.routes_file} is invalid:", file=sys.stderr)
        print(exc, file=sys.stderr)
        return 1
    if workers > 1:
        del rules  # checked here so that a bad file fails at once; each worker loads its own
        if not _end_calls_left_open(settings):
            return 1
    import uvicorn

    if workers > 1:
        # The workers are new processes: they read their settings from the environment.
        os.environ.update(
            {f"SWITCHBOARD_{name.upper()}": str(value) for name, value in overrides.items()}
        )
        # Ended above, once: a worker (one uvicorn restarts, too) must not end the calls
        # the other workers are handling.
        os.environ["SWITCHBOARD_RECOVER_OPEN_CALLS"] = "false"
        # uvicorn.run makes its supervisor from this name: ours passes SIGHUP on.
        # (`uvicorn.main` is the package's function of that name: the module is looked up.)
        setattr(importlib.import_module("uvicorn.main"), "Multiprocess", _supervisor_class())  # noqa: B010
        uvicorn.run(
            "app.cli.main:worker_app",
            factory=True,
            workers=workers,
            # A worker must be serving within this, or uvicorn kills it and starts another.
            # Its 5 s default is less than a start-up takes on a busy machine (imports, the
            # rules, a large list): workers were killed and restarted without end.
            timeout_worker_healthcheck=WORKER_START_SECONDS,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_seconds,
        )
        return 0
    from app.main import create_app

    app = create_app(settings, rules=rules)
    del rules  # this frame lasts as long as the server: do not pin the first rules after a reload
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_seconds,
    )
    return 0


WORKER_START_SECONDS = 60


def _supervisor_class() -> type[Any]:
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's, but SIGHUP (the documented reload) is passed to each worker, whose
        RulesManager reloads. uvicorn replaced every worker instead: their calls' in-call
        sessions were dropped, and a bad edit showed only as a worker that did not start
        (no rules_reload_failed, no metric, nothing in /admin/status)."""

        def handle_hup(self) -> None:
            for process in self.processes:
                if process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)

    return Supervisor


def _end_calls_left_open(settings: Settings) -> bool:
    """The calls a previous run left open ended by the supervisor, before the workers start;
    False (said) if the call database cannot be used, as a worker's start would fail."""
    from app.records.build import end_calls_left_open
    from app.records.calllog import CallLogError

    database_url = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        end_calls_left_open(
            settings.calls_db,
            database_url=database_url,
            timeout=settings.database_timeout_seconds,
            single_replica=settings.single_replica,
        )
    except CallLogError as exc:
        print(f"switchboard: cannot start: {exc}", file=sys.stderr)
        return False
    return True


def worker_app() -> FastAPI:
    """The app of one `serve --workers N` worker process, from the environment."""
    from app.main import create_app
    from app.ops.logs import configure_logging

    if hasattr(signal, "SIGHUP"):
        # A reload passed on by the supervisor before this worker takes it must not end it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def _state_is_shared(settings: Settings) -> bool:
    """Whether every worker process sees the same exactly-once claims (app.state.build):
    Redis, or a SQLite file; not `:memory:`, which is one store per process."""
    return settings.redis_url is not None or settings.state_path != ":memory:"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from app.rules import RulesError, load_rules

    path: Path = args.routes or settings.routes_file
    try:
        rules = load_rules(path, region=settings.default_region)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        count = len(exc.issues)
        print(f"{path}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    for warning in rules.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(f"{path}: OK, {len(rules.routes)} routes, version {rules.version}")
    return 0


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.simulate import incoming_call_event, parse_header_line, signed_request

    try:
        extra = [parse_header_line(line) for line in args.header]
    except ValueError as exc:
        print(f"switchboard simulate: {exc}", file=sys.stderr)
        return 2
    event = incoming_call_event(
        caller=args.caller,
        called=args.called,
        caller_name=args.name,
        extra_headers=extra,
        call_id=args.call_id,
        media_security=args.media_security or None,
        live=args.live,
    )
    secret = settings.webhook_secrets[0] if settings.webhook_secrets else None
    if secret is None:
        print("switchboard simulate: no OPENAI_WEBHOOK_SECRET; sending unsigned", file=sys.stderr)
    body, headers = signed_request(event, secret, webhook_id=args.webhook_id)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
    url = args.url or f"http://{host}:{settings.port}/webhooks/openai"
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        print(f"switchboard simulate: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(f"POST {url} -> {response.status_code}")
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.is_success else 1


def _policy(settings: Settings) -> IdentityPolicy:
    from app.sip.identity import IdentityPolicy

    return IdentityPolicy(
        default_region=settings.default_region,
        caller_headers=settings.caller_id_headers,
        anonymous_numbers=frozenset(settings.anonymous_numbers),
    )


def _load(path: Path, settings: Settings) -> RuleSet | None:
    from app.rules import RulesError, load_rules

    try:
        return load_rules(path, region=settings.default_region)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return None


def _explain(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, datetime

    from app.cli.explain import checked_time, explain, sample_call, to_json, to_text
    from app.cli.simulate import parse_header_block, parse_header_line

    try:
        headers = [parse_header_line(line) for line in args.header]
        if args.headers_file is not None:
            raw = (
                sys.stdin.read()
                if str(args.headers_file) == "-"
                else args.headers_file.read_text(encoding="utf-8")
            )
            headers += parse_header_block(raw)
        hint = "--time needs a UTC offset, e.g. 2026-11-24T10:00:00-08:00"
        now = (
            checked_time(datetime.fromisoformat(args.time), hint)
            if args.time
            else datetime.now(UTC)
        )
    except (OSError, ValueError) as exc:
        print(f"switchboard explain: {exc}", file=sys.stderr)
        return 2
    rules = _load(args.routes or settings.routes_file, settings)
    if rules is None:
        return 1
    call = sample_call(
        _policy(settings),
        caller=args.caller,
        called=args.called,
        caller_name=args.name,
        headers=headers,
        media_security=args.media_security or None,
    )
    result = explain(rules, call, now)
    if args.json:
        print(json.dumps(to_json(result, rules), indent=2, ensure_ascii=False))
    else:
        print(to_text(result, rules))
    return 0


def _test(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.routetest import SampleFileError, load_samples, report, run_samples

    try:
        samples = load_samples(args.calls)
    except SampleFileError as exc:
        print(f"switchboard test: {exc}", file=sys.stderr)
        return 2
    rules = _load(args.routes or settings.routes_file, settings)
    if rules is None:
        return 1
    results = run_samples(rules, samples, _policy(settings))
    print(report(results))
    return 0 if all(r.passed for r in results) else 1


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from app.rules.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
