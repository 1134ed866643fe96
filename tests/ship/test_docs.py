"""Every command shown in the docs is exercised by a test, so the docs cannot rot.

Every line of a ```sh block (also ```shell, ```bash, ```zsh) in README.md and docs/*.md is
a command; in a transcript (a block with `$ ` prompts, or a ```console block) only the `$ `
lines are. Each one must be listed in COVERED below, with how it is covered:

- RUN: run for real, verbatim, with bash, in a copy of the repository in which the
  documented `./scripts/serve` was started first, as a reader following the docs would
  (its own fresh .venv, the .env it writes, the sample routes.yaml). Commands run in the
  order the docs give them, README first; an expected piece of output may be given.
  The docs' default address 127.0.0.1:8000 is replaced by the test's free port.
- CI: `./scripts/test` is this very suite: .ci/run executes it.
- DOCKER: there is no Docker engine here, so the command is checked against the files it
  names: `docker build` against the Dockerfile, `docker run` against the image's port,
  mounts and settings, `docker compose` against docker-compose.yml's services and profiles.
  A `switchboard` command given to the container (`docker run IMAGE check`, `docker compose
  exec SERVICE switchboard check`) is run for real, with its container paths mapped to
  the host files that would be mounted there.

A doc with its own executable-docs test is listed in DELEGATED instead: its commands with
the given prefix are run by that test (docs/routes.md's `$ switchboard ...` transcripts).

A new command in the docs fails test_every_documented_command_is_covered until it is added
here; a command that cannot be run or checked belongs in a ```text block instead.
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli.main import main as switchboard
from tests.ship.support import (
    REPO,
    Mount,
    clean_env,
    final_stage,
    free_port,
    image_command,
    load_compose,
    service_environment,
    service_mounts,
    start,
    stop,
    wait_ready,
)


class How(enum.Enum):
    RUN = "run for real in a copy of the repository (test_documented_commands_run)"
    CI = "the test suite itself: .ci/run executes it"
    DOCKER = "checked against Dockerfile/docker-compose.yml (test_docker_commands)"


@dataclass(frozen=True)
class Covered:
    how: How
    expect: str | None = None  # for RUN: a piece of the command's output


COVERED: dict[str, Covered] = {
    # README: quickstart
    "./scripts/serve": Covered(How.RUN, None),
    "./scripts/test": Covered(How.CI),
    ".venv/bin/switchboard simulate --caller +14155550123 --called +18005550100": Covered(
        How.RUN, '"outcome": "dry_run"'
    ),
    ".venv/bin/switchboard simulate -H 'X-Customer-Tier: gold'": Covered(
        How.RUN, '"route": "vip-to-human"'
    ),
    ".venv/bin/switchboard simulate --caller anonymous": Covered(How.RUN, '"route": "anonymous"'),
    # README and docs/deploy.md: Docker
    "docker build -t switchboard .": Covered(How.DOCKER),
    'docker run --rm -p 127.0.0.1:8000:8000 --env-file .env -v "$PWD/routes.yaml:/config/routes.yaml:ro" switchboard': Covered(  # noqa: E501
        How.DOCKER
    ),
    'docker run --rm -v "$PWD/routes.yaml:/config/routes.yaml:ro" switchboard check': Covered(
        How.DOCKER
    ),
    "docker compose up -d --build": Covered(How.DOCKER),
    "docker compose --profile monitoring up -d": Covered(How.DOCKER),
    "docker compose ps": Covered(How.DOCKER),
    "docker compose logs -f switchboard": Covered(How.DOCKER),
    "docker compose exec switchboard switchboard check": Covered(How.DOCKER),
    "docker compose down": Covered(How.DOCKER),
    # docs/deploy.md: high availability
    "docker compose --profile ha up -d --build proxy": Covered(How.DOCKER),
    "docker compose --profile ha ps": Covered(How.DOCKER),
    "docker compose --profile ha logs -f switchboard-a switchboard-b": Covered(How.DOCKER),
    "docker compose --profile ha build switchboard-a": Covered(How.DOCKER),
    "docker compose --profile ha up -d --no-deps --wait switchboard-a": Covered(How.DOCKER),
    "docker compose --profile ha up -d --no-deps --wait switchboard-b": Covered(How.DOCKER),
    # docs/deploy.md: connecting a project
    ".venv/bin/switchboard check routes.yaml": Covered(How.RUN, "routes.yaml: OK"),
}

# Docs that have their own executable-docs test: doc -> (test, prefix of the commands it runs).
DELEGATED: dict[str, tuple[str, str]] = {
    "docs/routes.md": ("tests/rules/test_docs_routes.py", "switchboard "),
}

SHELL_LANGUAGES = {"sh", "shell", "bash", "console", "zsh"}


# --- extraction -------------------------------------------------------------------------


@dataclass(frozen=True)
class DocCommand:
    text: str
    path: Path
    line: int

    @property
    def where(self) -> str:
        try:
            return f"{self.path.relative_to(REPO)}:{self.line}"
        except ValueError:
            return f"{self.path}:{self.line}"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def strip_comment(line: str) -> str:
    """Drop a trailing `# comment` (not inside quotes) and collapse unquoted whitespace."""
    out: list[str] = []
    quote: str | None = None
    for i, char in enumerate(line):
        if quote:
            out.append(char)
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            break
        elif char.isspace():
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(char)
    return "".join(out).strip()


_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")


def extract_commands(text: str, path: Path) -> list[DocCommand]:
    """The commands of the shell blocks. A block with `$ ` prompts (or a ```console block)
    is a transcript: only its `$ ` lines are commands, the other lines are their output."""
    commands: list[DocCommand] = []
    fence: str | None = None
    language = ""
    block: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence, language, block = match.group(1), match.group(2).lower(), []
            continue
        stripped = line.strip()
        if stripped.startswith(fence) and set(stripped) == {fence[0]}:
            if language in SHELL_LANGUAGES:
                commands += block_commands(block, path, transcript=language == "console")
            fence = None
            continue
        block.append((number, stripped))
    assert fence is None, f"{path}: a code block is not closed"
    return commands


def block_commands(
    lines: list[tuple[int, str]], path: Path, *, transcript: bool
) -> list[DocCommand]:
    transcript = transcript or any(line.startswith("$ ") for _, line in lines)
    commands: list[DocCommand] = []
    pending: str | None = None
    start = 0
    for number, line in lines:
        if pending is None:
            if transcript:
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            start = number
        joined = f"{pending or ''} {line}".strip()
        if joined.endswith("\\"):
            pending = joined[:-1].strip()
            continue
        pending = None
        command = strip_comment(joined)
        if command:
            commands.append(DocCommand(command, path, start))
    assert pending is None, f"{path}:{start}: a command ends with a backslash"
    return commands


def documented() -> list[DocCommand]:
    return [c for path in doc_files() for c in extract_commands(path.read_text(), path)]


def first_of_each(commands: Sequence[DocCommand]) -> list[DocCommand]:
    seen: set[str] = set()
    out: list[DocCommand] = []
    for command in commands:
        if command.text not in seen:
            seen.add(command.text)
            out.append(command)
    return out


def test_extraction() -> None:
    markdown = (
        "Intro `not a command`\n"
        "```sh\n"
        "# a comment line\n"
        "./scripts/serve     # trailing comment\n"
        "\n"
        "docker run --rm \\\n"
        '  -v "$PWD/a:/b:ro" img   # note\n'
        "echo 'a # not a comment'\n"
        "```\n"
        "```text\n"
        "not a command\n"
        "```\n"
        "1. A list item:\n"
        "\n"
        "   ```bash\n"
        "   ls  -l\n"
        "   ```\n"
        "```sh\n"
        "$ switchboard check broken.yaml\n"
        "broken.yaml:5:5: an error # not a command\n"
        "$ echo a \\\n"
        "  b\n"
        "a b\n"
        "```\n"
        "```console\n"
        "output only\n"
        "```\n"
    )
    got = [(c.text, c.line) for c in extract_commands(markdown, Path("x.md"))]
    assert got == [
        ("./scripts/serve", 4),
        ('docker run --rm -v "$PWD/a:/b:ro" img', 6),
        ("echo 'a # not a comment'", 8),
        ("ls -l", 16),
        ("switchboard check broken.yaml", 19),
        ("echo a b", 21),
    ]


