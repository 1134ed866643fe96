"""Every package app/ imports is declared in pyproject.toml's dependencies: one that only
arrives as another package's dependency (websockets, through uvicorn[standard]) can
disappear with that package's next release."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(root: Path) -> set[str]:
    found: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"app", "__future__"}


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        _normalized(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        for requirement in project["dependencies"]
    }


def test_every_package_the_app_imports_is_declared() -> None:
    distributions = packages_distributions()
    undeclared = {}
    for module in sorted(imported_modules(REPO / "app")):
        names = {_normalized(d) for d in distributions.get(module, [module])}
        if not names & declared():
            undeclared[module] = sorted(names)
    assert undeclared == {}, f"imported by app/ but not in [project].dependencies: {undeclared}"
