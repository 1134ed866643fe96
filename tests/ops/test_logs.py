from __future__ import annotations

import json
import logging

import pytest

from app.ops.logs import JsonFormatter, mask


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
