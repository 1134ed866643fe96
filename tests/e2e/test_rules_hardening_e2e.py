"""A real `switchboard serve` process against hostile rules input: caller-written headers
aimed at a backtracking pattern."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, start_service, stop_service
from tests.e2e.fake_openai import FakeOpenAI
from tests.support import SECRET, incoming_event, new_id, signed

pytestmark = pytest.mark.e2e

ROUTES = """
routes:
  - name: nested
    match: {headers: {X-Foo: {regex: '(a+)+$'}}}
    reject: {status_code: 486}
  - name: main
    match: {called: "+18005550100"}
    reject: {status_code: 480}
"""


@pytest.fixture
def hardened(fake_api: FakeOpenAI, tmp_path: Path) -> Iterator[Service]:
    running = start_service(
        tmp_path,
        ROUTES,
        env={
            "OPENAI_API_KEY": "sk-e2e",
            "OPENAI_BASE_URL": fake_api.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_CALL_DEADLINE_SECONDS": "2",
        },
    )
    yield running
    stop_service(running)


def deliver(service: Service, event: dict[str, Any]) -> httpx.Response:
    body, headers = signed(event)
    # Generous: a backtracking engine would take ages; RE2 answers in milliseconds.
    return httpx.post(service.webhook_url, content=body, headers=headers, timeout=30)


def test_backtracking_pattern_against_hostile_header(hardened: Service) -> None:
    # With Python's `re`, 26 characters froze the process for 9 s; 500 would take ages.
    hostile = incoming_event(new_id(), headers=[("X-Foo", "a" * 500 + "!")])
    answer = deliver(hardened, hostile)
    assert answer.status_code == 200
    assert answer.json()["route"] == "main"
    matching = deliver(hardened, incoming_event(new_id(), headers=[("X-Foo", "aaaa")]))
    assert matching.json()["route"] == "nested"
    assert httpx.get(f"{hardened.url}/readyz", timeout=5).status_code == 200
