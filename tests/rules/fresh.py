"""Python run in a fresh interpreter, bounded in time: for what would hang or exhaust the
test process if the code under test regressed (a backtracking regex, an alias bomb)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *, timeout: float = 120) -> str:
    """Run `code` at the repository root; it must exit 0. Its standard output."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
