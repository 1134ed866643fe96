"""Reload time, and whether a reload stalls the event loop.

For each size: `load_rules` wall time with nothing else running; then the project's own
`RulesManager` (wired as app.main wires it, metrics included) starts (first load, in a
worker thread) and reloads twice after the routes file changed (each: a load in a worker
thread, the swap on the loop, the previous rules released), while an asyncio task sleeps
1 ms at a time and records every gap between its wake-ups. A gap well over 1 ms is time
the loop could not run: webhooks would wait that long. Full garbage collections are timed
too (they hold the GIL, whichever thread runs them).

Usage: python -m bench.reload [--routes 10,1000,10000] [--numbers 10000,1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.rules import RuleSet, load_rules
from bench.workload import (
    LIST_SIZES,
    REGION,
    ROUTE_SIZES,
    add_size_arguments,
    size_label,
    table,
    write_list,
    write_routes,
)

TICK_SECONDS = 0.001
IDLE_SECONDS = 0.3
BUSY_SECONDS = 0.3
SETTLE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Phase:
    seconds: float
    """Wall time of the startup load or the reload, as the caller of RulesManager sees it."""
    load_seconds: float
    """Time the loader itself ran in the worker thread."""
    worst_gap_ms: float
    worst_gap_loading_ms: float
    """Worst gap while the worker thread was loading (GIL contention)."""
    worst_gap_after_ms: float
    """Worst gap after the load returned: swap, metrics labels, dropping old rules."""
    ticks: int
    full_gc_ms: tuple[float, ...]
    """Each full (generation 2) garbage collection in the phase, in ms, in any thread:
    CPython holds the GIL throughout, so the loop waits too."""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    routes: int
    numbers: int
    load_seconds: float | None
    """load_rules alone, nothing else running (None: not measured here)."""
    idle_gap_ms: float
    """Worst tick gap with nothing to do: the timer's own resolution."""
    busy_gap_ms: float
    """Worst tick gap while a worker thread runs plain Python bytecode (no long C calls):
    what sharing the GIL costs at best (CPython switches threads every 5 ms)."""
    startup: Phase
    reloads: tuple[Phase, ...]
    results: tuple[str, ...]

    @property
    def worst_gap_ms(self) -> float:
        return max(p.worst_gap_ms for p in self.reloads)


def _pure_python(seconds: float) -> int:
    """Bytecode only, no long C call: the best case for sharing the GIL."""
    end = time.perf_counter() + seconds
    total = 0
    while time.perf_counter() < end:
        for i in range(1000):
            total += i
    return total


