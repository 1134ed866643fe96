"""Decision time: SIP parsing (`identify`) plus `RuleSet.decide`, per call.

For each size (routes x listed numbers) the same generated calls are timed three ways:

- indexed: `Headers(...)` + `identify` + `rules.decide`, as app.router does per webhook;
- naive: the same RuleSet without its index, i.e. `for route in rules.routes:
  if route.matches(call, now)` (fewer calls at large sizes: it is slow);
- list lookup alone: `number in NumberSet` against `any(number == x for x in a_list)`.

Each call also notes whether the OS preempted the thread during it (involuntary context
switches, read outside the timed span): on a shared machine the "not preempted" columns
show the code's own cost, the others what a caller would have seen.

Usage: python -m bench.decide [--routes 10,1000,10000] [--numbers 10000,1000000]
                              [--calls 20000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.rules import RuleSet, load_rules
from app.rules.conditions import NumberMatches
from app.rules.numbers import NumberSet
from app.sip.identity import Headers, IdentityPolicy, identify
from bench.workload import (
    LIST_SIZES,
    NOW,
    REGION,
    ROUTE_SIZES,
    SEED,
    Call,
    CallMaker,
    ListFile,
    RoutesFile,
    Stats,
    add_size_arguments,
    size_label,
    table,
    write_list,
    write_routes,
)

WARMUP_CALLS = 2_000
# The naive scan costs ~1 µs per route per call: cap its calls to keep the run short.
NAIVE_ROUTE_BUDGET = 2_000_000
NAIVE_MIN_CALLS = 300
# The naive list scan walks the whole list on a miss (~25 ns per entry).
NAIVE_LIST_BUDGET = 150_000_000
NAIVE_LIST_MIN = 100


@dataclass(frozen=True, slots=True)
class DecideResult:
    routes: int
    numbers: int
    load_seconds: float
    total: Stats
    """identify + decide, per call (µs)."""
    parse: Stats
    """Headers(...) + identify alone."""
    match: Stats
    """rules.decide alone."""
    quiet: Stats
    """Total, over the calls during which the OS did not preempt this thread."""
    preempted_share: float
    naive: Stats
    """identify + decide with the index removed: every route tested in order."""
    by_kind: dict[str, Stats]
    mismatches: int
    """Calls that did not land on the route the workload meant (should be 0)."""
    gc_collections: tuple[int, int, int]
    """Garbage collections (gen 0, 1, 2) during the timed calls."""
    on_cpu: float
    """CPU time / wall time of the timed calls: under 1, other work took the CPU away
    (then tail latencies include time this process was not running)."""


@dataclass(frozen=True, slots=True)
class ListResult:
    numbers: int
    indexed: Stats
    """`number in NumberSet` (the app's list lookup)."""
    naive: Stats
    """`any(number == x for x in numbers)` over a Python list."""
    hit_share: float


def _policy() -> IdentityPolicy:
    return IdentityPolicy(default_region=REGION)


@dataclass(slots=True)
class Timings:
    total: list[int]
    parse: list[int]
    match: list[int]
    preempted: list[bool]
    """Whether the OS switched this thread out involuntarily during the call."""
    mismatches: int


RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def _involuntary_switches() -> int:
    return resource.getrusage(RUSAGE).ru_nivcsw


def time_calls(rules: RuleSet, calls: Sequence[Call]) -> Timings:
    """Per-call nanoseconds: total, identify, decide; preemption outside the timed span."""
    policy = _policy()
    clock = time.perf_counter_ns
    switches = _involuntary_switches
    out = Timings([], [], [], [], 0)
    for call in calls:
        before = switches()
        t0 = clock()
        identity = identify(Headers(call.headers), policy, "srtp")
        t1 = clock()
        decision = rules.decide(identity, NOW, "rtc_bench")
        t2 = clock()
        out.preempted.append(switches() != before)
        out.total.append(t2 - t0)
        out.parse.append(t1 - t0)
        out.match.append(t2 - t1)
        if decision.route != call.expected_route:
            out.mismatches += 1
    return out


def _gc_counts() -> tuple[int, int, int]:
    stats = gc.get_stats()
    return (stats[0]["collections"], stats[1]["collections"], stats[2]["collections"])


def naive_calls(routes: int, calls: int) -> int:
    return min(calls, max(NAIVE_MIN_CALLS, NAIVE_ROUTE_BUDGET // routes))


def measure_rules(
    rules: RuleSet,
    maker: CallMaker,
    *,
    calls: int,
    load_seconds: float,
    numbers: int,
) -> DecideResult:
    # Warm-up: every routed number once (a server that has run a while has seen them all:
    # the E.164 cache holds them), then calls of the measured mix. Callers stay new.
    time_calls(rules, maker.every_called_number())
    time_calls(rules, maker.calls(WARMUP_CALLS))
    measured = maker.calls(calls)
    before = _gc_counts()
    cpu, wall = time.process_time(), time.perf_counter()
    timed = time_calls(rules, measured)
    on_cpu = (time.process_time() - cpu) / (time.perf_counter() - wall)
    after = _gc_counts()
    kinds: dict[str, list[int]] = defaultdict(list)
    for call, ns in zip(measured, timed.total, strict=True):
        kinds[call.kind].append(ns)
    quiet = [ns for ns, hit in zip(timed.total, timed.preempted, strict=True) if not hit]
    naive_rules = dataclasses.replace(rules, index=None)
    naive = time_calls(naive_rules, maker.calls(naive_calls(len(rules.routes), calls)))
    return DecideResult(
        routes=len(rules.routes),
        numbers=numbers,
        load_seconds=load_seconds,
        total=Stats.of_ns(timed.total),
        parse=Stats.of_ns(timed.parse),
        match=Stats.of_ns(timed.match),
        quiet=Stats.of_ns(quiet or timed.total),
        preempted_share=sum(timed.preempted) / len(timed.preempted),
        naive=Stats.of_ns(naive.total),
        by_kind={kind: Stats.of_ns(ns) for kind, ns in sorted(kinds.items())},
        mismatches=timed.mismatches + naive.mismatches,
        gc_collections=(after[0] - before[0], after[1] - before[1], after[2] - before[2]),
        on_cpu=on_cpu,
    )


def run_size(
    routes_file: RoutesFile, list_file: ListFile, *, calls: int
) -> tuple[DecideResult, NumberSet]:
    """The size's result, and the loaded spam list (for the list lookup comparison)."""
    started = time.perf_counter()
    rules = load_rules(routes_file.path, region=REGION)
    load_seconds = time.perf_counter() - started
    maker = CallMaker(routes_file, list_file, seed=SEED + routes_file.routes)
    result = measure_rules(
        rules, maker, calls=calls, load_seconds=load_seconds, numbers=len(list_file.numbers)
    )
    return result, spam_set(rules)


def spam_set(rules: RuleSet) -> NumberSet:
    """The NumberSet the `spam` route looks callers up in."""
    route = next(r for r in rules.routes if r.name == "spam")
    condition = route.conditions[0]
    assert isinstance(condition, NumberMatches)
    return condition.sets[0]


def run_list(
    numbers: NumberSet, list_file: ListFile, maker: CallMaker, *, lookups: int
) -> ListResult:
    """Per-lookup time of the indexed set against a linear scan, same callers."""
    as_list = list(list_file.numbers)
    callers = [c.caller for c in maker.calls(lookups) if c.caller]
    hits = sum(1 for c in callers if c in numbers)
    clock = time.perf_counter_ns
    indexed: list[int] = []
    for number in callers:
        t0 = clock()
        _ = number in numbers
        indexed.append(clock() - t0)
    naive_count = min(len(callers), max(NAIVE_LIST_MIN, NAIVE_LIST_BUDGET // len(as_list)))
    naive: list[int] = []
    for number in callers[:naive_count]:
        t0 = clock()
        _ = any(number == x for x in as_list)
        naive.append(clock() - t0)
    return ListResult(
        numbers=len(as_list),
        indexed=Stats.of_ns(indexed),
        naive=Stats.of_ns(naive),
        hit_share=hits / len(callers) if callers else 0.0,
    )


def run(
    root: Path,
    *,
    route_sizes: Sequence[int] = ROUTE_SIZES,
    list_sizes: Sequence[int] = LIST_SIZES,
    calls: int = 20_000,
    progress: bool = True,
) -> tuple[list[DecideResult], list[ListResult]]:
    results: list[DecideResult] = []
    lists: list[ListResult] = []
    for numbers in list_sizes:
        directory = root / f"numbers-{numbers}"
        list_file = write_list(directory, numbers)
        spam: NumberSet | None = None
        routes_file: RoutesFile | None = None
        for routes in route_sizes:
            spam = None  # let the previous size's rules go before loading the next
            routes_file = write_routes(directory, routes, list_file.path)
            result, spam = run_size(routes_file, list_file, calls=calls)
            results.append(result)
            if progress:
                print(
                    f"  decide {size_label(routes)} routes, {size_label(numbers)} numbers: "
                    f"p50 {result.total.p50:.1f} µs, p99 {result.total.p99:.1f} µs",
                    flush=True,
                )
        if spam is not None and routes_file is not None:
            maker = CallMaker(routes_file, list_file, seed=SEED + numbers)
            lists.append(run_list(spam, list_file, maker, lookups=calls))
    return results, lists


def render(results: Sequence[DecideResult], lists: Sequence[ListResult]) -> str:
    rows = []
    for r in results:
        rows.append(
            [
                size_label(r.routes),
                size_label(r.numbers),
                str(r.total.count),
                *r.total.row(),
                f"{r.quiet.p99:.1f} / {r.quiet.max:.1f} ({r.preempted_share:.1%})",
                f"{r.parse.p50:.1f} / {r.parse.p99:.1f}",
                f"{r.match.p50:.1f} / {r.match.p99:.1f}",
                str(r.naive.count),
                *r.naive.row(),
            ]
        )
    main = table(
        [
            "routes",
            "listed",
            "calls",
            "p50",
            "p99",
            "max",
            "mean",
            "not preempted: p99 / max (share preempted)",
            "identify p50 / p99",
            "decide p50 / p99",
            "naive calls",
            "naive p50",
            "naive p99",
            "naive max",
            "naive mean",
        ],
        rows,
    )
    largest = max(results, key=lambda r: (r.routes, r.numbers))
    kinds = table(
        ["call kind", "calls", "p50", "p99", "max", "mean"],
        [[k, str(s.count), *s.row()] for k, s in largest.by_kind.items()],
    )
    list_rows = [
        [
            size_label(r.numbers),
            f"{r.hit_share:.0%}",
            str(r.indexed.count),
            f"{r.indexed.p50:.2f}",
            f"{r.indexed.p99:.2f}",
            str(r.naive.count),
            f"{r.naive.p50:.0f}",
            f"{r.naive.p99:.0f}",
            f"{r.naive.mean:.0f}",
        ]
        for r in lists
    ]
    list_table = table(
        [
            "listed",
            "hits",
            "lookups",
            "set p50",
            "set p99",
            "scans",
            "scan p50",
            "scan p99",
            "scan mean",
        ],
        list_rows,
    )
    notes = [
        f"mismatched decisions: {sum(r.mismatches for r in results)}",
        "on-CPU share of the timed calls (1.00: never preempted): "
        + ", ".join(
            f"{size_label(r.routes)}x{size_label(r.numbers)} {r.on_cpu:.2f}" for r in results
        ),
        "gc collections (gen0/gen1/gen2) during the timed calls: "
        + ", ".join(
            f"{size_label(r.routes)}x{size_label(r.numbers)} {'/'.join(map(str, r.gc_collections))}"
            for r in results
        ),
    ]
    return (
        "Decision time (µs), identify + decide:\n\n"
        + main
        + f"\n\nBy call kind at {size_label(largest.routes)} routes, "
        + f"{size_label(largest.numbers)} listed (µs):\n\n"
        + kinds
        + "\n\nList lookup alone (µs): the app's set against a linear scan of a list:\n\n"
        + list_table
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    add_size_arguments(parser)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument(
        "--json", action="store_true", help="print each size's stats as JSON (bench.report)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        root = args.dir or Path(tmp)
        results, lists = run(
            root, route_sizes=args.routes, list_sizes=args.numbers, calls=args.calls
        )
    if args.json:
        print(json.dumps([summary(result) for result in results]))
    else:
        print(render(results, lists))


def summary(result: DecideResult) -> dict[str, object]:
    """The numbers bench.report compares across builds, as JSON."""
    return {
        "routes": result.routes,
        "numbers": result.numbers,
        "total": dataclasses.asdict(result.total),
        "parse": dataclasses.asdict(result.parse),
        "match": dataclasses.asdict(result.match),
        "mismatches": result.mismatches,
    }


if __name__ == "__main__":
    main()
