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

import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_NO_FULL_COLLECTIONS = 2**31 - 1  # the largest threshold gc.set_threshold takes
_lock = threading.Lock()
_pauses = 0
_threshold2 = 0

SWITCH_INTERVAL = 0.001
"""Seconds: sys.setswitchinterval while a load runs (CPython's default is 0.005)."""
_switch_lock = threading.Lock()
_switchers = 0
_interval = 0.0


@contextmanager
def full_collections_paused() -> Iterator[None]:
    """No automatic full collection in this process while inside (explicit gc.collect()
    calls still run). Nests and overlaps across threads: full collections resume, with the
    threshold found on the way in, when the last pause ends, whatever the order, and on
    errors too. (An asyncio task awaiting a worker thread can be cancelled, but the thread
    runs to the end: a cancelled reload cannot leave them paused either.)"""
    global _pauses, _threshold2
    with _lock:
        if _pauses == 0:
            first, second, _threshold2 = gc.get_threshold()
            gc.set_threshold(first, second, _NO_FULL_COLLECTIONS)
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0:
                first, second, _ = gc.get_threshold()
                gc.set_threshold(first, second, _threshold2)


def paused() -> bool:
    """Whether full collections are held off now."""
    return gc.get_threshold()[2] == _NO_FULL_COLLECTIONS


@contextmanager
def switching_often() -> Iterator[None]:
    """sys.setswitchinterval(SWITCH_INTERVAL) while inside, unless it is lower already.
    Nests and overlaps across threads like full_collections_paused: the interval found
    on the way in is restored when the last one ends, on errors too."""
    global _switchers, _interval
    with _switch_lock:
        if _switchers == 0:
            _interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_interval, SWITCH_INTERVAL))
        _switchers += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switchers -= 1
            if _switchers == 0:
                sys.setswitchinterval(_interval)


def switching() -> bool:
    """Whether a switching_often() is in force now."""
    with _switch_lock:
        return _switchers > 0
