"""Whether the per-call decision path runs compiled (mypyc, see setup.py) or interpreted.

Both run the same source. A build without a C compiler, or with SWITCHBOARD_COMPILE=0,
is interpreted and decides each call in about twice the CPU time; /readyz and the
start-up log say which one is serving.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

# The modules setup.py compiles (a test keeps the two lists equal).
COMPILED_MODULES = (
    "app.sip",
    "app.rules.conditions",
    "app.rules.lookup",
    "app.rules.ruleset",
    "app.rules.schedule",
    "app.rules.templates",
)
# Set to 1, tests and benchmarks load these modules from their source (see interpret()).
INTERPRET_ENV = "SWITCHBOARD_PURE_PYTHON"

# Installing a wheel writes the source and the extension a moment apart.
SLACK = 2.0


@dataclass(frozen=True, slots=True)
class DecisionPath:
    compiled: tuple[str, ...]
    """Modules loaded from a C extension."""
    interpreted: tuple[str, ...]
    stale: tuple[str, ...]
    """Compiled modules whose source file changed after the build (an editable install
    that was not rebuilt): they do not run the code in the source tree."""

    @property
    def mode(self) -> str:
        if not self.compiled:
            return "interpreted"
        return "compiled" if not self.interpreted else "partly compiled"


def decision_path() -> DecisionPath:
    compiled, interpreted, stale = [], [], []
    for name in COMPILED_MODULES:
        location = getattr(importlib.import_module(name), "__file__", None) or ""
        if not is_extension(location):
            interpreted.append(name)
            continue
        compiled.append(name)
        if is_stale(Path(location), Path(location).parent / f"{name.rpartition('.')[2]}.py"):
            stale.append(name)
    return DecisionPath(tuple(compiled), tuple(interpreted), tuple(stale))


def is_extension(location: str) -> bool:
    return location.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def is_stale(extension: Path, source: Path) -> bool:
    """The source was edited after the extension was built from it."""
    return source.is_file() and source.stat().st_mtime > extension.stat().st_mtime + SLACK


class _SourceFirst(importlib.abc.MetaPathFinder):
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


def interpret() -> None:
    """From now on, import the compiled modules from their source: what a build without a
    C compiler runs, side by side with the compiled one (tests, benchmarks)."""
    if any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        return
    early = [name for name in COMPILED_MODULES if name in sys.modules]
    if early:
        raise RuntimeError(f"already imported, compiled or not: {', '.join(early)}")
    sys.meta_path.insert(0, _SourceFirst())


def interpret_if_asked() -> bool:
    """interpret() when INTERPRET_ENV is 1; whether it was."""
    if os.environ.get(INTERPRET_ENV) != "1":
        return False
    interpret()
    return True
