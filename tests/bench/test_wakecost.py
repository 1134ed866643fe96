"""bench.wakecost: the machine row of the report (what a system call costs after idle)."""

from __future__ import annotations

import os

import pytest

from bench import wakecost


def test_both_costs_are_measured_and_described() -> None:
    cost = wakecost.measure(rounds=5)
    assert cost.back_to_back_us > 0
    assert cost.after_idle_us > 0
    text = cost.describe()
    assert f"{cost.back_to_back_us:.0f} us back to back" in text
    assert f"{cost.after_idle_us:.0f} us after 5 ms idle" in text
    assert f"({cost.ratio:.1f}x;" in text


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pinning_is_undone() -> None:
    before = os.sched_getaffinity(0)
    wakecost.pinned(min(before), rounds=2)
    assert os.sched_getaffinity(0) == before
