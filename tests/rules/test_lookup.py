"""app.rules.lookup.listed: the per-call number test, on the shapes NumberSet gives it."""

from __future__ import annotations

import pytest

from app.rules.lookup import listed
from app.rules.numbers import SHARD_FROM, NumberSet

SMALL = NumberSet.of(["+14155550100", "+14155550101", "+44*", "+3361*", "+336123*", "1001"])
LARGE = NumberSet.of([*(f"+1212{n:07d}" for n in range(SHARD_FROM)), "+49*"])


@pytest.mark.parametrize(
    ("numbers", "number", "expected"),
    [
        pytest.param(SMALL, "+14155550100", True, id="exact"),
        pytest.param(SMALL, "+14155550102", False, id="exact-miss"),
        pytest.param(SMALL, "1001", True, id="exact-dial-string"),
        pytest.param(SMALL, "+442079460000", True, id="shortest-prefix"),
        pytest.param(SMALL, "+33612345678", True, id="two-prefixes-match"),
        pytest.param(SMALL, "+33712345678", False, id="prefix-miss"),
        pytest.param(SMALL, "+44", True, id="the-prefix-itself"),
        pytest.param(SMALL, "+4", False, id="shorter-than-every-prefix"),
        pytest.param(SMALL, "", False, id="empty"),
        pytest.param(LARGE, "+12120000000", True, id="sharded-first"),
        pytest.param(LARGE, f"+1212{SHARD_FROM - 1:07d}", True, id="sharded-last"),
        pytest.param(LARGE, f"+1212{SHARD_FROM:07d}", False, id="sharded-miss"),
        pytest.param(LARGE, "+4930123456", True, id="sharded-with-prefix"),
        pytest.param(NumberSet(), "+14155550100", False, id="empty-set"),
    ],
)
def test_listed_answers_as_the_set_does(numbers: NumberSet, number: str, expected: bool) -> None:
    assert listed(numbers.shards, numbers.prefixes, numbers.prefix_lengths, number) is expected
    assert (number in numbers) is expected


def test_number_sets_know_their_shards_and_prefix_lengths() -> None:
    assert SMALL.shards == (SMALL.exact,)
    assert SMALL.prefix_lengths == (3, 5, 7)
    assert len(LARGE.shards) > 1 and LARGE.shards == LARGE.parts()
    assert NumberSet.of(["+1*"]).union(NumberSet.of(["+4420*"])).prefix_lengths == (2, 5)
    assert NumberSet.of(["+1"]) == NumberSet.of(["+1"])  # derived fields do not break ==
