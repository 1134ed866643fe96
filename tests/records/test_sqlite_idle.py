"""When SqliteCallLog's writer writes: when the event loop is idle (`idle()`), when a read
or close() needs what is queued, or MAX_DELAY after it last ran; never because a write was
queued. Before, each write put on the queue woke the writer when it waited (a futex wake
and a thread switch on the loop's path), and it committed 20 ms later, during later calls.

What is on disk is read with a connection of the test's own: the log's reads would wake
the writer (their barrier).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.records.calllog import WritesWhenIdle
from app.records.sqlite import SqliteCallLog
from tests.records.test_calllog import record
from tests.records.writer_support import counted_batches, held_batches

NEVER = 60.0
"""A MAX_DELAY no test waits for: only idle(), a read or close() can wake the writer."""
HANG = 10.0
"""Only a hang waits this long (a guard, not a measure)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "calls.db"


@pytest.fixture
def opened(path: Path) -> Iterator[Callable[..., SqliteCallLog]]:
    made: list[SqliteCallLog] = []

    def open_log(**kwargs: Any) -> SqliteCallLog:
        log = SqliteCallLog(path, **kwargs)
        log.open()
        made.append(log)
        return log

    yield open_log
    for log in made:
        log.close()


def on_disk(path: Path) -> int:
    """Calls committed to the file."""
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM calls").fetchone()
    return int(count)


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_queued_writes_do_not_wake_the_writer(
    opened: Callable[..., SqliteCallLog], path: Path
) -> None:
    log = opened(max_delay=NEVER)
    for n in range(50):
        log.started(record(f"rtc_{n}"))
        log.ended(f"rtc_{n}", "end_call")
    time.sleep(0.3)  # the old writer had committed them 20 ms after the first
    assert log._wakes == 0
    assert on_disk(path) == 0


def test_an_idle_loop_has_what_is_queued_written(
    opened: Callable[..., SqliteCallLog], path: Path
) -> None:
    log = opened(max_delay=NEVER)
    assert isinstance(log, WritesWhenIdle)  # what create_app wires to the endpoint
    for n in range(20):
        log.started(record(f"rtc_{n}"))
    log.idle()
    eventually(lambda: on_disk(path) == 20, "the queued calls written")
    assert log._wakes == 1


def test_idle_wakes_nothing_when_nothing_is_queued(opened: Callable[..., SqliteCallLog]) -> None:
    log = opened(max_delay=NEVER)
    for _ in range(1000):
        log.idle()
    time.sleep(0.1)
    assert log._wakes == 0


def test_idle_wakes_the_writer_at_most_once_per_gap(
    opened: Callable[..., SqliteCallLog], path: Path
) -> None:
    """At 200 calls/s the loop is idle between most calls: a wake-up each time would be a
    commit per call. Within IDLE_GAP of a batch, idle() leaves the writer asleep."""
    log = opened(max_delay=NEVER, idle_gap=NEVER)
    log.started(record("rtc_1"))
    log.idle()
    eventually(lambda: on_disk(path) == 1, "the first call written")
    for n in range(2, 12):
        log.started(record(f"rtc_{n}"))
        log.idle()
    time.sleep(0.2)
    assert (log._wakes, on_disk(path)) == (1, 1)


def test_idle_wakes_the_writer_again_once_the_gap_is_over(
    opened: Callable[..., SqliteCallLog], path: Path
) -> None:
    log = opened(max_delay=NEVER, idle_gap=0.05)
    log.started(record("rtc_1"))
    log.idle()
    eventually(lambda: on_disk(path) == 1, "the first call written")
    log.started(record("rtc_2"))
    time.sleep(0.1)
    log.idle()
    eventually(lambda: on_disk(path) == 2, "the second call written")
    assert log._wakes == 2


def test_a_loop_never_idle_has_its_writes_written_in_batches_within_the_delay(
    opened: Callable[..., SqliteCallLog], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write every 2 ms for a second, idle() never called: written on the writer's own
    wake-ups, MAX_DELAY apart, many calls a transaction, and none waits much longer."""
    log = opened(max_delay=0.1)
    batches = counted_batches(log, monkeypatch)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 1.0:
        log.started(record(f"rtc_{n}"))
        n += 1
        time.sleep(0.002)
    written = on_disk(path)
    # What is missing was queued in the last MAX_DELAY (with room for a slow machine).
    assert n - written <= n * 0.5, (n, written, batches)
    eventually(lambda: on_disk(path) == n, "every call written without a read or close()")
    assert 5 <= len(batches) <= 25, batches  # ~10: one per MAX_DELAY
    assert sum(batches) / len(batches) >= 5, batches  # not a transaction per call


@pytest.mark.anyio
async def test_a_read_sees_every_write_queued_before_it_at_once(
    opened: Callable[..., SqliteCallLog],
) -> None:
    log = opened(max_delay=NEVER, idle_gap=NEVER)
    for n in range(100):
        log.started(record(f"rtc_{n:03}", started_at=1_750_000_000.0 + n))
        log.event(f"rtc_{n:03}", "greeting", {"n": n})
    log.ended("rtc_042", "end_call")
    began = time.monotonic()
    found = await log.get("rtc_042")
    assert time.monotonic() - began < HANG / 2  # the barrier woke it: no MAX_DELAY wait
    assert found is not None
    assert (found.status, [e.kind for e in found.events]) == ("ended", ["greeting", "ended"])
    log.started(record("rtc_late"))
    calls = await log.recent(limit=1000)
    assert len(calls) == 101


def test_close_writes_what_is_queued_without_waiting_for_the_delay(
    opened: Callable[..., SqliteCallLog], path: Path
) -> None:
    log = opened(max_delay=NEVER, idle_gap=NEVER)
    for n in range(500):
        log.started(record(f"rtc_{n}"))
        log.ended(f"rtc_{n}", "end_call")
    began = time.monotonic()
    log.close()
    assert time.monotonic() - began < HANG / 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM calls WHERE status = 'ended'").fetchone() == (500,)


def test_a_read_that_waits_does_not_let_later_writes_overtake_it(
    opened: Callable[..., SqliteCallLog], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes queued while the writer writes a read's batch wait for their own wake-up,
    and keep their order with the ones before (a call's end after its start)."""
    log = opened(max_delay=NEVER, idle_gap=NEVER)
    entered, release = held_batches(log, monkeypatch)
    log.started(record("rtc_1"))
    reads: list[Any] = []
    reader = threading.Thread(target=lambda: reads.append(log._get("rtc_1")))
    reader.start()
    assert entered.wait(HANG)
    log.ended("rtc_1", "end_call")  # queued during the batch
    release.set()
    reader.join(HANG)
    assert reads and reads[0] is not None and reads[0].status == "active"

    async def again() -> Any:
        return await log.get("rtc_1")

    found = asyncio.run(again())
    assert found is not None and (found.status, found.end_reason) == ("ended", "end_call")
