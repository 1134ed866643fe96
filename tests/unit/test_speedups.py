"""The compiled decision path: what setup.py builds, and what the tests run."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import app.sip
from app.main import _log_decision_path as log_decision_path
from app.speedups import (
    COMPILED_MODULES,
    SLACK,
    DecisionPath,
    decision_path,
    is_extension,
    is_stale,
)

ROOT = Path(__file__).resolve().parents[2]


def setup_py_modules() -> tuple[str, ...]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            paths = ast.literal_eval(node.value)
            return tuple(p.removesuffix(".py").replace("/", ".") for p in paths)
    raise AssertionError("setup.py has no COMPILED list")


def test_setup_py_compiles_the_modules_the_app_reports_on() -> None:
    assert setup_py_modules() == COMPILED_MODULES


def test_the_expected_build_is_under_test() -> None:
    """scripts/test says which build it installed: a build that silently fell back to
    pure Python (or a pure run that loaded extensions) fails here."""
    expected = os.environ.get("SWITCHBOARD_EXPECT_DECISION_PATH")
    if expected is None:
        pytest.skip("run by scripts/test, which sets SWITCHBOARD_EXPECT_DECISION_PATH")
    path = decision_path()
    assert path.mode == expected, path
    assert is_extension(app.sip.__file__ or "") == (expected == "compiled")


@pytest.mark.parametrize(
    ("location", "extension"),
    [
        ("/x/app/sip.cpython-311-x86_64-linux-gnu.so", True),
        ("/x/app/sip.abi3.so", True),
        ("/x/app/sip.py", False),
        ("", False),
    ],
)
def test_is_extension(location: str, extension: bool) -> None:
    assert is_extension(location) is extension


@pytest.mark.parametrize(
    ("source_offset", "stale"),
    [
        (-60.0, False),  # built from this source
        (SLACK / 2, False),  # written together (installing a wheel)
        (SLACK + 1, True),  # edited after the build
    ],
)
def test_is_stale(tmp_path: Path, source_offset: float, stale: bool) -> None:
    extension, source = tmp_path / "sip.so", tmp_path / "sip.py"
    extension.write_bytes(b"")
    source.write_text("")
    built = 1_700_000_000.0
    os.utime(extension, (built, built))
    os.utime(source, (built + source_offset, built + source_offset))
    assert is_stale(extension, source) is stale


def test_no_source_is_not_stale(tmp_path: Path) -> None:
    extension = tmp_path / "sip.so"
    extension.write_bytes(b"")
    assert not is_stale(extension, tmp_path / "sip.py")


@pytest.mark.parametrize(
    ("path", "level", "says"),
    [
        (DecisionPath(COMPILED_MODULES, (), ()), "INFO", "decision path is compiled"),
        (DecisionPath((), COMPILED_MODULES, ()), "WARNING", "decision path is interpreted"),
        (
            DecisionPath(COMPILED_MODULES[1:], COMPILED_MODULES[:1], ()),
            "WARNING",
            "decision path is partly compiled",
        ),
        (
            DecisionPath(COMPILED_MODULES, (), ("app.sip",)),
            "WARNING",
            "older than its source (app.sip)",
        ),
    ],
)
def test_start_up_says_which_decision_path_serves(
    path: DecisionPath, level: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="switchboard")
    log_decision_path(path)
    (record,) = caplog.records
    assert record.levelname == level
    assert says in record.getMessage()
    assert getattr(record, "mode", None) == path.mode


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SWITCHBOARD_PURE_PYTHON": "0"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )


def test_interpret_loads_the_sources_in_a_fresh_process() -> None:
    result = run_python(
        "import app.speedups as s; s.interpret(); s.interpret(); import app.sip, app.rules; "
        "p = s.decision_path(); print(p.mode, app.sip.__file__.endswith('.py'))"
    )
    assert result.stdout.split() == ["interpreted", "True"], result.stderr


def test_interpret_after_the_modules_are_imported_is_refused() -> None:
    result = run_python("import app.rules, app.speedups as s; s.interpret()")
    assert result.returncode != 0
    assert "RuntimeError: already imported, compiled or not: app.sip" in result.stderr


def load_setup_py() -> Any:
    spec = importlib.util.spec_from_file_location("switchboard_setup", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not as __main__: setup() does not run
    return module


@pytest.mark.parametrize(
    ("mode", "compiler", "outcome"),
    [
        (None, "missing", "pure"),  # auto, no compiler: pure Python, with a message
        ("auto", "missing", "pure"),
        ("0", "present", "pure"),
        ("1", "missing", "SWITCHBOARD_COMPILE=1, but no C compiler"),
        ("yes", "present", "SWITCHBOARD_COMPILE='yes': use auto, 1 or 0"),
    ],
)
def test_setup_py_chooses_the_build(
    mode: str | None,
    compiler: str,
    outcome: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    setup_py = load_setup_py()
    if mode is None:
        monkeypatch.delenv("SWITCHBOARD_COMPILE", raising=False)
    else:
        monkeypatch.setenv("SWITCHBOARD_COMPILE", mode)
    monkeypatch.setenv("CC", "/nonexistent/cc" if compiler == "missing" else sys.executable)
    if outcome == "pure":
        assert setup_py.compiled_extensions(tmp_path) == []  # not this checkout's build
        if compiler == "missing":
            assert "no C compiler (/nonexistent/cc)" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit, match=re.escape(outcome)):
            setup_py.compiled_extensions(tmp_path)


def test_a_pure_build_removes_extensions_an_earlier_build_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_py = load_setup_py()
    left = [
        tmp_path / "app" / "sip.cpython-311-x86_64-linux-gnu.so",
        tmp_path / "app" / "rules" / "ruleset.cpython-311-x86_64-linux-gnu.so",
        tmp_path / "switchboard__mypyc.cpython-311-x86_64-linux-gnu.so",
    ]
    kept = [
        tmp_path / "app" / "sip.py",
        tmp_path / "app" / "rules" / "ruleset.py",
        tmp_path / "app" / "rules" / "numbers.cpython-311-x86_64-linux-gnu.so",  # not ours
        tmp_path / "app" / "siphon.cpython-311-x86_64-linux-gnu.so",
    ]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    monkeypatch.setenv("SWITCHBOARD_COMPILE", "0")
    assert setup_py.compiled_extensions(tmp_path) == []
    assert [p for p in left if p.exists()] == []
    assert all(p.exists() for p in kept)