class _GcWatch:
    """Times every full garbage collection (generation 2) while installed."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.spans.append((self._started, time.perf_counter()))

    def __enter__(self) -> _GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def within(self, start: float, end: float) -> tuple[float, ...]:
        return tuple((b - a) * 1000 for a, b in self.spans if start <= a <= end)


class _Ticker:
    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []
        """(wake-up time, gap since the previous wake-up) in seconds."""
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        clock = time.perf_counter
        last = clock()
        while not self._stop:
            await asyncio.sleep(TICK_SECONDS)
            now = clock()
            self.gaps.append((now, now - last))
            last = now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            await self._task

    def worst(self, start: float, end: float) -> float:
        """Worst gap (ms) among wake-ups in [start, end]."""
        inside = [gap for at, gap in self.gaps if start <= at <= end]
        return max(inside, default=0.0) * 1000

    def worst_starting(self, start: float, end: float) -> float:
        """Worst gap (ms) among the gaps that began in [start, end)."""
        inside = [gap for at, gap in self.gaps if start <= at - gap < end]
        return max(inside, default=0.0) * 1000

    def count(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.gaps if start <= at <= end)


def _phase(
    ticker: _Ticker,
    watch: _GcWatch,
    started: float,
    ended: float,
    span: tuple[float, float],
    settle_end: float,
) -> Phase:
    load_start, load_end = span
    # A gap is the loader's when it began while the loader ran (the loop only gets the GIL
    # back once the worker lets go of it, often right after the load returned).
    return Phase(
        seconds=ended - started,
        load_seconds=load_end - load_start,
        worst_gap_ms=ticker.worst(started, settle_end),
        worst_gap_loading_ms=ticker.worst_starting(started, load_end),
        worst_gap_after_ms=ticker.worst_starting(load_end, settle_end),
        ticks=ticker.count(started, settle_end),
        full_gc_ms=watch.within(started, settle_end),
    )


RELOADS = 2


async def measure_manager(
    path: Path,
) -> tuple[tuple[float, float], Phase, list[Phase], list[str]]:
    """((idle, busy) worst gaps in ms, startup, reloads, reload results) for one routes file."""
    spans: list[tuple[float, float]] = []

    def loader(p: Path) -> RuleSet:
        started = time.perf_counter()
        try:
            return load_rules(p, region=REGION)
        finally:
            spans.append((started, time.perf_counter()))

    metrics = Metrics()
    manager = RulesManager(
        path, region=REGION, metrics=metrics, loader=loader, on_activate=metrics.routes_loaded
    )
    ticker = _Ticker()
    watch = _GcWatch()
    ticker.start()
    await asyncio.sleep(IDLE_SECONDS)
    idle = ticker.worst(0.0, time.perf_counter())
    started = time.perf_counter()
    await asyncio.to_thread(_pure_python, BUSY_SECONDS)
    busy = ticker.worst(started, time.perf_counter())
    started = time.perf_counter()
    with watch:
        startup, reloads, results = await _startup_and_reloads(
            manager, path, ticker, watch, spans, started
        )
    await ticker.stop()
    return (idle, busy), startup, reloads, results


async def _startup_and_reloads(
    manager: RulesManager,
    path: Path,
    ticker: _Ticker,
    watch: _GcWatch,
    spans: list[tuple[float, float]],
    started: float,
) -> tuple[Phase, list[Phase], list[str]]:
    async with manager.running(watch=False, debounce_ms=100, sighup=False):
        ended = time.perf_counter()
        await asyncio.sleep(SETTLE_SECONDS)
        startup = _phase(ticker, watch, started, ended, spans[-1], time.perf_counter())
        reloads: list[Phase] = []
        results: list[str] = []
        for n in range(RELOADS):
            # Change the file so that the new rules differ and are swapped in.
            with path.open("a", encoding="utf-8") as f:
                f.write(f"# reload {n + 1} by bench.reload\n")
            started = time.perf_counter()
            status = await manager.reload("admin")
            ended = time.perf_counter()
            await asyncio.sleep(SETTLE_SECONDS)
            reloads.append(_phase(ticker, watch, started, ended, spans[-1], time.perf_counter()))
            results.append(status.result)
    return startup, reloads, results


def run_size(path: Path, routes: int, numbers: int, *, plain_load: bool = True) -> ReloadResult:
    load_seconds = None
    if plain_load:
        gc.collect()
        started = time.perf_counter()
        rules = load_rules(path, region=REGION)
        load_seconds = time.perf_counter() - started
        del rules
    gc.collect()
    (idle, busy), startup, reloads, results = asyncio.run(measure_manager(path))
    return ReloadResult(
        routes, numbers, load_seconds, idle, busy, startup, tuple(reloads), tuple(results)
    )


def run(
    root: Path,
    *,
    route_sizes: Sequence[int] = ROUTE_SIZES,
    list_sizes: Sequence[int] = LIST_SIZES,
    plain_load: bool = True,
    progress: bool = True,
) -> list[ReloadResult]:
    results = []
    for numbers in list_sizes:
        directory = root / f"numbers-{numbers}"
        list_file = directory / "spam.txt"
        if not list_file.exists():
            write_list(directory, numbers)
        for routes in route_sizes:
            routes_file = write_routes(directory, routes, list_file)
            result = run_size(routes_file.path, routes, numbers, plain_load=plain_load)
            results.append(result)
            if progress:
                print(
                    f"  reload {size_label(routes)} routes, {size_label(numbers)} numbers: "
                    + ", ".join(f"{p.seconds:.2f} s" for p in result.reloads)
                    + f"; worst loop stall {result.worst_gap_ms:.1f} ms",
                    flush=True,
                )
    return results


def render(results: Sequence[ReloadResult]) -> str:
    def gaps(p: Phase) -> str:
        return f"{p.worst_gap_loading_ms:.0f} / {p.worst_gap_after_ms:.0f}"

    header = ["routes", "listed"]
    if any(r.load_seconds is not None for r in results):
        header.append("load_rules alone (s)")
    header += ["startup (s)"]
    header += [f"reload {n + 1} (s)" for n in range(RELOADS)]
    header += ["idle / busy-thread worst gap (ms)"]
    header += [f"reload {n + 1} worst gap: loading / after (ms)" for n in range(RELOADS)]
    header += ["full GCs during reloads (ms each)"]
    rows = []
    for r in results:
        row = [size_label(r.routes), size_label(r.numbers)]
        if any(x.load_seconds is not None for x in results):
            row.append(f"{r.load_seconds:.2f}" if r.load_seconds is not None else "")
        row.append(f"{r.startup.seconds:.2f}")
        row += [f"{p.seconds:.2f}" for p in r.reloads]
        row.append(f"{r.idle_gap_ms:.1f} / {r.busy_gap_ms:.1f}")
        row += [gaps(p) for p in r.reloads]
        full = [ms for p in r.reloads for ms in p.full_gc_ms]
        row.append(", ".join(f"{ms:.0f}" for ms in full) or "none")
        rows.append(row)
    failures = [r for r in results if any(x != "success" for x in r.results)]
    note = (
        "\nReload results other than success: "
        + "; ".join(f"{r.routes}x{r.numbers}: {r.results}" for r in failures)
        + "\n"
        if failures
        else ""
    )
    return table(header, rows) + "\n" + note


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    add_size_arguments(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        root = args.dir or Path(tmp)
        results = run(root, route_sizes=args.routes, list_sizes=args.numbers)
    print(render(results))


if __name__ == "__main__":
    main()
