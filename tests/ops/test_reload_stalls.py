"""What keeps a load in a worker thread from stalling the event loop: large trees freed a
piece at a time, threads switched often while it runs (and the interval restored after),
list files read a piece at a time with the very lines and digest of a whole read, the
on_activate hook off the loop."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import sys
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.rules import RuleSet, load_rules, numbers, schema
from app.rules.gcpause import SWITCH_INTERVAL, switching, switching_often
from app.rules.numbers import ListFileError, load_number_file
from app.rules.source import parse_yaml
from app.rules.teardown import BIG, dismantle
from tests.support import overlapping

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    left = switching()
    sys.setswitchinterval(before)
    assert not left, "switching_often left in force"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- dismantle ---------------------------------------------------------------------------


class Leaf:
    pass


def tree(leaves: list[weakref.ref[Leaf]], routes: int) -> dict[str, Any]:
    def leaf() -> Leaf:
        made = Leaf()
        leaves.append(weakref.ref(made))
        return made

    return {
        "routes": [{"name": leaf(), "match": {"called": [leaf()]}} for _ in range(routes)],
        "lists": {"vip": [leaf() for _ in range(BIG * 2)]},
        "deep": [[[[[leaf()]]]]],
    }


def test_dismantle_frees_everything() -> None:
    leaves: list[weakref.ref[Leaf]] = []
    garbage: list[Any] = [tree(leaves, 1000), tree(leaves, 3)]
    gc.disable()  # freed by reference counting alone, not by the collector
    try:
        dismantle(garbage)
        assert garbage == []
        assert all(ref() is None for ref in leaves)
    finally:
        gc.enable()


def test_dismantle_leaves_shared_containers_whole() -> None:
    leaves: list[weakref.ref[Leaf]] = []
    data = tree(leaves, 300)
    routes, vip = data["routes"], data["lists"]["vip"]
    dismantle([data])
    del data
    # Still held elsewhere (by the rules being built, say): not emptied, only dropped.
    assert len(routes) == 300 and len(vip) == BIG * 2
    assert all(ref() is not None for ref in leaves[: 2 * 300])


def test_dismantle_takes_yaml_nodes_and_pydantic_models_apart() -> None:
    text = (REPO / "routes.yaml").read_text()
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(node, yaml.MappingNode)
    sections = dict((key.value, value) for key, value in node.value)
    shared = sections["sessions"]  # also held here: must be left whole
    route = weakref.ref(sections["routes"].value[0])
    del sections
    data = parse_yaml(text, "routes.yaml").data
    spec = schema.RoutesFile.model_validate(data, context={"region": "US"})
    routes = spec.routes
    garbage: list[Any] = [node, spec]
    del node, spec
    gc.disable()
    try:
        dismantle(garbage)
        assert route() is None
    finally:
        gc.enable()
    assert shared.value and routes  # shared: untouched


# --- switching_often -------------------------------------------------------------------


def test_switch_interval_lowered_inside_and_restored_after_an_error() -> None:
    sys.setswitchinterval(0.005)
    with pytest.raises(ValueError), switching_often():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        with switching_often():
            pass
        assert switching()
        raise ValueError
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_lower_interval_is_kept() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL / 4)
    with switching_often():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL / 4)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL / 4)


def test_overlapping_switching_restores_when_the_last_one_ends() -> None:
    sys.setswitchinterval(0.005)
    seen = overlapping(switching_often, sys.getswitchinterval)
    assert seen == [pytest.approx(SWITCH_INTERVAL)]
    assert sys.getswitchinterval() == pytest.approx(0.005)


RULES = """
routes:
  - name: main
    match: {called: "+18005550100"}
    reject: {status_code: 486}
"""


@pytest.mark.anyio
async def test_loads_switch_often_and_a_cancelled_reload_restores_the_interval(
    tmp_path: Path,
) -> None:
    sys.setswitchinterval(0.005)
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES)
    inside, release = threading.Event(), threading.Event()
    seen: list[float] = []

    def load(path: Path) -> RuleSet:
        seen.append(sys.getswitchinterval())
        if len(seen) == 2:
            inside.set()
            assert release.wait(10)
        return load_rules(path, region="US")

    manager = RulesManager(routes, region="US", metrics=Metrics(), loader=load)
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        assert sys.getswitchinterval() == pytest.approx(0.005)
        reload = asyncio.ensure_future(manager.reload("admin"))
        assert await asyncio.to_thread(inside.wait, 10)
        reload.cancel()  # the caller goes; the worker thread runs on
        release.set()
        await asyncio.sleep(0)
    # running() cancelled the shared run on the way out; the thread still ends its load.
    for _ in range(200):
        if not switching():
            break
        await asyncio.sleep(0.01)
    assert seen == [pytest.approx(SWITCH_INTERVAL)] * 2
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.anyio
async def test_on_activate_runs_off_the_loop_before_the_reload_returns(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES)
    calls: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def on_activate(rules: RuleSet) -> None:
        calls.append((rules.version, threading.get_ident() == loop_thread))

    manager = RulesManager(routes, region="US", metrics=Metrics(), on_activate=on_activate)
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        assert len(calls) == 1
        routes.write_text(RULES.replace("486", "603"))
        status = await manager.reload("admin")
        assert status.result == "success"
        assert [version for version, _ in calls] == [calls[0][0], status.rules_version]
        assert await manager.reload("admin") == manager.last_reload  # unchanged: no call
        assert len(calls) == 2
    assert not any(on_loop for _, on_loop in calls)


# --- list files, a piece at a time -----------------------------------------------------


def _whole(data: bytes) -> list[str]:
    """The lines a whole-file read gave before pieces."""
    return data.decode("utf-8-sig").splitlines()


_LINE_ENDS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028"]


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.sampled_from(["+14155550100", "(415) 555-0101", "+4420794609", "é", "#x", ""]),
            st.sampled_from(_LINE_ENDS),
        ),
        max_size=30,
    ),
    bom=st.booleans(),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_list_files_read_in_pieces_give_the_lines_and_digest_of_a_whole_read(
    parts: list[tuple[str, str]], bom: bool, chunk: int
) -> None:
    text = "".join(value + end for value, end in parts)
    data = ("\ufeff" if bom else "").encode() + text.encode()
    assume(data)  # an empty file is refused (test_reload_hardening)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "list.txt"
        path.write_bytes(data)
        before = numbers.CHUNK_BYTES
        numbers.CHUNK_BYTES = chunk
        try:
            digest = hashlib.sha256()
            pieces = numbers._read_text(path, digest)
        finally:
            numbers.CHUNK_BYTES = before
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert [line for piece in pieces for line in piece.splitlines()] == _whole(data)
    assert "".join(pieces) == data.decode("utf-8-sig")


def test_a_list_that_is_not_utf8_is_reported(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(numbers, "CHUNK_BYTES", 4)
    path = tmp_path / "list.txt"
    path.write_bytes(b"+14155550100\n+1415555\xff0101\n")
    with pytest.raises(ListFileError, match="is not UTF-8 text"):
        load_number_file(path, "US")


def test_csv_lists_read_in_pieces(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(numbers, "CHUNK_BYTES", 5)
    path = tmp_path / "list.csv"
    path.write_bytes('\ufeffname,number\r\n"a, b",+14155550100\r\nc,(415) 555-0101\n'.encode())
    assert load_number_file(path, "US", column=2).exact == {"+14155550100", "+14155550101"}
