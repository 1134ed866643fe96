"""`switchboard explain`, `test` and `schema`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.cli.main import main

REPO = Path(__file__).resolve().parents[2]

ROUTES = """\
sessions:
  desk: {model: gpt-realtime, instructions: "Hello {caller_name}"}
schedules:
  office:
    timezone: America/Los_Angeles
    weekly: {mon-fri: "09:00-17:00"}
routes:
  - name: spam
    match: {caller: "+1900*"}
    reject: 486
  - name: vip
    match: {headers: {X-Tier: gold}}
    refer: "tel:+14155550199"
  - name: office-hours
    match: {schedule: office}
    accept: desk
default:
  reject: 480
"""


@pytest.fixture(autouse=True)
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import os

    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SWITCHBOARD_")):
            monkeypatch.delenv(key)
    (tmp_path / "routes.yaml").write_text(ROUTES)
    return tmp_path


def test_explain_text_names_the_route_and_why_earlier_ones_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["explain", "--caller", "+14155550123", "-H", "X-Tier: gold"])
    out = capsys.readouterr().out
    assert code == 0
    assert "caller:          +14155550123  (from the from header)" in out
    assert "1. spam  not: caller is +1900*" in out
    assert "2. vip   MATCH" in out
    assert "action:      accept, then refer to tel:+14155550199" in out


def test_explain_json_with_a_time_and_raw_header_lines(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "invite.txt").write_text(
        'From: "Ann" <sip:+1 (415) 555-0100@carrier.example>;tag=1\n'
        "To: <sip:+18005550100@sip.api.openai.com>\n"
        "P-Asserted-Identity: <tel:+14155550100>\n"
    )
    code = main(
        ["explain", "--headers-file", "invite.txt", "--time", "2026-11-24T10:00:00-08:00", "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["call"]["caller"]["number"] == "+14155550100"
    assert result["call"]["caller_header"] == "p-asserted-identity"
    assert [r["name"] for r in result["routes"]] == ["spam", "vip", "office-hours"]
    assert result["routes"][1]["reason"] == "not: header X-Tier equals 'gold'"
    assert result["decision"]["route"] == "office-hours"
    assert result["decision"]["session"]["instructions"] == 'Hello "Ann"'


def test_explain_outside_the_schedule_falls_to_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--time", "2026-11-28T10:00:00-08:00"]) == 0  # a Saturday
    out = capsys.readouterr().out
    assert "3. office-hours  not: inside schedule office" in out
    assert "(no route matched: the default applies)" in out
    assert "action:      reject with SIP 480" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "2026-11-24T10:00:00"], "--time needs a UTC offset"),
        (["--time", "yesterday"], "Invalid isoformat string"),
        (["--time", "9999-12-31T23:59:59-14:00"], "in the years 2 to 9998"),
        (["--time", "0001-01-01T00:00:00-14:00"], "in the years 2 to 9998"),
        (["-H", "nocolon"], "expected 'Name: value'"),
        (["--headers-file", "missing.txt"], "No such file"),
    ],
    # The extreme times were an OverflowError's traceback (a schedule's day before/after).
    ids=["naive-time", "bad-time", "last-year", "first-year", "bad-header", "missing-file"],
)
def test_explain_bad_input(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explain", *args]) == 2
    assert message in capsys.readouterr().err


def test_explain_invalid_routes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "routes.yaml").write_text("routes: [{name: x, reject: 99}]\n")
    assert main(["explain"]) == 1
    assert (
        "routes.yaml:1:20: routes[0].reject: Input should be greater than or equal to 400"
        in capsys.readouterr().err
    )


SAMPLES = """\
- name: spammer is busy
  caller: "+19005550100"
  expect: {route: spam, action: reject, status_code: 486}
- name: gold goes to a human
  headers: ["X-Tier: gold"]
  expect: {route: vip, action: refer, target_uri: "tel:+14155550199"}
- name: weekday morning gets the desk
  caller_name: Ann
  time: 2026-11-24T10:00:00-08:00
  expect: {route: office-hours, action: accept, instructions_contain: '"Ann"'}
"""


def test_test_passes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "calls.yaml").write_text(SAMPLES)
    assert main(["test", "calls.yaml"]) == 0
    out = capsys.readouterr().out
    assert "PASS  gold goes to a human" in out
    assert out.strip().endswith("3 passed, 0 failed")


def test_test_fails_with_a_diff(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "calls.yaml").write_text(
        SAMPLES.replace("status_code: 486", "status_code: 603")
        + textwrap.dedent(
            """\
            - name: saturday
              time: 2026-11-28T10:00:00-08:00
              expect: {route: office-hours}
            """
        )
    )
    assert main(["test", "calls.yaml"]) == 1
    out = capsys.readouterr().out
    assert (
        "FAIL  spammer is busy\n"
        "      - expected status_code: 603\n"
        "      + actual   status_code: 486" in out
    )
    assert "      - expected route: office-hours\n      + actual   route: default" in out
    assert out.strip().endswith("2 passed, 2 failed")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- name: x\n  expect: {route: a, colour: red}\n", "expect.colour: Extra inputs"),
        ("- name: x\n  time: 2026-11-24T10:00:00\n  expect: {}\n", "UTC offset"),
        ("- name: x\n  time: 9999-12-31T23:00:00-08:00\n  expect: {}\n", "years 2 to 9998"),
        ("- name: x\n  headers: [nocolon]\n  expect: {}\n", "expected 'Name: value'"),
        ("- [unclosed\n", "invalid YAML"),
    ],
    ids=["unknown-key", "naive-time", "last-year", "bad-header", "bad-yaml"],
)
def test_test_bad_file(
    workdir: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "calls.yaml").write_text(content)
    assert main(["test", "calls.yaml"]) == 2
    assert message in capsys.readouterr().err


def test_schema_is_valid_and_accepts_the_sample_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    sample = yaml.safe_load((REPO / "routes.yaml").read_text())
    assert list(validator.iter_errors(sample)) == []
    wrong = {"routes": [{"name": "x", "rejct": 486}]}
    assert [e.message for e in validator.iter_errors(wrong)] == [
        "Additional properties are not allowed ('rejct' was unexpected)"
    ]
    shorthand = {"routes": [{"name": "x", "match": {"caller": "+1415*"}, "reject": 486}]}
    assert list(validator.iter_errors(shorthand)) == []


def test_committed_schema_file_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    generated = json.loads(capsys.readouterr().out)
    committed = json.loads((REPO / "routes.schema.json").read_text())
    assert committed == generated, "run: switchboard schema > routes.schema.json"
    assert (
        (REPO / "routes.yaml")
        .read_text()
        .startswith("# yaml-language-server: $schema=./routes.schema.json")
    )


def test_check_warns_about_routes_that_can_never_match(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "routes.yaml").write_text(
        "routes:\n"
        "  - {name: all-415, match: {called: '+1415*'}, accept: {}}\n"
        "  - {name: one-415, match: {called: '+14155550100'}, reject: {}}\n"
        "  - {name: other, match: {called: '+14165550100'}, reject: {}}\n"
    )
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "routes.yaml: warning: route 'one-415' can never match: "
        "route 'all-415' before it matches every call it would\n"
    )
    assert "OK, 3 routes" in captured.out
