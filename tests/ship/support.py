"""Helpers for the shipping tests: read the Dockerfile and the compose file the way Docker
does (as far as these tests need), and run and stop real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import yaml

from tests.support import HTTP

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"


# --- Dockerfile -----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    flags: dict[str, str]  # leading --name=value options
    args: str  # the rest, continuation lines joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT/RUN, or None for the shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            if not text.startswith("CMD"):
                return None
            text = text[3:].strip()
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV values set in this stage, in order (`ENV A=1 B=2` form)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.args):
                name, sep, value = item.partition("=")
                assert sep, f"Dockerfile:{instruction.line}: use the ENV name=value form"
                values[name] = value
        return values


def read_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(part for part in pending if part)
        pending = []
        keyword, _, rest = text.partition(" ")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        instructions.append(Instruction(keyword.upper(), flags, rest, start))
    assert not pending, f"{path}: ends inside a continued instruction"
    return instructions


def read_stages(path: Path = DOCKERFILE) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in read_instructions(path):
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.args.partition("=")
            args[name.strip()] = default.strip()
            continue
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name, instruction.line))
            continue
        assert stages, f"Dockerfile:{instruction.line}: instruction before FROM"
        stages[-1].instructions.append(instruction)
    return stages


def final_stage() -> Stage:
    return read_stages()[-1]


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the final stage, both in exec form."""
    stage = final_stage()
    entrypoint, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
    command: list[str] = []
    for instruction in (entrypoint, cmd):
        if instruction is not None:
            form = instruction.exec_form()
            assert form is not None, f"Dockerfile:{instruction.line}: use the exec (JSON) form"
            command += form
    return command


# --- docker-compose.yml ---------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str  # as written: ./routes.yaml, or a named volume
    target: str
    read_only: bool
    bind: bool

    def host_path(self, base: Path = REPO) -> Path:
        return (base / self.source).resolve()


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def service_mounts(service: Mapping[str, Any]) -> list[Mount]:
    mounts: list[Mount] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):  # short syntax: SOURCE:TARGET[:MODE]
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) > 2 else "rw"
            bind = source.startswith((".", "/", "~"))
            mounts.append(Mount(source, target, "ro" in mode.split(","), bind))
        else:
            mounts.append(
                Mount(
                    str(volume.get("source", "")),
                    str(volume["target"]),
                    bool(volume.get("read_only", False)),
                    volume.get("type") == "bind",
                )
            )
    return mounts


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def map_container_path(container_path: str, mounts: Sequence[Mount]) -> Path | None:
    """The host path a container path is read from through the bind mounts, if any."""
    wanted = PurePosixPath(container_path)
    best: Mount | None = None
    for mount in mounts:
        target = PurePosixPath(mount.target)
        covers = mount.bind and (wanted == target or target in wanted.parents)
        if covers and (best is None or len(target.parts) > len(PurePosixPath(best.target).parts)):
            best = mount
    if best is None:
        return None
    return best.host_path() / wanted.relative_to(best.target)


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Switchboard or OpenAI setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SWITCHBOARD_"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


def start(
    command: Sequence[str] | str, *, cwd: Path, env: Mapping[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start a process in its own process group (so that stop() ends its children too)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            shell=isinstance(command, str),
            executable="/bin/bash" if isinstance(command, str) else None,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, timeout: float
) -> httpx.Response:
    """Poll `url` until it answers 200; fail with the process's log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"exited with {process.returncode} before {url} answered:\n"
                + log.read_text(errors="replace")
            )
        try:
            response = HTTP.get(url, timeout=1)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200 in {timeout} s:\n" + log.read_text())
