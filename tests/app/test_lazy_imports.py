"""The optional back-ends are imported by the deployments that use them only: redis (shared
state, 0.3 s of CPU to import) and asyncpg (PostgreSQL call log, 0.1 s) cost every start of
the service otherwise, and every test process that imports the app. And a start that is
refused never imports the server or the app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO, base_env
from tests.support import SECRET

# What `switchboard serve` imports, and the app it builds, with an API key (the in-call
# manager and the live-call registry too) and neither SWITCHBOARD_REDIS_URL nor
# SWITCHBOARD_DATABASE_URL.
PROBE = f"""
import json, sys
import app.cli.main, app.main
from app.settings import Settings
settings = Settings(_env_file=None, openai_api_key="sk-test", webhook_secrets={SECRET!r})
app.main.create_app(settings)
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
"""


def test_a_start_without_redis_or_postgresql_imports_neither() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=base_env(SWITCHBOARD_CALLS_DB=":memory:"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "fastapi" in loaded  # the probe did import the app
    assert not {"redis", "asyncpg"} & loaded, sorted({"redis", "asyncpg"} & loaded)


# `switchboard serve` refused (no webhook secret): what it imported by then.
REFUSED = """
import json, sys
from app.cli.main import main
status = main(["serve"])
print(json.dumps([status, sorted({name.split(".")[0] for name in sys.modules})]))
"""


def test_a_refused_start_imports_neither_the_server_nor_the_app(tmp_path: Path) -> None:
    """What can refuse the start is checked before uvicorn, FastAPI and the app are
    imported (~0.5 s of CPU): a refusal is quick."""
    (tmp_path / "routes.yaml").write_text("routes: []\n")
    done = subprocess.run(
        [sys.executable, "-c", REFUSED],
        cwd=tmp_path,
        env=base_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    status, loaded = json.loads(done.stdout.splitlines()[-1])
    assert status == 2 and "OPENAI_WEBHOOK_SECRET is not set" in done.stderr
    assert not {"uvicorn", "fastapi", "starlette"} & set(loaded), loaded
