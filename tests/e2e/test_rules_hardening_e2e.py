"""A real `switchboard serve` process against hostile rules input: caller-written headers
aimed at a backtracking pattern, and an alias bomb given to a reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Service, start_service, stop_service
from tests.e2e.fake_openai import FakeOpenAI
from tests.rules.test_yaml_bounds import bomb
from tests.support import HTTP, SECRET, incoming_event, new_id, signed

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


TOKEN = "e2e-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
            "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
            "SWITCHBOARD_WATCH_RULES": "false",
        },
    )
    yield running
    stop_service(running)


def deliver(service: Service, event: dict[str, Any]) -> httpx.Response:
    body, headers = signed(event)
    # Generous: a backtracking engine would take ages; RE2 answers in milliseconds.
    return HTTP.post(service.webhook_url, content=body, headers=headers, timeout=30)


def test_backtracking_pattern_against_hostile_header(hardened: Service) -> None:
    # With Python's `re`, 26 characters froze the process for 9 s; 500 would take ages.
    hostile = incoming_event(new_id(), headers=[("X-Foo", "a" * 500 + "!")])
    answer = deliver(hardened, hostile)
    assert answer.status_code == 200
    assert answer.json()["route"] == "main"
    matching = deliver(hardened, incoming_event(new_id(), headers=[("X-Foo", "aaaa")]))
    assert matching.json()["route"] == "nested"
    # JSON's "\ud800" (a lone surrogate, which UTF-8 cannot carry) in the header: answered.
    surrogate = deliver(hardened, incoming_event(new_id(), headers=[("X-Foo", "aa\ud800")]))
    assert surrogate.status_code == 200
    assert surrogate.json()["route"] == "main"
    assert HTTP.get(f"{hardened.url}/readyz", timeout=5).status_code == 200


def test_reload_refuses_an_alias_bomb_and_takes_the_next_edit(
    hardened: Service, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(bomb(6))  # 687 MB and 14.7 s before; now refused when parsed
    refused = HTTP.post(f"{hardened.url}/admin/reload", headers=AUTH, timeout=30)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        "routes.yaml:7:7: aliases (*name) expand this value to 597,871 values; this file may add"
        " at most 100,000 through aliases"
    ]
    # The previous rules serve meanwhile.
    assert deliver(hardened, incoming_event(new_id())).json()["route"] == "main"
    routes.write_text(ROUTES.replace("name: main", "name: edited"))
    taken = HTTP.post(f"{hardened.url}/admin/reload", headers=AUTH, timeout=30)
    assert taken.json()["result"] == "success"
    assert deliver(hardened, incoming_event(new_id())).json()["route"] == "edited"
