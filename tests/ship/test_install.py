"""scripts/uv_install.py: uv installs from the indexes pip is configured with on this machine.

(scripts/serve's whole first run, uv included, is run by tests/ship/test_docs.py.)
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("uv_install", REPO / "scripts" / "uv_install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


uv_install = load()

LISTED = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
global.index-url='https://mirror.example/simple'
install.index-url='https://install-mirror.example/simple'
:env:.default-timeout='180'
"""


def fake_pip(monkeypatch: pytest.MonkeyPatch, listed: str, env: dict[str, str]) -> None:
    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[1:] == ["-m", "pip", "config", "list"]
        return subprocess.CompletedProcess(command, 0, stdout=listed, stderr="")

    monkeypatch.setattr(uv_install.subprocess, "run", run)
    for name in [n for n in uv_install.os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_pip_settings_and_their_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, LISTED, {"PIP_FIND_LINKS": "/elsewhere"})
    settings = uv_install.pip_settings()
    assert settings["index-url"] == "https://install-mirror.example/simple"  # [install] wins
    assert settings["find-links"] == "/elsewhere"  # the environment wins
    assert settings["extra-index-url"] == "file:///opt/pypi/simple file:///opt/pypi-more/simple"
    assert settings["default-timeout"] == "180"


def test_uv_gets_the_same_indexes_links_constraints_and_certificates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_pip(monkeypatch, LISTED, {})
    args, env = uv_install.uv_options(uv_install.pip_settings())
    assert args == [
        "--index-url",
        "https://install-mirror.example/simple",
        "--extra-index-url",
        "file:///opt/pypi/simple",
        "--extra-index-url",
        "file:///opt/pypi-more/simple",
        "--index-strategy",
        "unsafe-best-match",
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
    ]
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "UV_HTTP_TIMEOUT": "180"}


def test_no_pip_configuration_means_uv_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, "", {})
    assert uv_install.uv_options(uv_install.pip_settings()) == ([], {})


def test_no_index_and_trusted_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_pip(monkeypatch, "", {"PIP_NO_INDEX": "1", "PIP_TRUSTED_HOST": "a.example b.example"})
    args, _ = uv_install.uv_options(uv_install.pip_settings())
    assert args == [
        "--allow-insecure-host",
        "a.example",
        "--allow-insecure-host",
        "b.example",
        "--no-index",
    ]


def test_the_real_pip_configuration_is_read() -> None:
    """Against this machine's own pip (the one scripts/venv.sh runs it with: the Python the
    venv was made from): whatever `pip config list` shows reaches uv."""
    python = getattr(sys, "_base_executable", sys.executable)
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip(f"{python} has no pip")
    settings = uv_install.pip_settings(python)
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2].replace("_", "-")
        assert name in settings, line
        if key.startswith(":env:"):
            assert settings[name] == value.strip("'\"")
