"""An open-loop load generator: requests leave on a fixed schedule, whatever the answers.

`python -m bench.e2e.openloop FILE HOST PORT RATE [--records OUT] [--closed CONNECTIONS SECONDS]`

Open loop (the default): request i is due at start + i / RATE and goes out then on an
idle keep-alive connection (a new one is opened when none is idle, so a slow answer never
delays the next request). Its latency is counted from when it was *due*, not from when it
was sent, so a stalled generator or server shows up in the numbers instead of hiding
(no coordinated omission). `--records OUT` (open loop) also writes, per request, its
call id and when it was due, when its bytes were written to the socket and when its
answer's last byte was read (`time.monotonic_ns()`, comparable with the stand-in API's
timestamps: bench.e2e.percall pairs them). Closed loop (`--closed`, the fallback where
wrk is not installed): CONNECTIONS connections send back to back for SECONDS.

Prints one JSON object: latencies in microseconds, status counts, errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import cast

from bench.e2e.procs import run_delay_ns
from bench.e2e.webhooks import read_requests


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False
        self.sent_ns = 0
        """When the last request's bytes were handed to the socket (just before)."""
        self.read_ns = 0
        """When the last answer's last byte was read (taken as data_received is called, not
        when the waiting task resumes: the loop's wake-up of that task is not the server's)."""
        self.buffered = False
        """The last request did not all go to the socket in its write (its sent_ns is then
        early): 0 such writes are expected on an idle connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        # Taken before the write, not after: the send() wakes the reader, which may run
        # before this process takes a timestamp after it (wake-up preemption on a shared
        # core), so "after" can be later than the bytes were read. Before is a bound.
        self.sent_ns = time.monotonic_ns()
        self.transport.write(request)  # both loops try the send() at once
        self.buffered = self.transport.get_write_buffer_size() > 0
        return self._waiter

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
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
        self.read_ns = now
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
        self.buffered = 0
        self.waited_ns = 0
        """This process's run-queue wait over the open loop (its core taken by others)."""
        # Per request of an open loop, by index (preallocated; filled as answers come).
        self.due_ns: list[int] = []
        self.sent_ns: list[int] = []
        self.read_ns: list[int] = []
        self.status: list[int] = []

    async def connection(self) -> Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, self.host, self.port)
        self.opened += 1
        return conn

    async def one(self, request: bytes, due_ns: int, index: int = -1) -> None:
        """`index` >= 0: record the request's times at that index."""
        try:
            conn = await self.connection()
            status = await asyncio.wait_for(conn.send(request), 30)
        except (OSError, ConnectionError, TimeoutError):
            self.errors += 1
            return
        self.latencies_ns.append(conn.read_ns - due_ns)
        self.statuses[status] += 1
        self.buffered += conn.buffered
        if index >= 0:
            self.sent_ns[index] = conn.sent_ns
            self.read_ns[index] = conn.read_ns
            self.status[index] = status
        self.idle.append(conn)

    async def open_loop(self, requests: Sequence[bytes], rate: float) -> float:
        self.waited_ns = -run_delay_ns(os.getpid())
        for _ in range(4):  # connections ready before the clock starts
            self.idle.append(await self.connection())
        interval_ns = int(1e9 / rate)
        start = time.monotonic_ns() + 50_000_000
        count = len(requests)
        self.due_ns = [start + i * interval_ns for i in range(count)]
        self.sent_ns = [0] * count
        self.read_ns = [0] * count
        self.status = [0] * count
        tasks = []
        for i, request in enumerate(requests):
            due = self.due_ns[i]
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(request, due, i)))
            if len(tasks) > 1000:
                tasks = [t for t in tasks if not t.done()]
        await asyncio.gather(*tasks)
        self.waited_ns += run_delay_ns(os.getpid())
        return (time.monotonic_ns() - start) / 1e9

    async def closed_loop(
        self, requests: Sequence[bytes], connections: int, seconds: float
    ) -> float:
        started = time.monotonic_ns()
        stop = started + int(seconds * 1e9)
        position = 0

        async def worker() -> None:
            nonlocal position
            while time.monotonic_ns() < stop and position < len(requests):
                request = requests[position]
                position += 1
                await self.one(request, time.monotonic_ns())

        await asyncio.gather(*(worker() for _ in range(connections)))
        return (time.monotonic_ns() - started) / 1e9


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
        "buffered_writes": gen.buffered,
        "waited_ms": gen.waited_ns / 1e6,
    }


def records(gen: Generator, requests: Sequence[bytes]) -> dict[str, list[object]]:
    """Per request of the open loop, in sending order (bench.e2e.percall reads them)."""
    from bench.e2e.percall import call_id_of

    return {
        "call_id": [call_id_of(r) for r in requests],
        "due_ns": list(gen.due_ns),
        "sent_ns": list(gen.sent_ns),
        "read_ns": list(gen.read_ns),
        "status": list(gen.status),
    }


async def _main(argv: list[str]) -> dict[str, object]:
    path, host, port, rate = argv[0], argv[1], int(argv[2]), float(argv[3])
    from pathlib import Path

    rest = argv[4:]
    out: Path | None = None
    if rest[:1] == ["--records"]:
        out, rest = Path(rest[1]), rest[2:]
    requests = read_requests(Path(path))
    gen = Generator(host, port)
    if rest[:1] == ["--closed"]:
        seconds = await gen.closed_loop(requests, int(rest[1]), float(rest[2]))
    else:
        seconds = await gen.open_loop(requests, rate)
        if out is not None:
            out.write_text(json.dumps(records(gen, requests)))
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
