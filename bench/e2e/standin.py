"""A fast local stand-in for OpenAI's call-control API, for load tests.

`python -m bench.e2e.standin PORT` answers every `POST /v1/realtime/calls/<id>/<operation>`
with 200 and an empty body, on uvloop with a hand-rolled HTTP/1.1 keep-alive parser: it
must never be what limits a benchmark (it answers tens of thousands of requests a second
on one core). `GET /_stats` returns the count per operation and the number of distinct
calls acted on, and `repeated`: requests of an operation already made for the same call
(a call accepted twice).
"""

from __future__ import annotations

import asyncio
import json
import sys
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
        buffer = self._buffer
        buffer += data
        out = []
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
            if method == b"GET" and path == b"/_stats":
                body = self._stats.as_json()
                out.append(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                continue
            if method == b"POST" and path == b"/_reset":
                self._stats.__init__()  # type: ignore[misc]
                out.append(_OK)
                continue
            self._stats.record(path)
            out.append(_OK)
        if out and self._transport is not None:
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
