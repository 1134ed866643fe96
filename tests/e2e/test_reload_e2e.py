"""Hot reload of a real `switchboard serve` process while signed calls keep arriving."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.rules import compile_rules
from tests.e2e.conftest import Service, start_service, stop_service
from tests.e2e.fake_openai import FakeOpenAI
from tests.support import HTTP, SECRET, incoming_event, signed

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RULES_A = """
routes:
  - name: vip
    match: {headers: {X-Customer-Tier: gold}}
    reject: {status_code: 486}
  - name: main
    match: {called: "+18005550100"}
    accept: {instructions: Rules A.}
"""
# The same route names with other actions: a call decided half by A, half by B shows.
RULES_B = """
routes:
  - name: main
    match: {called: "+18005550100"}
    refer: {target_uri: "sip:desk@pbx.example.com"}
  - name: vip
    accept: {instructions: Rules B.}
"""
INVALID = """
routes:
  - name: main
    reject: {status_code: 200}
  - name: vip
    acept: {}
"""


def version(text: str) -> str:
    return compile_rules(text, "routes.yaml", region="US").version


# (rules version, kind of call) -> (route, action): what each valid file decides.
EXPECTED = {
    (version(RULES_A), "gold"): ("vip", "reject"),
    (version(RULES_A), "plain"): ("main", "accept"),
    (version(RULES_B), "gold"): ("main", "refer"),
    (version(RULES_B), "plain"): ("main", "refer"),
}


@dataclass
class Load:
    """Signed deliveries from a few threads until stopped (and at most `per_worker` each)."""

    service: Service
    workers: int = 4
    per_worker: int = 5000
    stop: threading.Event = field(default_factory=threading.Event)
    answers: list[tuple[str, int | None, Any]] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for n in range(self.workers):
            thread = threading.Thread(target=self._deliver, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _deliver(self, worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(self.per_worker):
                if self.stop.is_set():
                    return
                kind = "gold" if (i + worker) % 2 else "plain"
                headers = [("X-Customer-Tier", "gold")] if kind == "gold" else []
                body, signature = signed(incoming_event(called="+18005550100", headers=headers))
                try:
                    response = client.post(
                        self.service.webhook_url, content=body, headers=signature
                    )
                except httpx.HTTPError as exc:
                    self.answers.append((kind, None, repr(exc)))
                    continue
                try:
                    answer: Any = response.json()
                except ValueError:
                    answer = response.text
                self.answers.append((kind, response.status_code, answer))

    def count(self) -> int:
        return len(self.answers)


def readyz(service: Service) -> dict[str, Any]:
    """Ready (also while a bad edit is refused), with the details of GET /admin/status."""
    response = HTTP.get(f"{service.url}/readyz", timeout=10)
    assert response.status_code == 200, response.text
    status = HTTP.get(f"{service.url}/admin/status", headers=AUTH, timeout=10)
    detail: dict[str, Any] = status.json()
    return detail


def wait_ready(
    service: Service, what: str, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll /readyz. The limit only keeps a broken build from hanging; speed is not tested."""
    deadline = time.monotonic() + 30
    while True:
        detail = readyz(service)
        if condition(detail):
            return detail
        if time.monotonic() > deadline:
            rules = [line for line in service.logs().splitlines() if "switchboard.rules" in line]
            raise AssertionError(f"{what}: still {detail}\n" + "\n".join(rules[-40:]))
        time.sleep(0.02)


