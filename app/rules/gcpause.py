"""Sharing the GIL with the event loop while rules load: full garbage collections held
off, and threads switched more often.

A full (generation 2) collection walks every tracked object in the process with the GIL
held. CPython runs one whenever enough new objects have survived since the last, and
loading 10,000 routes makes millions of them: six or seven full collections of 60-270 ms
each, a third of the load's time, during which the event loop cannot run although the
load is in a worker thread.

Only full collections are held off: the young generations are still collected, so the
cyclic garbage the server (and the load) makes meanwhile does not pile up. gc.disable()
would stop those too, and then the garbage made during a load would be frozen with the
rules for good (RulesManager freezes what a load made; a gc.collect() before the freeze
would walk the new rules, the very stall this avoids).

Written for the generational collector of CPython 3.11 (the project's Python), where
the third threshold decides when a full collection may run.

A thread waiting for the GIL (the event loop, woken by a request or a timer) asks the
holder to let go only after the switch interval, 5 ms by default, and gets it some time
after that: a worker thread running plain Python already stalls the loop for 6-12 ms at
each hand-over on a 2-core VM. At 1 ms the worst gap is ~3-5 ms. A lower interval costs
nothing while nobody waits (the holder is asked to let go only when another thread
wants the GIL), so it is lowered only while a load runs all the same: a server's request
threads (none here, but libraries may have some) are left as they were otherwise.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class _WhileHeld(Generic[T]):
    """A process-wide setting changed while any holder is inside, across threads and
    overlapping in any order: changed when the first enters, restored (to what the first
    found) when the last leaves, on errors too. (An asyncio task awaiting a worker thread
    can be cancelled, but the thread runs to the end: a cancelled reload cannot leave the
    setting changed either.)"""

    def __init__(self, change: Callable[[], T], restore: Callable[[T], None]) -> None:
        self._change = change
        self._restore = restore
        self._lock = threading.Lock()
        self._holders = 0
        self._found: list[T] = []  # what the first holder found (one item while held)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._found.append(self._change())
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._restore(self._found.pop())

    @property
    def active(self) -> bool:
        with self._lock:
            return self._holders > 0


_NO_FULL_COLLECTIONS = 2**31 - 1  # the largest threshold gc.set_threshold takes


def _pause_full_collections() -> int:
    first, second, third = gc.get_threshold()
    gc.set_threshold(first, second, _NO_FULL_COLLECTIONS)
    return third


def _resume_full_collections(third: int) -> None:
    first, second, _ = gc.get_threshold()
    gc.set_threshold(first, second, third)


_full_collections = _WhileHeld(_pause_full_collections, _resume_full_collections)


def full_collections_paused() -> contextlib.AbstractContextManager[None]:
    """No automatic full collection in this process while inside (explicit gc.collect()
    calls still run). Nests and overlaps across threads (_WhileHeld): the threshold found
    on the way in is restored when the last pause ends."""
    return _full_collections.held()


def paused() -> bool:
    """Whether full collections are held off now."""
    return gc.get_threshold()[2] == _NO_FULL_COLLECTIONS


SWITCH_INTERVAL = 0.001
"""Seconds: sys.setswitchinterval while a load runs (CPython's default is 0.005)."""


def _switch_often() -> float:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
    return interval


_switching = _WhileHeld(_switch_often, sys.setswitchinterval)


def switching_often() -> contextlib.AbstractContextManager[None]:
    """sys.setswitchinterval(SWITCH_INTERVAL) while inside, unless it is lower already.
    Nests and overlaps across threads like full_collections_paused."""
    return _switching.held()


def switching() -> bool:
    """Whether a switching_often() is in force now."""
    return _switching.active
