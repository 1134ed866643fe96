"""The client-side cost of one call-control request through `PoolTransport.send_bytes`.

N sequential POSTs on one kept-alive connection to the stand-in API (bench.e2e.standin,
started here as a child process unless --port names a running one), with the headers
call control sends (`Direct`'s: taken from an httpx request once, Content-Length filled
in per request). Prints this process's CPU per request (time.process_time: the stand-in's
is its own process's), warm-up excluded:

    python -m bench.transportcost -n 2000 --uvloop

For a number that does not depend on what else runs on the machine, count instructions:

    valgrind --tool=callgrind --zero-before=getppid --dump-before=getpgrp \
        --callgrind-out-file=/tmp/cg.%p python -m bench.transportcost -n 300 --uvloop

The timed loop is bracketed by getppid() and getpgrp() (as in bench.inprocess): the
first dump's total (`callgrind_annotate /tmp/cg.<pid>.1 | head`) divided by -n is the
instructions per request. The stand-in is a child process, which valgrind does not trace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

from app.openai.callcontrol import LIMITS
from app.openai.transport import PoolTransport

WARM_UP = 50
BODY = b'{"type":"realtime","model":"gpt-realtime","instructions":"You are a helpful agent."}'


def _headers(base: str) -> list[tuple[bytes, bytes]]:
    sample = httpx.Request(
        "POST",
        f"{base}/realtime/calls/x/accept",
        headers={
            "Authorization": "Bearer sk-bench",
            "User-Agent": "switchboard/0.1",
            "Content-Type": "application/json",
        },
        content=BODY,
    )
    return list(sample.headers.raw)


async def _run(port: int, count: int) -> float:
    transport = PoolTransport(limits=LIMITS)
    raw = _headers(f"http://127.0.0.1:{port}/v1")
    urls = [
        httpcore.URL(
            scheme=b"http",
            host=b"127.0.0.1",
            port=port,
            target=b"/v1/realtime/calls/rtc_%032x/accept" % i,
        )
        for i in range(count + WARM_UP)
    ]
    try:
        for url in urls[:WARM_UP]:
            await transport.send_bytes(url, raw, BODY, 2.0)
        began = time.process_time()
        os.getppid()  # callgrind: --zero-before=getppid
        for url in urls[WARM_UP:]:
            status, _, _ = await transport.send_bytes(url, raw, BODY, 2.0)
            if status != 200:
                raise RuntimeError(f"the stand-in answered {status}")
        os.getpgrp()  # callgrind: --dump-before=getpgrp
        return time.process_time() - began
    finally:
        await transport.aclose()


@contextlib.contextmanager
def _standin() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    child = subprocess.Popen([sys.executable, "-m", "bench.e2e.standin", str(port)])
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.02)
        yield port
    finally:
        child.terminate()
        child.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--port", type=int, help="a stand-in already running there")
    parser.add_argument("--uvloop", action="store_true", help="serve's event loop")
    args = parser.parse_args(argv)
    runner: Any = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    with contextlib.ExitStack() as stack:
        port = args.port if args.port is not None else stack.enter_context(_standin())
        spent = runner(_run(port, args.requests))
    print(f"{args.requests} requests: {spent / args.requests * 1e6:.1f} µs CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
