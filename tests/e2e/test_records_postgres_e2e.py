"""Call records on PostgreSQL with a real `switchboard serve` process (issue 12, item 4):
the database unreachable at start-up, lost while serving and back, and lost at shutdown.
Calls route all along; the records arrive when the database does; a stop does not hang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import E2E_ROUTES, Service, start_service, stop_service, wait_until
from tests.e2e.fake_openai import FakeOpenAI
from tests.pgserver import Server, create_database, drop_database
from tests.support import HTTP, SECRET, incoming_event, signed

pytestmark = pytest.mark.e2e

TOKEN = "e2e-records-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def metric(service: Service, name: str) -> float:
    text = HTTP.get(f"{service.url}/metrics", timeout=5).text
    for row in text.splitlines():
        if row.startswith(name + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def call(service: Service) -> str:
    """One incoming call to the support route (accepted): its id. Quick, whatever the
    database does."""
    event = incoming_event(called="+18005550100")
    body, headers = signed(event)
    started = time.monotonic()
    answer = HTTP.post(service.webhook_url, content=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 2, "the webhook waited for the database"
    return str(event["data"]["call_id"])


def listed(service: Service) -> set[str] | None:
    answer = HTTP.get(f"{service.url}/admin/calls?limit=1000", headers=AUTH, timeout=10)
    if answer.status_code != 200:
        return None
    return {c["call_id"] for c in answer.json()}


@pytest.fixture
def database(pg_server: Server) -> Iterator[str]:
    if not pg_server.running:
        pg_server.start()
    name = create_database(pg_server.url())
    yield name
    if not pg_server.running:
        pg_server.start()
    drop_database(name)


def test_records_survive_postgresql_outages(
    pg_server: Server, database: str, fake_api: FakeOpenAI, tmp_path: Path
) -> None:
    pg_server.stop()  # unreachable at start-up: the service starts and routes anyway
    service = start_service(
        tmp_path,
        E2E_ROUTES,
        env={
            "OPENAI_API_KEY": "sk-e2e-records",
            "OPENAI_BASE_URL": fake_api.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
            "SWITCHBOARD_DATABASE_URL": database,
            "SWITCHBOARD_DATABASE_TIMEOUT_SECONDS": "1",
        },
    )
    try:
        first = [call(service) for _ in range(3)]
        accepted = {r.call_id for r in fake_api.requests if r.operation == "accept"}
        assert set(first) <= accepted, "calls routed with the database away"
        assert metric(service, "switchboard_call_records_database_up") == 0
        assert metric(service, "switchboard_call_records_queued") >= 3
        refused = HTTP.get(f"{service.url}/admin/calls", headers=AUTH, timeout=10)
        assert refused.status_code == 503
        assert "call records unavailable" in refused.json()["error"]

        pg_server.start()  # the schema is created, the queued records written
        wait_until(lambda: listed(service) == set(first), "the first calls' records")

        pg_server.stop()  # lost while serving
        second = [call(service) for _ in range(3)]
        wait_until(
            lambda: metric(service, "switchboard_call_records_database_up") == 0,
            "the outage seen",
        )
        pg_server.start()
        wait_until(lambda: listed(service) == {*first, *second}, "every record")
        assert metric(service, "switchboard_call_records_queued") == 0
        dropped: dict[str, Any] = {
            reason: metric(service, f'switchboard_call_records_dropped_total{{reason="{reason}"}}')
            for reason in ("queue_full", "rejected", "shutdown")
        }
        assert dropped == {"queue_full": 0, "rejected": 0, "shutdown": 0}
        record = HTTP.get(f"{service.url}/admin/calls/{second[0]}", headers=AUTH).json()
        assert (record["route"], record["outcome"]) == ("support", "accepted")

        pg_server.stop()  # lost at shutdown: the stop does not wait for it for long
        call(service)
        started = time.monotonic()
        stop_service(service)
        assert service.process.returncode in (0, -15)  # uvicorn re-raises the SIGTERM
        assert time.monotonic() - started < 8
        logs = service.logs()
        assert '"calllog_close_timeout"' in logs
        assert '"reason": "shutdown"' in logs
    finally:
        stop_service(service)
