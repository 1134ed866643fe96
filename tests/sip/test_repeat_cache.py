"""The caches of the call path keep what comes back, within a bound; one-off values never
enter them, so a stream of new callers costs no memory once the returning ones are in."""

from __future__ import annotations

import pytest

from app.sip import identity as sip
from app.sip.cache import RECENT, RepeatCache
from app.sip.identity import Headers, IdentityPolicy, identify


def test_a_key_seen_once_is_not_kept() -> None:
    cache: RepeatCache[str, int] = RepeatCache(100)
    for n in range(10_000):
        cache.put(f"k{n}", n)
    assert len(cache) <= 2  # a hash collision in the doorkeeper at most, in principle


def test_a_key_that_comes_back_is_kept() -> None:
    cache: RepeatCache[str, int] = RepeatCache(100)
    cache.put("a", 1)
    cache.put("a", 1)  # the same call again: not a return
    assert cache.get("a", -1) == -1
    for other in range(RECENT):
        cache.put(f"other{other}", 0)
    cache.put("a", 1)
    assert cache.get("a", -1) == 1


def test_the_entries_stay_within_the_bound_oldest_out_first() -> None:
    cache: RepeatCache[int, int] = RepeatCache(50)
    for n in range(500 + RECENT):
        cache.put(n, n)
    for n in range(500):
        cache.put(n, n)
    assert len(cache) == 50
    assert cache.get(499, -1) == 499
    assert cache.get(0, -1) == -1


def test_the_size_and_doorkeeper_are_checked() -> None:
    with pytest.raises(ValueError):
        RepeatCache(0)
    with pytest.raises(ValueError):
        RepeatCache(10, doorkeeper=1000)


def _call(caller: str, called: str) -> Headers:
    return Headers(
        [
            ("From", f"<sip:{caller}@trunk.example.net>;tag=1"),
            ("To", f"<sip:{called}@sip.api.openai.com>"),
            ("P-Asserted-Identity", f"<sip:{caller}@trunk.example.net;user=phone>"),
        ]
    )


def test_new_callers_and_unrouted_numbers_leave_nothing_in_the_caches() -> None:
    sip._E164.clear()
    sip._ADDRESSES.clear()
    policy = IdentityPolicy()
    returning = [f"+1646555{n:04d}" for n in range(200)]
    ours = [f"+1800555{n:04d}" for n in range(20)]
    for _ in range(3):  # the returning callers and our numbers: in after the second
        for n, caller in enumerate(returning):
            identify(_call(caller, ours[n % len(ours)]), policy)
    filled = (len(sip._E164), len(sip._ADDRESSES))
    assert filled[0] >= len(returning) and filled[1] >= len(ours)
    # Then 20,000 calls from callers never seen before, to numbers nobody dialled before.
    for n in range(20_000):
        identity = identify(_call(f"+1700{n:07d}", f"+1900{n:07d}"), policy)
        assert identity.caller is not None and identity.caller.number == f"+1700{n:07d}"
    assert (len(sip._E164), len(sip._ADDRESSES)) <= (filled[0] + 5, filled[1] + 5)


def test_the_caches_are_bounded_whatever_comes_back() -> None:
    sip._E164.clear()
    sip._ADDRESSES.clear()
    policy = IdentityPolicy()
    callers = sip.MAX_CACHED_E164 + 1000
    for block in range(0, callers, 100):
        for _ in range(2):  # each one comes back soon: every one is admitted
            for n in range(block, block + 100):
                identify(_call(f"+1700{n:07d}", f"+1900{n:07d}"), policy)
    assert len(sip._E164) == sip.MAX_CACHED_E164
    assert len(sip._ADDRESSES) == sip.MAX_CACHED_ADDRESSES
