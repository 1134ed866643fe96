"""Webhooks through the ASGI app in-process: the per-call cost of our own code, countable.

No server, no sockets and no load generator: each pre-signed `realtime.call.incoming`
delivery (bench.e2e.webhooks' calls, SIP headers from bench.workload) is handed to the app
as uvicorn would hand it (the same scope, one body message), one after the other, with
the JSON log lines written (to /dev/null) and the call recorded. The call-control API is a
stand-in transport answering 200 (`--dry-run`: no API, nothing acted on).

Meant for instruction counts, which do not depend on what else runs on the machine:

    valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgrp \
        --callgrind-out-file=/tmp/cg.%p python -m bench.inprocess -n 500 --uvloop

The loop of webhooks is bracketed by calls to getppid() and getpgrp() (libc functions
nothing else here calls): callgrind zeroes its counters at the first and dumps them at the
second, so the first dump's total (`callgrind_annotate /tmp/cg.<pid>.1 | head`) divided
by -n is the instructions per webhook, start-up excluded. Without valgrind it prints the
wall time per webhook (noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from app.ops.logs import configure_logging
from app.rules import load_rules
from app.settings import Settings
from bench.e2e.webhooks import bench_secret, event, signed_request
from bench.workload import REGION, CallMaker, write_list, write_routes

ROUTES = 20
LISTED = 100


class StandIn(httpx.AsyncBaseTransport):
    """OpenAI's call-control API answering 200 to everything, in-process."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return httpx.Response(200)


def _deliveries(secret: str, maker: CallMaker, count: int) -> list[tuple[list[Any], bytes]]:
    """(ASGI headers, body) of `count` signed deliveries of fresh calls."""
    from app.intake.webhook import decode_secret

    key = decode_secret(secret)
    now = int(time.time())
    out = []
    for i in range(count):
        call = maker.make()
        body = json.dumps(event(f"rtc_{i:032x}", call.headers, now), separators=(",", ":")).encode()
        raw = signed_request(key, body, host="127.0.0.1:8000", timestamp=now)
        head = raw[: raw.index(b"\r\n\r\n")].split(b"\r\n")[1:]
        headers = [tuple(line.split(b": ", 1)) for line in head]
        out.append(([(name.lower(), value) for name, value in headers], body))
    return out


def _scope(headers: list[Any]) -> dict[str, Any]:
    # What uvicorn's httptools protocol builds for a request.
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/webhooks/openai",
        "raw_path": b"/webhooks/openai",
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


async def _run(app: Any, deliveries: Sequence[tuple[list[Any], bytes]]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, replies.put)
    )
    started = await replies.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"app did not start: {started}")

    os.getppid()  # callgrind: --zero-before=getppid
    for headers, body in deliveries:
        sent = False

        async def receive(body: bytes = body) -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # a client that stays connected
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                statuses[status] = statuses.get(status, 0) + 1

        await app(_scope(headers), receive, send)
    os.getpgrp()  # callgrind: --dump-before=getpgrp

    await startup.put({"type": "lifespan.shutdown"})
    await replies.get()
    await lifespan
    return statuses


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--calls", type=int, default=1000)
    parser.add_argument("--dry-run", action="store_true", help="no API key: nothing acted on")
    parser.add_argument("--uvloop", action="store_true", help="serve's event loop")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-inprocess-"))
    listed = write_list(workdir, LISTED)
    routes = write_routes(workdir, ROUTES, listed.path)
    secret = bench_secret()
    deliveries = _deliveries(secret, CallMaker(routes, listed), args.calls)
    settings = Settings(
        _env_file=None,
        openai_api_key=None if args.dry_run else "sk-bench",
        openai_base_url="http://standin.test/v1",
        webhook_secrets=secret,
        webhook_tolerance_seconds=86400,  # valgrind is slow
        routes_file=routes.path,
        default_region=REGION,
        watch_rules=False,
        calls_db=":memory:",
    )
    # The log lines are formatted and written, as `switchboard serve` does, to nowhere.
    configure_logging("info")
    devnull = open(os.devnull, "w")  # noqa: SIM115
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(devnull)
    standin = StandIn()
    app = create_app(
        settings,
        rules=load_rules(routes.path, region=REGION),
        transport=None if args.dry_run else standin,
    )
    if args.uvloop:
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    began = time.perf_counter()
    statuses = runner(_run(app, deliveries))
    spent = time.perf_counter() - began
    print(
        f"{args.calls} webhooks: statuses {statuses}, {standin.requests} API requests, "
        f"{spent / max(1, args.calls) * 1e6:.0f} µs per webhook (wall, with start-up)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
