"""What the rules watch reacts to, how /admin/routes renders conditions, the reload settings."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.ops.admin import describe_condition
from app.ops.reload import ReloadStatus, watch_plan, watch_targets
from app.settings import Settings


def test_a_plain_file_is_its_only_target(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text("x")
    plan = watch_plan([str(tmp_path / "routes.yaml")])
    assert plan.targets == {str(tmp_path / "routes.yaml")}
    assert plan.paths == (str(tmp_path), str(tmp_path / "routes.yaml"))


def test_a_replaced_file_changes_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("x")
    before = watch_plan([str(path)])
    path.write_text("y")  # in place: same file, same watch
    assert watch_plan([str(path)]) == before
    (tmp_path / "new").write_text("z")
    os.replace(tmp_path / "new", path)  # a new file: its watch must be made again
    assert watch_plan([str(path)]) != before


def test_relative_paths_are_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert watch_targets(["routes.yaml", str(tmp_path / "routes.yaml")]) == {
        str(tmp_path / "routes.yaml")
    }


def test_a_kubernetes_style_mount_watches_every_link(tmp_path: Path) -> None:
    (tmp_path / "..2024_v1").mkdir()
    (tmp_path / "..2024_v1" / "routes.yaml").write_text("x")
    (tmp_path / "..data").symlink_to("..2024_v1")
    (tmp_path / "routes.yaml").symlink_to("..data/routes.yaml")
    plan = watch_plan([str(tmp_path / "routes.yaml")])
    assert plan.targets == {
        str(tmp_path / "routes.yaml"),  # the link itself (ln -sfn swaps it)
        str(tmp_path / "..data"),  # the kubelet swaps this one
        str(tmp_path / "..2024_v1" / "routes.yaml"),  # the file (edited in place)
    }
    assert plan.paths == (
        str(tmp_path),
        str(tmp_path / "..2024_v1"),
        str(tmp_path / "..2024_v1" / "routes.yaml"),
        str(tmp_path / "routes.yaml"),  # the watch follows the link to the file
    )


def test_a_symlink_loop_ends(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert watch_targets([str(tmp_path / "a")]) == {str(tmp_path / "a"), str(tmp_path / "b")}


def test_a_missing_directory_is_not_watched(tmp_path: Path) -> None:
    plan = watch_plan([str(tmp_path / "gone" / "routes.yaml")])
    assert plan.targets == {str(tmp_path / "gone" / "routes.yaml")}
    assert plan.paths == ()


def test_reload_status_as_json() -> None:
    status = ReloadStatus("failure", "watch", 1700000000.12345, "abc", ("f:1:2: x: bad",))
    assert status.as_dict() == {
        "ok": False,
        "result": "failure",
        "trigger": "watch",
        "at": 1700000000.123,
        "rules_version": "abc",
        "errors": ["f:1:2: x: bad"],
    }


# --- /admin/routes rendering --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inner:
    unit: str


@dataclass(frozen=True, slots=True)
class NewCondition:
    """A condition class this module has never heard of, without describe()."""

    limit: int
    pattern: re.Pattern[str]
    numbers: frozenset[str]
    many: frozenset[str]
    nested: Inner
    body: bytes = b"{}"


@dataclass(frozen=True, slots=True)
class Described:
    def describe(self) -> str:
        return "caller is lucky"


def test_an_unknown_condition_is_rendered_from_its_fields() -> None:
    condition = NewCondition(
        3,
        re.compile(r"^\+1"),
        frozenset({"+2", "+1"}),
        frozenset(str(n) for n in range(1000)),
        Inner("s"),
    )
    rendered = describe_condition(condition)
    assert rendered["type"] == "NewCondition"
    assert rendered["fields"] == {
        "limit": 3,
        "pattern": "/^\\+1/",
        "numbers": ["+1", "+2"],
        "many": "<1000 items>",
        "nested": {"type": "Inner", "unit": "s"},
        "body": "<2 bytes>",
    }
    summary = rendered["summary"]
    assert summary.startswith("NewCondition(limit=3, pattern=/^\\+1/, numbers=['+1', '+2']")
    assert "many=<1000 items>" in summary


def test_a_condition_describes_itself_when_it_can() -> None:
    assert describe_condition(Described())["summary"] == "caller is lucky"


def test_something_that_is_not_a_dataclass_still_renders() -> None:
    rendered = describe_condition(len)
    assert rendered["type"] == "builtin_function_or_method"
    assert "len" in rendered["summary"]


# --- settings -----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SWITCHBOARD_")):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_env")
def test_reload_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)
    assert defaults.watch_rules is True
    assert defaults.watch_debounce_ms == 300
    assert defaults.admin_token is None
    monkeypatch.setenv("SWITCHBOARD_WATCH_RULES", "false")
    monkeypatch.setenv("SWITCHBOARD_WATCH_DEBOUNCE_MS", "50")
    monkeypatch.setenv("SWITCHBOARD_ADMIN_TOKEN", " 0123456789abcdef \n")
    s = Settings(_env_file=None)
    assert s.watch_rules is False
    assert s.watch_debounce_ms == 50
    assert s.admin_token is not None
    assert s.admin_token.get_secret_value() == "0123456789abcdef"
    assert "0123456789abcdef" not in repr(s)
