"""Run `uv pip install` with the package index settings that pip has here.

Used by scripts/venv.sh: `python scripts/uv_install.py UV VENV_PYTHON ARGS...` installs ARGS
into VENV_PYTHON's environment with the uv binary UV. uv reads none of pip's configuration,
and a machine may depend on it (an index mirror, a constraints file, a CA bundle): the
settings come from `pip config list` (files and PIP_* variables, as pip itself resolves
them) and are handed to uv as its own options. Exits with uv's status, so that the caller
can fall back to pip.
"""

from __future__ import annotations

import os
import subprocess
import sys


def pip_settings(python: str = sys.executable) -> dict[str, str]:
    """pip's settings for `pip install` (`python`'s pip): [install] over [global], PIP_*
    over both."""
    try:
        listed = subprocess.run(  # noqa: S603 (our own interpreter)
            [python, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        listed = ""
    rank = {"global": 0, "install": 1, ":env:": 2}
    found: dict[str, tuple[int, str]] = {}
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        section, dot, name = key.rpartition(".")
        if not sep or not dot or section not in rank:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        name = name.replace("_", "-")
        if name not in found or rank[section] >= found[name][0]:
            found[name] = (rank[section], value)
    for variable, value in os.environ.items():  # also where this Python has no pip
        if variable.startswith("PIP_") and value:
            found[variable[4:].lower().replace("_", "-")] = (rank[":env:"], value)
    return {name: value for name, (_, value) in found.items()}


def uv_options(settings: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """uv's options and environment for pip's settings."""
    args: list[str] = []
    env: dict[str, str] = {}
    if "index-url" in settings:
        args += ["--index-url", settings["index-url"]]
    extra = settings.get("extra-index-url", "").split()
    for url in extra:
        args += ["--extra-index-url", url]
    if extra:
        # pip takes the best version from all its indexes; uv, by default, the first index
        # that has the package.
        args += ["--index-strategy", "unsafe-best-match"]
    for place in settings.get("find-links", "").split():
        args += ["--find-links", place]
    for path in settings.get("constraint", "").split():
        args += ["--constraint", path]
    for host in settings.get("trusted-host", "").split():
        args += ["--allow-insecure-host", host]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    if "cert" in settings:
        env["SSL_CERT_FILE"] = settings["cert"]
    timeout = settings.get("timeout") or settings.get("default-timeout")
    if timeout and timeout.replace(".", "", 1).isdigit():
        env["UV_HTTP_TIMEOUT"] = str(round(float(timeout)))
    if "proxy" in settings:
        env["HTTPS_PROXY"] = env["HTTP_PROXY"] = settings["proxy"]
    return args, env


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: uv_install.py UV VENV_PYTHON PIP_INSTALL_ARGS...", file=sys.stderr)
        return 2
    uv, python, *install = argv
    args, env = uv_options(pip_settings())
    command = [uv, "pip", "install", "--python", python, *args, *install]
    # The command is this script's own arguments (from scripts/venv.sh), not outside input.
    return subprocess.run(command, env={**os.environ, **env}, check=False).returncode  # noqa: S603


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
