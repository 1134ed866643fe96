"""A fast local stand-in for OpenAI's call-control API, for load tests.

`python -m bench.e2e.standin PORT` answers every `POST /v1/realtime/calls/<id>/<operation>`
with 200 and an empty body, on uvloop with a hand-rolled HTTP/1.1 keep-alive parser: it
must never be what limits a benchmark (it answers tens of thousands of requests a second
on one core). `GET /_stats` returns the count per operation and the number of distinct
calls acted on, and `repeated`: requests of an operation already made for the same call
(a call accepted twice).

`POST /_timings` starts recording, per call-control request, its call id, when its bytes
arrived and when the answer was written (`time.monotonic_ns()`: CLOCK_MONOTONIC, the
clock of every process on the host, so the generator's timestamps subtract from them);
`GET /_timings` returns the records since (columns of equal length, JSON) and stops.
Recording appends three items to lists per request and is off otherwise (saturation runs
do not pay it).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import cast

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"


class Stats:
    def __init__(self) -> None:
        self.operations: Counter[str] = Counter()
        self.seen: set[tuple[str, str]] = set()
        self.repeated = 0
        self.connections = 0
        """Connections opened (a client's pool that churns opens many)."""
        """Requests of an operation already made for the same call (an accept twice)."""
        self.timing = False
        self.paths: list[bytes] = []
        self.arrived_ns: list[int] = []
        self.written_ns: list[int] = []

    def start_timing(self) -> None:
        self.timing = True
        self.paths, self.arrived_ns, self.written_ns = [], [], []

    def timings(self) -> bytes:
        """The records since start_timing, then stop. Parsed here, off the hot path."""
        from bench.e2e.percall import api_call_id

        calls = [api_call_id(path) or "" for path in self.paths]
        operations = [path.rpartition(b"/")[2].decode() for path in self.paths]
        body = json.dumps(
            {
                "call_id": calls,
                "operation": operations,
                "arrived_ns": self.arrived_ns,
                "written_ns": self.written_ns,
            }
        ).encode()
        self.start_timing()
        self.timing = False
        return body

    def record(self, path: bytes) -> None:
        # /v1/realtime/calls/<call_id>/<operation>
        parts = path.split(b"/")
        if len(parts) != 6 or parts[3] != b"calls":
            self.operations["other"] += 1
            return
        operation = parts[5].decode()
        self.operations[operation] += 1
        key = (operation, parts[4].decode())
        if key in self.seen:
            self.repeated += 1
        else:
            self.seen.add(key)

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "operations": dict(self.operations),
                "calls": len({call_id for _, call_id in self.seen}),
                "repeated": self.repeated,
                "connections": self.connections,
            }
        ).encode()


class StandIn(asyncio.Protocol):
    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._stats.connections += 1

    def data_received(self, data: bytes) -> None:
        # When the bytes that complete a request arrived (as this callback is called).
        arrived = time.monotonic_ns()
        stats = self._stats
        buffer = self._buffer
        buffer += data
        out = []
        timed = 0
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buffer[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buffer) < end + 4 + length:
                break
            del buffer[: end + 4 + length]
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0]
            if method == b"GET" and path in (b"/_stats", b"/_timings"):
                body = stats.as_json() if path == b"/_stats" else stats.timings()
                out.append(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                continue
            if method == b"POST" and path == b"/_reset":
                stats.__init__()  # type: ignore[misc]  # recording stops too
                out.append(_OK)
                continue
            if method == b"POST" and path == b"/_timings":
                stats.start_timing()
                out.append(_OK)
                continue
            stats.record(path)
            if stats.timing:
                stats.paths.append(path)
                stats.arrived_ns.append(arrived)
                timed += 1
            out.append(_OK)
        if out and self._transport is not None:
            if timed:
                # Before the write, as the generator's: after it, the woken reader may
                # already have run (bench.e2e.openloop, Connection.send).
                written = time.monotonic_ns()
                stats.written_ns.extend([written] * timed)
            self._transport.write(b"".join(out))


async def serve(port: int) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StandIn(stats), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    try:
        import uvloop
    except ImportError:  # plain asyncio is fast enough for the smoke test
        asyncio.run(serve(int(argv[0])))
    else:
        uvloop.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
