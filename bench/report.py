"""Run every benchmark and rewrite docs/performance.md.

Usage: python -m bench.report [--calls 20000] [--out docs/performance.md] [--quick]

`--quick` runs tiny sizes (a smoke run; the document says so). A full run takes about
two to three minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import decide, memory, reload
from bench.workload import (
    CALL_MIX,
    LIST_SIZES,
    PREFIX_EVERY,
    ROUTE_SIZES,
    TEMPLATED_EVERY,
    machine,
    size_label,
    table,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "performance.md"

DECISION_P99_US = 50.0
RELOAD_SECONDS = 2.0
STALL_MS = 10.0
"""A loop gap above this counts as blocking (twice CPython's 5 ms thread switch interval)."""
RSS_MB = 300.0


@dataclass(frozen=True, slots=True)
class Report:
    decisions: list[decide.DecideResult]
    lists: list[decide.ListResult]
    reloads: list[reload.ReloadResult]
    memory_results: list[memory.MemoryResult]
    managed: memory.ManagerResult | None
    loads: dict[str, str]
    """Load average before and after each part (other work on the machine skews timings)."""
    seconds: float
    quick: bool


def _loadavg() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"{one:.2f} (1 min) / {five:.2f} (5 min)"
    except OSError:
        return "unknown"


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "app"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (app/ has uncommitted changes)" if dirty else head


def run_all(
    root: Path,
    *,
    route_sizes: Sequence[int] = ROUTE_SIZES,
    list_sizes: Sequence[int] = LIST_SIZES,
    calls: int = 20_000,
    quick: bool = False,
) -> Report:
    started = time.perf_counter()
    loads = {"start": _loadavg()}
    print("decision time ...", flush=True)
    decisions, lists = decide.run(root, route_sizes=route_sizes, list_sizes=list_sizes, calls=calls)
    loads["after decision"] = _loadavg()
    print("reload ...", flush=True)
    reloads = reload.run(root, route_sizes=route_sizes, list_sizes=list_sizes, plain_load=False)
    loads["after reload"] = _loadavg()
    print("memory ...", flush=True)
    manager_size = (min(route_sizes), max(list_sizes))
    mem, managed = memory.run(
        root, route_sizes=route_sizes, list_sizes=list_sizes, manager_size=manager_size
    )
    loads["end"] = _loadavg()
    return Report(
        decisions, lists, reloads, mem, managed, loads, time.perf_counter() - started, quick
    )


def _status(ok: bool) -> str:
    return "met" if ok else "**missed**"


def summary(report: Report) -> str:
    rows = []
    decisions = report.decisions
    worst = max(decisions, key=lambda r: r.quiet.p99)
    rows.append(
        [
            f"decision p99 < {DECISION_P99_US:.0f} µs at every size "
            "(judged on calls not preempted by other processes)",
            f"p99 {min(r.quiet.p99 for r in decisions):.0f}-{worst.quiet.p99:.0f} µs "
            f"(worst at {size_label(worst.routes)} routes, {size_label(worst.numbers)} listed); "
            f"p50 {min(r.total.p50 for r in decisions):.0f}-"
            f"{max(r.total.p50 for r in decisions):.0f} µs; all calls: p99 "
            f"{min(r.total.p99 for r in decisions):.0f}-"
            f"{max(r.total.p99 for r in decisions):.0f} µs",
            _status(worst.quiet.p99 < DECISION_P99_US),
        ]
    )
    big_list = max(r.numbers for r in report.reloads)
    for r in report.reloads:
        if r.numbers != big_list:
            continue
        fresh = next(
            (m for m in report.memory_results if (m.routes, m.numbers) == (r.routes, r.numbers)),
            None,
        )
        loaded = next(
            (d for d in report.decisions if (d.routes, d.numbers) == (r.routes, r.numbers)), None
        )
        worst_reload = max(p.seconds for p in r.reloads)
        parts = [f"reloads {', '.join(f'{p.seconds:.2f}' for p in r.reloads)} s"]
        if loaded is not None:
            parts.append(f"load_rules {loaded.load_seconds:.2f} s")
        if fresh is not None:
            parts.append(f"in a fresh process {fresh.load_seconds:.2f} s")
        slowest = max(
            [worst_reload]
            + ([loaded.load_seconds] if loaded is not None else [])
            + ([fresh.load_seconds] if fresh is not None else [])
        )
        rows.append(
            [
                f"reload of {size_label(big_list)} numbers + {size_label(r.routes)} routes "
                f"< {RELOAD_SECONDS:.0f} s",
                "; ".join(parts),
                _status(slowest < RELOAD_SECONDS),
            ]
        )
    stall = max(report.reloads, key=lambda r: r.worst_gap_ms)
    rows.append(
        [
            f"reload does not block the event loop (no gap > {STALL_MS:.0f} ms)",
            f"worst loop stall {stall.worst_gap_ms:.0f} ms "
            f"({size_label(stall.routes)} routes, {size_label(stall.numbers)} listed); "
            f"baselines: idle {max(r.idle_gap_ms for r in report.reloads):.1f} ms, "
            f"a pure-Python worker thread {max(r.busy_gap_ms for r in report.reloads):.1f} ms",
            _status(stall.worst_gap_ms <= STALL_MS),
        ]
    )
    big = [
        m
        for m in report.memory_results
        if m.numbers == max(m.numbers for m in report.memory_results)
    ]
    worst_mem = max(big, key=lambda m: m.loaded_mb)
    rows.append(
        [
            f"RSS < {RSS_MB:.0f} MB with {size_label(worst_mem.numbers)} numbers "
            "(fresh process, rules loaded)",
            f"{worst_mem.loaded_mb:.0f} MB at {size_label(worst_mem.routes)} routes "
            f"(peak while loading {max(m.peak_mb for m in big):.0f} MB)",
            _status(worst_mem.loaded_mb < RSS_MB),
        ]
    )
    if report.managed is not None:
        m = report.managed
        held = max(m.startup_mb, m.reload1_mb, m.reload2_mb)
        rows.append(
            [
                f"RSS < {RSS_MB:.0f} MB in a server that reloads "
                f"({size_label(m.routes)} routes, {size_label(m.numbers)} listed)",
                f"startup {m.startup_mb:.0f} MB, after reload 1 {m.reload1_mb:.0f} MB, "
                f"after reload 2 {m.reload2_mb:.0f} MB, peak {m.peak_mb:.0f} MB",
                _status(held < RSS_MB and m.peak_mb < RSS_MB),
            ]
        )
    return table(["target", "measured", "status"], rows)


METHOD = f"""\
Everything below is generated by `python -m bench.report` (the code is in `bench/`); each
part also runs alone: `python -m bench.decide`, `python -m bench.reload`,
`python -m bench.memory` (`--help` for sizes). Inputs are generated from a fixed seed
into a temporary directory.

**Workload.** A routes file with N routes in all: `spam` first (`caller: {{list: spam}}`,
reject), then four routes the index cannot file under a number and so tests on every call
(`anonymous: true`, a header equals, a header present, a schedule), then one route per
called number (`called: "+1..."`, accept with its own instructions: an agent per number;
one in {TEMPLATED_EVERY} has `{{caller}}` placeholders, rendered per call) with a prefix
route (`called: {{prefix: ...}}`) every {PREFIX_EVERY}th position. The spam list is a `.txt`
file of distinct US numbers in E.164 (every 500th line in national format, `(415) 555-0100`,
to exercise the slow path).

**Calls.** Realistic INVITE header lists as a carrier trunk sends them (Via, Max-Forwards,
From with display name and tag, To, Call-ID, CSeq, Contact, P-Asserted-Identity with
`user=phone`, Privacy on anonymous calls, X-Carrier-Session-Id, X-Customer-Tier). Mix:
{", ".join(f"{share:.0%} {kind}" for kind, share in CALL_MIX.items())}, the rest to a
number with its own route, drawn uniformly across the routes. Every caller not on the list
is a number never seen before, so the E.164 cache in `app.sip` never helps with the caller
(new callers are the common case); routed numbers are warmed first (one call to each), as
on a server that has run a while. Every decision is checked against the route the workload
meant (mismatches are reported; expected 0).

**Decision time** is, per call, `identify(Headers(headers), policy, "srtp")` followed by
`rules.decide(identity, now, call_id)`, timed with `time.perf_counter_ns`, garbage
collector on, after a warm-up, in one process. This is what `app.router` times as
`switchboard_decision_latency_seconds`. The naive baseline is the same RuleSet with its
index removed (`dataclasses.replace(rules, index=None)`: `for route in rules.routes:
if route.matches(call, now)`), on fewer calls at large sizes. The list comparison times
one caller lookup: `number in NumberSet` against `any(number == x for x in numbers)` on a
Python list, on a sample (a few hundred scans at 1M: each takes tens of milliseconds).

**Reload** runs the project's `RulesManager` (as `app.main` wires it, with
`metrics.routes_loaded`) through startup and two reloads of a changed routes file, while
an asyncio task sleeps 1 ms at a time and records the gap between wake-ups. Gaps are split
into those while the worker thread was loading (GIL contention) and those after the load
returned (the swap on the loop: metrics labels, dropping the previous rules). Two reloads
because `RulesManager.running` keeps a reference to the startup rules, so only the second
reload drops a previous RuleSet. `load_rules` alone is timed in the decision run.

**Memory** is VmRSS / VmHWM from `/proc/self/status` in a fresh `python -m bench.memory
--child` process per size: after importing the app, then after `load_rules` and a
`gc.collect()`. A second child runs RulesManager through startup and two reloads.

**Noise.** The machine is shared (other work runs while this does); the load average is
recorded around each part. Tail latencies (p99, max) are the first to suffer.
"""


def render(report: Report) -> str:
    m = machine()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Performance",
        "",
        "<!-- Generated by `python -m bench.report`; edit bench/report.py, not this file. -->",
        "",
        f"Measured {now} on revision {_git_revision()}; the run took "
        f"{report.seconds:.0f} s."
        + (" **Quick run (tiny sizes): not representative.**" if report.quick else ""),
        "",
        "## Targets",
        "",
        summary(report),
        "",
        "## Machine",
        "",
        table(["", ""], [[k, v] for k, v in m.items()]),
        "",
        "Load average: "
        + "; ".join(f"{where} {value}" for where, value in report.loads.items())
        + ".",
        "",
        "## Method",
        "",
        METHOD,
        "## Decision time",
        "",
        decide.render(report.decisions, report.lists),
        "## Reload",
        "",
        "Seconds are wall time as the caller of `RulesManager.reload` sees it; gaps are the "
        "worst time between 1 ms ticks of the event loop.",
        "",
        reload.render(report.reloads),
        "## Memory",
        "",
        memory.render(report.memory_results, report.managed),
        ANALYSIS,
    ]
    return "\n".join(parts)


