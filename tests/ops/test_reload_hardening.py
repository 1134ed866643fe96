"""Reloads of hostile or careless edits: an alias bomb is refused at once and the next
edit goes live; the previous rules serve meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ops.metrics import Metrics
from app.ops.reload import MAX_ERROR_CHARS, MAX_REPORTED_ERRORS, RulesManager
from app.rules import compile_rules
from app.rules.numbers import EMPTY_HINT
from tests.rules.test_yaml_bounds import bomb

RULES_A = "routes:\n  - name: a\n    reject: 486\n"
RULES_B = "routes:\n  - name: b\n    reject: 603\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def version(text: str) -> str:
    return compile_rules(text, "routes.yaml", region="US").version


@pytest.mark.anyio
async def test_an_alias_bomb_is_refused_and_the_next_edit_goes_live(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES_A)
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        routes.write_text(bomb(6))
        refused = await manager.reload("admin")
        assert refused.result == "failure"
        assert refused.errors == (
            f"{routes}:7:7: aliases (*name) expand this value to 597,871 values; this file"
            " may add at most 100,000 through aliases",
        )
        assert manager.current is not None and manager.current.version == version(RULES_A)
        routes.write_text(RULES_B)
        status = await manager.reload("admin")
        assert status.result == "success"
        assert manager.current.version == version(RULES_B)


@pytest.mark.anyio
async def test_a_file_of_many_errors_reports_the_first_hundred_and_the_count(
    tmp_path: Path,
) -> None:
    """All 1,000 were formatted and logged on the event loop, and sent by /admin/status:
    ~200 ms of loop at 100,000 bad routes (a 3 MB file)."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES_A)
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        routes.write_text(
            "routes:\n" + "".join(f"  - {{name: r{i}, reject: 99}}\n" for i in range(1000))
        )
        refused = await manager.reload("admin")
        assert refused.result == "failure"
        assert len(refused.errors) == MAX_REPORTED_ERRORS + 1
        assert refused.errors[0] == (
            f"{routes}:2:16: routes[0].reject: Input should be greater than or equal to 400"
        )
        assert refused.errors[-1] == (
            f"{routes}: and 900 more errors (`switchboard check` lists them)"
        )
        assert manager.current is not None and manager.current.version == version(RULES_A)


@pytest.mark.anyio
async def test_an_error_quoting_a_huge_value_is_shortened(tmp_path: Path) -> None:
    """The 2 MB value was quoted whole: into the log line (formatted on the event loop)
    and every GET /admin/status."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(RULES_A)
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        routes.write_text(f"routes:\n  - name: a\n    refer: '{'x' * 2_000_000}'\n")
        (error,) = (await manager.reload("admin")).errors
        assert error.startswith(f"{routes}:3:5: routes[0].refer: 'xxx")
        assert error.endswith(" characters)")
        assert len(error) < MAX_ERROR_CHARS + 50


@pytest.mark.anyio
async def test_a_list_file_truncated_to_zero_bytes_is_not_used(tmp_path: Path) -> None:
    """`export > blocked.txt` leaves the file empty until the export's first line: that
    empty blocklist went live (every blocked caller let through meanwhile)."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "lists: {blocked: {file: blocked.txt}}\n"
        "routes: [{name: blocked, match: {caller: {list: blocked}}, reject: 603}]\n"
    )
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("+14155550100\n")
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        serving = manager.current
        blocked.write_bytes(b"")
        refused = await manager.reload("admin")
        assert refused.errors == (
            f"{blocked}: lists.blocked: {blocked} is empty (0 bytes): {EMPTY_HINT}",
        )
        assert manager.current is serving
        blocked.write_text("# nobody blocked for now\n")  # an empty list, said so
        assert (await manager.reload("admin")).result == "success"
