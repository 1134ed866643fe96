"""Peer: the least a Python router does per call, for a floor under the latency target.

`python -m bench.e2e.peer_passthrough PORT` with OPENAI_BASE_URL set: on uvloop with
asyncio streams, read a webhook (HTTP/1.1 keep-alive, Content-Length), take its call id
from the JSON body, POST the accept to the stand-in over a kept-alive connection, read its
answer, answer the webhook 200. No signature check, no routing, no state, no log: every
router pays at least this (two loopback hops each way, a process woken for each), so its
router-added time is about the least any Python router shows on the machine measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from urllib.parse import urlsplit

_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_FAILED = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
_HEALTHY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)
_SESSION = json.dumps({"type": "realtime", "model": "gpt-realtime"}).encode()

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Upstream:
    """Kept-alive connections to the call-control API, one per request in flight."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.prefix = parts.path.rstrip("/").encode()
        self.idle: list[Connection] = []

    async def accept(self, call_id: bytes) -> int:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(
                b"POST %s/realtime/calls/%s/accept HTTP/1.1\r\nhost: %s\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (self.prefix, call_id, self.host.encode(), len(_SESSION), _SESSION)
            )
            head, length = await _read_head(reader)
            await reader.readexactly(length)
        except BaseException:
            writer.close()  # out of step: never back in the pool
            raise
        self.idle.append((reader, writer))
        return int(head.split(b" ", 2)[1])


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, length


async def serve(
    upstream: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head, length = await _read_head(reader)
            body = await reader.readexactly(length)
            if head.startswith(b"GET /healthz "):
                writer.write(_HEALTHY)
                continue
            call_id = json.loads(body)["data"]["call_id"].encode()
            status = await upstream.accept(call_id)
            writer.write(_OK if status < 300 else _FAILED)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    upstream = Upstream(os.environ["OPENAI_BASE_URL"])
    server = await asyncio.start_server(
        lambda r, w: serve(upstream, r, w), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # where uvloop is not built (uvicorn[standard] leaves it out)
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
