"""An open-loop load generator: requests leave on a fixed schedule, whatever the answers.

`python -m bench.e2e.openloop FILE HOST PORT RATE [--closed CONNECTIONS SECONDS]`

Open loop (the default): request i is due at start + i / RATE and goes out then on an
idle keep-alive connection (a new one is opened when none is idle, so a slow answer never
delays the next request). Its latency is counted from when it was *due*, not from when it
was sent, so a stalled generator or server shows up in the numbers instead of hiding
(no coordinated omission). Closed loop (`--closed`, the fallback where wrk is not
installed): CONNECTIONS connections send back to back for SECONDS.

Prints one JSON object: latencies in microseconds, status counts, errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import cast

from bench.e2e.webhooks import read_requests


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(buffer) < end + 4 + length:
            return
        del buffer[: end + 4 + length]
        status = int(head.split(b" ", 2)[1])
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(status)


class Generator:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[Connection] = []
        self.latencies_ns: list[int] = []
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.opened = 0

    async def connection(self) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, self.host, self.port)
        self.opened += 1
        return conn

    async def one(self, request: bytes, due_ns: int) -> None:
        try:
            conn = await self.connection()
            status = await asyncio.wait_for(conn.send(request), 30)
        except (OSError, ConnectionError, TimeoutError):
            self.errors += 1
            return
        self.latencies_ns.append(time.perf_counter_ns() - due_ns)
        self.statuses[status] += 1
        self.idle.append(conn)

    async def open_loop(self, requests: Sequence[bytes], rate: float) -> float:
        for _ in range(4):  # connections ready before the clock starts
            self.idle.append(await self.connection())
        interval_ns = int(1e9 / rate)
        start = time.perf_counter_ns() + 50_000_000
        tasks = []
        for i, request in enumerate(requests):
            due = start + i * interval_ns
            delay = (due - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(request, due)))
            if len(tasks) > 1000:
                tasks = [t for t in tasks if not t.done()]
        await asyncio.gather(*tasks)
        return (time.perf_counter_ns() - start) / 1e9

    async def closed_loop(
        self, requests: Sequence[bytes], connections: int, seconds: float
    ) -> float:
        started = time.perf_counter_ns()
        stop = started + int(seconds * 1e9)
        position = 0

        async def worker() -> None:
            nonlocal position
            while time.perf_counter_ns() < stop and position < len(requests):
                request = requests[position]
                position += 1
                await self.one(request, time.perf_counter_ns())

        await asyncio.gather(*(worker() for _ in range(connections)))
        return (time.perf_counter_ns() - started) / 1e9


def percentile(ordered: Sequence[int], q: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))
    return ordered[index] / 1000


def summarize(gen: Generator, seconds: float) -> dict[str, object]:
    ordered = sorted(gen.latencies_ns)
    return {
        "count": len(ordered),
        "seconds": seconds,
        "rate": len(ordered) / seconds if seconds else 0.0,
        "p50_us": percentile(ordered, 0.50),
        "p90_us": percentile(ordered, 0.90),
        "p99_us": percentile(ordered, 0.99),
        "max_us": ordered[-1] / 1000 if ordered else 0.0,
        "statuses": {str(k): v for k, v in gen.statuses.items()},
        "errors": gen.errors,
        "connections": gen.opened,
    }


async def _main(argv: list[str]) -> dict[str, object]:
    path, host, port, rate = argv[0], argv[1], int(argv[2]), float(argv[3])
    from pathlib import Path

    requests = read_requests(Path(path))
    gen = Generator(host, port)
    if len(argv) > 4 and argv[4] == "--closed":
        seconds = await gen.closed_loop(requests, int(argv[5]), float(argv[6]))
    else:
        seconds = await gen.open_loop(requests, rate)
    return summarize(gen, seconds)


def main(argv: list[str]) -> int:
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_main(argv))
    else:
        result = uvloop.run(_main(argv))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