def test_docs_have_commands() -> None:
    texts = {c.text for c in documented()}
    assert {"./scripts/serve", "./scripts/test"} <= texts  # the quickstart is still there
    assert any(t.startswith("docker ") for t in texts)


def delegated(command: DocCommand) -> bool:
    entry = DELEGATED.get(command.path.relative_to(REPO).as_posix())
    # `NAME=value` words before the command set its environment.
    text = re.sub(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*", "", command.text)
    return entry is not None and text.startswith(entry[1])


def test_delegated_docs_have_their_test() -> None:
    for doc, (test, _) in DELEGATED.items():
        if (REPO / doc).exists():
            assert (REPO / test).is_file(), f"{doc} delegates its commands to a missing {test}"
            assert doc in (REPO / test).read_text(), f"{test} does not read {doc}"


def test_every_documented_command_is_covered() -> None:
    missing = [c for c in documented() if c.text not in COVERED and not delegated(c)]
    assert not missing, (
        "documented commands that no test covers; add them to COVERED in "
        "tests/ship/test_docs.py (or show them in a ```text block):\n"
        + "\n".join(f"  {c.where}: {c.text}" for c in missing)
    )


def test_no_stale_coverage_entries() -> None:
    texts = {c.text for c in documented()}
    stale = sorted(set(COVERED) - texts)
    assert not stale, f"COVERED lists commands the docs no longer show: {stale}"


def test_ci_runs_the_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    for text, covered in COVERED.items():
        if covered.how is How.CI:
            assert re.search(rf"^\s*(exec\s+)?{re.escape(text)}\s*$", ci, re.M), text


# --- RUN: the quickstart, for real ------------------------------------------------------

COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".env",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
)


