"""Freeing large trees a piece at a time.

Dropping the last reference to a tree frees all of it in one deallocation cascade, a
single C call that holds the GIL throughout: the YAML node tree of 10,000 routes (130,000
nodes) takes ~30 ms, the data and the pydantic spec built from it ~25 ms. A load runs in
a worker thread, but the event loop cannot run meanwhile. `dismantle` instead takes the
top of a tree apart in Python, dropping one small subtree per step; CPython can hand the
GIL over between any two steps.

Only containers nothing else holds are taken apart (the reference count says so): a
container shared with the rules being built (a value the schema passes through as is,
a YAML alias used twice) is left whole and merely dropped.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

LEVELS = 2
"""Containers this close to the top are always taken apart: the top-level mapping and
its sections (routes, lists, sessions...), whose items are then dropped one by one."""
BIG = 256
"""Deeper containers are taken apart only from this many items on (a long inline list):
a route, a few dozen objects, is freed in microseconds."""

# sys.getrefcount of an object referenced only by the local variable passed to it.
_SOLE = 2


def dismantle(garbage: list[Any], *, levels: int = LEVELS) -> None:
    """Empty `garbage`, freeing what it held from the top down, a piece at a time.

    Takes apart lists, dicts, YAML nodes and pydantic models (their fields); anything else
    is dropped whole. The caller must hold no other reference to the trees in `garbage`,
    or they are merely dropped (and freed later, in one go, by whoever drops them last)."""
    stack: list[tuple[list[Any] | dict[Any, Any], int]] = [(garbage, 0)]
    while stack:
        items, depth = stack[-1]
        if not items:
            stack.pop()
            continue
        child = items.pop() if isinstance(items, list) else items.popitem()[1]
        if sys.getrefcount(child) != _SOLE:
            continue  # shared (or a leaf held elsewhere): drop our reference only
        inner = _contents(child)
        if inner is not None and (depth < levels or len(inner) >= BIG):
            stack.append((inner, depth + 1))
        del child, inner  # the container, emptied later from the stack, or a small piece


def _contents(obj: object) -> list[Any] | dict[Any, Any] | None:
    """What `obj` holds, as a list or dict to empty; None: drop it whole.
    Called only on objects nothing else references."""
    if isinstance(obj, list | dict):
        return obj
    if isinstance(obj, yaml.CollectionNode):
        value = obj.value
        obj.value = []
        if isinstance(obj, yaml.MappingNode):
            # (key node, value node) pairs: tuples cannot be emptied, so hold their nodes.
            return [node for pair in value for node in pair]
        return value if isinstance(value, list) else None
    if isinstance(obj, BaseModel):
        return obj.__dict__
    return None
