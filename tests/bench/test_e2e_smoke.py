"""The end-to-end benchmark still runs, at a tiny size (seconds). No timing is asserted:
what is checked is that every part ran and that every call was acted on exactly once."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from bench.e2e import render
from bench.e2e.run import TARGETS, Config, E2EResult, parse_wrk, run
from bench.e2e.webhooks import read_requests

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:8000/webhooks/openai
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  512.00us   9.81ms   90.00%
    Req/Sec     1.90k   100.00     2.00k    70.00%
  Latency Distribution
     50%    2.00ms
     75%    2.20ms
     90%    2.50ms
     99%  850.00us
  1900 requests in 1.00s, 300.00KB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 0
Requests/sec:   1900.00
Transfer/sec:    300.00KB
wrapped: 0
"""


def test_wrk_output_is_read_with_its_units() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["requests"] == 1900
    assert parsed["rate"] == 1900
    assert parsed["p50_ms"] == 2.0
    assert parsed["p99_ms"] == 0.85
    assert parsed["failed"] == 4


HAVE_REPLICAS = (
    shutil.which("redis-server") is not None
    and (shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")) is not None
)


@dataclasses.dataclass(frozen=True)
class BenchRun:
    config: Config
    result: E2EResult
    workdir: Path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> BenchRun:
    """One tiny run of the whole benchmark for the tests below: every target, the memory
    phase and, when redis-server and HAProxy are here, the Redis row and the three replicas
    behind HAProxy. (One run, not one per test: the stand-in, the floor and Switchboard's
    saturation and fixed-load phases are the same in both.)"""
    workdir = tmp_path_factory.mktemp("e2e-bench")
    config = dataclasses.replace(
        Config.tiny(),
        workers=0,
        memory_calls=100,
        memory_callers=20,
        states=("redis",) if HAVE_REPLICAS else (),
        replicas=3 if HAVE_REPLICAS else 0,
    )
    return BenchRun(config, run(config, workdir, log=False), workdir)


@pytest.mark.e2e
def test_e2e_bench_runs_every_target_and_acts_once_per_call(bench_run: BenchRun) -> None:
    config, result, tmp_path = bench_run.config, bench_run.result, bench_run.workdir
    assert [row.target for row in result.saturation] == list(TARGETS)
    for row in result.saturation:
        assert row.requests > 0, row
        assert row.failed == 0, row
        assert row.repeated == 0, row
        assert row.wrapped == 0, row
        # The stand-in saw a call-control request for every delivery in the window (a
        # few of the warm-up's may still land in it).
        assert row.requests <= row.acted <= row.requests + config.connections, row
        assert row.cpu_ms_per_call > 0
    # The pass-through peer is measured at the fixed rate only.
    assert [row.target for row in result.latency] == [*TARGETS, "passthrough"]
    assert all(row.failed == 0 and row.count > 0 for row in result.latency)
    assert result.floor is not None and result.floor.count > 0
    # Every answered call paired with its request at the stand-in API (by call id).
    for timed in [result.floor, *result.latency]:
        assert timed.per_call is not None, timed.per_call_error
        assert timed.per_call.calls == timed.count, timed
    assert result.failures == []
    assert result.memory is not None and result.memory.rss_end_mb > 0
    text = render.render(result)
    assert "x OpenAI sample" in text
    assert "the p99 over" in text and "router-added: the two together" in text
    assert "with a pass-through that checks nothing between them" in text
    assert "zero memory growth per call" in text
    # The deliveries are signed with the workload's SIP headers.
    requests = read_requests(next(tmp_path.glob("requests-*.bin")))
    assert b"webhook-signature: v1," in requests[0]
    assert b"P-Asserted-Identity" in requests[0]


@pytest.mark.e2e
@pytest.mark.skipif(
    not HAVE_REPLICAS,
    reason="the replicas row needs redis-server and haproxy (apt-get install redis-server haproxy)",
)
def test_the_replicas_row_is_three_serve_processes_behind_haproxy(bench_run: BenchRun) -> None:
    """Issue 12's 'three replicas' row: three separate `switchboard serve` processes, each
    on its own port, sharing one redis-server, reached only through HAProxy; each one
    served calls, and every call was acted on once."""
    config, result, tmp_path = bench_run.config, bench_run.result, bench_run.workdir
    assert result.failures == []
    single, replicas = result.states
    assert (single.state, single.workers, single.setup) == ("redis", 1, "")
    assert (replicas.state, replicas.workers) == ("redis", 3)
    assert replicas.setup == "3 replicas behind HAProxy"
    assert replicas.requests > 0 and replicas.failed == 0 and replicas.repeated == 0
    assert replicas.requests <= replicas.acted <= replicas.requests + config.connections
    logs = sorted(tmp_path.glob("replica*-*/service.log"))
    assert len(logs) == 3
    ports = {log.parent.name.rsplit("-", 1)[1] for log in logs}
    assert len(ports) == 3  # each its own port
    for log in logs:
        assert '"event": "call"' in log.read_text(), f"{log.parent.name} served no call"
    assert "3 replicas behind HAProxy" in render.render(result)
