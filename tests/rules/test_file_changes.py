"""A routes or list file that changes while a load reads it is read again; one that keeps
changing is refused (the previous rules serve).

A writer thread writes the file in two parts, in place, the way a careless deploy script
does. Its pause is tied to the load, not to a clock: the second part is written once the
load has read the first (the load's compile step waits for it), so the test is the same on
a busy machine as on an idle one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.rules import RulesError, compile_rules, load_rules
from app.rules import compile as compile_module
from app.rules.files import Snapshot, read_rules_text
from tests.rules.test_matchers import NOON, invite

FIRST_HALF = """\
routes:
  - name: vip
    match: {headers: {X-Tier: gold}}
    reject: 486
"""
SECOND_HALF = """\
  - name: support
    match: {called: "+18005550100"}
    reject: 480
"""
WHOLE = FIRST_HALF + SECOND_HALF
# Without its second half the file is valid, and would send every support call to default.
assert compile_rules(FIRST_HALF, "routes.yaml", region="US").decide(invite(), NOON).route == (
    "default"
)


class TwoPartWriter:
    """Writes `first` in place, then, when told the load has read it, `second`."""

    def __init__(self, path: Path, first: str, second: str) -> None:
        self.path = path
        self.first, self.second = first, second
        self.read_first = threading.Event()
        self.wrote_second = threading.Event()
        self.thread = threading.Thread(target=self._write, daemon=True)

    def __enter__(self) -> TwoPartWriter:
        with self.path.open("w") as file:  # truncates: half a file from here on
            file.write(self.first)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.read_first.set()
        self.thread.join(timeout=30)

    def _write(self) -> None:
        self.read_first.wait(timeout=30)
        with self.path.open("a") as file:
            file.write(self.second)
        self.wrote_second.set()


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The texts the load compiles, in order."""
    texts: list[str] = []
    real = compile_module._compile

    def spy(text: str, *args: Any, **kwargs: Any) -> Any:
        texts.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(compile_module, "_compile", spy)
    yield texts


def pause_after_first_compile(
    monkeypatch: pytest.MonkeyPatch, writer: TwoPartWriter, *, after: bool = False
) -> None:
    """The first compile (of what was read) lets the writer finish, before or after it
    runs, and waits until it has."""
    real = compile_module._compile
    calls = []

    def compile_while_writing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1 and not after:
            writer.read_first.set()
            assert writer.wrote_second.wait(timeout=30)
        result = real(*args, **kwargs)
        if len(calls) == 1 and after:
            writer.read_first.set()
            assert writer.wrote_second.wait(timeout=30)
        return result

    monkeypatch.setattr(compile_module, "_compile", compile_while_writing)


def test_a_file_written_in_two_parts_is_not_used_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[str]
) -> None:
    path = tmp_path / "routes.yaml"
    with TwoPartWriter(path, FIRST_HALF, SECOND_HALF) as writer:
        pause_after_first_compile(monkeypatch, writer)
        rules = load_rules(path, region="US")
    assert compiles == [FIRST_HALF, WHOLE]  # read half-written, then again
    assert [route.name for route in rules.routes] == ["vip", "support"]
    assert rules.decide(invite(), NOON).route == "support"


def test_a_list_file_written_while_the_routes_compile_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "lists:\n  staff: {file: staff.txt}\n"
        "routes:\n  - name: staff\n    match: {caller: {list: staff}}\n    reject: 486\n"
    )
    staff = tmp_path / "staff.txt"
    with TwoPartWriter(staff, "+14155550199\n", "+14155550100\n") as writer:
        pause_after_first_compile(monkeypatch, writer, after=True)
        rules = load_rules(path, region="US")
    assert rules.decide(invite(), NOON).route == "staff"  # +14155550100, the second part


def test_a_file_that_keeps_changing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(WHOLE)
    monkeypatch.setattr(compile_module, "CHANGED_RETRY_DELAYS", (0.0, 0.0))
    keep_writing(monkeypatch, path)
    with pytest.raises(RulesError) as caught:
        load_rules(path, region="US")
    assert [str(issue) for issue in caught.value.issues] == [
        f"{path}: the file changed while it was read, 3 times in a row: not used. Replace it"
        " in one step (write another file, then rename it over this one)"
    ]


def keep_writing(monkeypatch: pytest.MonkeyPatch, path: Path) -> Callable[[], None]:
    """Every compile appends a comment to `path`, as a writer that never ends would."""
    real = compile_module._compile

    def compile_and_write(*args: Any, **kwargs: Any) -> Any:
        with path.open("a") as file:
            file.write("# more\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(compile_module, "_compile", compile_and_write)
    return lambda: monkeypatch.setattr(compile_module, "_compile", real)


def test_an_invalid_half_is_read_again_rather_than_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut mid-line, the first part is not valid YAML: the error belongs to no edit.
    path = tmp_path / "routes.yaml"
    cut = WHOLE.index("    reject: 480")
    with TwoPartWriter(path, WHOLE[: cut + 6], WHOLE[cut + 6 :]) as writer:
        pause_after_first_compile(monkeypatch, writer)
        rules = load_rules(path, region="US")
    assert [route.name for route in rules.routes] == ["vip", "support"]


def test_an_error_in_a_file_that_did_not_change_is_reported_once(
    tmp_path: Path, compiles: list[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - name: a\n    reject: 700\n")
    with pytest.raises(RulesError, match="less than or equal to 699"):
        load_rules(path, region="US")
    assert len(compiles) == 1


def test_a_file_replaced_while_it_was_read_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(FIRST_HALF)
    snapshot = Snapshot()
    assert read_rules_text(path, snapshot) == FIRST_HALF
    assert snapshot.changed() is None
    replacement = tmp_path / ".routes.yaml.new"
    replacement.write_text(WHOLE)
    replacement.replace(path)  # the editor's rename: another file at that path
    assert snapshot.changed() == str(path)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_reload_keeps_the_previous_rules_while_a_file_keeps_changing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(WHOLE)
    manager = RulesManager(path, region="US", metrics=Metrics())
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        serving = manager.current
        monkeypatch.setattr(compile_module, "CHANGED_RETRY_DELAYS", (0.0,))
        stop = keep_writing(monkeypatch, path)
        refused = await manager.reload("admin")
        assert refused.result == "failure"
        assert refused.errors[0].startswith(f"{path}: the file changed while it was read")
        assert manager.current is serving
        stop()
        path.write_text(FIRST_HALF)
        assert (await manager.reload("admin")).result == "success"
        assert manager.current is not None
        assert [route.name for route in manager.current.routes] == ["vip"]
