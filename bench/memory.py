"""Resident memory after loading the rules, each size in a fresh Python process.

A child process imports the app, reads VmRSS, loads the routes file (and its list) with
`load_rules`, collects garbage and reads VmRSS and VmHWM (the peak) from /proc/self/status.
In `manager` mode the child instead runs the project's RulesManager through startup and
two reloads of a changed file, reading VmRSS after each: what a server holds over time.

Usage: python -m bench.memory [--routes 10,1000,10000] [--numbers 10000,1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def rss_bytes() -> tuple[int, int]:
    """(current resident set, peak resident set) of this process, in bytes."""
    try:
        fields: dict[str, int] = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return peak, peak


@dataclass(frozen=True, slots=True)
class MemoryResult:
    routes: int
    numbers: int
    baseline_mb: float
    """After importing the app, before loading anything."""
    loaded_mb: float
    """After load_rules, garbage collected, the RuleSet held."""
    peak_mb: float
    """Peak resident set of the process (VmHWM): the load's transient high-water mark."""
    load_seconds: float


@dataclass(frozen=True, slots=True)
class ManagerResult:
    routes: int
    numbers: int
    baseline_mb: float
    startup_mb: float
    reload1_mb: float
    reload2_mb: float
    peak_mb: float


def _child_load(path: Path) -> dict[str, float]:
    from app.rules import load_rules

    gc.collect()
    baseline, _ = rss_bytes()
    started = time.perf_counter()
    rules = load_rules(path, region=REGION)
    seconds = time.perf_counter() - started
    gc.collect()
    loaded, peak = rss_bytes()
    assert rules.routes
    return {
        "baseline_mb": baseline / MB,
        "loaded_mb": loaded / MB,
        "peak_mb": peak / MB,
        "load_seconds": seconds,
    }


async def _manager_run(path: Path) -> dict[str, float]:
    from app.ops.metrics import Metrics
    from app.ops.reload import RulesManager

    metrics = Metrics()
    manager = RulesManager(path, region=REGION, metrics=metrics, on_activate=metrics.routes_loaded)
    gc.collect()
    out = {"baseline_mb": rss_bytes()[0] / MB}
    async with manager.running(watch=False, debounce_ms=100, sighup=False):
        gc.collect()
        out["startup_mb"] = rss_bytes()[0] / MB
        for n in (1, 2):
            with path.open("a", encoding="utf-8") as f:
                f.write(f"# reloaded by bench.memory ({n})\n")
            status = await manager.reload("admin")
            assert status.result == "success", status
            gc.collect()
            out[f"reload{n}_mb"] = rss_bytes()[0] / MB
        out["peak_mb"] = rss_bytes()[1] / MB
    return out


def _child_manager(path: Path) -> dict[str, float]:
    return asyncio.run(_manager_run(path))


def _spawn(mode: str, path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", mode, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_load(path: Path, routes: int, numbers: int) -> MemoryResult:
    data = _spawn("load", path)
    return MemoryResult(
        routes,
        numbers,
        data["baseline_mb"],
        data["loaded_mb"],
        data["peak_mb"],
        data["load_seconds"],
    )


def measure_manager(path: Path, routes: int, numbers: int) -> ManagerResult:
    data = _spawn("manager", path)
    return ManagerResult(
        routes,
        numbers,
        data["baseline_mb"],
        data["startup_mb"],
        data["reload1_mb"],
        data["reload2_mb"],
        data["peak_mb"],
    )


def run(
    root: Path,
    *,
    route_sizes: Sequence[int] = ROUTE_SIZES,
    list_sizes: Sequence[int] = LIST_SIZES,
    manager_size: tuple[int, int] | None = (10, 1_000_000),
    progress: bool = True,
) -> tuple[list[MemoryResult], ManagerResult | None]:
    results = []
    managed = None
    for numbers in list_sizes:
        directory = root / f"numbers-{numbers}"
        list_file = directory / "spam.txt"
        if not list_file.exists():
            write_list(directory, numbers)
        for routes in route_sizes:
            path = write_routes(directory, routes, list_file).path
            result = measure_load(path, routes, numbers)
            results.append(result)
            if progress:
                print(
                    f"  memory {size_label(routes)} routes, {size_label(numbers)} numbers: "
                    f"RSS {result.loaded_mb:.0f} MB (peak {result.peak_mb:.0f} MB)",
                    flush=True,
                )
            if manager_size == (routes, numbers):
                managed = measure_manager(path, routes, numbers)
    return results, managed


def render(results: Sequence[MemoryResult], managed: ManagerResult | None) -> str:
    rows = [
        [
            size_label(r.routes),
            size_label(r.numbers),
            f"{r.baseline_mb:.0f}",
            f"{r.loaded_mb:.0f}",
            f"{r.loaded_mb - r.baseline_mb:.0f}",
            f"{r.peak_mb:.0f}",
            f"{r.load_seconds:.2f}",
        ]
        for r in results
    ]
    text = table(
        [
            "routes",
            "listed",
            "RSS after imports (MB)",
            "RSS with rules loaded (MB)",
            "rules (MB)",
            "peak RSS (MB)",
            "load (s)",
        ],
        rows,
    )
    if managed is not None:
        text += (
            f"\n\nRulesManager at {size_label(managed.routes)} routes, "
            f"{size_label(managed.numbers)} listed (MB):\n\n"
            + table(
                [
                    "after imports",
                    "after startup",
                    "after reload 1",
                    "after reload 2",
                    "peak",
                ],
                [
                    [
                        f"{managed.baseline_mb:.0f}",
                        f"{managed.startup_mb:.0f}",
                        f"{managed.reload1_mb:.0f}",
                        f"{managed.reload2_mb:.0f}",
                        f"{managed.peak_mb:.0f}",
                    ]
                ],
            )
        )
    return text + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    add_size_arguments(parser)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "ROUTES_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, path = args.child
        child = _child_load if mode == "load" else _child_manager
        print(json.dumps(child(Path(path))))
        return
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        root = args.dir or Path(tmp)
        results, managed = run(root, route_sizes=args.routes, list_sizes=args.numbers)
    print(render(results, managed))


if __name__ == "__main__":
    main()
