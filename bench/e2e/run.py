"""The end-to-end benchmark: the real `switchboard serve` against its peers, under load.

For each target (Switchboard, OpenAI's sample style, a bare handler) in the same run:

1. start it pinned to one core (the service core); the stand-in API and the load
   generators run on the other core, so neither is the bottleneck nor shares its core;
2. saturation: wrk with many connections sends pre-signed deliveries of fresh calls for
   a warm-up, then for the measured window: throughput, wrk's latency percentiles,
   CPU per call (utime + stime from /proc) and RSS before and after the window;
3. fixed load: the open-loop generator sends 200 calls/s on its schedule and times each
   answer from when it was due; it and the stand-in API also timestamp each call
   (time.monotonic_ns), which bench.e2e.percall pairs by call id into the router-added
   latency of each call.

The stand-in counts every call-control request, so each run also checks that every
delivery was acted on once and no call was acted on twice. Targets take turns, round
after round, so a noisy minute on a shared machine hits them alike.

`--workers N` runs Switchboard with N worker processes on N cores (the load then shares
those cores: a 2-core machine has none to spare) against a 1-worker run under the same
conditions, then sends every delivery twice at once to check exactly-once across them.

The state-store phase ends with `replicas` separate `switchboard serve` processes, each on
its own port, sharing one redis-server, behind HAProxy (round robin, health-checked on
/readyz, as the compose `ha` profile runs them): the load reaches them only through it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.e2e import percall, procs, webhooks
from bench.workload import (
    _FRESH_AREAS,
    REGION,
    CallMaker,
    ListFile,
    RoutesFile,
    _us_number,
    write_list,
    write_routes,
)

REPO = Path(__file__).resolve().parents[2]
LUA = Path(__file__).with_name("load.lua")

TARGETS = ("switchboard", "openai-sample", "bare")
LABELS = {
    "switchboard": "Switchboard (`switchboard serve`)",
    "openai-sample": "OpenAI's sample style (openai SDK unwrap + calls.accept, FastAPI)",
    "bare": "bare FastAPI + standardwebhooks + httpx",
    "passthrough": "pass-through that checks nothing (uvloop streams; no signature, rules, state)",
}


def _openloop(file: Path, host: str, rate: float, *options: str) -> list[str]:
    """The command line of bench.e2e.openloop: FILE HOST PORT RATE, then `options`."""
    address, port = host.split(":")
    return [
        sys.executable,
        "-m",
        "bench.e2e.openloop",
        str(file),
        address,
        port,
        str(rate),
        *options,
    ]


@dataclass(frozen=True)
class Config:
    quick: bool = False
    rounds: int = 2
    warm_seconds: float = 3.0
    seconds: float = 10.0
    connections: int = 32
    rate: float = 200.0
    """Calls per second of the fixed-load (latency) phase."""
    latency_seconds: float = 10.0
    routes: int = 1000
    listed: int = 10_000
    workers: int = 2
    """0: skip the multi-worker phase."""
    duplicate_calls: int = 2000
    targets: tuple[str, ...] = TARGETS
    passthrough: bool = True
    """At the fixed rate only: the least a Python router does (bench/e2e/peer_passthrough.py),
    the floor under the router-added latency target on this machine."""
    states: tuple[str, ...] = ("memory", "sqlite", "redis")
    """Exactly-once state stores compared at saturation on one core (empty: skip)."""
    replicas: int = 3
    """Replicas (separate `serve` processes, each on its port) sharing one Redis behind
    HAProxy, in the last row of the state comparison (0: skip)."""
    memory_calls: int = 10_000
    """Calls of the steady-state memory phase (0: skip), after `memory_warm_calls` calls
    from `memory_callers` callers."""
    memory_callers: int = 1_000
    memory_warm_calls: int = 6_000
    """Enough for the service's bounded structures to be full when the measure starts:
    each SQLite connection's page cache (2 MB by default: the state database's and the
    call log's are past it after ~4,000 calls, RSS growing ~0.5 MB per 750 calls until
    then), the state WAL's high-water mark (its -shm index is mapped; with the WAL bounded
    by a RESTART past 16,384 frames: 224 KB after the warm-up, 224-256 KB 10,000 calls
    later) and the caches of what comes back (admitted on a second sighting: after 2,000
    calls half of the 1,000 routed numbers had come back, after 6,000 calls 93%). At
    least two calls from each caller."""

    @classmethod
    def tiny(cls) -> Config:
        """Seconds, a few hundred requests: the smoke test's size."""
        return cls(
            quick=True,
            rounds=1,
            warm_seconds=0.0,
            seconds=1.0,
            connections=4,
            rate=100.0,
            latency_seconds=0.5,
            routes=20,
            listed=100,
            duplicate_calls=50,
            states=(),
            replicas=0,
            memory_calls=0,
            memory_warm_calls=0,
        )

    @classmethod
    def quick_run(cls) -> Config:
        return cls(
            quick=True,
            rounds=1,
            warm_seconds=2,
            seconds=5,
            latency_seconds=5,
            duplicate_calls=500,
            memory_calls=5_000,
            memory_warm_calls=4_000,
        )