def serving(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda detail: detail["rules_version"] == version(text)


def refused(detail: dict[str, Any]) -> bool:
    last = detail["last_reload"]
    return last is not None and last["ok"] is False


def replace(path: Path, text: str) -> None:
    """How editors and config tools save: a new file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def overwrite(path: Path, text: str) -> None:
    """A plain in-place write (truncate, then write)."""
    with path.open("w") as out:
        out.write(text)


def admin_reload(service: Service) -> httpx.Response:
    return HTTP.post(f"{service.url}/admin/reload", headers=AUTH, timeout=30)


def calls_continue(load: Load) -> None:
    """Let a few more calls through before the next edit, so every state is exercised."""
    target = load.count() + 20
    deadline = time.monotonic() + 30
    while load.count() < target and time.monotonic() < deadline and not load.stop.is_set():
        time.sleep(0.01)


@pytest.fixture
def reloading_service(tmp_path: Path, fake_api: FakeOpenAI) -> Iterator[Service]:
    service = start_service(
        tmp_path,
        RULES_A,
        env={
            "OPENAI_API_KEY": "sk-e2e",
            "OPENAI_BASE_URL": fake_api.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
            "SWITCHBOARD_WATCH_DEBOUNCE_MS": "50",
        },
    )
    yield service
    stop_service(service)


def test_reloads_under_load_never_fail_or_mix_a_call(reloading_service: Service) -> None:
    service = reloading_service
    routes = service.log.parent / "routes.yaml"
    version_a, version_b = version(RULES_A), version(RULES_B)
    assert readyz(service)["rules_version"] == version_a

    with Load(service) as load:
        calls_continue(load)

        # 1. An invalid edit, saved by rename: refused, A keeps serving.
        replace(routes, INVALID)
        detail = wait_ready(service, "invalid edit refused", refused)
        assert detail["rules_version"] == version_a
        errors = detail["last_reload"]["errors"]
        assert any(e.startswith("routes.yaml:4:14: routes[0].reject.status_code") for e in errors)
        assert any(e.startswith("routes.yaml:6:5: routes[1].acept") for e in errors)
        calls_continue(load)

        # 2. B, saved by rename: picked up by the watch.
        replace(routes, RULES_B)
        wait_ready(service, "B by watch", serving(RULES_B))
        calls_continue(load)

        # 3. and 4. In-place writes: invalid (refused), then A.
        overwrite(routes, INVALID)
        assert wait_ready(service, "in-place invalid", refused)["rules_version"] == version_b
        calls_continue(load)
        overwrite(routes, RULES_A)
        wait_ready(service, "A by in-place write", serving(RULES_A))
        calls_continue(load)

        # 5. B, then SIGHUP (the watch may get there first; either way B serves).
        replace(routes, RULES_B)
        service.process.send_signal(signal.SIGHUP)
        wait_ready(service, "B after SIGHUP", serving(RULES_B))
        calls_continue(load)

        # 6. Invalid, then POST /admin/reload: refused with every error, B still serves.
        replace(routes, INVALID)
        response = admin_reload(service)
        assert response.status_code == 422, response.text
        assert response.json()["rules_version"] == version_b
        assert any(e.startswith("routes.yaml:4:14:") for e in response.json()["errors"])
        assert readyz(service)["rules_version"] == version_b
        calls_continue(load)

        # 7. A, then POST /admin/reload.
        replace(routes, RULES_A)
        response = admin_reload(service)
        assert response.status_code == 200, response.text
        assert response.json()["rules_version"] == version_a
        assert response.json()["result"] in ("success", "unchanged")  # the watch may win
        calls_continue(load)

        # 8. and 9. B by SIGHUP, then A by the watch once more.
        replace(routes, RULES_B)
        service.process.send_signal(signal.SIGHUP)
        wait_ready(service, "B after the second SIGHUP", serving(RULES_B))
        calls_continue(load)
        replace(routes, RULES_A)
        wait_ready(service, "A at the end", serving(RULES_A))
        calls_continue(load)

    # Every call was answered 200, by exactly one valid file's rules.
    assert load.answers, "no calls were made"
    failed = [a for a in load.answers if a[1] != 200]
    assert not failed, f"{len(failed)} of {len(load.answers)} calls failed: {failed[:5]}"
    seen: dict[str, int] = {}
    for kind, _, answer in load.answers:
        decided_by = answer["rules_version"]
        assert (decided_by, kind) in EXPECTED, f"decided by an unknown version: {answer}"
        assert (answer["route"], answer["action"]) == EXPECTED[(decided_by, kind)], answer
        assert answer["outcome"] in ("accepted", "rejected", "referred"), answer
        seen[decided_by] = seen.get(decided_by, 0) + 1
    assert set(seen) == {version_a, version_b}, seen

    # The process lived through every SIGHUP; the log and the metrics tell the story.
    assert service.process.poll() is None
    logs = service.logs()
    assert '"event": "rules_reload_failed"' in logs
    assert "routes.yaml:4:14: routes[0].reject.status_code" in logs
    assert '"trigger": "sighup"' in logs
    metrics = HTTP.get(f"{service.url}/metrics").text
    assert _metric(metrics, 'switchboard_rules_reloads_total{result="failure"}') >= 3
    assert _metric(metrics, 'switchboard_rules_reloads_total{result="success"}') >= 6

    # uvicorn's own SIGTERM handling still works next to our SIGHUP.
    stop_service(service)
    assert service.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in service.logs()


def test_sighup_and_admin_reload_without_the_watch(tmp_path: Path, fake_api: FakeOpenAI) -> None:
    service = start_service(
        tmp_path,
        RULES_A,
        env={
            "OPENAI_API_KEY": "sk-e2e",
            "OPENAI_BASE_URL": fake_api.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
            "SWITCHBOARD_WATCH_RULES": "false",
        },
    )
    routes = tmp_path / "routes.yaml"
    try:
        replace(routes, RULES_B)
        service.process.send_signal(signal.SIGHUP)
        detail = wait_ready(service, "B after SIGHUP", serving(RULES_B))
        assert (detail["last_reload"]["trigger"], detail["last_reload"]["result"]) == (
            "sighup",
            "success",
        )

        replace(routes, RULES_A)
        wrong = HTTP.post(f"{service.url}/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert readyz(service)["rules_version"] == version(RULES_B)  # nothing reloaded
        response = admin_reload(service)
        assert response.status_code == 200
        assert (response.json()["result"], response.json()["trigger"]) == ("success", "admin")

        shown = HTTP.get(f"{service.url}/admin/routes", headers=AUTH).json()
        assert shown["rules"]["version"] == version(RULES_A)
        assert [(r["name"], r["action"]) for r in shown["rules"]["routes"]] == [
            ("vip", "reject"),
            ("main", "accept"),
        ]
        assert shown["watching"] is False
    finally:
        stop_service(service)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")
