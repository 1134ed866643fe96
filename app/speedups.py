"""Whether the per-call decision path runs compiled (mypyc, see setup.py) or interpreted.

Both run the same source. A build without a C compiler, or with SWITCHBOARD_COMPILE=0,
is interpreted and decides each call in about twice the CPU time; /readyz and the
start-up log say which one is serving.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from dataclasses import dataclass
from pathlib import Path

# The modules setup.py compiles (a test keeps the two lists equal).
COMPILED_MODULES = (
    "app.sip",
    "app.rules.conditions",
    "app.rules.ruleset",
    "app.rules.schedule",
    "app.rules.templates",
)
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