@dataclass
class Saturation:
    target: str
    workers: int
    round: int
    generator: str
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    failed: int
    """Answers other than 2xx, and socket errors."""
    cpu_ms_per_call: float
    rss_start_mb: float
    rss_end_mb: float
    wrapped: int
    """Deliveries sent a second time because the file ran out (0 in a valid run)."""
    acted: int
    """Calls the stand-in saw a request for."""
    repeated: int
    """Call-control requests repeated for the same call (0: exactly once)."""
    state: str = ""
    """Switchboard's exactly-once state: memory, sqlite (the default) or redis."""
    cpu_share: float = 0.0
    """CPU seconds the service used per second of the window, over all its processes (1.0:
    one core all of the window). Below 1 on a saturated single process: other work on the
    machine ran on its core (pinning keeps the service off other cores, not others off its
    core)."""
    setup: str = ""
    """How the processes were deployed when not one `serve` (e.g. replicas behind a load
    balancer, whose own CPU is not counted)."""

    @property
    def capacity(self) -> float:
        """Calls per CPU-second: what one core given to the service alone completes."""
        return 1000 / self.cpu_ms_per_call if self.cpu_ms_per_call else 0.0

    @property
    def rss_growth_kb_per_10k(self) -> float:
        if not self.requests:
            return 0.0
        return (self.rss_end_mb - self.rss_start_mb) * 1024 / self.requests * 10_000


class ReturningCallers(CallMaker):
    """Calls from a fixed set of callers (every call id and webhook id still new): once each
    caller and each routed number has come back, the service's bounded caches (E.164
    conversions, parsed To addresses: app.sip.cache) hold them all, and what memory still
    grows is what each call leaves behind."""

    def __init__(self, routes: RoutesFile, listed: ListFile, callers: int) -> None:
        super().__init__(routes, listed)
        self._callers = callers
        self._next = 0

    def _fresh_caller(self) -> str:
        self._next = (self._next + 1) % self._callers
        index = (self._next * 2_654_435_761) % self._fresh_span
        return _us_number(index, _FRESH_AREAS[0])


@dataclass
class Memory:
    warm_calls: int
    calls: int
    rss_start_mb: float
    rss_end_mb: float
    callers: int
    failed: int = 0
    """Answers other than 200 (503: the router's answer when it could not act in time)."""

    @property
    def growth_kb_per_10k(self) -> float:
        return (self.rss_end_mb - self.rss_start_mb) * 1024 / self.calls * 10_000


@dataclass
class Latency:
    target: str
    rate: float
    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    failed: int
    cpu_ms_per_call: float
    per_call: percall.PerCall | None = None
    """Each call's timestamps at the generator and the stand-in API, paired by call id."""
    per_call_error: str = ""
    """Why the records did not pair (then per_call is None and the run lists it as failed)."""
    buffered_writes: int = 0
    """Requests not sent whole in their write (their sent time is then early)."""
    waited_ms: float = 0.0
    """The service's run-queue wait over the phase, all its threads: its core taken by
    other work on the machine."""
    harness_waited_ms: float = 0.0
    """The same for the generator and the stand-in API (the load core)."""


