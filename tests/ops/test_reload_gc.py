"""RulesManager and the cyclic garbage collector: full collections held off during a load
and resumed whatever happens, loaded rules frozen, and rules freed without the collector."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.rules import RuleSet, compile_rules, load_rules
from app.rules.gcpause import full_collections_paused, paused
from tests.rules.fresh import run_python
from tests.support import overlapping

REPO = Path(__file__).resolve().parents[2]

RULES = """
routes:
  - name: main
    match: {called: "+18005550100"}
    reject: {status_code: 486}
"""


@pytest.fixture(autouse=True)
def _threshold() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    left_paused = paused()
    gc.set_threshold(*before)
    assert not left_paused, "full collections left paused"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def is_frozen(obj: object) -> bool:
    """In the permanent generation: tracked, yet in none that collections walk."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_full_collections_resume_after_an_error() -> None:
    with pytest.raises(ValueError), full_collections_paused():
        assert paused()
        assert gc.isenabled()  # the young generations are still collected
        raise ValueError
    assert not paused()


def test_overlapping_pauses_resume_when_the_last_one_ends() -> None:
    # Two loads whose spans overlap, in two threads: the first to end must not resume
    # full collections under the other, and the other must not leave them paused.
    seen = overlapping(full_collections_paused, paused)
    assert seen == [True]
    assert not paused()


def test_the_threshold_found_on_the_way_in_is_restored() -> None:
    first, second, _ = gc.get_threshold()
    gc.set_threshold(first, second, 7)
    with full_collections_paused(), full_collections_paused():
        assert paused()
    assert gc.get_threshold() == (first, second, 7)


def test_rules_hold_no_reference_cycles() -> None:
    # Frozen rules are freed by reference counting only: a cycle would keep the previous
    # rules (a million numbers...) alive for good after every reload.
    gc.collect()
    gc.disable()
    try:
        rules = load_rules(REPO / "routes.yaml", region="US")
        assert rules.routes
        del rules
        assert gc.collect() == 0
    finally:
        gc.enable()


def _serving(manager: RulesManager) -> RuleSet:
    assert manager.current is not None
    return manager.current


@pytest.mark.anyio
async def test_loaded_rules_are_frozen_and_full_collections_resume(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES)
    during: list[bool] = []

    def load(path: Path) -> RuleSet:
        during.append(paused())
        return compile_rules(path.read_text(), str(path), region="US")

    manager = RulesManager(routes, region="US", metrics=Metrics(), loader=load)
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        assert is_frozen(_serving(manager))
        routes.write_text(RULES + "# changed\n")
        assert (await manager.reload("admin")).result == "success"
        assert is_frozen(_serving(manager))
        assert not paused()
    assert during == [True, True]


@pytest.mark.anyio
async def test_rules_given_at_start_up_are_frozen(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES)
    rules = compile_rules(RULES, str(routes), region="US")
    manager = RulesManager(routes, region="US", metrics=Metrics(), rules=rules)
    assert not is_frozen(rules)
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        assert is_frozen(rules)


@pytest.mark.anyio
async def test_a_failed_or_cancelled_load_resumes_full_collections(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES)
    gate, entered = threading.Event(), threading.Event()
    mode = ["ok"]

    def load(path: Path) -> RuleSet:
        if mode[0] == "invalid":
            return compile_rules("routes: [", str(path), region="US")
        if mode[0] == "bug":
            raise RuntimeError("a compiler bug")
        if mode[0] == "gated":
            entered.set()
            assert gate.wait(10)
        return compile_rules(path.read_text(), str(path), region="US")

    manager = RulesManager(routes, region="US", metrics=Metrics(), loader=load)
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        for failing in ("invalid", "bug"):
            mode[0] = failing
            assert (await manager.reload("admin")).result == "failure"
            assert not paused()
        mode[0] = "gated"
        routes.write_text(RULES + "# changed\n")
        reload = asyncio.create_task(manager.reload("admin"))
        assert await asyncio.to_thread(entered.wait, 10)
        assert paused()
    # Leaving `running` cancelled the reload; its worker thread carries on to the end of
    # the load, and full collections resume then.
    await asyncio.gather(reload, return_exceptions=True)
    assert paused()
    gate.set()
    for _ in range(1000):
        if not paused():
            break
        await asyncio.sleep(0.01)
    assert not paused()


FULL_COLLECTIONS_AFTER_START = """
import asyncio, gc, json
from pathlib import Path
from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.rules import compile_rules

RULES = {rules!r}
# What a large rule set adds: objects alive for good, frozen at start-up with the rules.
ballast = [[None] for _ in range(1_200_000)]
rules = compile_rules(RULES, "routes.yaml", region="US")
manager = RulesManager(Path("routes.yaml"), region="US", metrics=Metrics(), rules=rules)


class Leftover:
    # What a call may leave behind: an object in a reference cycle.
    def __init__(self) -> None:
        self.me = self
        self.parts = [[], [], dict()]


async def serve() -> dict[str, int]:
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        before = gc.get_stats()[2]["collections"]
        in_flight = []
        for _ in range(45_000):  # calls, each alive a while, leaving a cycle
            in_flight.append([Leftover()])
            if len(in_flight) > 2_000:
                in_flight.pop(0)
        return {{
            "full": gc.get_stats()[2]["collections"] - before,
            "leftovers": sum(isinstance(o, Leftover) for o in gc.get_objects()),
        }}


print(json.dumps(asyncio.run(serve())))
"""


def test_full_collections_keep_running_after_the_rules_are_frozen() -> None:
    """A server started with its rules (`switchboard serve`) still collects the cyclic
    garbage its calls leave in the old generation: the freeze does not leave CPython
    counting the frozen rules as what a full collection would walk."""
    out = json.loads(run_python(FULL_COLLECTIONS_AFTER_START.format(rules=RULES)))
    assert out["full"] >= 1, out
    # The calls in flight and what came since the last collection: not every call's
    # leftovers (45,000).
    assert out["leftovers"] < 30_000, out
