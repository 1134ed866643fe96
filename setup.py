"""Builds the per-call decision path as C extensions with mypyc, when it can.

Everything else about the package is in pyproject.toml. The modules below run once per
incoming call (SIP parsing and rule matching); compiled, they take about half the CPU
instructions per decision. They are plain typed Python: the same source runs unchanged
when it is not compiled.

SWITCHBOARD_COMPILE chooses:
  auto (default)  compile when mypyc and a C compiler are there, else pure Python;
  1               compile, or fail the build;
  0               pure Python.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "app/sip.py",
    "app/rules/conditions.py",
    "app/rules/ruleset.py",
    "app/rules/schedule.py",
    "app/rules/templates.py",
]


def compiled_extensions() -> list[object]:
    mode = os.environ.get("SWITCHBOARD_COMPILE", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"SWITCHBOARD_COMPILE={mode!r}: use auto, 1 or 0")
    if mode == "0":
        return []
    try:
        from mypyc.build import mypycify

        return list(mypycify(COMPILED, opt_level="3", debug_level="0", group_name="switchboard"))
    except Exception as error:  # no mypyc, no compiler, or a type error in COMPILED
        if mode == "1":
            raise
        print(f"switchboard: building pure Python ({error})", file=sys.stderr)
        return []


setup(ext_modules=compiled_extensions())
