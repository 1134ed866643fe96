from __future__ import annotations

from pathlib import Path

import pytest

from app.cli.main import main
from tests.support import SECRET

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in list(os.environ):
        if key.startswith(("OPENAI_", "SWITCHBOARD_")):
            monkeypatch.delenv(key)


def test_check_sample_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(REPO / "routes.yaml")]) == 0
    assert "OK, 6 routes" in capsys.readouterr().out


def test_check_reports_every_error_with_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n"
        "  - name: a\n"
        "    reject: {status_code: 700}\n"
        "  - name: b\n"
        "    refer: {target_uri: 'http://x'}\n"
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{path}:3:14: routes[0].reject.status_code: Input should be less than or equal to 699"
        in err
    )
    assert f"{path}:5:13: routes[1].refer.target_uri: 'http://x' is not a transfer target" in err
    assert f"{path}: 2 errors" in err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read: No such file or directory" in capsys.readouterr().err


def test_check_reports_a_file_whose_end_was_never_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file whose last block is still zeros (preallocated, or a crash mid-write): the
    YAML reader refused the NUL as it was made, outside the parse: a traceback."""
    path = tmp_path / "routes.yaml"
    path.write_bytes(b"routes:\n  - {name: a, reject: 486}\n\0\0\0\0")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:1: invalid YAML: the character U+0000 is not allowed" in err


def test_check_defaults_to_the_configured_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.yaml").write_text("routes:\n  - name: all\n    reject: {}\n")
    monkeypatch.setenv("SWITCHBOARD_ROUTES_FILE", str(tmp_path / "mine.yaml"))
    assert main(["check"]) == 0
    assert "OK, 1 routes" in capsys.readouterr().out


def test_bad_setting_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHBOARD_DEFAULT_REGION", "XX")
    assert main(["check"]) == 2
    assert "setting default_region" in capsys.readouterr().err


def test_simulate_rejects_a_bad_header(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "-H", "no colon here"]) == 2
    assert "expected 'Name: value'" in capsys.readouterr().err


def test_simulate_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--url", "http://127.0.0.1:9/webhooks/openai"]) == 1
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_refuses_a_port_out_of_range(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Before: the flag skipped validation, uvicorn was handed 99999 and bound a random port.
    assert main(["serve", "--port", port]) == 2
    assert "switchboard: --port: Input should be" in capsys.readouterr().err


def test_serve_refuses_workers_that_would_not_share_exactly_once_state(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claims kept in each process's memory: two workers could both answer one call.
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", ":memory:")
    monkeypatch.setenv("SWITCHBOARD_STATE_DB", ":memory:")
    assert main(["serve", "--workers", "2", "--routes", str(REPO / "routes.yaml")]) == 2
    assert "--workers 2 needs exactly-once state that the worker processes share" in (
        capsys.readouterr().err
    )


def test_serve_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers: must be 1 or more" in capsys.readouterr().err


def test_serve_workers_get_time_to_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Before: uvicorn's 5 s default; on a busy machine a worker still importing was killed
    # and restarted without end, and the service never became ready.
    import os

    import uvicorn

    # serve passes its flags to the workers through the environment: keep that in the test.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs, app=app))
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", str(tmp_path / "calls.db"))
    assert main(["serve", "--workers", "2", "--routes", str(REPO / "routes.yaml")]) == 0
    assert seen["app"] == "app.cli.main:worker_app" and seen["workers"] == 2
    assert isinstance(seen["timeout_worker_healthcheck"], int)
    assert seen["timeout_worker_healthcheck"] >= 30


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(("deadline", "waits"), [(None, 10), ("2", 10), ("12", 17)])
def test_serve_waits_at_a_stop_for_the_longest_webhook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: str, deadline: str | None, waits: int
) -> None:
    """A graceful stop waits for the webhooks in flight: their deadline, the clean-ups and
    the kept answer's grace past it. It waited 10 s whatever the deadline: above ~5 s,
    a stop cancelled webhooks whose request had gone out, and their redeliveries answered
    'uncertain' (the call lost)."""
    import os

    import uvicorn

    monkeypatch.setattr(os, "environ", dict(os.environ))
    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs, app=app))
    monkeypatch.setattr("app.main.create_app", lambda settings, rules=None: "app")
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", str(tmp_path / "calls.db"))
    if deadline is not None:
        monkeypatch.setenv("SWITCHBOARD_CALL_DEADLINE_SECONDS", deadline)
    args = ["serve", "--workers", workers, "--routes", str(REPO / "routes.yaml")]
    assert main(args) == 0
    assert seen["timeout_graceful_shutdown"] == waits


def test_serve_workers_end_the_calls_left_open_once_before_they_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: each worker ended them as it started, and so did a worker that uvicorn
    # restarted after a crash: the calls live on the other worker were marked ended.
    import os
    import sqlite3

    import uvicorn

    from app.records.sqlite import SqliteCallLog
    from app.settings import Settings
    from tests.records.test_calllog import record

    calls_db = tmp_path / "calls.db"
    left = SqliteCallLog(calls_db, retention_days=36500)
    left.open()
    left.started(record("rtc_left_open"))
    left.close()

    def run(app: str, **kwargs: object) -> None:
        with sqlite3.connect(calls_db) as conn:
            seen["call"] = conn.execute("SELECT status, end_reason FROM calls").fetchall()
        seen["workers"] = Settings()  # what each worker reads

    monkeypatch.setattr(os, "environ", dict(os.environ))
    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", str(calls_db))
    monkeypatch.setenv("SWITCHBOARD_CALLS_RETENTION_DAYS", "36500")
    assert main(["serve", "--workers", "2", "--routes", str(REPO / "routes.yaml")]) == 0
    assert seen["call"] == [("ended", "unknown")]
    workers = seen["workers"]
    assert isinstance(workers, Settings) and workers.recover_open_calls is False
    # One process (no --workers): its own start recovers.
    assert Settings.model_fields["recover_open_calls"].default is True


def test_serve_workers_refuse_a_call_database_they_cannot_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    (tmp_path / "calls.db").write_bytes(b"not a database" * 100)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("started"))
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", str(tmp_path / "calls.db"))
    assert main(["serve", "--workers", "2", "--routes", str(REPO / "routes.yaml")]) == 1
    assert "switchboard: cannot start: cannot use the call database" in capsys.readouterr().err
