"""What a routes file can cost to read is bounded: its size, alias expansion, nesting.

A "billion laughs" file (aliases of aliases) is measured on the parser's node tree, where
each value is held once, and refused before anything is expanded: with bounded memory (the
test measures it), and at a depth where expanding would never end (a child process with a
generous limit turns that into a failure rather than a hung suite).
"""

from __future__ import annotations

import textwrap
import tracemalloc
from pathlib import Path

import pytest

from app.rules import RulesError, compile_rules, load_rules
from app.rules.source import MAX_ALIAS_VALUES, MAX_DEPTH, MAX_FILE_BYTES
from tests.rules.fresh import run_python
from tests.rules.test_matchers import NOON, invite

VALID = "routes:\n  - name: all\n    reject: 486\n"


def bomb(levels: int, copies: int = 9) -> str:
    """`levels` anchors, each a list of `copies` aliases of the one before."""
    lines = ["x-laughs:", f"  l0: &l0 [{', '.join(['lol'] * copies)}]"]
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*l{level - 1}"] * copies)
        lines.append(f"  l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n" + VALID


def load_errors(path: Path) -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_rules(path, region="US")
    return [str(issue) for issue in caught.value.issues]


def test_an_alias_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(bomb(6))  # 597,871 values from 300 bytes
    tracemalloc.start()
    try:
        errors = load_errors(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert errors == [
        f"{path}:7:7: aliases (*name) expand this value to 597,871 values; this file may add"
        f" at most {MAX_ALIAS_VALUES:,} through aliases"
    ]
    # Expanded, the file took 687 MB; measured on its node tree, it takes a few hundred kB.
    assert peak < 8 << 20, f"peak {peak:,} bytes"


def test_a_bomb_that_could_never_be_expanded_is_refused() -> None:
    # 9^40 values: any expansion would run until the machine runs out of memory.
    code = textwrap.dedent(
        f"""
        from app.rules import RulesError, compile_rules
        try:
            compile_rules({bomb(40)!r}, "routes.yaml", region="US")
        except RulesError as exc:
            print(exc)
        """
    )
    assert run_python(code).startswith(
        "routes.yaml:7:7: aliases (*name) expand this value to 597,871"
    )


def test_aliases_and_merge_keys_within_the_bound_still_work() -> None:
    text = textwrap.dedent(
        """\
        sessions:
          base: &base
            model: gpt-realtime
            instructions: Be brief.
          sales:
            <<: *base
            audio: {output: {voice: marin}}
        routes:
          - name: a
            match: &gold {headers: {X-Tier: gold}}
            accept: sales
          - name: b
            match: *gold
            reject: 486
        """
    )
    ruleset = compile_rules(text, "routes.yaml", region="US")
    assert ruleset.decide(invite(("X-Tier", "gold")), NOON).route == "a"


def test_many_aliases_in_a_large_file_are_allowed() -> None:
    # Aliases may add as many values as the file itself writes, even beyond the constant.
    routes = "".join(
        f"  - name: r{i}\n    match: {{called: '+1800555{i:04d}'}}\n    accept: *s\n"
        for i in range(MAX_ALIAS_VALUES // 10)
    )
    text = "sessions:\n  s: &s {model: gpt-realtime, instructions: Hi.}\nroutes:\n" + routes
    assert len(compile_rules(text, "routes.yaml", region="US").routes) == MAX_ALIAS_VALUES // 10


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(RulesError) as caught:
        compile_rules("x-loop: &a [1, *a]\n" + VALID, "routes.yaml", region="US")
    assert [str(i) for i in caught.value.issues] == [
        "routes.yaml:1:9: an alias refers to the value that holds it"
    ]


def test_deep_nesting_is_refused() -> None:
    text = "x-deep:\n" + "".join(" " * i + "-\n" for i in range(1, 300)) + VALID
    with pytest.raises(RulesError) as caught:
        compile_rules(text, "routes.yaml", region="US")
    assert [str(i) for i in caught.value.issues] == [
        f"routes.yaml:{MAX_DEPTH + 1}:{MAX_DEPTH + 1}: values are nested more than"
        f" {MAX_DEPTH} levels deep"
    ]


def test_deep_flow_nesting_is_an_error_not_a_crash() -> None:
    # libyaml stops at 1,000 levels; the pure-Python parser, asked for a better message,
    # would recurse past Python's limit.
    text = "routes: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(RulesError, match="exceeded maximum nesting depth"):
        compile_rules(text, "routes.yaml", region="US")


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(VALID)
    with path.open("r+b") as file:
        file.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk space, and never read
    assert load_errors(path) == [f"{path}: the file is larger than 16 MiB: not read"]
    path.write_text(VALID)
    assert len(load_rules(path, region="US").routes) == 1
