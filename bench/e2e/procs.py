"""Processes for the end-to-end benchmark: started pinned to cores, measured from /proc."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

TICKS = os.sysconf("SC_CLK_TCK")

# The readiness polls and the stand-in's counters go through this one client: httpx.get()
# builds a client, and with it an SSL context (~50 ms of CPU), on every call, which made the
# polls the largest CPU cost of the benchmark's smoke test. No keep-alive: each request has
# a connection of its own, as with httpx.get().
HTTP = httpx.Client(limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def usage(self) -> Usage:
        return usage(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    name: str,
    command: Sequence[str],
    *,
    cpus: Sequence[int],
    env: dict[str, str],
    cwd: Path,
    log: Path,
) -> Proc:
    """Start `command` with its CPU affinity set before it runs (children inherit it)."""
    affinity = set(cpus)

    def pin() -> None:
        os.sched_setaffinity(0, affinity)

    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin
        )
    return Proc(name, process, log)


def wait_ready(proc: Proc, url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.logs()}")
        try:
            if HTTP.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} did not become ready:\n{proc.logs()}")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields follow the last ')'.
        fields = stat.rpartition(")")[2].split()
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def family(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's workers)."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    """User + system time of the process and its descendants."""
    rss_bytes: int
    waited_seconds: float = 0.0
    """Time its threads were runnable but waiting for a core (the kernel's run delay,
    /proc/<pid>/task/<tid>/schedstat): other work on the machine taking its core."""

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_seconds - other.cpu_seconds,
            self.rss_bytes - other.rss_bytes,
            self.waited_seconds - other.waited_seconds,
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_seconds + other.cpu_seconds,
            self.rss_bytes + other.rss_bytes,
            self.waited_seconds + other.waited_seconds,
        )


def run_delay_ns(pid: int) -> int:
    """Run-queue wait of every live thread of `pid` so far (0 where schedstat is absent;
    threads that have exited are not counted)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except OSError:
            continue
        total += int(fields[1])
    return total


def usage(pid: int) -> Usage:
    cpu = 0.0
    rss = 0
    waited = 0
    for member in family(pid):
        waited += run_delay_ns(member)
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        # utime and stime are fields 14 and 15 of stat; fields[0] here is field 3 (state).
        cpu += (int(fields[11]) + int(fields[12])) / TICKS
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
    return Usage(cpu, rss, waited / 1e9)


@dataclass
class Group:
    """Processes measured and stopped together: replicas behind a load balancer. The
    `front` (the load balancer) is stopped first and not measured: the service's CPU and
    memory are the members' own."""

    name: str
    members: list[Proc]
    front: Proc | None = None

    def usage(self) -> Usage:
        total = Usage(0.0, 0)
        for member in self.members:
            total = total + member.usage()
        return total

    def logs(self) -> str:
        every = [self.front, *self.members] if self.front is not None else self.members
        return "\n".join(f"--- {p.name}\n{p.logs()}" for p in every)

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
        for member in self.members:
            member.stop()


Service = Proc | Group
"""What a benchmark phase starts and measures: one process (and its workers), or replicas."""
