"""Which build of the decision path the tests run (see setup.py and app/speedups.py).

- By default, whatever is installed: compiled after `./scripts/test`.
- SWITCHBOARD_PURE_PYTHON=1: the modules setup.py compiles are loaded from their source
  instead, so the interpreted build is tested too (scripts/test runs the unit tests so).
A compiled module older than its source would test code that is not in the tree: the run
stops with what to do.
"""

from __future__ import annotations

import pytest

from app.speedups import decision_path, interpret_if_asked

if not interpret_if_asked():
    stale = decision_path().stale
    if stale:
        pytest.exit(
            f"compiled modules are older than their source: {', '.join(stale)}; "
            "rebuild them with ./scripts/test (or pip install -e .)",
            returncode=4,
        )
