"""Which build of the decision path the tests run (see setup.py and app/speedups.py).

- By default, whatever is installed: compiled after `./scripts/test`.
- SWITCHBOARD_PURE_PYTHON=1: the modules setup.py compiles are loaded from their source
  instead, so the interpreted build is tested too (scripts/test runs the unit tests so).
A compiled module older than its source would test code that is not in the tree: the run
stops with what to do.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType

import pytest

from app.speedups import COMPILED_MODULES, decision_path

PURE_PYTHON = os.environ.get("SWITCHBOARD_PURE_PYTHON") == "1"


class SourceFirst(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' .py files, never their extensions."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED_MODULES:
            return None
        loader = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
        for entry in path or sys.path:
            spec = importlib.machinery.FileFinder(entry, loader).find_spec(fullname)
            if spec is not None:
                return spec
        return None


if PURE_PYTHON:
    assert not any(name in sys.modules for name in COMPILED_MODULES), "imported too early"
    sys.meta_path.insert(0, SourceFirst())
else:
    stale = decision_path().stale
    if stale:
        pytest.exit(
            f"compiled modules are older than their source: {', '.join(stale)}; "
            "rebuild them with ./scripts/test (or pip install -e .)",
            returncode=4,
        )