ANALYSIS = """\
## Analysis and fixes

Written from profiles of this code (not regenerated: re-check when the numbers move).

**Decision time is dominated by SIP parsing, not by matching.** `RuleSet.decide` with the
index costs about the same at 10 and 10,000 routes and with 10k or 1M listed numbers (the
index and the list are hash lookups); the naive scan grows linearly with the routes. The
target is missed because `identify` alone takes most of the budget:

- parsing three address headers (From, To, P-Asserted-Identity) in pure Python:
  `parse_address` / `_parse_uri` / `_split_params` / `canonical_name`, ~10 µs per header
  (cProfile: `_parse_uri` 0.42 s tottime over 60,000 headers; `canonical_name` called
  23 times per call);
- `to_e164` for a caller never seen before: `phonenumbers.parse` costs ~13 µs and the
  LRU cache cannot help a new caller;
- `decide` itself: ~11 µs p50, of which the `maintenance` schedule (`Schedule.contains`,
  ~3 µs) and the four routes tested on every call (~1 µs each) are most.

Fast paths already applied in `app/sip.py` (same results, checked against the previous
code on 400,000 random strings): `split_list` returns the stripped value when it holds
no comma; `_split_unquoted` and `_find_unquoted` use `str.split` / `str.find` when the
text holds no double quote. They took `identify` from ~45 µs to ~35 µs per call.

Proposed next, in order of effect:

1. `to_e164`: answer `+1` followed by ten digits whose area code and exchange start with
   2-9 (`re.fullmatch(r"\\+1[2-9][0-9]{2}[2-9][0-9]{6}", text)`) without phonenumbers: the
   result is the input (checked for 900,000 random such numbers and regions None, US and
   GB). Saves ~13 µs for every new North American caller.
2. Cache `parse_address(value, region)` (an LRU like `to_e164`'s; `Address` is frozen):
   the To header of a call to a routed number and P-Asserted-Identity of a returning
   caller repeat byte for byte. Saves ~7-10 µs per repeated header.
3. Canonicalise names once in `Headers.__init__` and look up already-canonical names
   (`canonical_name` is called ~23 times per call).
4. A pre-check of `Schedule.contains` per minute (cache the answer for the current
   minute) saves ~3 µs per call on every call when a schedule route is tested first.

**Reload blocks the event loop although it runs in a worker thread.** CPython cannot
switch threads inside one C call, and loading a million numbers makes several long ones:
`text.splitlines()` (~60-85 ms), the set's resizes while it grows to a million entries
(~30-140 ms each under contention), `frozenset(exact)` (~35 ms). After the load, the swap
on the loop drops the previous RuleSet, and freeing a million strings there takes
~70-100 ms (`del` of a 1M RuleSet measured alone: 107 ms). Fixes (app/rules/numbers.py,
app/reload.py):

1. Drop the previous rules off the loop: in `RulesManager._reload_now`, after the swap,
   hand `previous` to a worker (`await asyncio.to_thread(_release, [previous])` with
   `previous = None` first, the helper clearing the list) so the last reference dies there.
   The same for a reload whose result was `unchanged` (the new, unused RuleSet).
2. `load_number_file`: iterate lines (`for line in io.StringIO(text)` or the open file)
   instead of `text.splitlines()`, and build the set in shards (e.g. 64 frozensets chosen
   by `hash(number) & 63`, each ~16k numbers) so that no single resize or copy holds the
   GIL for more than ~1 ms; `NumberSet.__contains__` indexes the shard first.
3. `NumberSet.union` with no other sets now returns the set itself (applied): it copied a
   million-entry frozenset (~35 ms holding the GIL, ~40 MB) for every list route.

**Reload time at 10,000 routes is YAML.** `load_rules` spends most of its time in
PyYAML's pure-Python scanner/parser (`source.parse_yaml`: 4.1 s of ~4.7 s for 10,000
routes). PyYAML here is built with libyaml: `yaml.CSafeLoader` in `parse_yaml` gives the
same data and the same line/column positions (compared on the 10,000-route file) in
1.2 s, and `load_rules` at 10,000 routes drops from ~4.7 s to ~2.0 s. The list file itself
loads in ~1 s (0.5 s of it the per-line Python loop).

**Memory.** A loaded RuleSet with a million numbers costs ~115-120 MB (64 B per number
string plus a 2M-slot hash table), well under 300 MB. But a server that reloads holds
more: `RulesManager.running` keeps the startup RuleSet in a local variable (`rules`) for
the life of the server, so after the first reload two full RuleSets stay resident, and
during a reload three exist at once (pinned startup, serving, new). Fix: do not keep the
reference (`self._activate(await ...)` without binding `rules`, or `del rules` after
activating). A reload still needs old + new at once; storing numbers as `int` (28-32 B
instead of ~64 B per number) or in sorted shards of `array('Q')` would roughly halve or
quarter that.
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args(argv)
    route_sizes, list_sizes, calls = list(ROUTE_SIZES), list(LIST_SIZES), args.calls
    if args.quick:
        route_sizes, list_sizes, calls = [10, 100], [1_000, 5_000], min(calls, 1_000)
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        report = run_all(
            Path(tmp),
            route_sizes=route_sizes,
            list_sizes=list_sizes,
            calls=calls,
            quick=args.quick,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report), encoding="utf-8")
    print(f"wrote {args.out} in {report.seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
