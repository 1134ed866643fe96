"""The benchmarks in bench/ still run, at a tiny size. No timing is asserted here."""

from __future__ import annotations

from pathlib import Path

from bench import report
from bench.workload import CallMaker, write_list, write_routes


def test_generated_calls_land_on_the_routes_they_were_made_for(tmp_path: Path) -> None:
    from app.rules import load_rules
    from app.sip.identity import Headers, IdentityPolicy, identify
    from bench.workload import NOW, REGION

    listed = write_list(tmp_path, 300)
    routes = write_routes(tmp_path, 60, listed.path)
    rules = load_rules(routes.path, region=REGION)
    assert len(rules.routes) == 60
    assert not rules.warnings
    maker = CallMaker(routes, listed)
    calls = maker.calls(500) + maker.every_called_number()
    kinds = {call.kind for call in calls}
    assert {"exact", "listed", "prefix"} <= kinds
    policy = IdentityPolicy(default_region=REGION)
    for call in calls:
        decision = rules.decide(identify(Headers(call.headers), policy), NOW)
        assert decision.route == call.expected_route, call


def test_report_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    result = report.run_all(
        tmp_path / "work", route_sizes=[10], list_sizes=[200], calls=100, quick=True
    )
    assert [d.mismatches for d in result.decisions] == [0]
    assert result.decisions[0].total.count == 100
    assert result.lists[0].naive.count > 0
    assert all(x == "success" for r in result.reloads for x in r.results)
    assert result.memory_results[0].loaded_mb > 0
    assert result.managed is not None
    text = report.render(result)
    assert text.startswith("# Performance")
    for heading in (
        "## Decision path, reload and memory: targets",
        "## Machine",
        "## Decision time",
        "## Reload",
        "## Memory",
    ):
        assert heading in text
