"""The app with SWITCHBOARD_DATABASE_URL: calls recorded in PostgreSQL and read back by the
admin API; with the database away, calls still route and the metrics say what waits."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import respx

from tests.app.test_app import ADMIN_TOKEN, api, client_for, post_event
from tests.pgserver import free_port, url
from tests.support import incoming_event

__all__ = ["api"]

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def metric(text: str, name: str) -> float:
    for row in text.splitlines():
        if row.startswith(name + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_calls_are_recorded_in_postgresql(api: respx.Router, pg_url: str) -> None:
    event = incoming_event(caller="+19005550123")  # the spam route: rejected, ended
    call_id = event["data"]["call_id"]
    with client_for(api, database_url=pg_url) as client:
        assert post_event(client, event).status_code == 200
        got = client.get(f"/admin/calls/{call_id}", headers=AUTH)
        assert got.status_code == 200
        body = got.json()
        assert (body["route"], body["outcome"], body["status"]) == ("spam", "rejected", "ended")
        assert [e["kind"] for e in body["events"]] == ["decision", "rejected"]
        metrics = client.get("/metrics").text
        assert metric(metrics, "switchboard_call_records_database_up") == 1
        assert metric(metrics, "switchboard_call_records_queued") == 0

    async def stored() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url)
        try:
            return await conn.fetch("SELECT route, caller FROM calls WHERE call_id = $1", call_id)
        finally:
            await conn.close()

    assert [tuple(r) for r in asyncio.run(stored())] == [("spam", "+1900*****23")]


def test_calls_route_while_the_database_is_away(api: respx.Router) -> None:
    nowhere = url(free_port(), "switchboard")
    with client_for(api, database_url=nowhere, database_timeout_seconds=0.5) as client:
        started = time.monotonic()
        for caller in ("+19005550123", "+19005550124"):
            assert post_event(client, incoming_event(caller=caller)).status_code == 200
        assert time.monotonic() - started < 2, "the webhooks did not wait for the database"
        assert [c.request.url.path.rsplit("/", 1)[1] for c in api.calls] == ["reject", "reject"]
        assert client.get("/readyz").status_code == 200, "routing works: ready"
        listed = client.get("/admin/calls", headers=AUTH)
        assert listed.status_code == 503
        assert "call records unavailable" in listed.json()["error"]
        metrics = client.get("/metrics").text
        assert metric(metrics, "switchboard_call_records_database_up") == 0
        assert metric(metrics, "switchboard_call_records_queued") >= 2  # both calls
        assert metric(metrics, 'switchboard_call_records_dropped_total{reason="queue_full"}') == 0


def test_the_sqlite_default_reports_no_backlog(api: respx.Router) -> None:
    with client_for(api) as client:
        metrics = client.get("/metrics").text
    assert metric(metrics, "switchboard_call_records_database_up") == 1
    assert metric(metrics, "switchboard_call_records_queued") == 0
    for reason in ("queue_full", "rejected", "shutdown"):
        assert metric(metrics, f'switchboard_call_records_dropped_total{{reason="{reason}"}}') == 0
