"""Hot reload in-process: RulesManager, the admin API, /readyz and the reload metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import watchfiles
from fastapi.testclient import TestClient

from app.main import create_app
from app.ops import admin
from app.ops.metrics import Metrics
from app.ops.reload import RulesManager
from app.rules import RuleSet, compile_rules
from app.sip.identity import CallIdentity
from tests.app.test_app import BASE, make_settings
from tests.support import incoming_event, signed

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RULES_A = """
routes:
  - name: a-vip
    match: {headers: {X-Customer-Tier: gold}}
    reject: {status_code: 486}
  - name: a-main
    match: {called: "+18005550100"}
    accept: {instructions: Rules A.}
"""
RULES_B = """
routes:
  - name: b-main
    match: {caller: ["+1415*", "+14155550100"], anonymous: false}
    accept: {instructions: Rules B.}
default:
  reject: {status_code: 480}
"""
# Line 4: a status code out of range; line 6: an unknown key.
INVALID = """
routes:
  - name: broken
    reject: {status_code: 200}
  - name: typo
    acept: {}
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)


def remove(path: Path) -> None:
    path.unlink()


def version(text: str) -> str:
    return compile_rules(text, "routes.yaml", region="US").version


@pytest.fixture(autouse=True)
def rules_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="switchboard.rules")


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(RULES_A)
    return path


@pytest.fixture
def api() -> respx.Router:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    for operation in ("accept", "reject", "refer", "hangup"):
        router.post(path__regex=rf"/realtime/calls/[^/]+/{operation}", name=operation).respond(200)
    return router


def make_client(routes: Path, api: respx.Router, **overrides: Any) -> TestClient:
    settings = make_settings(**{"routes_file": routes, "admin_token": TOKEN, **overrides})
    return TestClient(create_app(settings, transport=httpx.MockTransport(api.async_handler)))


@pytest.fixture
def client(routes: Path, api: respx.Router) -> Iterator[TestClient]:
    with make_client(routes, api) as test_client:
        yield test_client


def call(client: TestClient, **event_args: Any) -> dict[str, Any]:
    body, headers = signed(incoming_event(**event_args))
    response = client.post("/webhooks/openai", content=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def metric(client: TestClient, line: str) -> float:
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line}")


# --- the admin API's door ----------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("POST", "/admin/reload"), ("GET", "/admin/routes")])
def test_admin_is_disabled_without_a_token(
    routes: Path, api: respx.Router, method: str, path: str
) -> None:
    with make_client(routes, api, admin_token=None) as client:
        response = client.request(method, path, headers=AUTH)
        assert response.status_code == 403
        assert "SWITCHBOARD_ADMIN_TOKEN" in response.json()["error"]
        assert client.app.state.rules.last_reload is None  # type: ignore[attr-defined]
        assert metric(client, 'switchboard_admin_refused_total{reason="disabled"}') == 1


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="switchboard"'),
        ({"Authorization": "Bearer"}, 'Bearer realm="switchboard"'),
        ({"Authorization": f"Basic {TOKEN}"}, 'Bearer realm="switchboard"'),
        ({"Authorization": "Bearer not-the-token"}, 'error="invalid_token"'),
        ({"Authorization": f"Bearer {TOKEN}x"}, 'error="invalid_token"'),
    ],
    ids=["missing", "empty", "other-scheme", "wrong", "longer"],
)
@pytest.mark.parametrize("method, path", [("POST", "/admin/reload"), ("GET", "/admin/routes")])
def test_admin_needs_the_right_bearer_token(
    client: TestClient, headers: dict[str, str], challenge: str, method: str, path: str
) -> None:
    response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert challenge in response.headers["www-authenticate"]
    assert client.app.state.rules.last_reload is None  # type: ignore[attr-defined]


