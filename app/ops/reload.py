"""Safe hot reload of the routing rules.

A RulesManager owns the active RuleSet and replaces it whole; the webhook reads it once per
call, so a call in flight finishes on the rules it started with. A reload (file watch,
SIGHUP or POST /admin/reload) parses and compiles in a worker thread, one at a time, and an
invalid edit leaves the previous rules serving.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from watchfiles import awatch

from app.ops.metrics import Metrics
from app.rules import RulesError, RuleSet, load_rules
from app.rules.conditions import AllOf, AnyOf, Condition, NotOf, NumberMatches
from app.rules.gcpause import full_collections_paused, switching_often

logger = logging.getLogger("switchboard.rules")

ReloadResult = Literal["success", "failure", "unchanged"]
Loader = Callable[[Path], RuleSet]
T = TypeVar("T")

# Symlink hops followed when working out what to watch (Linux gives up after 40 too).
MAX_LINKS = 40
# Errors of a refused reload kept for its log line and the admin API.
MAX_REPORTED_ERRORS = 100
MAX_ERROR_CHARS = 1000
# Pause before re-arming a watch that failed (its directory vanished, out of watches...).
REARM_DELAY = 1.0
MAX_REARM_DELAY = 30.0
# A file that keeps changing is read anyway after this many quiet periods.
MAX_DEBOUNCE_FACTOR = 10
# With no change for this long the watcher wakes once (how we learn it is in place).
IDLE_MS = 1000
# How often the files are looked at when the kernel gives no watch (see watch()).
POLL_MS = 300


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    result: ReloadResult
    trigger: str
    """What asked for it: watch, sighup or admin."""
    at: float
    """Wall-clock time the reload finished."""
    rules_version: str | None
    """The version serving afterwards: after a failure, the previous one."""
    errors: tuple[str, ...] = ()
    """One `file:line:column: key: message` per problem."""

    @property
    def ok(self) -> bool:
        return self.result != "failure"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "result": self.result,
            "trigger": self.trigger,
            "at": round(self.at, 3),
            "rules_version": self.rules_version,
            "errors": list(self.errors),
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused load's errors, made in the worker thread and at most MAX_REPORTED_ERRORS
    of them: a file of 100,000 bad routes is as many errors, whose formatting and log line
    took ~200 ms on the event loop (and every GET /admin/status sent all of them)."""

    errors: tuple[str, ...]
    files: tuple[str, ...]
    """Every file an error is in (watched until the next reload)."""

    @classmethod
    def of(cls, exc: RulesError, path: Path) -> Refusal:
        issues = exc.issues
        errors = [_shortened(str(issue)) for issue in issues[:MAX_REPORTED_ERRORS]]
        if len(issues) > MAX_REPORTED_ERRORS:
            more = len(issues) - MAX_REPORTED_ERRORS
            errors.append(f"{path}: and {more:,} more errors (`switchboard check` lists them)")
        return cls(tuple(errors), tuple(dict.fromkeys(issue.file for issue in issues)))


def _shortened(error: str) -> str:
    # A message may quote the value it is about: a 16 MB `refer:` string is as long.
    if len(error) <= MAX_ERROR_CHARS:
        return error
    return f"{error[:MAX_ERROR_CHARS]}... ({len(error):,} characters)"


