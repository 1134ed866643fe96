from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from app.ops.logs import JsonFormatter, LogThrottle, LoopBatchingHandler, mask


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("+14155550123", "+1415*****23"),
        ("+442079460958", "+4420******58"),
        ("4155550123", "4155****23"),
        ("1001", "****"),
        ("+12345", "+1**45"),
        ("alice", "al***"),
        (None, None),
    ],
)
def test_mask(value: str | None, masked: str | None) -> None:
    assert mask(value) == masked
    assert mask(value, reveal=True) == value


def test_json_formatter_puts_extra_fields_at_top_level() -> None:
    record = logging.LogRecord(
        "switchboard.call", logging.INFO, __file__, 1, "call %s", ("x",), None
    )
    record.route = "vip"
    record.color_message = "\x1b[1mcall\x1b[0m"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "call x"
    assert entry["route"] == "vip"
    assert entry["level"] == "info"
    assert "color_message" not in entry


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_throttle_admits_a_burst_then_a_steady_trickle_and_counts_the_rest() -> None:
    clock = _Clock()
    throttle = LogThrottle(burst=3, interval=3.0, clock=clock)  # one a second after the burst
    assert [throttle.admit() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now = 1.0
    assert throttle.admit() == 2  # the two held back, said on the next line
    assert throttle.admit() is None
    clock.now = 100.0  # a quiet spell refills the burst, no more
    assert [throttle.admit() for _ in range(4)] == [1, 0, 0, None]


@pytest.mark.parametrize(("burst", "interval"), [(0, 1.0), (1, 0.0), (2, -1.0)])
def test_log_throttle_refuses_a_setting_that_would_never_log(burst: int, interval: float) -> None:
    with pytest.raises(ValueError, match="burst"):
        LogThrottle(burst=burst, interval=interval)


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def batching_logger(stream: Stream) -> logging.Logger:
    handler = LoopBatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("switchboard.call")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


@pytest.fixture(autouse=True)
def _restore_call_logger() -> Iterator[None]:
    log = logging.getLogger("switchboard.call")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:], log.propagate = handlers, propagate
    log.setLevel(level)


def test_lines_of_one_loop_iteration_are_written_together_in_order() -> None:
    stream = Stream()
    log = batching_logger(stream)

    async def main() -> list[str]:
        for n in range(3):
            log.info("call %d", n)
        before = list(stream.writes)  # nothing written yet: same iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        log.info("next")
        await asyncio.sleep(0)
        return before

    assert asyncio.run(main()) == []
    assert stream.writes == ["call 0\ncall 1\ncall 2\n", "next\n"]


def test_other_lines_are_written_at_once_after_what_is_pending() -> None:
    # No loop, another thread, another logger (uvicorn's last lines at a SIGTERM: it
    # re-raises the signal in the loop's last iteration).
    stream = Stream()
    log = batching_logger(stream)
    other = logging.getLogger("uvicorn.error.test-batching")
    other.handlers[:] = log.handlers
    other.propagate = False
    log.info("no loop")
    assert stream.writes == ["no loop\n"]

    async def main() -> None:
        log.info("on the loop")
        thread = threading.Thread(target=log.info, args=("from a thread",))
        thread.start()
        thread.join()
        log.info("call")
        other.warning("Finished server process")
        assert stream.writes[-1] == "call\nFinished server process\n"

    asyncio.run(main())
    assert stream.writes[1:] == ["on the loop\nfrom a thread\n", "call\nFinished server process\n"]


def test_what_is_pending_is_written_by_flush() -> None:
    # A loop that stops before the iteration ends: logging.shutdown() flushes at exit.
    stream = Stream()
    log = batching_logger(stream)
    loop = asyncio.new_event_loop()

    def last() -> None:
        log.info("last words")
        loop.stop()  # before the iteration that would write it

    try:
        loop.call_soon(last)
        loop.run_forever()
    finally:
        loop.close()
    assert stream.writes == []
    log.handlers[0].flush()
    assert stream.getvalue() == "last words\n"
