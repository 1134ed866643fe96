"""Whether a number is in a number set: the test every listed-number condition makes per call.

One function, compiled with the rest of the decision path (setup.py): a route's condition
calls it directly, and `NumberSet.__contains__` is a single call into it. Alone in its
module because numbers.py, which builds the sets, must stay interpreted (see there).
"""

from __future__ import annotations

from collections.abc import Container


def listed(
    shards: tuple[Container[str], ...],
    prefixes: frozenset[str],
    prefix_lengths: tuple[int, ...],
    number: str,
) -> bool:
    """`number` is in the shard its hash picks (len(shards) is a power of two), or starts
    with one of `prefixes`, whose lengths are `prefix_lengths` in ascending order."""
    if number in shards[hash(number) & (len(shards) - 1)]:
        return True
    for n in prefix_lengths:
        if n > len(number):
            return False
        if number[:n] in prefixes:
            return True
    return False