def test_admin_takes_the_token_case_insensitive_scheme(client: TestClient) -> None:
    response = client.post("/admin/reload", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


def test_a_short_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        make_settings(admin_token="short")
    assert make_settings(admin_token="  ").admin_token is None


# --- GET /admin/routes ---------------------------------------------------------------------


def test_admin_routes_shows_the_active_rules(client: TestClient, routes: Path) -> None:
    response = client.get("/admin/routes", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    rules = body["rules"]
    assert rules["version"] == version(RULES_A)
    assert rules["source"] == str(routes)
    assert rules["files"] == [str(routes)]
    assert rules["loaded_at"] == pytest.approx(time.time(), abs=60)
    assert [(r["name"], r["action"]) for r in rules["routes"]] == [
        ("a-vip", "reject"),
        ("a-main", "accept"),
    ]
    vip, main = rules["routes"]
    assert "X-Customer-Tier" in vip["match"] and "gold" in vip["match"]
    assert "+18005550100" in str(main["conditions"])
    assert rules["default"] == {"action": "reject"}
    assert rules["warnings"] == []
    assert body["last_reload"] is None
    assert body["watching"] is False
    assert body["watched_files"] == [str(routes)]


def test_admin_routes_is_described_off_the_event_loop_once_per_rules(
    client: TestClient, routes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 10,000 routes describing them took ~0.6 s and rendering the JSON ~0.1 s, on the
    event loop, at every request: no call was routed meanwhile."""
    on_loop: list[bool] = []

    def describe_route(route: Any) -> dict[str, Any]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop.append(False)
        else:
            on_loop.append(True)
        return original(route)

    original = admin.describe_route
    monkeypatch.setattr(admin, "describe_route", describe_route)
    first = client.get("/admin/routes", headers=AUTH)
    assert client.get("/admin/routes", headers=AUTH).json() == first.json()
    assert on_loop == [False, False]  # two routes, described once
    routes.write_text(RULES_B)
    assert client.post("/admin/reload", headers=AUTH).status_code == 200
    body = client.get("/admin/routes", headers=AUTH).json()
    assert body["rules"]["version"] == version(RULES_B)
    assert body["last_reload"]["result"] == "success"
    assert len(on_loop) > 2


# --- reloads ---------------------------------------------------------------------------------


def test_reload_swaps_in_valid_rules(
    client: TestClient, routes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert call(client)["route"] == "a-main"
    routes.write_text(RULES_B)
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 200
    status = response.json()
    assert status["ok"] is True
    assert status["result"] == "success"
    assert status["trigger"] == "admin"
    assert status["rules_version"] == version(RULES_B)
    assert status["errors"] == []

    answer = call(client, caller="+14155550123")
    assert (answer["route"], answer["rules_version"]) == ("b-main", version(RULES_B))
    ready = client.get("/admin/status", headers=AUTH).json()
    assert ready["rules_version"] == version(RULES_B)
    assert ready["last_reload"] == status
    assert metric(client, 'switchboard_rules_reloads_total{result="success"}') == 1
    assert metric(client, 'switchboard_decisions_total{action="accept",route="b-main"}') == 1
    records = caplog.get_records("setup") + caplog.records
    loaded = [r for r in records if getattr(r, "event", None) == "rules_loaded"]
    assert [(r.trigger, r.rules_version) for r in loaded] == [  # type: ignore[attr-defined]
        ("startup", version(RULES_A)),
        ("admin", version(RULES_B)),
    ]
    assert loaded[-1].previous_version == version(RULES_A)  # type: ignore[attr-defined]


def test_an_invalid_edit_keeps_the_previous_rules(
    client: TestClient, routes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes.write_text(INVALID)
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 422
    status = response.json()
    assert status["ok"] is False and status["result"] == "failure"
    assert status["rules_version"] == version(RULES_A)  # still serving
    assert f"{routes}:4:14: routes[0].reject.status_code:" in status["errors"][0]
    assert any(
        e.startswith(f"{routes}:6:5: routes[1].acept: unknown key") for e in status["errors"]
    )

    # Calls keep being routed, on the previous rules.
    answer = call(client)
    assert (answer["route"], answer["rules_version"]) == ("a-main", version(RULES_A))
    # Readiness stays 200; the admin status says what went wrong. The public answer does
    # not: the errors quote the file (names, numbers) and its path.
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "rules_version": version(RULES_A)}
    detail = client.get("/admin/status", headers=AUTH).json()
    assert detail["rules_version"] == version(RULES_A)
    assert detail["last_reload"] == status
    assert detail["rules_source"] == str(routes)
    assert metric(client, 'switchboard_rules_reloads_total{result="failure"}') == 1
    assert metric(client, "switchboard_rules_last_reload_ok") == 0
    # The log has every error with file:line:column.
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "rules_reload_failed"]
    assert record.levelno == logging.ERROR
    assert record.errors == status["errors"]  # type: ignore[attr-defined]
    assert f"{routes}:4:14" in record.getMessage()

    # Fixing the file recovers.
    routes.write_text(RULES_B)
    fixed = client.post("/admin/reload", headers=AUTH).json()
    assert fixed["result"] == "success"
    assert client.get("/admin/status", headers=AUTH).json()["last_reload"]["ok"] is True
    assert metric(client, "switchboard_rules_last_reload_ok") == 1


def test_an_unreadable_file_keeps_the_previous_rules(client: TestClient, routes: Path) -> None:
    routes.unlink()
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"] == [f"{routes}: cannot read: No such file or directory"]
    assert call(client)["rules_version"] == version(RULES_A)


def test_an_unchanged_file_is_a_no_op(
    client: TestClient, routes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager: RulesManager = client.app.state.rules  # type: ignore[attr-defined]
    before = manager.current
    routes.write_text(RULES_A)  # rewritten, same bytes
    status = client.post("/admin/reload", headers=AUTH).json()
    assert status["result"] == "unchanged" and status["ok"] is True
    assert manager.current is before
    assert metric(client, 'switchboard_rules_reloads_total{result="unchanged"}') == 1
    assert metric(client, 'switchboard_rules_reloads_total{result="success"}') == 0
    events = [getattr(r, "event", None) for r in caplog.get_records("setup") + caplog.records]
    assert events.count("rules_loaded") == 1  # the start-up only
    assert "rules_unchanged" in events


def test_reverting_a_broken_edit_clears_the_failure(client: TestClient, routes: Path) -> None:
    routes.write_text(INVALID)
    assert client.post("/admin/reload", headers=AUTH).status_code == 422
    routes.write_text(RULES_A)
    status = client.post("/admin/reload", headers=AUTH).json()
    assert (status["result"], status["ok"], status["errors"]) == ("unchanged", True, [])


def test_reload_metrics_are_precreated(client: TestClient) -> None:
    for result in ("success", "failure", "unchanged"):
        assert metric(client, f'switchboard_rules_reloads_total{{result="{result}"}}') == 0
    assert metric(client, "switchboard_rules_last_reload_ok") == 1
    assert client.get("/admin/status", headers=AUTH).json()["last_reload"] is None


def test_a_call_in_flight_finishes_on_the_rules_it_started_with(
    client: TestClient, api: respx.Router, routes: Path
) -> None:
    manager: RulesManager = client.app.state.rules  # type: ignore[attr-defined]
    reloaded: list[str] = []

    async def reload_while_accepting(request: httpx.Request) -> httpx.Response:
        if not reloaded:  # the first call: swap the rules under it
            write(routes, RULES_B)
            reloaded.append((await manager.reload("admin")).result)
        return httpx.Response(200)

    api.routes["accept"].side_effect = reload_while_accepting
    first = call(client, caller="+14155550123")
    assert reloaded == ["success"]
    assert (first["route"], first["rules_version"]) == ("a-main", version(RULES_A))
    second = call(client, caller="+14155550123")
    assert (second["route"], second["rules_version"]) == ("b-main", version(RULES_B))


# --- RulesManager on its own --------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gated_loader(
    gate: threading.Event, entered: threading.Event, seen: list[int]
) -> Callable[[Path], RuleSet]:
    """A loader that reads the file, then waits at the gate; records how many run at once."""
    lock = threading.Lock()
    running = [0]

    def load(path: Path) -> RuleSet:
        text = path.read_text()
        with lock:
            running[0] += 1
            seen.append(running[0])
        try:
            entered.set()
            assert gate.wait(10)
            return compile_rules(text, str(path), region="US")
        finally:
            with lock:
                running[0] -= 1

    return load


@pytest.mark.anyio
async def test_concurrent_reloads_run_one_at_a_time_and_coalesce(routes: Path) -> None:
    gate, entered, seen = threading.Event(), threading.Event(), list[int]()
    manager = RulesManager(
        routes,
        region="US",
        metrics=Metrics(),
        rules=compile_rules(RULES_A, str(routes), region="US"),
        loader=gated_loader(gate, entered, seen),
    )
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        first = asyncio.create_task(manager.reload("admin"))
        assert await asyncio.to_thread(entered.wait, 10)
        # While the first reload runs (it read A), B is written and five more requests come.
        write(routes, RULES_B)
        later = [asyncio.create_task(manager.reload(t)) for t in ("admin", "sighup") * 3]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *later)
    assert max(seen) == 1  # never two loads at once
    assert len(seen) == 2  # the first, then one run shared by everyone who asked meanwhile
    assert results[0].result == "unchanged"
    assert {r.result for r in results[1:]} == {"success"}
    assert len({id(r) for r in results[1:]}) == 1
    assert manager.current is not None and manager.current.version == version(RULES_B)


@pytest.mark.anyio
async def test_a_cancelled_caller_does_not_cancel_the_reload(routes: Path) -> None:
    gate, entered, seen = threading.Event(), threading.Event(), list[int]()
    manager = RulesManager(
        routes, region="US", metrics=Metrics(), loader=gated_loader(gate, entered, seen)
    )
    gate.set()
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        gate.clear()
        entered.clear()
        write(routes, RULES_B)
        impatient = asyncio.create_task(manager.reload("admin"))
        assert await asyncio.to_thread(entered.wait, 10)
        impatient.cancel()
        gate.set()
        status = await manager.reload("admin")  # joins nothing: the first already started
        assert manager.current is not None and manager.current.version == version(RULES_B)
        assert status.result == "unchanged"


class Probe:
    """A condition that never matches and records the thread its rules were freed in."""

    def __init__(self, freed: list[str]) -> None:
        self.freed = freed

    def __call__(self, call: CallIdentity, now: datetime) -> bool:
        return False

    def describe(self) -> str:
        return "probe"

    def __del__(self) -> None:
        self.freed.append(threading.current_thread().name)


@pytest.mark.anyio
async def test_replaced_rules_are_freed_off_the_event_loop(routes: Path) -> None:
    # Freeing rules with a million listed numbers takes ~0.1 s: not on the loop. And the
    # start-up rules must not stay pinned for the life of the server.
    freed: list[str] = []
    loads: list[int] = []

    def load(path: Path) -> RuleSet:
        loads.append(1)
        rules = compile_rules(RULES_A if len(loads) == 1 else RULES_B, str(path), region="US")
        if len(loads) > 1:
            return rules
        probe = dataclasses.replace(rules.routes[0], name="probe", conditions=(Probe(freed),))
        return dataclasses.replace(rules, routes=(*rules.routes, probe))

    manager = RulesManager(routes, region="US", metrics=Metrics(), loader=load)
    async with manager.running(watch=False, debounce_ms=50, sighup=False):
        assert (await manager.reload("admin")).result == "success"
        assert len(freed) == 1
        assert freed[0] != threading.main_thread().name


async def wait_for(condition: Callable[[], bool], what: str, limit: float = 20) -> None:
    """Poll; the limit only bounds a hung test, nothing is asserted about speed."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def serving(manager: RulesManager, text: str) -> Callable[[], bool]:
    return lambda: manager.current is not None and manager.current.version == version(text)


@pytest.mark.anyio
async def test_sighup_reloads(routes: Path) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    manager = RulesManager(routes, region="US", metrics=Metrics())
    before = signal.getsignal(signal.SIGHUP)
    async with manager.running(watch=False, debounce_ms=50):
        assert signal.getsignal(signal.SIGHUP) is not before  # ours, or SIGHUP would kill us
        write(routes, RULES_B)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(serving(manager, RULES_B), "the SIGHUP reload")
        assert manager.last_reload is not None and manager.last_reload.trigger == "sighup"
    assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.anyio
async def test_watch_reloads_on_replace_and_in_place_writes(routes: Path) -> None:
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=True, debounce_ms=50, sighup=False):
        # An editor's save: a temporary file renamed over the old one.
        temporary = routes.with_name(".routes.yaml.tmp")
        write(temporary, RULES_B)
        os.replace(temporary, routes)
        await wait_for(serving(manager, RULES_B), "B after os.replace")
        write(routes, INVALID)  # in place
        await wait_for(
            lambda: manager.last_reload is not None and not manager.last_reload.ok,
            "the failed reload",
        )
        assert serving(manager, RULES_B)()
        write(routes, RULES_A)
        await wait_for(serving(manager, RULES_A), "A after an in-place write")
        assert manager.last_reload is not None and manager.last_reload.trigger == "watch"


@pytest.mark.anyio
async def test_watch_follows_a_swapped_symlink_like_a_kubernetes_configmap(
    tmp_path: Path,
) -> None:
    # The layout the kubelet makes: routes.yaml -> ..data/routes.yaml, ..data -> ..v1; an
    # update writes ..v2, then renames a new ..data link over the old one.
    def version_dir(name: str, text: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "routes.yaml").write_text(text)

    def point_data_at(name: str) -> None:
        (tmp_path / "..data_tmp").symlink_to(name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    version_dir("..v1", RULES_A)
    point_data_at("..v1")
    routes = tmp_path / "routes.yaml"
    routes.symlink_to("..data/routes.yaml")
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=True, debounce_ms=50, sighup=False):
        version_dir("..v2", RULES_B)
        point_data_at("..v2")
        await wait_for(serving(manager, RULES_B), "B after the first swap")
        version_dir("..v3", RULES_A)  # again: the watch must follow the new target
        point_data_at("..v3")
        await wait_for(serving(manager, RULES_A), "A after the second swap")


@pytest.fixture
def busy_directory(routes: Path) -> Iterator[None]:
    """Writes beside routes.yaml, every few ms, as a server under load does (its call log,
    its state database and its log file sit in the same directory by default)."""
    stop = threading.Event()

    def append() -> None:
        with routes.with_name("service.log").open("a") as log:
            while not stop.is_set():
                log.write("a log line\n")
                log.flush()
                time.sleep(0.005)

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


@pytest.mark.anyio
async def test_an_edit_made_while_the_watch_is_re_armed_is_read_in_a_busy_directory(
    routes: Path, busy_directory: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A save by rename replaces the file: the watch is re-made for the new one. An edit
    # saved between the old watch and the new has no event of its own: the new watch
    # reads the file once it is in place. That read waited for the first batch of the
    # routes files or an idle tick, and beside a busy file neither came: the edit was
    # lost until the next one.
    from app.ops import reload

    edits: list[str] = []

    def awatch_after_an_edit(*paths: str, **options: Any) -> Any:
        if edits:
            temporary = routes.with_name(".routes.yaml.tmp")
            write(temporary, edits.pop())
            os.replace(temporary, routes)
        return real_awatch(*paths, **options)

    real_awatch = watchfiles.awatch
    monkeypatch.setattr(reload, "awatch", awatch_after_an_edit)
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=True, debounce_ms=50, sighup=False):
        await wait_for(lambda: manager.watching, "the watch")
        edits.append(RULES_A)  # saved just before the watch of the next file is made
        temporary = routes.with_name(".routes.yaml.tmp")
        write(temporary, RULES_B)
        os.replace(temporary, routes)
        await wait_for(lambda: not edits, "the re-armed watch")
        await wait_for(serving(manager, RULES_A), "A, saved as the watch was re-made")


@pytest.mark.anyio
async def test_the_watch_polls_when_the_kernel_gives_no_watch(
    routes: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # inotify instances are counted per user (128 by default), and containers of one
    # user on a host share them: watchfiles then cannot create its watcher (EMFILE).
    # The watch retried the same for ever, with the edits unseen; it polls instead.
    from app.ops import reload

    def no_inotify(*paths: str, force_polling: bool | None = None, **options: Any) -> Any:
        if force_polling:
            return real_awatch(*paths, force_polling=True, **options)

        async def refused() -> AsyncIterator[set[tuple[watchfiles.Change, str]]]:
            raise RuntimeError("Error creating recommended watcher: Too many open files")
            yield set()  # an async generator, as awatch is

        return refused()

    real_awatch = watchfiles.awatch
    monkeypatch.setattr(reload, "awatch", no_inotify)
    manager = RulesManager(routes, region="US", metrics=Metrics())
    with caplog.at_level(logging.WARNING, logger="switchboard.rules"):
        async with manager.running(watch=True, debounce_ms=50, sighup=False):
            await wait_for(lambda: manager.watching, "the watch, polling")
            write(routes, RULES_B)
            await wait_for(serving(manager, RULES_B), "B, seen by polling")
    assert any(getattr(r, "event", None) == "rules_watch_polling" for r in caplog.records)


@pytest.mark.anyio
async def test_watch_notices_a_missing_file_once_it_appears(routes: Path) -> None:
    manager = RulesManager(routes, region="US", metrics=Metrics())
    async with manager.running(watch=True, debounce_ms=50, sighup=False):
        remove(routes)
        await wait_for(
            lambda: manager.last_reload is not None and not manager.last_reload.ok,
            "the failed reload",
        )
        write(routes, RULES_B)
        await wait_for(serving(manager, RULES_B), "B once the file is back")


def test_the_app_watches_when_told_and_says_so(routes: Path, api: respx.Router) -> None:
    with make_client(routes, api, watch_rules=True, watch_debounce_ms=50) as client:
        routes.write_text(RULES_B)
        deadline = time.monotonic() + 20  # bounds a hung test; speed is not asserted
        while client.get("/readyz").json()["rules_version"] != version(RULES_B):
            assert time.monotonic() < deadline, "the watch did not reload"
            time.sleep(0.02)
        status = client.get("/admin/status", headers=AUTH).json()
        assert status["last_reload"]["trigger"] == "watch"
        assert client.get("/admin/routes", headers=AUTH).json()["watching"] is True


@pytest.fixture
def file_bind_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(host file, mounted file): routes.yaml bind-mounted on its own, as compose does."""
    host, inside = tmp_path / "host" / "routes.yaml", tmp_path / "config" / "routes.yaml"
    host.parent.mkdir()
    inside.parent.mkdir()
    host.write_text(RULES_A)
    inside.touch()
    try:
        mounted = subprocess.run(
            ["mount", "--bind", str(host), str(inside)], capture_output=True, check=False
        )
    except OSError:
        pytest.skip("no mount command")
    if mounted.returncode != 0:
        pytest.skip("bind mounts need root (CAP_SYS_ADMIN)")
    try:
        yield host, inside
    finally:
        subprocess.run(["umount", str(inside)], check=False)


@pytest.mark.anyio
async def test_watch_sees_in_place_writes_to_a_file_bind_mounted_alone(
    file_bind_mount: tuple[Path, Path],
) -> None:
    host, inside = file_bind_mount
    manager = RulesManager(inside, region="US", metrics=Metrics())
    async with manager.running(watch=True, debounce_ms=50, sighup=False):
        await wait_for(lambda: manager.watching, "the watch")
        write(host, RULES_B)  # on the host, in place
        await wait_for(serving(manager, RULES_B), "B written on the host")
