"""`switchboard serve --workers 2`: two processes on one port, each call acted on once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import E2E_ROUTES, Service, start_service, stop_service, wait_until
from tests.e2e.fake_openai import FakeOpenAI, Reply
from tests.e2e.test_crash_e2e import Delivery, accepts, env
from tests.support import new_id

pytestmark = pytest.mark.e2e


def _workers(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(line) for line in out.stdout.split()]


def _serving_workers(pid: int) -> set[int]:
    """The worker processes (multiprocessing's spawn), not its resource tracker."""
    found = set()
    for child in _workers(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if b"multiprocessing.spawn" in cmdline:
            found.add(child)
    return found


def _opened(service: Service) -> int:
    """Call logs opened so far: one per worker start."""
    return service.logs().count('"calllog_opened"')


def _statuses(db: Path, calls: list[Delivery]) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT call_id, status, end_reason FROM calls").fetchall()
    ids = {d.call_id for d in calls}
    return {call_id: (status, reason) for call_id, status, reason in rows if call_id in ids}


def test_two_workers_share_the_port_and_act_once_per_call(tmp_path: Path) -> None:
    fake = FakeOpenAI().start()
    calls = [Delivery(new_id()) for _ in range(8)]
    for delivery in calls:
        fake.script(delivery.call_id, "accept", Reply(delay=0.1))
    # A lease long enough for a loaded test machine: no worker dies here, and a worker whose
    # event loop stalled past the crash tests' 0.5 s lease (a fresh worker's first call,
    # on a busy machine) lost its claim to the other worker: 'uncertain'.
    live = env(fake, SWITCHBOARD_CLAIM_LEASE_SECONDS="5")
    service = start_service(tmp_path / "data", E2E_ROUTES, env=live, args=("--workers", "2"))
    try:
        assert len(_workers(service.process.pid)) >= 2
        # Every delivery four times at once, on separate connections: the kernel spreads
        # them over both workers.
        jobs = [d for d in calls for _ in range(4)]
        try:
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(lambda d: d.send_until_final(service), jobs))
        except httpx.HTTPError as exc:
            # Seen once with two whole suites at once on 2 cores: a worker closed a
            # webhook's connection unanswered. Its logs say which worker, and why.
            pytest.fail(f"{exc!r}\n{service.logs()}")
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert {a.json()["outcome"] for a in answers} == {"accepted"}
        assert accepts(fake, calls) == Counter({d.call_id: 1 for d in calls})
    finally:
        stop_service(service)
        fake.stop()
    assert service.process.returncode == 0, service.logs()


def test_a_restarted_worker_leaves_the_other_workers_calls_open(tmp_path: Path) -> None:
    """The calls left open by a previous run are ended once per start of the service, by
    its supervisor: before, every worker ended them as it started, and a worker that
    uvicorn restarted after a crash ended the calls live on the other worker (`unknown`)."""
    fake = FakeOpenAI().start()
    workdir = tmp_path / "node"
    calls = [Delivery(new_id()) for _ in range(4)]
    live = env(fake, SWITCHBOARD_CLAIM_LEASE_SECONDS="5")
    service = start_service(workdir, E2E_ROUTES, env=live, args=("--workers", "2"))
    try:
        wait_until(lambda: _opened(service) >= 2, "both workers started", within=60)
        for delivery in calls:
            assert delivery.send_until_final(service).json()["outcome"] == "accepted"
        # Accepted, and Switchboard does not stay on them: answered until the next start.
        answered = {d.call_id: ("answered", None) for d in calls}
        wait_until(lambda: _statuses(workdir / "calls.db", calls) == answered, "the records")
        first = _serving_workers(service.process.pid)
        assert len(first) == 2, first
        os.kill(min(first), signal.SIGKILL)
        wait_until(lambda: _serving_workers(service.process.pid) - first, "a new worker", within=30)
        wait_until(lambda: _opened(service) >= 3, "the new worker's call log", within=60)
        # Its open() is over, so is what it would have ended; the calls are still live.
        assert _statuses(workdir / "calls.db", calls) == answered
        assert all(d.send(service).json()["duplicate"] for d in calls)
    finally:
        stop_service(service)

    # The next start of the service ends them once, before any worker starts.
    restarted = start_service(workdir, E2E_ROUTES, env=live, args=("--workers", "2"))
    try:
        ended = {d.call_id: ("ended", "unknown") for d in calls}
        assert _statuses(workdir / "calls.db", calls) == ended
        assert restarted.logs().count('"calllog_recovered"') == 1
    finally:
        stop_service(restarted)
        fake.stop()


def test_sighup_reloads_each_worker_rather_than_replacing_it(tmp_path: Path) -> None:
    """`kill -HUP` (the documented reload) made uvicorn's supervisor replace every worker:
    their calls' in-call sessions were dropped, and a bad edit showed only as a worker
    that did not start (no rules_reload_failed, no metric)."""
    fake = FakeOpenAI().start()
    service = start_service(tmp_path / "data", E2E_ROUTES, env=env(fake), args=("--workers", "2"))
    try:
        wait_until(lambda: _opened(service) >= 2, "both workers started", within=60)
        workers = _serving_workers(service.process.pid)
        assert len(workers) == 2, workers
        os.kill(service.process.pid, signal.SIGHUP)
        wait_until(
            lambda: service.logs().count('"rules_reload_requested"') >= 2, "both reloads", 30
        )
        assert _serving_workers(service.process.pid) == workers
    finally:
        stop_service(service)
        fake.stop()
