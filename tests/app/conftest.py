from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def calls_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every app of these tests records its calls in its own database, never in the
    working directory's calls.db (the default)."""
    path = tmp_path / "calls.db"
    monkeypatch.setenv("SWITCHBOARD_CALLS_DB", str(path))
    return path
