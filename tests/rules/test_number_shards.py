"""Large number sets kept in shards: the same answers as one frozenset, and each shard
small, untracked by the garbage collector, and freed on its own after a reload."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.ops.admin import describe_condition
from app.ops.reload import release_order
from app.rules import Route, RulesError, compile_rules, load_rules
from app.rules.conditions import NumberMatches
from app.rules.gcpause import paused
from app.rules.numbers import (
    SHARD_FROM,
    SHARDS,
    NumberSet,
    ShardedSet,
    exact_set,
    load_number_file,
)

MANY = SHARD_FROM + 5000


def numbers(count: int, area: str = "415") -> list[str]:
    return [f"+1{area}{n:07d}" for n in range(count)]


def test_small_sets_stay_frozensets() -> None:
    assert type(exact_set(numbers(10))) is frozenset
    assert type(exact_set(numbers(SHARD_FROM - 1))) is frozenset
    assert type(exact_set(numbers(SHARD_FROM))) is ShardedSet
    # Counted once each: many values but few different ones is a small set.
    duplicates = exact_set(numbers(SHARD_FROM // 2) * 3)
    assert type(duplicates) is frozenset
    assert duplicates == frozenset(numbers(SHARD_FROM // 2))


def test_a_sharded_set_answers_as_a_frozenset_would() -> None:
    values = numbers(MANY)
    plain = frozenset(values)
    sharded = exact_set(reversed(values))
    assert isinstance(sharded, ShardedSet)
    assert len(sharded) == len(plain) == MANY
    assert set(sharded) == plain
    assert all(v in sharded for v in values[::97])
    assert "+14159999999" not in sharded and "" not in sharded
    assert sharded == plain and plain == sharded
    assert sharded == exact_set(values)  # built in another order
    assert hash(sharded) == hash(exact_set(values))
    assert sharded != exact_set(numbers(MANY, area="212"))
    assert sharded != exact_set(values[1:])
    assert pickle.loads(pickle.dumps(sharded)) == sharded
    with pytest.raises(ValueError, match="shards"):
        ShardedSet(sharded.shards[:-1])


def test_shards_are_small_and_the_collector_never_walks_them() -> None:
    sharded = exact_set(numbers(1_000_000 // 8))
    assert isinstance(sharded, ShardedSet)
    assert len(sharded.shards) == SHARDS
    assert max(map(len, sharded.shards)) < 2 * len(sharded) / SHARDS
    assert not any(gc.is_tracked(shard) for shard in sharded.shards)


def test_a_number_set_pickled_in_one_process_answers_in_another() -> None:
    # Shards follow hash(), which differs between processes (PYTHONHASHSEED).
    listed = NumberSet.of([*numbers(MANY), "+44*"])
    probe = [numbers(MANY)[i] for i in (0, 7, MANY // 2, MANY - 1)]
    script = (
        "import pickle, sys\n"
        "listed = pickle.loads(sys.stdin.buffer.read())\n"
        f"print(all(n in listed for n in {probe!r}), '+442079460000' in listed,"
        " '+12120000000' in listed, len(listed.shards))\n"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script],
            input=pickle.dumps(listed),
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.decode()
        assert out.split() == ["True", "True", "False", str(SHARDS)], out


def test_number_set_lookups_with_shards() -> None:
    listed = NumberSet.of([*numbers(MANY), "+44*", "1001"])
    assert isinstance(listed.exact, ShardedSet)
    assert "+14150000007" in listed
    assert "+442079460000" in listed  # by prefix
    assert "1001" in listed
    assert "+12120000000" not in listed
    assert 14150000007 not in listed
    assert len(listed) == MANY + 2
    assert listed.prefixes == {"+44"} and listed.prefix_lengths == (3,)
    assert NumberSet.of(numbers(3)).parts() == ()
    assert listed.parts() == listed.exact.shards


@pytest.mark.parametrize(
    "sizes",
    [(MANY, 10), (10, MANY), (MANY, MANY), (SHARD_FROM // 2 + 1, SHARD_FROM // 2 + 1)],
    ids=["large+small", "small+large", "large+large", "small+small-make-large"],
)
def test_union(sizes: tuple[int, int]) -> None:
    first = numbers(sizes[0], area="415")
    second = [*numbers(sizes[1], area="212"), *first[:100]]  # overlapping a little
    union = NumberSet.of(first).union(NumberSet.of([*second, "+33*"]))
    expected = frozenset(first) | frozenset(second)
    assert isinstance(union.exact, ShardedSet)
    assert union.exact == expected and len(union.exact) == len(expected)
    assert union.prefixes == {"+33"}
    assert all(n in union for n in (first[0], first[-1], second[0], second[-1]))


def test_a_large_list_file_loads_into_shards(tmp_path: Path) -> None:
    values = numbers(MANY)
    text = tmp_path / "big.txt"
    text.write_text("# a comment\n" + "\n".join(values) + "\n(212) 555-0100 # national\n")
    loaded = load_number_file(text, "US")
    assert isinstance(loaded.exact, ShardedSet)
    assert loaded.exact == frozenset([*values, "+12125550100"])
    table = tmp_path / "big.csv"
    table.write_text("name,number\n" + "".join(f"n{i},{v}\r\n" for i, v in enumerate(values)))
    assert load_number_file(table, "US", column=2).exact == frozenset(values)


def test_errors_late_in_a_large_list_keep_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("\n".join(numbers(MANY)) + "\nnot a number\n")
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "lists:\n  spam: {file: big.txt}\nroutes:\n"
        "  - name: spam\n    match: {caller: {list: spam}}\n    reject: {}\n"
    )
    with pytest.raises(RulesError) as caught:
        load_rules(routes, region="US")
    assert f"{path}:{MANY + 1}:" in str(caught.value)
    assert f"line {MANY + 1}: 'not a number' is not a phone number" in str(caught.value)


def big_rules(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "spam.txt").write_text("\n".join(numbers(MANY)) + "\n")
    routes = tmp_path / "routes.yaml"
    text = (
        "lists:\n  spam: {file: spam.txt}\nroutes:\n"
        "  - name: spam\n    match: {caller: {list: spam}}\n    reject: {}\n"
        "  - name: also-spam\n    match: {any: [{caller: {list: spam}}, {anonymous: true}]}\n"
        "    reject: {}\n"
    )
    routes.write_text(text)
    return routes, text


def test_admin_renders_a_large_list_by_its_size(tmp_path: Path) -> None:
    routes, _ = big_rules(tmp_path)
    condition = load_rules(routes, region="US").routes[0].conditions[0]
    assert isinstance(condition, NumberMatches)
    fields = describe_condition(condition)["fields"]
    assert fields["sets"][0]["exact"] == f"<{MANY} items>"


def test_released_rules_free_their_shards_one_at_a_time(tmp_path: Path) -> None:
    routes, _ = big_rules(tmp_path)
    rules = load_rules(routes, region="US")
    condition = rules.routes[0].conditions[0]
    assert isinstance(condition, NumberMatches)
    shards = condition.sets[0].parts()
    shard = shards[0]
    del condition, shards
    pieces = release_order([rules])
    del rules
    # Dropped from the end: every route first, while the list still holds each shard...
    while isinstance(pieces[-1], Route):
        pieces.pop()
    assert len(pieces) == 2 * SHARDS  # both routes use the list
    assert not any(isinstance(piece, Route) for piece in pieces)
    # ... so that nothing but the list holds them now: each goes on its own pop.
    assert sys.getrefcount(shard) == 2 + 2  # `shard`, the argument, twice in `pieces`


def test_compiling_holds_full_collections_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def spy(path: Path, region: str, **kwargs: Any) -> NumberSet:
        seen.append(paused())
        return load_number_file(path, region, **kwargs)

    monkeypatch.setattr("app.rules.compile.load_number_file", spy)
    routes, text = big_rules(tmp_path)
    compile_rules(text, str(routes), region="US")
    assert seen == [True]
    assert not paused()