@dataclass
class Duplicates:
    workers: int
    deliveries: int
    calls: int
    acted: int
    repeated: int
    statuses: dict[str, int]


@dataclass
class E2EResult:
    config: Config
    saturation: list[Saturation] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    floor: Latency | None = None
    scaling: list[Saturation] = field(default_factory=list)
    duplicates: Duplicates | None = None
    states: list[Saturation] = field(default_factory=list)
    memory: Memory | None = None
    failures: list[str] = field(default_factory=list)
    workers_refused: str | None = None
    service_cpus: list[int] = field(default_factory=list)
    load_cpus: list[int] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def best(self, target: str, workers: int = 1) -> Saturation | None:
        rows = [
            s
            for s in (self.saturation if workers == 1 else self.scaling)
            if s.target == target and s.workers == workers
        ]
        # The round least disturbed by other work on the machine: the least CPU per call.
        return min(rows, key=lambda s: s.cpu_ms_per_call) if rows else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SWITCHBOARD_"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def _switchboard() -> list[str]:
    script = Path(sys.executable).parent / "switchboard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


def _loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


class Bench:
    def __init__(self, config: Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.secret = webhooks.bench_secret()
        cpus = procs.usable_cpus()
        self.service_cpus = cpus[:1]
        self.load_cpus = cpus[1:2] or cpus[:1]
        self.listed = write_list(workdir / "rules", config.listed)
        self.routes = write_routes(workdir / "rules", config.routes, self.listed.path)
        self.maker: CallMaker = CallMaker(self.routes, self.listed)
        self.wrk_path = shutil.which("wrk")
        self.standin_port = free_port()
        self.standin = procs.start(
            "stand-in",
            [sys.executable, "-m", "bench.e2e.standin", str(self.standin_port)],
            cpus=self.load_cpus,
            env=_env(),
            cwd=REPO,
            log=workdir / "standin.log",
        )
        self.api = f"http://127.0.0.1:{self.standin_port}"
        procs.wait_ready(self.standin, f"{self.api}/_stats")
        self._files = 0
        self.call_ids: set[str] = set()
        """Every call id of the deliveries written so far (percall.pair's `earlier`)."""
        self.redis_url: str | None = None
        self.redis: procs.Proc | None = None

    def close(self) -> None:
        self.standin.stop()
        if self.redis is not None:
            self.redis.stop()

    # --- the services ------------------------------------------------------------------

    def start_target(
        self,
        target: str,
        *,
        cpus: Sequence[int],
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
        name: str = "",
    ) -> tuple[procs.Proc, str]:
        """`name`: of its run directory (default: the target's)."""
        port = free_port()
        common = {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"{self.api}/v1",
            "OPENAI_WEBHOOK_SECRET": self.secret,
        }
        run_dir = self.workdir / f"{name or target}-{port}"
        run_dir.mkdir()
        if target == "passthrough":
            command = [sys.executable, "-m", "bench.e2e.peer_passthrough", str(port)]
            env = _env(**common)
            ready = "/healthz"
        elif target == "switchboard":
            command = [*_switchboard(), "serve", "--port", str(port)]
            if workers != 1:
                command += ["--workers", str(workers)]
            settings = {
                **common,
                "SWITCHBOARD_ROUTES_FILE": str(self.routes.path),
                "SWITCHBOARD_DEFAULT_REGION": REGION,
                "SWITCHBOARD_CALLS_DB": str(run_dir / "calls.db"),
            }
            env = _env(**{**settings, **(extra_env or {})})
            ready = "/readyz"
        else:
            module = {"openai-sample": "peer_openai", "bare": "peer_bare"}[target]
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                f"bench.e2e.{module}:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ]
            env = _env(**common)
            ready = "/healthz"
        proc = procs.start(
            target, command, cpus=cpus, env=env, cwd=run_dir, log=run_dir / "service.log"
        )
        procs.wait_ready(proc, f"http://127.0.0.1:{port}{ready}")
        return proc, f"127.0.0.1:{port}"

    def stats(self) -> dict[str, object]:
        return dict(procs.HTTP.get(f"{self.api}/_stats", timeout=5).json())

    def reset(self) -> None:
        procs.HTTP.post(f"{self.api}/_reset", timeout=5)

    def requests_file(self, count: int, host: str) -> Path:
        self._files += 1
        path = self.workdir / f"requests-{self._files}.bin"
        webhooks.write_requests(path, self.maker, count, secret=self.secret, host=host)
        self.call_ids.update(percall.call_id_of(r) for r in webhooks.read_requests(path))
        return path

    def settle(self, quiet: float = 0.2, limit: float = 5.0) -> None:
        """Until the stand-in has seen no request for `quiet` seconds (at most `limit`): a
        saturation run ends with deliveries in flight that the service still acts on."""
        deadline = time.monotonic() + limit
        last = None
        while time.monotonic() < deadline:
            seen = sum(dict(self.stats()["operations"]).values())  # type: ignore[call-overload]
            if seen == last:
                return
            last = seen
            time.sleep(quiet)

    # --- load --------------------------------------------------------------------------

    def wrk(
        self, host: str, file: Path, seconds: float, connections: int, cpus: Sequence[int]
    ) -> dict[str, float]:
        threads = 1 if len(cpus) == 1 else 2
        connections = max(connections, threads)
        if self.wrk_path is None:
            return self._python_closed_loop(host, file, seconds, connections, cpus)
        command = [
            self.wrk_path,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            f"http://{host}{webhooks.WEBHOOK_PATH}",
            "--",
            str(file),
            str(threads),
        ]
        out = _run_pinned(command, cpus)
        return parse_wrk(out)

    def _python_closed_loop(
        self, host: str, file: Path, seconds: float, connections: int, cpus: Sequence[int]
    ) -> dict[str, float]:
        command = _openloop(file, host, 0, "--closed", str(connections), str(seconds))
        result = json.loads(_run_pinned(command, cpus))
        statuses = {int(k): v for k, v in result["statuses"].items()}
        return {
            "requests": float(result["count"]),
            "seconds": float(result["seconds"]),
            "rate": float(result["rate"]),
            "p50_ms": float(result["p50_us"]) / 1000,
            "p99_ms": float(result["p99_us"]) / 1000,
            "failed": float(result["errors"] + sum(v for k, v in statuses.items() if k >= 300)),
            "wrapped": 0.0,
        }

    def open_loop(
        self, host: str, file: Path, rate: float
    ) -> tuple[dict[str, object], percall.PerCall | str]:
        """The generator's summary, and its calls paired with the stand-in's records (or
        why they did not pair)."""
        records = file.with_suffix(".times.json")
        command = _openloop(file, host, rate, "--records", str(records))
        self.settle()
        procs.HTTP.post(f"{self.api}/_timings", timeout=5).raise_for_status()
        waited = procs.usage(self.standin.pid).waited_seconds
        result: dict[str, object] = json.loads(_run_pinned(command, self.load_cpus))
        waited = procs.usage(self.standin.pid).waited_seconds - waited
        result["harness_waited_ms"] = float(result.get("waited_ms", 0.0)) + waited * 1000  # type: ignore[arg-type]
        served = procs.HTTP.get(f"{self.api}/_timings", timeout=30).json()
        # Kept beside the generator's, for a look at single calls in a kept workdir.
        file.with_suffix(".api.json").write_text(json.dumps(served))
        try:
            sent = percall.sent_records(json.loads(records.read_text()))
            api = percall.served_records(served)
            calls = percall.pair(sent, api, self.call_ids)
        except percall.RecordError as exc:
            return result, str(exc)
        return result, percall.PerCall.of(calls, percall.leftovers(sent, api, self.call_ids))

    # --- phases ------------------------------------------------------------------------

    def saturate(
        self,
        target: str,
        round_: int,
        *,
        workers: int = 1,
        service_cpus: Sequence[int] | None = None,
        load_cpus: Sequence[int] | None = None,
        guess: float = 1500.0,
        state: str = "sqlite",
        replicas: int = 0,
    ) -> tuple[Saturation, procs.Service, str]:
        """`replicas` > 1: that many Switchboard processes behind HAProxy (`workers` each)."""
        cfg = self.config
        service_cpus = list(service_cpus or self.service_cpus)
        load_cpus = list(load_cpus or self.load_cpus)
        proc: procs.Service
        if replicas > 1:
            proc, host = self.start_replicas(replicas, service_cpus, self.state_env(state))
        else:
            proc, host = self.start_target(
                target, cpus=service_cpus, workers=workers, extra_env=self.state_env(state)
            )
        try:
            # A few calls first, answered before the clock starts: a service's first call
            # imports and builds what it does lazily (the SDK's models: seconds on a busy VM).
            self._send_all(host, self.requests_file(8, host))
            warm = self.requests_file(int(guess * cfg.warm_seconds * 1.5) + 50, host)
            measured = self.requests_file(int(guess * cfg.seconds * 1.5) + 50, host)
            if cfg.warm_seconds > 0:
                self.wrk(host, warm, cfg.warm_seconds, cfg.connections, load_cpus)
            self.reset()
            before = proc.usage()
            result = self.wrk(host, measured, cfg.seconds, cfg.connections, load_cpus)
            after = proc.usage()
            stats = self.stats()
        except BaseException:
            proc.stop()
            raise
        used = after - before
        requests = int(result["requests"])
        row = Saturation(
            target=target,
            workers=workers,
            round=round_,
            generator="wrk" if self.wrk_path else "python (wrk not installed)",
            requests=requests,
            seconds=result["seconds"],
            rate=result["rate"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            failed=int(result["failed"]),
            cpu_ms_per_call=used.cpu_seconds * 1000 / requests if requests else 0.0,
            rss_start_mb=before.rss_bytes / 2**20,
            rss_end_mb=after.rss_bytes / 2**20,
            wrapped=int(result["wrapped"]),
            acted=int(stats["calls"]),  # type: ignore[call-overload]
            repeated=int(stats["repeated"]),  # type: ignore[call-overload]
            state=state if target == "switchboard" else "",
            cpu_share=used.cpu_seconds / result["seconds"] if result["seconds"] else 0.0,
        )
        if replicas > 1:
            row.workers = replicas * workers
            row.setup = f"{replicas} replicas behind HAProxy"
        return row, proc, host

    def start_replicas(
        self, count: int, cpus: Sequence[int], extra_env: dict[str, str]
    ) -> tuple[procs.Group, str]:
        """`count` separate `switchboard serve` processes, each on its own port, behind
        HAProxy: round robin, health-checked on /readyz, no retries (a retried webhook
        would be answered from the claim, but would count twice here)."""
        haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
        if haproxy is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        group = procs.Group("replicas", [])
        try:
            servers = []
            for n in range(1, count + 1):
                member, address = self.start_target(
                    "switchboard", cpus=cpus, extra_env=extra_env, name=f"replica{n}"
                )
                member.name = f"switchboard replica {n}"
                group.members.append(member)
                servers.append(f"    server r{n} {address} check inter 2s fall 2 rise 1")
            port = free_port()
            config = self.workdir / f"haproxy-{port}.cfg"
            config.write_text(
                "\n".join(
                    [
                        "global",
                        "    maxconn 4096",
                        "defaults",
                        "    mode http",
                        "    timeout connect 2s",
                        "    timeout client 30s",
                        "    timeout server 30s",
                        "    retries 0",
                        "frontend switchboard",
                        f"    bind 127.0.0.1:{port}",
                        "    default_backend replicas",
                        "backend replicas",
                        "    balance roundrobin",
                        "    option httpchk GET /readyz",
                        "    http-check expect status 200",
                        *servers,
                        "",
                    ]
                )
            )
            group.front = procs.start(
                "haproxy",
                [haproxy, "-db", "-f", str(config)],
                cpus=cpus,
                env=_env(),
                cwd=self.workdir,
                log=self.workdir / f"haproxy-{port}.log",
            )
            host = f"127.0.0.1:{port}"
            procs.wait_ready(group.front, f"http://{host}/readyz")
        except BaseException:
            group.stop()
            raise
        return group, host

    def state_env(self, state: str) -> dict[str, str]:
        """Where Switchboard keeps its exactly-once state (app.state.build)."""
        if state == "memory":
            return {"SWITCHBOARD_STATE_DB": ":memory:"}
        if state == "redis":
            if self.redis_url is None:
                self.redis_url = self._start_redis()
            return {"SWITCHBOARD_REDIS_URL": self.redis_url}
        return {}  # SQLite beside the call log: the default

    def _start_redis(self) -> str:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        port = free_port()
        self.redis = procs.start(
            "redis",
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cpus=self.load_cpus,
            env=_env(),
            cwd=self.workdir,
            log=self.workdir / "redis.log",
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.redis.logs()}")

    def fixed_load(self, target: str, proc: procs.Service, host: str) -> Latency:
        cfg = self.config
        count = int(cfg.rate * cfg.latency_seconds)
        file = self.requests_file(count, host)
        before = proc.usage()
        result, per_call = self.open_loop(host, file, cfg.rate)
        used = proc.usage() - before
        row = _latency(target, cfg.rate, result, used.cpu_seconds, per_call)
        row.waited_ms = used.waited_seconds * 1000
        return row

    def floor(self) -> Latency:
        """The generator straight at the stand-in: the round trip every target pays."""
        cfg = self.config
        count = int(cfg.rate * cfg.latency_seconds)
        path = self.workdir / "floor.bin"
        body = json.dumps({"type": "realtime", "model": "gpt-realtime"}).encode()
        with path.open("wb") as out:
            for i in range(count):
                request = (
                    f"POST /v1/realtime/calls/rtc_floor{i}/accept HTTP/1.1\r\n"
                    f"host: 127.0.0.1\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n"
                ).encode() + body
                out.write(b"%d\n" % len(request))
                out.write(request)
        result, per_call = self.open_loop(f"127.0.0.1:{self.standin_port}", path, cfg.rate)
        return _latency("stand-in alone", cfg.rate, result, 0.0, per_call)

    def passthrough(self) -> Latency:
        """The pass-through peer at the fixed rate (no saturation run: it does nothing a
        router is measured for there)."""
        proc, host = self.start_target("passthrough", cpus=self.service_cpus)
        try:
            self._send_all(host, self.requests_file(8, host))
            return self.fixed_load("passthrough", proc, host)
        finally:
            proc.stop()

    @property
    def memory_warm_calls(self) -> int:
        cfg = self.config
        return max(cfg.memory_warm_calls, 2 * cfg.memory_callers)

    def memory(self) -> Memory:
        """RSS before and after `memory_calls` calls, once the callers have all called."""
        cfg = self.config
        proc, host = self.start_target("switchboard", cpus=self.service_cpus)
        maker, self.maker = (
            self.maker,
            ReturningCallers(self.routes, self.listed, cfg.memory_callers),
        )
        try:
            warm = self.requests_file(self.memory_warm_calls, host)
            self._send_all(host, warm, strict=False)
            # Signed after the warm-up: its signatures must not age past the tolerance.
            measured = self.requests_file(cfg.memory_calls, host)
            before = procs.usage(proc.pid)
            failed = self._send_all(host, measured, strict=False)
            after = procs.usage(proc.pid)
        finally:
            self.maker = maker
            proc.stop()
        return Memory(
            warm_calls=self.memory_warm_calls,
            calls=cfg.memory_calls,
            rss_start_mb=before.rss_bytes / 2**20,
            rss_end_mb=after.rss_bytes / 2**20,
            callers=cfg.memory_callers,
            failed=failed,
        )

    def _send_all(self, host: str, file: Path, *, strict: bool = True) -> int:
        """Every request in the file once, back to back on a few connections."""
        command = _openloop(file, host, 0, "--closed", str(self.config.connections), "600")
        result = json.loads(_run_pinned(command, self.load_cpus))
        failed = int(result["errors"]) + sum(
            int(n) for status, n in result["statuses"].items() if status != "200"
        )
        if strict and failed:
            raise RuntimeError(f"unexpected answers: {result}")
        return failed

    def duplicates(self, host: str, workers: int) -> Duplicates:
        """Every delivery twice, the copies on different connections at the same moment."""
        cfg = self.config
        single = self.workdir / "single.bin"
        webhooks.write_requests(
            single, self.maker, cfg.duplicate_calls, secret=self.secret, host=host
        )
        doubled = self.workdir / "doubled.bin"
        with doubled.open("wb") as out:
            for request in webhooks.read_requests(single):
                for _ in range(2):
                    out.write(b"%d\n" % len(request))
                    out.write(request)
        self.reset()
        command = _openloop(doubled, host, 0, "--closed", "16", "120")
        result = json.loads(_run_pinned(command, procs.usable_cpus()))
        stats = self.stats()
        return Duplicates(
            workers=workers,
            deliveries=int(result["count"]) + int(result["errors"]),
            calls=cfg.duplicate_calls,
            acted=int(stats["calls"]),  # type: ignore[call-overload]
            repeated=int(stats["repeated"]),  # type: ignore[call-overload]
            statuses={str(k): int(v) for k, v in result["statuses"].items()},
        )


def _latency(
    target: str,
    rate: float,
    result: dict[str, object],
    cpu: float,
    per_call: percall.PerCall | str | None = None,
) -> Latency:
    statuses = {int(k): int(v) for k, v in result["statuses"].items()}  # type: ignore[attr-defined]
    count = int(result["count"])  # type: ignore[call-overload]
    return Latency(
        target=target,
        rate=rate,
        count=count,
        p50_us=float(result["p50_us"]),  # type: ignore[arg-type]
        p90_us=float(result["p90_us"]),  # type: ignore[arg-type]
        p99_us=float(result["p99_us"]),  # type: ignore[arg-type]
        max_us=float(result["max_us"]),  # type: ignore[arg-type]
        failed=int(result["errors"]) + sum(v for k, v in statuses.items() if k >= 300),  # type: ignore[call-overload]
        cpu_ms_per_call=cpu * 1000 / count if count else 0.0,
        per_call=per_call if isinstance(per_call, percall.PerCall) else None,
        per_call_error=per_call if isinstance(per_call, str) else "",
        buffered_writes=int(result.get("buffered_writes", 0)),  # type: ignore[call-overload]
        harness_waited_ms=float(result.get("harness_waited_ms", 0.0)),  # type: ignore[arg-type]
    )


def _run_pinned(command: Sequence[str], cpus: Sequence[int]) -> str:
    affinity = set(cpus)
    done = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        preexec_fn=lambda: os.sched_setaffinity(0, affinity),
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(out: str) -> dict[str, float]:
    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if requests is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    seconds = _ms(requests[2] + requests[3]) / 1000
    count = int(requests[1])
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)\s*$", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    wrapped = re.search(r"wrapped: (\d+)", out)
    return {
        "requests": float(count),
        "seconds": seconds,
        "rate": count / seconds,
        "p50_ms": _ms(percentiles["50"]),
        "p99_ms": _ms(percentiles["99"]),
        "failed": float(
            (int(non2xx[1]) if non2xx else 0)
            + (sum(int(x) for x in errors.groups()) if errors else 0)
        ),
        "wrapped": float(wrapped[1]) if wrapped else 0.0,
    }


def run(config: Config, workdir: Path | None = None, *, log: bool = True) -> E2EResult:
    started = time.perf_counter()
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix="switchboard-e2e-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        if log:
            print(f"e2e: {text}", file=sys.stderr, flush=True)

    bench = Bench(config, root)
    result = E2EResult(config, service_cpus=bench.service_cpus, load_cpus=bench.load_cpus)
    guesses: dict[str, float] = {}
    try:
        result.loads.append(f"start {_loadavg()}")
        floor = bench.floor()
        result.floor = floor
        _pairing_failed(result, floor)
        for round_ in range(1, config.rounds + 1):
            for target in config.targets:
                say(f"round {round_}: {target} at saturation")
                row, proc, host = bench.saturate(target, round_, guess=guesses.get(target, 1500.0))
                guesses[target] = max(row.rate * 1.2, 100.0)
                try:
                    result.saturation.append(row)
                    if round_ == 1:
                        say(f"{target} at {config.rate:.0f} calls/s")
                        result.latency.append(bench.fixed_load(target, proc, host))
                        _pairing_failed(result, result.latency[-1])
                finally:
                    proc.stop()
                say(f"{target}: {row.rate:.0f} calls/s, {row.cpu_ms_per_call:.2f} ms CPU per call")
            result.loads.append(f"after round {round_} {_loadavg()}")
        if config.passthrough:
            say(f"pass-through at {config.rate:.0f} calls/s")
            result.latency.append(bench.passthrough())
            _pairing_failed(result, result.latency[-1])
        if "switchboard" in config.targets:
            # A phase that fails is reported, and the others still run.
            phases: list[tuple[str, Callable[[], None]]] = []
            if config.workers > 1:
                phases.append(("--workers", lambda: _scaling(bench, result, say)))
            if config.states:
                phases.append(("state stores", lambda: _states(bench, result, say)))
            if config.memory_calls:

                def memory() -> None:
                    say(f"switchboard: memory over {config.memory_calls} returning calls")
                    result.memory = bench.memory()

                phases.append(("memory", memory))
            for name, phase in phases:
                try:
                    phase()
                except RuntimeError as exc:
                    say(f"{name} failed: {exc}")
                    result.failures.append(f"{name}: {str(exc).strip()[:300]}")
    finally:
        bench.close()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def _pairing_failed(result: E2EResult, row: Latency) -> None:
    # Not fatal to the run (the other phases still count), but listed, and the target
    # row then reads "not measured".
    if row.per_call_error:
        result.failures.append(f"per-call latency of {row.target}: {row.per_call_error}")


def _scaling(bench: Bench, result: E2EResult, say: Callable[[str], None]) -> None:
    config = bench.config
    cpus = procs.usable_cpus()[: config.workers]
    for workers in (1, config.workers):
        say(f"switchboard --workers {workers} on cores {cpus}")
        try:
            row, proc, host = bench.saturate(
                "switchboard", 1, workers=workers, service_cpus=cpus, load_cpus=cpus
            )
        except RuntimeError as exc:
            if workers == 1:
                raise
            result.workers_refused = str(exc).strip().splitlines()[-1]
            say(f"--workers {workers} refused: {result.workers_refused}")
            return
        try:
            result.scaling.append(row)
            if workers > 1:
                say("every delivery twice, at once")
                result.duplicates = bench.duplicates(host, workers)
        finally:
            proc.stop()


def _states(bench: Bench, result: E2EResult, say: Callable[[str], None]) -> None:
    """The exactly-once state stores side by side: one process on one core each, then
    `replicas` separate `serve` processes (each its own port) sharing one Redis behind
    HAProxy, on every core."""
    config = bench.config
    for state in config.states:
        if state == "redis" and shutil.which("redis-server") is None:
            say("redis-server not installed: Redis skipped")
            continue
        say(f"switchboard with its state in {state}")
        row, proc, _ = bench.saturate("switchboard", 1, state=state)
        proc.stop()
        result.states.append(row)
    if config.replicas > 1 and shutil.which("redis-server") is not None:
        cpus = procs.usable_cpus()
        say(f"switchboard, {config.replicas} replicas behind HAProxy, one Redis, cores {cpus}")
        row, proc, _ = bench.saturate(
            "switchboard",
            1,
            service_cpus=cpus,
            load_cpus=cpus,
            state="redis",
            replicas=config.replicas,
        )
        proc.stop()
        result.states.append(row)
