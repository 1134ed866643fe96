"""Builds the per-call decision path as C extensions with mypyc, when it can.

Everything else about the package is in pyproject.toml. The modules below run once per
incoming call (SIP parsing and rule matching); compiled, they take about half the CPU
instructions per decision. They are plain typed Python: the same source runs unchanged
when it is not compiled.

SWITCHBOARD_COMPILE chooses:
  auto (default)  compile when there is a C compiler and Python's headers, else pure Python;
  1               compile, or fail the build;
  0               pure Python.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup

COMPILED = [
    "app/sip.py",
    "app/rules/conditions.py",
    "app/rules/lookup.py",
    "app/rules/ruleset.py",
    "app/rules/schedule.py",
    "app/rules/templates.py",
]
GROUP = "switchboard"  # mypyc's shared library: switchboard__mypyc.<platform>.so


def missing_toolchain() -> str | None:
    """What stops a C extension from being built here, if anything."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not headers.is_file():
        return f"no Python headers ({headers})"
    return None


def compiled_extensions(root: Path = Path(__file__).parent) -> list[Extension]:
    mode = os.environ.get("SWITCHBOARD_COMPILE", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"SWITCHBOARD_COMPILE={mode!r}: use auto, 1 or 0")
    if mode == "0":
        remove_in_place_builds(root)
        return []
    missing = missing_toolchain()
    if missing is not None:
        if mode == "1":
            sys.exit(f"SWITCHBOARD_COMPILE=1, but {missing}")
        print(f"switchboard: {missing}: building the decision path as pure Python", file=sys.stderr)
        remove_in_place_builds(root)
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3", debug_level="0", group_name=GROUP))


def remove_in_place_builds(root: Path) -> list[Path]:
    """An earlier compiled editable install left extensions beside the sources; a pure
    build must remove them, or they would still be imported instead of the sources."""
    removed = []
    for source in COMPILED:
        stem = Path(source).with_suffix("")
        for extension in (root / stem.parent).glob(f"{stem.name}.*"):
            if extension.suffix in (".so", ".pyd"):
                extension.unlink()
                removed.append(extension)
    for extension in root.glob(f"{GROUP}__mypyc.*"):
        if extension.suffix in (".so", ".pyd"):
            extension.unlink()
            removed.append(extension)
    return removed


if __name__ == "__main__":  # as setuptools runs it; tests import it
    setup(ext_modules=compiled_extensions())
