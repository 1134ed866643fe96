"""What a system call costs right after the core was idle, against back to back.

At a fixed 200 calls/s a service is idle most of the time between calls, and each call's
system calls (a SQLite commit is ~35 of them: WAL frames and locks; then the sockets) run
on a core that was just idle. On some machines that is much dearer than under load: on
the 2-core VM of docs/performance.md (a Firecracker guest whose idle vCPU halts), 20 writes
of 4 KB to a file in the page cache took 16 us back to back and 70-76 us after 5 ms idle,
and a claim's SQLite transaction 37 us against 150 us: a call's CPU at 200 calls/s is about
1.5x its CPU at saturation on that machine. The machine table of the report shows this
number for the run, as the reference loop shows the machine's speed.

    python -m bench.wakecost      # pinned to the first usable core
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

WRITES = 20
PAGE = b"\0" * 4096
IDLE_SECONDS = 0.005
ROUNDS = 400


@dataclass(frozen=True)
class WakeCost:
    back_to_back_us: float
    after_idle_us: float

    @property
    def ratio(self) -> float:
        return self.after_idle_us / self.back_to_back_us if self.back_to_back_us else 0.0

    def describe(self) -> str:
        return (
            f"{WRITES} writes of 4 KB to a cached file: {self.back_to_back_us:.0f} us back to "
            f"back, {self.after_idle_us:.0f} us after {IDLE_SECONDS * 1000:.0f} ms idle "
            f"({self.ratio:.1f}x; medians, bench/wakecost.py)"
        )


def _writes(fd: int) -> float:
    started = time.perf_counter()
    for i in range(WRITES):
        os.pwrite(fd, PAGE, i * len(PAGE))
    return time.perf_counter() - started


def measure(rounds: int = ROUNDS) -> WakeCost:
    """Medians over `rounds` of each, interleaved, on the core this thread runs on."""
    with tempfile.TemporaryFile() as file:
        fd = file.fileno()
        _writes(fd)  # the file's pages in the cache
        hot: list[float] = []
        cold: list[float] = []
        for _ in range(rounds):
            _writes(fd)  # the core busy ...
            hot.append(_writes(fd))  # ... and again, back to back
            time.sleep(IDLE_SECONDS)
            cold.append(_writes(fd))  # the first after the core was idle
    return WakeCost(statistics.median(hot) * 1e6, statistics.median(cold) * 1e6)


def pinned(cpu: int, rounds: int = ROUNDS) -> WakeCost:
    """measure() on `cpu`; this thread's affinity is restored after."""
    if not hasattr(os, "sched_setaffinity"):
        return measure(rounds)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return measure(rounds)
    finally:
        os.sched_setaffinity(0, before)


def main() -> None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    print(pinned(cpus[0]).describe(), file=sys.stdout)


if __name__ == "__main__":
    main()
