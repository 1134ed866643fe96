"""A bounded cache that keeps only what comes back.

Calls bring a stream of values (callers, called numbers, To headers): the ones worth caching
come back (returning callers, the trunk's own numbers), most others are seen once. A cache
that admits every miss grows by each one-off value until it reaches its bound (hundreds of
thousands of calls at a realistic mix), which a long-running server sees as memory growing
with every call. Here a miss is admitted only when its key was already missed recently: a
fixed table of key hashes (the doorkeeper, allocated once) remembers the last miss of each
slot. A key put again among the last few puts does not count as coming back: one call's
headers name its caller two or three times (From, P-Asserted-Identity). One-off values
never enter, and the entries are bounded by `size` (the oldest goes first), so once the
values that repeat are in, a call costs no memory.
"""

from __future__ import annotations

import contextlib
from array import array
from typing import Final, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

DOORKEEPER_SLOTS: Final = 16384
RECENT: Final = 4
"""Puts that a repeat must come after to count (those of the same call)."""


class RepeatCache(Generic[K, V]):
    __slots__ = ("_entries", "_mask", "_next", "_recent", "_seen", "_size")

    def __init__(self, size: int, *, doorkeeper: int = DOORKEEPER_SLOTS) -> None:
        if size < 1 or doorkeeper < 1 or doorkeeper & (doorkeeper - 1):
            raise ValueError("size must be positive and doorkeeper a power of two")
        self._size = size
        self._entries: dict[K, V] = {}
        self._seen = array("q", bytes(8 * doorkeeper))  # hash() is a signed 64-bit int
        self._mask = doorkeeper - 1
        self._recent = array("q", bytes(8 * RECENT))
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        return self._size

    def get(self, key: K, default: V) -> V:
        return self._entries.get(key, default)

    def put(self, key: K, value: V) -> None:
        """Remember `value` if `key` was put once before (recently); else note the key."""
        code = hash(key)
        recent = self._recent
        if code in recent:
            return  # the same call naming it again
        recent[self._next] = code
        self._next = (self._next + 1) % RECENT
        slot = code & self._mask
        if self._seen[slot] != code:
            self._seen[slot] = code  # a first sighting: noted, not kept
            return
        entries = self._entries
        if key not in entries and len(entries) >= self._size:
            # The oldest goes. Rules load in a worker thread while the loop routes calls:
            # another thread may change the dict between these steps (then skip this one).
            with contextlib.suppress(RuntimeError, KeyError, StopIteration):
                del entries[next(iter(entries))]
        entries[key] = value

    def clear(self) -> None:
        self._entries.clear()
        self._seen = array("q", bytes(len(self._seen) * 8))
        self._recent = array("q", bytes(8 * RECENT))