@pytest.mark.e2e
def test_documented_commands_run(tmp_path: Path) -> None:
    commands = [
        c
        for c in first_of_each(documented())
        if COVERED.get(c.text, Covered(How.CI)).how is How.RUN
    ]
    serve = [c for c in commands if c.text.split()[0] == "./scripts/serve"]
    assert len(serve) == 1, "the docs start the service with ./scripts/serve"
    others = [c for c in commands if c not in serve]

    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=COPY_IGNORE)
    port = free_port()
    # A fresh checkout: no .venv, no .env. Only the port is moved, to a free one; the same
    # variable reaches the commands below, as it would in a reader's shell.
    # (PIP_NO_COMPILE only saves time: the .pyc files are written on first import instead.)
    env = clean_env(
        SWITCHBOARD_PORT=str(port),
        PYTHON=sys.executable,
        PIP_NO_COMPILE="1",
    )
    log = tmp_path / "serve.log"
    process = start(serve[0].text, cwd=repo, env=env, log=log)
    try:
        # First run: creates .venv and installs into it, which takes a while.
        wait_ready(process, f"http://127.0.0.1:{port}/readyz", log, timeout=300)
        assert "wrote a new development webhook secret to .env" in log.read_text()
        assert re.search(r"^OPENAI_WEBHOOK_SECRET=whsec_\S+$", (repo / ".env").read_text(), re.M)
        for command in others:
            text = re.sub(r"\b(127\.0\.0\.1|localhost):8000\b", rf"\g<1>:{port}", command.text)
            result = subprocess.run(
                text,
                shell=True,
                executable="/bin/bash",
                cwd=repo,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{command.where}: {command.text}\n{output}"
            expect = COVERED[command.text].expect
            if expect:
                assert expect in result.stdout, f"{command.where}: {command.text}\n{output}"
    finally:
        returncode = stop(process)
        shutil.rmtree(repo / ".venv", ignore_errors=True)  # pytest keeps tmp dirs around
    assert returncode in (0, -15), log.read_text()


# --- DOCKER: checked against the files -------------------------------------------------

RUN_OPTIONS = {
    "--rm": False,
    "-d": False,
    "--detach": False,
    "-i": False,
    "-t": False,
    "-it": False,
    "--init": False,
    "--read-only": False,
    "-p": True,
    "--publish": True,
    "-e": True,
    "--env": True,
    "--env-file": True,
    "-v": True,
    "--volume": True,
    "--name": True,
}
BUILD_OPTIONS = {"-t": True, "--tag": True, "-f": True, "--file": True, "--pull": False}
COMPOSE_OPTIONS = {"--profile": True, "-f": True, "--file": True}
COMPOSE_COMMANDS: dict[str, dict[str, bool]] = {
    "up": {"-d": False, "--detach": False, "--build": False, "--wait": False, "--no-deps": False},
    "down": {"-v": False, "--volumes": False, "--remove-orphans": False},
    "ps": {"-a": False, "--all": False},
    "logs": {"-f": False, "--follow": False, "--tail": True},
    "exec": {"-T": False},
    "restart": {},
    "stop": {},
    "pull": {},
    "build": {"--pull": False},
    "config": {"-q": False, "--quiet": False},
}


def parse_options(
    words: Sequence[str], spec: dict[str, bool], where: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """Options up to the first positional word; the rest is returned as is."""
    options: list[tuple[str, str]] = []
    i = 0
    while i < len(words) and words[i].startswith("-"):
        name, eq, value = words[i].partition("=")
        assert name in spec, f"{where}: option {name} is not known to the docs test"
        if spec[name] and not eq:
            i += 1
            value = words[i]
        options.append((name, value))
        i += 1
    return options, list(words[i:])


class DockerCommands:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        self.compose = load_compose()
        self.image = final_stage()
        self.tags: set[str] = set()

    def check(self, command: DocCommand) -> None:
        expanded = command.text.replace("${PWD}", str(REPO)).replace("$PWD", str(REPO))
        words = shlex.split(expanded)
        assert words[0] == "docker", f"{command.where}: not a docker command"
        kind, rest = words[1], words[2:]
        if kind == "build":
            self.build(rest, command.where)
        elif kind == "run":
            self.run(rest, command.where)
        elif kind == "compose":
            self.compose_command(rest, command.where)
        else:
            pytest.fail(f"{command.where}: teach the docs test `docker {kind}`")

    def build(self, words: list[str], where: str) -> None:
        options, positional = parse_options(words, BUILD_OPTIONS, where)
        assert positional == ["."], f"{where}: build the repository root"
        dockerfile = dict(options).get("-f") or dict(options).get("--file") or "Dockerfile"
        assert (REPO / dockerfile).is_file(), f"{where}: no {dockerfile}"
        self.tags |= {v.split(":")[0] for k, v in options if k in ("-t", "--tag")}

    def run(self, words: list[str], where: str) -> None:
        options, positional = parse_options(words, RUN_OPTIONS, where)
        assert positional, f"{where}: no image"
        image, args = positional[0], positional[1:]
        assert image.split(":")[0] in self.tags, f"{where}: {image} is not built by the docs"
        env = self.image.env()
        mounts: list[Mount] = []
        for name, value in options:
            if name in ("-p", "--publish"):
                container_port = value.split(":")[-1]
                expose = self.image.last("EXPOSE")
                assert expose is not None and container_port == expose.args, where
            elif name in ("-v", "--volume"):
                source, target, *mode = value.split(":")
                assert Path(source).exists(), f"{where}: {source} does not exist"
                assert target.startswith("/config/") or target == "/config", where
                mounts.append(Mount(source, target, "ro" in mode, bind=True))
            elif name == "--env-file":
                self.env_file(value, where)
                from_file = env_file_settings()
                pinned = {
                    "SWITCHBOARD_HOST",
                    "SWITCHBOARD_PORT",
                    "SWITCHBOARD_ROUTES_FILE",
                    "SWITCHBOARD_CALLS_DB",
                }
                assert not pinned & set(from_file), f"{where}: .env would move the container"
                env.update(from_file)
            elif name in ("-e", "--env"):
                key, _, val = value.partition("=")
                assert key in documented_settings(), f"{where}: unknown setting {key}"
                env[key] = val
        if not args:  # the image's CMD: serve
            secret_given = any(
                n == "--env-file" or (n in ("-e", "--env") and v.startswith("OPENAI_WEBHOOK"))
                for n, v in options
            )
            assert secret_given, f"{where}: serve needs OPENAI_WEBHOOK_SECRET"
            assert any(n in ("-p", "--publish") for n, _ in options), f"{where}: no port"
        entrypoint = self.image.last("ENTRYPOINT")
        assert entrypoint is not None
        prefix = entrypoint.exec_form() or []
        self.in_container([*prefix, *args] if args else image_command(), env, mounts)

    def env_file(self, value: str, where: str) -> None:
        # .env is the reader's copy of .env.example: scripts/serve makes it.
        assert value == ".env", f"{where}: use .env"
        assert "cp .env.example .env" in (REPO / "scripts" / "serve").read_text()

    def compose_command(self, words: list[str], where: str) -> None:
        options, rest = parse_options(words, COMPOSE_OPTIONS, where)
        services = self.compose["services"]
        profiles = {p for s in services.values() for p in s.get("profiles", [])}
        for name, value in options:
            if name == "--profile":
                assert value in profiles, f"{where}: no profile {value} in docker-compose.yml"
            else:
                assert (REPO / value).is_file(), f"{where}: no {value}"
        assert rest and rest[0] in COMPOSE_COMMANDS, f"{where}: teach the docs test {rest[:1]}"
        _, positional = parse_options(rest[1:], COMPOSE_COMMANDS[rest[0]], where)
        if rest[0] == "exec":
            service, inner = positional[0], positional[1:]
            assert service in services, f"{where}: no service {service}"
            assert inner[:1] == ["switchboard"], f"{where}: teach the docs test {inner[:1]}"
            env = {**self.image.env(), **service_environment(services[service])}
            self.in_container(inner, env, service_mounts(services[service]))
            return
        for service in positional:
            assert service in services, f"{where}: no service {service} in docker-compose.yml"
        if rest[0] == "up" and "switchboard" in services:
            assert services["switchboard"]["env_file"] in (".env", [".env"])

    def in_container(self, argv: list[str], env: dict[str, str], mounts: list[Mount]) -> None:
        """Run `switchboard ...` as the container would: in a directory tree holding only
        what the bind mounts put there, at their container paths."""
        assert argv[0] == "switchboard"
        subcommand, args = argv[1], argv[2:]
        if subcommand == "serve":
            return  # started for real from the installed wheel in test_container.py
        assert subcommand == "check", f"teach the docs test `switchboard {subcommand}`"
        root = Path(tempfile.mkdtemp(dir=self.tmp_path))
        for mount in mounts:
            target = root / mount.target.lstrip("/")
            if not mount.bind:  # a named volume: a directory, empty the first time
                target.mkdir(parents=True, exist_ok=True)
                continue
            if mount.host_path().is_dir():
                shutil.copytree(mount.host_path(), target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(mount.host_path(), target)

        def inside(path: str) -> str:
            assert path.startswith("/"), f"{path}: the image's WORKDIR holds nothing"
            assert (root / path.lstrip("/")).exists(), f"{path} is not mounted"
            return str(root / path.lstrip("/"))

        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            for key in [k for k in os.environ if k.startswith("SWITCHBOARD_")]:
                mp.delenv(key)
            for key, value in env.items():
                if key.startswith("SWITCHBOARD_"):
                    mp.setenv(key, value)
            mp.setenv("SWITCHBOARD_ROUTES_FILE", inside(env["SWITCHBOARD_ROUTES_FILE"]))
            paths = [inside(a) if not a.startswith("-") else a for a in args]
            assert switchboard(["check", *paths]) == 0


def env_file_settings() -> dict[str, str]:
    """.env.example read the way `docker run --env-file` reads it: no quotes, no inline
    comments, every value literally."""
    values: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_env_example_works_as_a_docker_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app.settings import Settings

    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith(("SWITCHBOARD_", "OPENAI_"))]:
        monkeypatch.delenv(key)
    for key, value in env_file_settings().items():
        monkeypatch.setenv(key, value)
    image = final_stage().env()
    for key in (
        "SWITCHBOARD_HOST",
        "SWITCHBOARD_PORT",
        "SWITCHBOARD_ROUTES_FILE",
        "SWITCHBOARD_CALLS_DB",
    ):
        monkeypatch.setenv(key, image[key])  # the image's ENV, which the file leaves alone
    settings = Settings()
    assert settings.host == "0.0.0.0" and str(settings.routes_file) == "/config/routes.yaml"
    assert settings.calls_db == "/data/calls.db"
    assert settings.dry_run


def documented_settings() -> set[str]:
    return set(re.findall(r"^#? ?([A-Z_]+)=", (REPO / ".env.example").read_text(), re.M))


def docker_commands() -> Iterator[DocCommand]:
    for command in first_of_each(documented()):
        covered = COVERED.get(command.text)
        if covered is not None and covered.how is How.DOCKER:
            yield command


def test_docker_commands(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checker = DockerCommands(monkeypatch, tmp_path)
    commands = list(docker_commands())
    assert commands
    # Images first, so that `docker run` can check it names one the docs build.
    for command in sorted(commands, key=lambda c: not c.text.startswith("docker build")):
        checker.check(command)
    assert "OK" in capsys.readouterr().out


def test_docker_checks_catch_mistakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    checker = DockerCommands(monkeypatch, tmp_path)
    checker.check(DocCommand("docker build -t switchboard .", REPO / "x.md", 1))
    for wrong in (
        "docker compose --profile nope up -d",
        "docker compose logs -f router",
        "docker compose exec switchboard switchboard check /etc/routes.yaml",
        'docker run --rm -v "$PWD/nope.yaml:/config/routes.yaml:ro" switchboard check',
        "docker run --rm -p 8000:9000 --env-file .env switchboard",
        "docker run --rm --env-file .env -p 8000:8000 other-image",
        "docker build -t switchboard docs",
    ):
        with pytest.raises(AssertionError):
            checker.check(DocCommand(wrong, REPO / "x.md", 1))