class RulesManager:
    def __init__(
        self,
        path: Path,
        *,
        region: str,
        metrics: Metrics,
        rules: RuleSet | None = None,
        loader: Loader | None = None,
        on_activate: Callable[[RuleSet], None] | None = None,
    ) -> None:
        """`on_activate(rules)` runs after each swap (the first rules too), in a worker
        thread: it must be thread-safe (prometheus_client's metrics are)."""
        self.path = path
        self._load: Loader = loader or (lambda p: load_rules(p, region=region))
        self._metrics = metrics
        self._on_activate = on_activate
        self._current = rules
        self._last: ReloadStatus | None = None
        self._failed_files: tuple[str, ...] = ()
        self._lock = asyncio.Lock()
        self._queued: asyncio.Task[ReloadStatus] | None = None
        self._queued_quiet = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.watching = False
        """True while the file watch is in place."""

    @property
    def current(self) -> RuleSet | None:
        """The active rules. Read once per call and keep that reference."""
        return self._current

    @property
    def last_reload(self) -> ReloadStatus | None:
        return self._last

    def watched_files(self) -> tuple[str, ...]:
        """The routes file, every file the active rules came from, and any file the last
        failed reload could not read (so that creating it is noticed)."""
        files = [str(self.path)]
        if self._current is not None:
            files.extend(self._current.files)
        files.extend(self._failed_files)
        return tuple(dict.fromkeys(files))

    @asynccontextmanager
    async def running(
        self, *, watch: bool, debounce_ms: int, sighup: bool = True
    ) -> AsyncIterator[None]:
        """Load the rules (unless given) and activate them; watch and take SIGHUP until exit.

        A routes file that cannot be loaded here raises RulesError: there is nothing to serve.
        """
        self._lock = asyncio.Lock()  # bound to the running event loop
        self._queued = None
        rules = self._current
        if rules is None:
            rules = await asyncio.to_thread(self._load_and_freeze, self.path)
        else:
            await asyncio.to_thread(freeze_long_lived)  # rules loaded by the caller
        self._activate(rules, trigger="startup", previous=None)
        await asyncio.to_thread(self._after_swap, rules, [])
        del rules  # this frame lives as long as the server: it must not pin the first rules
        restore_sighup = self._install_sighup() if sighup else None
        if watch:
            self._spawn(self.watch(debounce_ms))
        try:
            yield
        finally:
            self.watching = False
            if restore_sighup is not None:
                restore_sighup()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def reload(self, trigger: str, *, quiet: bool = False) -> ReloadStatus:
        """Read the files again; swap the new rules in if they are valid and differ.

        One reload runs at a time. Requests that arrive while one runs share the next run,
        which starts after it ends and so reads every edit made before they asked.
        `quiet`: an unchanged result is neither logged nor counted (the watcher's catch-up).
        """
        queued = self._queued
        if queued is None:
            self._queued_quiet = quiet
            queued = self._queued = self._spawn(self._run(trigger))
        else:
            self._queued_quiet = self._queued_quiet and quiet
        # A caller that goes away (a closed connection) does not cancel the shared run.
        return await asyncio.shield(queued)

    async def _run(self, trigger: str) -> ReloadStatus:
        async with self._lock:
            # From here on, a new request queues the next run.
            self._queued, quiet = None, self._queued_quiet
            return await self._reload_now(trigger, quiet=quiet)

    async def _reload_now(self, trigger: str, *, quiet: bool) -> ReloadStatus:
        try:
            rules = await asyncio.to_thread(self._load_or_refusal, self.path)
        except Exception as exc:  # a compiler bug must not cost the serving rules either
            error = f"{self.path}: cannot load: {type(exc).__name__}: {exc}"
            return self._failed(trigger, [error], (), exc_info=exc)
        if isinstance(rules, Refusal):
            return self._failed(trigger, list(rules.errors), rules.files)
        previous = self._current
        if previous is not None and (rules.version, rules.files) == (
            previous.version,
            previous.files,
        ):
            status = self._unchanged(trigger, rules.version, quiet=quiet)
            garbage: list[RuleSet | None] = [rules]  # the new copy is not used
        else:
            self._activate(rules, trigger=trigger, previous=previous)
            status = self._record("success", trigger)
            garbage = [previous]
        activated = self._current if status.result == "success" else None
        del rules, previous
        # Freeing a RuleSet with a million listed numbers takes ~50 ms, in deallocations
        # that hold the GIL whichever thread runs them: let the last reference go in a
        # worker thread, a piece at a time (release). A call still routing on the old rules
        # drops them on the loop when it ends, in one go: that is rare.
        await asyncio.to_thread(self._after_swap, activated, garbage)
        return status

    def _after_swap(self, activated: RuleSet | None, garbage: list[RuleSet | None]) -> None:
        """In a worker thread, after a swap: the on_activate hook (metrics.routes_loaded
        creates a label set per route: ~20 ms of Python at 10,000 routes, which on the
        loop would be one long stall), then the previous rules released."""
        with switching_often():
            if activated is not None and self._on_activate is not None:
                with full_collections_paused():
                    self._on_activate(activated)
                    # What it made lives as long as the rules (metric label children:
                    # ~50,000 objects at 10,000 routes, which the next full collection,
                    # before the next load, would walk for ~30 ms): frozen with them.
                    freeze_long_lived(full=False)
            del activated
            release(garbage)

    def _load_and_freeze(self, path: Path) -> RuleSet:
        """The load, in the worker thread, with full collections held off; the rules it
        returns are frozen (see freeze_long_lived).

        Frozen before the swap, not after it: once full collections resume, the next one
        (on whichever thread, likely the loop's) would walk the new rules. A copy that is
        then not swapped in (unchanged) is freed by reference counting all the same."""
        # Garbage made since the last freeze is collected first, or the freeze below would
        # keep it for good. Cheap: the serving rules are frozen, so this full collection
        # walks only what the server made since then (a few ms), not the rules.
        with switching_often():
            gc.collect()
            with full_collections_paused():
                rules = self._load(path)
                freeze_long_lived(full=False)
        return rules

    def _load_or_refusal(self, path: Path) -> RuleSet | Refusal:
        """In the worker thread: the rules, or why they were refused (see Refusal)."""
        try:
            return self._load_and_freeze(path)
        except RulesError as exc:
            return Refusal.of(exc, path)

    def _unchanged(self, trigger: str, version: str, *, quiet: bool) -> ReloadStatus:
        if quiet:
            return ReloadStatus("unchanged", trigger, time.time(), version)
        status = self._record("unchanged", trigger)
        logger.info(
            "rules unchanged",
            extra={"event": "rules_unchanged", "trigger": trigger, "rules_version": version},
        )
        return status

    def _activate(self, rules: RuleSet, *, trigger: str, previous: RuleSet | None) -> None:
        """The swap, on the loop; the on_activate hook follows in a worker (_after_swap)."""
        self._current = rules  # the swap: one reference, replaced whole
        logger.info(
            "rules loaded",
            extra={
                "event": "rules_loaded",
                "trigger": trigger,
                "source": rules.source,
                "rules_version": rules.version,
                "previous_version": previous.version if previous is not None else None,
                "routes": len(rules.routes),
                "files": list(rules.files),
                "warnings": list(rules.warnings),  # e.g. a route no call can reach
            },
        )

    def _failed(
        self,
        trigger: str,
        errors: list[str],
        files: tuple[str, ...],
        exc_info: BaseException | None = None,
    ) -> ReloadStatus:
        status = self._record("failure", trigger, errors)
        self._failed_files = files
        logger.error(
            "rules reload failed, the previous rules keep serving: %s",
            "; ".join(errors),
            extra={
                "event": "rules_reload_failed",
                "trigger": trigger,
                "rules_version": status.rules_version,
                "errors": errors,
            },
            exc_info=exc_info,
        )
        return status

    def _record(
        self, result: ReloadResult, trigger: str, errors: Iterable[str] = ()
    ) -> ReloadStatus:
        current = self._current
        status = ReloadStatus(
            result,
            trigger,
            time.time(),
            current.version if current is not None else None,
            tuple(errors),
        )
        self._last = status
        if status.ok:
            self._failed_files = ()
        self._metrics.rules_reloads.labels(result).inc()
        self._metrics.rules_reload_ok.set(1 if status.ok else 0)
        return status

    # --- triggers ---------------------------------------------------------------------

    async def watch(self, debounce_ms: int) -> None:
        """Reload whenever a watched path changes; runs until cancelled.

        Parent directories are watched, not only the files: editors replace a file by
        renaming a new one over it, and Kubernetes/compose mounts swap symlinks, which a
        watch on the old file would never see. The watch is re-made when that happens.

        Every batch comes back, the other files' too (filtered here): the read that
        catches up once a watch is in place waits for the first one, and beside a busy
        file (the call log and state database are in the same directory by default) the
        watcher never idles, so a batch of only the routes files could be the first.
        """
        failures = 0
        polling = False
        while True:
            paths: list[str] = []
            try:
                plan = await asyncio.to_thread(watch_plan, self.watched_files())
                paths = list(plan.paths)
                if not paths:
                    raise FileNotFoundError(f"no directory of {sorted(plan.targets)} exists")
                watcher = awatch(
                    *paths,
                    watch_filter=None,
                    step=debounce_ms,
                    debounce=max(debounce_ms * MAX_DEBOUNCE_FACTOR, 1600),
                    rust_timeout=IDLE_MS,
                    yield_on_timeout=True,
                    recursive=False,
                    ignore_permission_denied=True,
                    force_polling=polling,
                    poll_delay_ms=POLL_MS,
                )
                async with aclosing(watcher) as batches:
                    async for batch in batches:
                        if not self.watching:
                            # The first batch (or idle tick) comes once the watch is in
                            # place: catch up on what changed since the rules were read.
                            self.watching, failures = True, 0
                            logger.debug(
                                "watching %s",
                                paths,
                                extra={"event": "rules_watch", "paths": paths},
                            )
                            await self.reload("watch", quiet=True)
                        elif any(path in plan.targets for _, path in batch):
                            await self.reload("watch")
                        else:
                            continue
                        now = await asyncio.to_thread(watch_plan, self.watched_files())
                        if now != plan:
                            break  # a file replaced, a symlink swapped, new files: re-arm
            except Exception as exc:
                if isinstance(exc, RuntimeError) and not polling:
                    # The watcher could not be made (watchfiles' internal error): inotify
                    # instances are counted per user, 128 by default, and the containers
                    # of one user on a host share them. Asked again, it would fail the
                    # same way while they are taken: the files are looked at instead.
                    polling = True
                    logger.warning(
                        "no file watch from the kernel (%s): polling the rules files every %d ms",
                        exc,
                        POLL_MS,
                        extra={"event": "rules_watch_polling", "paths": paths},
                    )
                else:
                    failures += 1
                    delay = min(REARM_DELAY * 2 ** (failures - 1), MAX_REARM_DELAY)
                    logger.warning(
                        "cannot watch the rules files, retrying in %.0f s: %s",
                        delay,
                        exc,
                        extra={"event": "rules_watch_error", "paths": paths},
                    )
                    self.watching = False
                    await asyncio.sleep(delay)
            self.watching = False

    def _install_sighup(self) -> Callable[[], None] | None:
        """SIGHUP -> reload, next to uvicorn's own SIGINT/SIGTERM handlers (which stay).

        Signals reach the main thread only: under TestClient the app runs elsewhere.
        """
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None or threading.current_thread() is not threading.main_thread():
            return None
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(sighup)
        try:
            loop.add_signal_handler(sighup, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            return None

        def restore() -> None:
            loop.remove_signal_handler(sighup)
            if previous is not None:
                signal.signal(sighup, previous)

        return restore

    def _on_sighup(self) -> None:
        logger.info(
            "SIGHUP: reloading the rules",
            extra={"event": "rules_reload_requested", "trigger": "sighup"},
        )
        self._spawn(self.reload("sighup"))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return task


def release(garbage: list[RuleSet | None]) -> None:
    """Empty `garbage`, freeing rules nothing else holds a piece at a time: each route,
    then each shard of their large number sets (~0.2 ms each at a million numbers, where
    the whole set took ~45 ms). The GIL changes hands between bytecodes, so the event loop
    gets its turns in between."""
    pieces = release_order(garbage)
    while pieces:
        pieces.pop()


def release_order(garbage: list[RuleSet | None]) -> list[object]:
    """Empty `garbage` and return what its rules held, to be dropped from the end: the
    routes, then the shards of their number sets (freed by the last route using them,
    a set would take all its shards along at once). In a function of its own: a loop
    variable left in release()'s frame would keep the last rules until it returned."""
    pieces: list[object] = []
    for rules in garbage:
        if rules is not None:
            for route in rules.routes:
                for condition in route.conditions:
                    pieces.extend(_number_parts(condition))
    for rules in garbage:
        if rules is not None:
            pieces.extend(rules.routes)
    garbage.clear()
    return pieces


def _number_parts(condition: Condition) -> Iterator[object]:
    if isinstance(condition, NumberMatches):
        for numbers in condition.sets:
            yield from numbers.parts()
    elif isinstance(condition, AllOf | AnyOf):
        for inner in condition.conditions:
            yield from _number_parts(inner)
    elif isinstance(condition, NotOf):
        yield from _number_parts(condition.condition)


# --- the cyclic garbage collector ------------------------------------------------------
#
# A load makes millions of objects, and CPython runs a full (generation 2) collection
# every time enough of them survive: each walks every tracked object in the process with
# the GIL held, 50-400 ms at 10,000 routes, and the event loop waits that long although
# the load runs in a worker thread. So a load holds full collections off
# (app.rules.gcpause.full_collections_paused). And once loaded, 10,000 routes cost each later
# full collection ~10-15 ms, wherever it is triggered (the event loop included): so what
# a load made is then frozen (gc.freeze: moved to a generation no collection walks).
# Frozen objects are still freed by reference counting when the rules are dropped: a
# RuleSet holds no reference cycles (tests/ops/test_reload_gc.py checks it), so the
# previous rules go as before.


def freeze_long_lived(*, full: bool = True) -> None:
    """Collect garbage, then move every object alive into the generation collections
    never walk (gc.freeze), the rules included.

    `full`: a full collection first, which walks everything not yet frozen: right at
    start-up, when nothing is served yet. After a load the young generations only (a few
    thousand objects, under a millisecond): the rules just loaded are in the old one, and
    a full collection would walk them with the GIL held (~10-15 ms at 10,000 routes)."""
    if full:
        gc.collect()
    else:
        gc.collect(1)
    gc.freeze()
    # CPython runs an automatic full collection only once the objects promoted to the old
    # generation since the last full one exceed a quarter of what that one left there: a
    # count taken before the freeze, rules included. After a full collection at start-up
    # that is every object of the rules, so no full collection ran for hundreds of
    # thousands of calls (millions of objects at 10,000 routes, never), and the cyclic
    # garbage calls leave in the old generation piled up until one finally walked it all
    # at once: memory growing with every call, then a long pause. One more full collection
    # now, over what is not frozen (the server's own objects: a few thousand), counts what
    # is left to walk.
    gc.collect()


@dataclass(frozen=True, slots=True)
class WatchPlan:
    targets: frozenset[str]
    """The paths whose changes matter, as the watcher reports them."""
    paths: tuple[str, ...]
    """What the watcher is given: the existing directories, and the regular files too. A
    directory watch misses in-place writes to a file bind-mounted on its own (the compose
    set-up): the kernel tells the file's other parent, on the host."""
    inodes: tuple[tuple[str, int, int], ...]
    """A file replaced by a new one needs its watch re-made."""


def watch_plan(files: Iterable[str]) -> WatchPlan:
    targets = watch_targets(files)
    dirs = {d for d in map(os.path.dirname, targets) if os.path.isdir(d)}
    inodes = []
    for target in sorted(targets):
        try:
            st = os.stat(target)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            inodes.append((target, st.st_dev, st.st_ino))
    return WatchPlan(targets, tuple(sorted(dirs)) + tuple(t for t, _, _ in inodes), tuple(inodes))


def watch_targets(files: Iterable[str]) -> frozenset[str]:
    """Every path whose change can change what `files` read: each file, every symlink met
    on the way to its target, and the target; each as its directory's real path plus its
    name, which is how the watcher reports it."""
    found: set[str] = set()
    for file in files:
        found.update(_symlink_chain(os.path.abspath(file)))
    return frozenset(
        os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p)) for p in found
    )


def _symlink_chain(path: str) -> set[str]:
    chain = {path}
    for _ in range(MAX_LINKS):
        link = _first_symlink(path)
        if link is None:
            break
        prefix, rest = link
        try:
            target = os.readlink(prefix)
        except OSError:
            break  # swapped or removed meanwhile: the next reload looks again
        resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
        path = os.path.join(resolved, rest) if rest else resolved
        chain.update((prefix, path))
    return chain


def _first_symlink(path: str) -> tuple[str, str] | None:
    """The first component of `path` that is a symlink, and the rest of the path after it."""
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        prefix = os.path.join(*parts[:i])
        if os.path.islink(prefix):
            return prefix, os.path.join(*parts[i:]) if i < len(parts) else ""
    return None
