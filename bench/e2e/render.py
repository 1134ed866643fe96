"""The end-to-end results as Markdown (the lead section of docs/performance.md)."""

from __future__ import annotations

from bench.e2e.percall import Spread
from bench.e2e.run import LABELS, E2EResult, Latency, Saturation
from bench.workload import table

PEER_RATIO = 1.0
ADDED_P99_US = 1000.0
GROWTH_KB_PER_10K = 500.0
"""'Zero growth': under 50 bytes a call, less than any record of a call could take."""
SCALING = 1.8
DURABLE_COST = 0.10
"""The durable default (SQLite) may cost at most this share of in-memory throughput."""


def _status(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _ratio(a: Saturation | None, b: Saturation | None) -> float | None:
    """Calls per CPU-second, a over b: throughput on a core each had to itself."""
    if a is None or b is None or not b.capacity:
        return None
    return a.capacity / b.capacity


def _raw_ratio(a: Saturation | None, b: Saturation | None) -> float | None:
    if a is None or b is None or not b.rate:
        return None
    return a.rate / b.rate


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _latency_of(result: E2EResult, target: str) -> Latency | None:
    return next((row for row in result.latency if row.target == target), None)


def added_p99_us(result: E2EResult) -> float | None:
    """Switchboard's router-added p99 at the fixed rate, per call: each call's time from
    its webhook's send to its answer's read, less the stand-in API's own time for that
    call (bench.e2e.percall). None when the records did not pair."""
    ours = _latency_of(result, "switchboard")
    if ours is None or ours.per_call is None:
        return None
    return ours.per_call.added.p99_us


def old_added_p99_us(result: E2EResult, target: str = "switchboard") -> float | None:
    """The measure before per-call records: the p99 from due (generator lateness
    included) less the stand-in's round trip p50 measured alone: two distributions, so a
    zero-cost router could not show under the stand-in's own p99 - p50."""
    ours = _latency_of(result, target)
    if ours is None or result.floor is None:
        return None
    return ours.p99_us - result.floor.p50_us


def _spread(value: Spread) -> str:
    return f"{value.p50_us:.0f} / {value.p90_us:.0f} / {value.p99_us:.0f} / {value.max_us:.0f}"


def per_call_table(result: E2EResult) -> str:
    rows = []
    for row in ([result.floor] if result.floor else []) + result.latency:
        old = old_added_p99_us(result, row.target) if row is not result.floor else None
        label = LABELS.get(row.target, row.target)
        if row is result.floor:
            label += " (no router: the harness's own share, one loopback hop each way)"
        pc = row.per_call
        if pc is None:
            rows.append([label, f"not paired: {row.per_call_error}", "", "", "", "", "", ""])
            continue
        rows.append(
            [
                label,
                f"{pc.calls}"
                + (f" ({pc.multi} with more than one request)" if pc.multi else "")
                + (
                    f" ({pc.leftovers} requests of an earlier phase's calls left out)"
                    if pc.leftovers
                    else ""
                )
                # Their sent time is when the write began: the router's time is overstated.
                + (
                    f" ({row.buffered_writes} not written to the socket at once)"
                    if row.buffered_writes
                    else ""
                ),
                _spread(pc.late),
                _spread(pc.before),
                _spread(pc.after),
                f"**{_spread(pc.added)}**",
                _spread(pc.api),
                "-" if old is None else f"{old:.0f}",
            ]
        )
    return table(
        [
            "service",
            "calls paired",
            "generator late (sent - due)",
            "webhook sent -> API request arrived",
            "API answer written -> webhook answer read",
            "router-added: the two together (sent -> read, less the stand-in's own)",
            "stand-in's own (request arrived -> answer written)",
            "old measure: p99 from due - stand-in alone p50",
        ],
        rows,
    )


def targets(result: E2EResult) -> str:
    rows = []
    ours = result.best("switchboard")
    sample = result.best("openai-sample")
    bare = result.best("bare")
    ratio = _ratio(ours, sample)
    if ours is not None:
        rows.append(
            [
                f"at saturation on one core, >= {PEER_RATIO:.1f}x OpenAI's sample style",
                f"{ours.capacity:.0f} calls per CPU-second against {sample.capacity:.0f} "
                f"({_fmt_ratio(ratio)}; CPU per call {ours.cpu_ms_per_call:.2f} against "
                f"{sample.cpu_ms_per_call:.2f} ms); bare handler {bare.capacity:.0f} "
                f"({_fmt_ratio(_ratio(ours, bare))}). Completed on the shared core: "
                f"{ours.rate:.0f} against {sample.rate:.0f} calls/s "
                f"({_fmt_ratio(_raw_ratio(ours, sample))})"
                if sample is not None and bare is not None
                else f"{ours.capacity:.0f} calls per CPU-second (peers not run)",
                _status(ratio is not None and ratio >= PEER_RATIO),
            ]
        )
    latency = _latency_of(result, "switchboard")
    if latency is not None:
        target = (
            f"router-added latency p99 <= {ADDED_P99_US / 1000:.0f} ms at "
            f"{result.config.rate:.0f} calls/s"
        )
        pc = latency.per_call
        if pc is None:
            rows.append([target, f"not measured: {latency.per_call_error}", _status(False)])
        else:
            old = old_added_p99_us(result)
            harness = result.floor.per_call if result.floor is not None else None
            through = _latency_of(result, "passthrough")
            least = through.per_call if through is not None else None
            rows.append(
                [
                    target,
                    f"{pc.added.p99_us:.0f} µs: the p99 over {pc.calls} calls of each call's "
                    "own router time (webhook sent -> API request arrived, plus API answer "
                    "written -> webhook answer read; same-host monotonic clock). Before the "
                    f"accept leaves: p50 {pc.before.p50_us:.0f}, p99 {pc.before.p99_us:.0f} "
                    f"µs. End to end from due p50 {latency.p50_us:.0f}, p99 "
                    f"{latency.p99_us:.0f} µs"
                    + ("" if old is None else f" (old measure, p99 - stand-in p50: {old:.0f} µs)")
                    # A loaded machine shows here: the service runnable, its core taken.
                    + f". Its threads waited {latency.waited_ms:.0f} ms for a core in the "
                    f"{result.config.latency_seconds:g} s"
                    + (
                        ""
                        if harness is None
                        else ". The harness's own share, the same measure with no router "
                        f"(generator straight at the stand-in): p50 {harness.added.p50_us:.0f}, "
                        f"p99 {harness.added.p99_us:.0f} µs"
                    )
                    + (
                        ""
                        if least is None
                        else "; with a pass-through that checks nothing between them (the "
                        f"least a Python router does): p50 {least.added.p50_us:.0f}, p99 "
                        f"{least.added.p99_us:.0f} µs"
                    ),
                    _status(
                        pc.added.p99_us <= ADDED_P99_US
                        and latency.failed == 0
                        and pc.calls == latency.count
                    ),
                ]
            )
    mem = result.memory
    if mem is not None:
        growth = mem.growth_kb_per_10k
        rows.append(
            [
                "zero memory growth per call in steady state "
                f"(< {GROWTH_KB_PER_10K:.0f} KB per 10k calls)",
                f"{growth:+.0f} KB per 10k calls (RSS {mem.rss_start_mb:.1f} -> "
                f"{mem.rss_end_mb:.1f} MB over {mem.calls} calls from {mem.callers} "
                f"returning callers, after {mem.warm_calls} calls from them; "
                f"{mem.failed} answered other than 200)",
                _status(growth < GROWTH_KB_PER_10K),
            ]
        )
    workers = result.config.workers
    if workers > 1:
        one = (
            result.best("switchboard", 1)
            if not result.scaling
            else next((s for s in result.scaling if s.workers == 1), None)
        )
        many = next((s for s in result.scaling if s.workers == workers), None)
        dup = result.duplicates
        if many is None or one is None:
            measured = f"not measured: {result.workers_refused or 'not run'}"
            ok = False
        else:
            scale = many.rate / one.rate
            measured = (
                f"{many.rate:.0f} against {one.rate:.0f} calls/s ({scale:.2f}x; CPU per call "
                f"{many.cpu_ms_per_call:.2f} against {one.cpu_ms_per_call:.2f} ms, CPU used "
                f"{many.cpu_share:.2f} against {one.cpu_share:.2f} of a core)"
            ) + (
                f"; {dup.calls} calls delivered twice at once: {dup.acted} acted on, "
                f"{dup.repeated} repeated requests"
                if dup is not None
                else ""
            )
            ok = (
                scale >= SCALING
                and dup is not None
                and dup.repeated == 0
                and dup.acted == dup.calls
            )
        rows.append(
            [
                f"`--workers {workers}` on {workers} cores >= {SCALING}x, exactly once across "
                "the workers",
                measured,
                _status(ok),
            ]
        )
    memory = _state_row(result, "memory")
    sqlite = _state_row(result, "sqlite")
    if memory is not None and sqlite is not None:
        cost = 1 - sqlite.capacity / memory.capacity
        rows.append(
            [
                f"the durable default (SQLite state) costs < {DURABLE_COST:.0%} of in-memory "
                "throughput",
                f"{sqlite.capacity:.0f} against {memory.capacity:.0f} calls per CPU-second "
                f"({-cost:+.0%}; CPU per call {sqlite.cpu_ms_per_call:.2f} against "
                f"{memory.cpu_ms_per_call:.2f} ms); completed on the shared core "
                f"{sqlite.rate:.0f} against {memory.rate:.0f} calls/s",
                _status(cost < DURABLE_COST),
            ]
        )
    return table(["target", "measured", "status"], rows)


def _state_row(result: E2EResult, state: str) -> Saturation | None:
    return next((s for s in result.states if s.state == state and s.workers == 1), None)


def _sat_row(row: Saturation, sample: Saturation | None, bare: Saturation | None) -> list[str]:
    return [
        LABELS.get(row.target, row.target)
        + (f", {row.workers} workers" if row.workers != 1 else ""),
        f"{row.capacity:.0f}",
        _fmt_ratio(_ratio(row, sample)),
        _fmt_ratio(_ratio(row, bare)),
        f"{row.cpu_ms_per_call:.2f}",
        f"{row.rate:.0f}",
        f"{row.cpu_share:.2f}",
        f"{row.p50_ms:.1f} / {row.p99_ms:.1f}",
        f"{row.rss_start_mb:.0f} -> {row.rss_end_mb:.0f}",
        f"{row.rss_growth_kb_per_10k:+.0f}",
        f"{row.failed}",
        f"{row.acted} / {row.repeated}",
    ]


SAT_HEADER = [
    "service",
    "calls per CPU-second",
    "x OpenAI sample",
    "x bare",
    "CPU ms per call",
    "calls/s completed",
    "CPU share of the window",
    "p50 / p99 ms (wrk)",
    "RSS MB",
    "RSS KB per 10k calls (every caller new)",
    "failed",
    "calls acted on / repeated",
]


def render(result: E2EResult) -> str:
    cfg = result.config
    sample = result.best("openai-sample")
    bare = result.best("bare")
    best = [b for b in (result.best(t) for t in cfg.targets) if b is not None]
    parts = [
        targets(result),
        "",
        f"**At saturation on one core** (of {cfg.rounds} round(s), each service's least "
        "disturbed: the least CPU per call; "
        f"{cfg.connections} "
        f"connections, {cfg.warm_seconds:g} s warm-up then a {cfg.seconds:g} s window; "
        f"service on core {result.service_cpus}, stand-in API and load on "
        f"{result.load_cpus}):",
        "",
        table(SAT_HEADER, [_sat_row(row, sample, bare) for row in best]),
        "",
        f"**At a fixed {cfg.rate:.0f} calls/s, open loop** (latency from when each request "
        f"was due, µs; {cfg.latency_seconds:g} s, same processes after the saturation run; "
        "waited: the kernel's run delay, time the processes' threads were runnable while "
        "other work held their core):",
        "",
        table(
            [
                "service",
                "calls",
                "p50",
                "p90",
                "p99",
                "max",
                "CPU ms per call",
                "waited for a core, ms in all: service / generator + stand-in",
                "failed",
            ],
            [
                [
                    LABELS.get(row.target, row.target),
                    str(row.count),
                    f"{row.p50_us:.0f}",
                    f"{row.p90_us:.0f}",
                    f"{row.p99_us:.0f}",
                    f"{row.max_us:.0f}",
                    f"{row.cpu_ms_per_call:.2f}" if row.cpu_ms_per_call else "-",
                    ("-" if row is result.floor else f"{row.waited_ms:.0f}")
                    + f" / {row.harness_waited_ms:.0f}",
                    str(row.failed),
                ]
                for row in ([result.floor] if result.floor else []) + result.latency
            ],
        ),
        "",
        f"**Per call at {cfg.rate:.0f} calls/s** (the same runs; µs, p50 / p90 / p99 / max "
        "over the calls): the generator and the stand-in API timestamp every call with "
        "`time.monotonic_ns()` (one clock for all processes on the host), paired by call id. "
        "Router-added is each call's end to end from when its webhook was written to the "
        "socket, less the stand-in's own time for that call; it leaves out the generator's "
        "lateness and the stand-in's, but holds two loopback hops each way and the wake-ups "
        "of the processes that read them (the first row: one hop each way, no router). The "
        "last column is the measure used before, kept for comparison: it subtracts the "
        "stand-in's median from the p99 of another distribution.",
        "",
        per_call_table(result),
        "",
    ]
    if result.scaling or result.workers_refused:
        parts += [
            f"**`--workers {cfg.workers}`** (service and load share cores "
            f"{list(range(cfg.workers))}: a 2-core machine has none to spare, so the load "
            "generator and the stand-in take some of the cores both runs count on):",
            "",
        ]
        if result.scaling:
            parts += [
                table(SAT_HEADER, [_sat_row(row, None, None) for row in result.scaling]),
                "",
            ]
        if result.workers_refused:
            parts += [f"`--workers {cfg.workers}` refused: {result.workers_refused}", ""]
        if result.duplicates is not None:
            d = result.duplicates
            parts += [
                f"Exactly once across {d.workers} workers: {d.calls} calls, each delivered "
                f"twice at the same moment on two connections ({d.deliveries} deliveries; "
                f"answers {d.statuses}): the stand-in API saw {d.acted} calls acted on and "
                f"{d.repeated} repeated requests.",
                "",
            ]
    if result.states:
        memory = _state_row(result, "memory")
        parts += [
            "**Exactly-once state stores** (Switchboard alone; one process on one core, "
            f"then {cfg.replicas} replicas: separate `switchboard serve` processes, each on "
            "its own port, sharing one redis-server, behind HAProxy (round robin, checked on "
            "`/readyz`), on every core with the load; their CPU is the replicas' own, not "
            "HAProxy's):",
            "",
            table(
                [
                    "state",
                    "processes",
                    "calls per CPU-second",
                    "x in-memory",
                    "CPU ms per call",
                    "calls/s completed",
                    "CPU share of the window",
                    "p50 / p99 ms (wrk)",
                    "failed",
                    "calls acted on / repeated",
                ],
                [
                    [
                        row.state + (f", {row.setup}" if row.setup else ""),
                        str(row.workers),
                        f"{row.capacity:.0f}",
                        _fmt_ratio(_ratio(row, memory)),
                        f"{row.cpu_ms_per_call:.2f}",
                        f"{row.rate:.0f}",
                        f"{row.cpu_share:.2f}",
                        f"{row.p50_ms:.1f} / {row.p99_ms:.1f}",
                        str(row.failed),
                        f"{row.acted} / {row.repeated}",
                    ]
                    for row in result.states
                ],
            ),
            "",
        ]
    if cfg.rounds > 1:
        parts += [
            "Every round:",
            "",
            table(
                ["round", *SAT_HEADER],
                [[str(row.round), *_sat_row(row, None, None)] for row in result.saturation],
            ),
            "",
        ]
    if result.failures:
        parts += ["Phases that failed in this run:", ""]
        parts += [f"- {failure}" for failure in result.failures]
        parts += [""]
    generator = {row.generator for row in result.saturation}
    parts += [
        f"Load generator at saturation: {', '.join(sorted(generator))}. Load average "
        f"(1 / 5 min): {'; '.join(result.loads)}. The run took {result.seconds:.0f} s.",
        "",
    ]
    return "\n".join(parts)
