from __future__ import annotations

import json
import logging

import pytest

from app.ops.logs import JsonFormatter, LogThrottle, mask


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
