"""What the state store and the call log cost per call, in process: for instruction counts.

Drives `CallRouter.handle` for N fresh calls (the end-to-end benchmark's routes and SIP
headers, both APIs subscribed: claim, dialog take, acting, finish, two records) with a
controller that answers at once, `--concurrency` calls in flight. Run it under callgrind
once per store and divide the difference by the number of calls:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \\
        python -m bench.statecost --store sqlite --calls 2000
    python -m bench.statecost --store memory --calls 0   # the start-up alone, to subtract

`--store redis --redis-url URL` runs against a Redis server of your own (not under
callgrind: the instructions counted are the router's); it also prints the scripts Redis
ran per call (EVALSHA: each one a round trip) and the server's CPU per call.

Timings printed are wall-clock and only for a sanity check; instruction counts are the
measure (repeatable on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from app.intake.events import IncomingCall, SipHeader
from app.ops.metrics import Metrics
from app.records.calllog import CallLog
from app.records.memory import InMemoryCallLog
from app.records.sqlite import SqliteCallLog
from app.router import CallRouter
from app.rules.compile import load_rules
from app.sip.identity import IdentityPolicy
from app.state.claims import ClaimStore, MemoryClaimStore
from app.state.ratelimit import RateLimiter, RateLimits
from app.state.redis import connect
from app.state.redisstore import RedisClaimStore, RedisRateLimiter, RedisState
from app.state.sqlite import SqliteClaimStore, SqliteRateLimiter, SqliteState
from bench.workload import REGION, CallMaker, write_list, write_routes


class InstantController:
    """Answers every request at once (one pass through the event loop, like a reply)."""

    async def accept(self, call_id: str, body: bytes, deadline: float) -> None:
        await asyncio.sleep(0)

    async def reject(self, call_id: str, status_code: int, deadline: float) -> None:
        await asyncio.sleep(0)

    async def refer(self, call_id: str, target_uri: str, deadline: float) -> None:
        await asyncio.sleep(0)

    async def hangup(self, call_id: str, deadline: float) -> None:
        await asyncio.sleep(0)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    listed = write_list(workdir / "rules", 100)
    routes = write_routes(workdir / "rules", 20, listed.path)
    rules = load_rules(routes.path, region=REGION)
    maker = CallMaker(routes, listed)
    store: ClaimStore
    limits: RateLimits
    redis_state: RedisState | None = None
    if args.store == "memory":
        store, limits = MemoryClaimStore(horizon_seconds=86400), RateLimiter()
    elif args.store == "redis":
        redis_state = RedisState(
            connect(args.redis_url, timeout=60.0), horizon_seconds=86400, timeout=60.0
        )
        store, limits = RedisClaimStore(redis_state), RedisRateLimiter(redis_state)
    else:
        # Generous timeouts: under callgrind everything runs ~50 times slower.
        state = SqliteState(workdir / "state.db", horizon_seconds=86400, timeout=60.0)
        store, limits = SqliteClaimStore(state), SqliteRateLimiter(state)
    log: CallLog
    if args.calllog == "memory":
        log = InMemoryCallLog()
    else:
        sqlite_log = SqliteCallLog(workdir / "calls.db")
        sqlite_log.open()
        log = sqlite_log
    await store.open()
    router = CallRouter(
        controller=InstantController(),
        store=store,
        metrics=Metrics(),
        policy=IdentityPolicy(
            default_region=REGION,
            caller_headers=("P-Asserted-Identity", "Remote-Party-ID", "From"),
            anonymous_numbers=frozenset(),
        ),
        deadline_seconds=600.0,
        dry_run=False,
        limiter=limits,
        call_log=log,
    )
    events = [
        IncomingCall(
            webhook_id=f"wh_{n}",
            call_id=f"rtc_{n:032x}",
            sip_headers=tuple(SipHeader(k, v) for k, v in maker.make().headers),
            media_security="srtp",
        )
        for n in range(args.calls)
    ]
    statuses: dict[int, int] = {}
    queue = iter(events)

    async def worker() -> None:
        for event in queue:
            answer = await router.handle(event, rules)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

    server = await _redis_usage(redis_state)
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    done = await _redis_usage(redis_state)
    server = [after - before for before, after in zip(server, done, strict=True)]
    await store.close()
    if isinstance(log, SqliteCallLog):
        log.close()
    print(f"{args.store}/{args.calllog}: {args.calls} calls {elapsed:.2f} s {statuses}")
    if args.calls:
        print(f"  CPU per call {cpu / args.calls * 1e6:.0f} us (this process)")
    if redis_state is not None and args.calls:
        scripts, server_cpu = server
        print(
            f"  Redis: {scripts / args.calls:.2f} EVALSHA per call, "
            f"{server_cpu / args.calls * 1e6:.1f} us of the server's CPU per call"
        )


async def _redis_usage(state: RedisState | None) -> list[float]:
    """(EVALSHA calls, CPU seconds) of the Redis server so far; nothing without Redis."""
    if state is None:
        return [0.0, 0.0]
    stats = await state.client.info("commandstats")
    cpu = await state.client.info("cpu")
    evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    return [float(evalsha), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("memory", "sqlite", "redis"), default="sqlite")
    parser.add_argument(
        "--redis-url", help="--store redis: the server (e.g. redis://127.0.0.1:6390/0)"
    )
    parser.add_argument("--calllog", choices=("memory", "sqlite"), default="sqlite")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.store == "redis" and not args.redis_url:
        parser.error("--store redis needs --redis-url")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
