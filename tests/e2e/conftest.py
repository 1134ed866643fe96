"""Start Switchboard the way a user does (`switchboard serve`) against a local fake API."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.e2e.fake_openai import FakeOpenAI
from tests.support import HTTP, SECRET

REPO = Path(__file__).resolve().parents[2]

E2E_ROUTES = """
sessions:
  support:
    model: gpt-realtime
    instructions: You are the support line.
routes:
  - name: anonymous
    match: {anonymous: true}
    reject: {status_code: 486}
  - name: vip
    match:
      headers: {X-Customer-Tier: gold}
    refer: {target_uri: "sip:desk@pbx.example.com"}
  - name: support
    match: {called: "+18005550100"}
    accept: support
"""


def switchboard_command() -> list[str]:
    script = Path(sys.executable).parent / "switchboard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "app"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SWITCHBOARD_"))}
    env.update(extra)
    return env


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    env: dict[str, str]

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/openai"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_service(
    workdir: Path,
    routes: str,
    *,
    env: dict[str, str],
    timeout: float = 90,
    args: Sequence[str] = (),
    wait_for: str = "/readyz",
) -> Service:
    """`wait_for`: the endpoint whose 200 means started (`/healthz` for a service expected
    to start alive but not ready). `timeout` only bounds a start that hangs: with the
    suite's workers on two busy cores, an import can take 30 s."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "routes.yaml").write_text(routes)
    port = free_port()
    env = base_env(SWITCHBOARD_PORT=str(port), **env)
    log = workdir / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*switchboard_command(), "serve", *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(process, f"http://127.0.0.1:{port}", log, env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"switchboard exited with {process.returncode}:\n{service.logs()}")
        try:
            if HTTP.get(f"{service.url}{wait_for}", timeout=1).status_code == 200:
                return service
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_service(service)
    raise RuntimeError(
        f"switchboard did not become ready ({wait_for} never 200):\n{service.logs()}"
    )


def stop_service(service: Service) -> None:
    if service.process.poll() is None:
        service.process.terminate()
        try:
            service.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def service(fake_api: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = start_service(
        tmp_path_factory.mktemp("service"),
        E2E_ROUTES,
        env={
            "OPENAI_API_KEY": "sk-e2e",
            "OPENAI_BASE_URL": fake_api.base_url,
            "OPENAI_WEBHOOK_SECRET": SECRET,
            "SWITCHBOARD_UPSTREAM_TIMEOUT_SECONDS": "0.5",
            "SWITCHBOARD_CALL_DEADLINE_SECONDS": "2",
        },
    )
    yield running
    stop_service(running)


T = TypeVar("T")


def wait_until(check: Callable[[], T | None], what: str, within: float = 20.0) -> T:
    """Poll `check` until it gives something true (returned); fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
