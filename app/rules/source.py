"""YAML text -> plain data plus the line and column of every key and item.

PyYAML's composer keeps node positions; we build the data ourselves from the node tree
so that validation errors can point at `file:line:column`, and duplicate keys (which
PyYAML silently overwrites) are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from app.rules.errors import ConfigIssue, RulesError
from app.rules.teardown import dismantle

Path = tuple[str | int, ...]


# Positions are grouped by the first GROUP parts of their path (("routes", 17): a route).
# One table of every position (70,000 at 10,000 routes) would be resized in single C
# calls of several ms, and freed in one of ~10 ms; each group is small.
GROUP = 2


@dataclass(slots=True)
class Document:
    data: Any
    file: str
    positions: dict[Path, dict[Path, tuple[int, int]]] = field(default_factory=dict)
    """(line, column) of each key and item, by path, grouped by the path's first GROUP
    parts (use `position` and `mark`)."""

    def position(self, path: Path) -> tuple[int, int] | None:
        group = self.positions.get(path[:GROUP])
        return group.get(path) if group is not None else None

    def mark(self, path: Path, line: int, column: int, *, replace: bool = True) -> None:
        group = self.positions.setdefault(path[:GROUP], {})
        if replace:
            group[path] = (line, column)
        else:
            group.setdefault(path, (line, column))

    def where(self, path: Path) -> tuple[int | None, int | None]:
        """Position of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.position(tuple(path[:end]))
            if found:
                return found
        return None, None

    def issue(self, path: Path, message: str) -> ConfigIssue:
        line, column = self.where(path)
        return ConfigIssue(self.file, line, column, format_path(path), message)


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# libyaml's parser when PyYAML was built with it: the same nodes and marks, several times
# faster on a file of thousands of routes. Its syntax errors are terser, so a file that
# fails is parsed again by the pure-Python parser for the message.
_FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def parse_yaml(text: str, file: str) -> Document:
    if len(text) > MAX_FILE_BYTES:  # characters: at least as many bytes
        raise RulesError([too_large(file)])
    if _FAST_LOADER is not None:
        try:
            return _parse(_loader(_FAST_LOADER, text, file), file)
        except RulesError as exc:
            if not exc.issues or not exc.issues[0].message.startswith("invalid YAML"):
                raise
            if "nesting depth" in exc.issues[0].message:
                raise  # the other parser would only recurse that deep first
            fast_error = exc
        try:
            return _parse(_loader(yaml.SafeLoader, text, file), file)
        except RecursionError:
            # The pure-Python composer recurses once per level of nesting; libyaml, which
            # stops at 1,000 levels, has said what is wrong.
            raise fast_error from None
    try:
        return _parse(_loader(yaml.SafeLoader, text, file), file)
    except RecursionError:
        raise RulesError([ConfigIssue(file, None, None, "", _TOO_DEEP)]) from None


def _loader(make: type[yaml.SafeLoader], text: str, file: str) -> yaml.SafeLoader:
    """`make(text)`, or RulesError: the pure-Python reader refuses control characters (a
    NUL, as in a file whose end was never written) as it is made, before any parse."""
    try:
        return make(text)
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - before.rfind("\n")
        message = f"invalid YAML: the character U+{exc.character:04X} is not allowed"
        raise RulesError([ConfigIssue(file, line, column, "", message)]) from None


def too_large(file: str) -> ConfigIssue:
    return ConfigIssue(
        file, None, None, "", f"the file is larger than {MAX_FILE_BYTES >> 20} MiB: not read"
    )


def _parse(loader: yaml.SafeLoader, file: str) -> Document:
    # The node tree is held in a list only, for dismantle() to free it a piece at a time.
    tree: list[Any] = []
    try:
        tree.append(loader.get_single_node())
        doc = Document(data=None, file=file)
        issues: list[ConfigIssue] = []
        if tree[0] is not None:
            _check_expansion(tree[0], file)
            doc.data = _build(loader, tree[0], (), doc, issues)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise RulesError(
            [ConfigIssue(file, line, column, "", f"invalid YAML: {problem}")]
        ) from None
    except yaml.YAMLError as exc:
        raise RulesError([ConfigIssue(file, None, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
        # The constructor keeps every scalar node it read, with its value, until the loader
        # goes. Emptied first, an entry at a time (cheap: the tree still holds the nodes),
        # or dropping the loader would free 100,000 nodes in one go.
        constructed, loader.constructed_objects = loader.constructed_objects, {}
        while constructed:
            constructed.popitem()
        dismantle(tree)
    if issues:
        raise RulesError(issues)
    return doc


# --- bounds ----------------------------------------------------------------------------
#
# A YAML alias (`*name`) stands for the whole value its anchor (`&name`) names, and aliases
# may name values made of aliases: nine levels of nine copies ("billion laughs") is a few
# hundred bytes that expand to 387 million values. The node tree the parser returns holds
# each value once; it is measured (sizes of shared values computed once) before anything
# is expanded, and a file that would expand beyond the bound is refused at once.

MAX_FILE_BYTES: Final = 16 << 20
"""A routes file larger than this is not read (10,000 routes take about 1.7 MB)."""
MAX_ALIAS_VALUES: Final = 100_000
"""Values aliases may add to a file, or as many as the file itself writes, if more."""
MAX_DEPTH: Final = 100
"""Levels of nesting (mappings in lists in mappings...)."""

_TOO_DEEP = f"values are nested more than {MAX_DEPTH} levels deep"


def _check_expansion(root: yaml.Node, file: str) -> None:
    """Refuse a tree that nests too deeply, refers to itself, or expands (aliases
    followed) beyond the bound. Linear in the nodes written, never in their expansion."""
    if type(root) is yaml.ScalarNode:
        return
    measure = _Measure(file)
    total = measure.size(root, 1)
    written = measure.written
    allowed = max(MAX_ALIAS_VALUES, written)
    if total <= written + allowed:
        return
    # Point at the innermost value that alone is too large.
    node = root
    while (inner := measure.larger_child(node, written + allowed)) is not None:
        node = inner
    message = (
        f"aliases (*name) expand this value to {measure.sizes[id(node)]:,} values; this"
        f" file may add at most {allowed:,} through aliases"
    )
    raise RulesError([_at(node, file, message)])


class _Measure:
    """Sizes of the collections of a node tree, each shared one measured once. Scalars,
    most of a file, are counted where they stand (one each), never visited."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.sizes: dict[int, int] = {}  # id(collection) -> values it expands to
        self.on_path: set[int] = set()
        self.written = 0  # values measured, each once (an upper bound of those written)

    def size(self, node: yaml.Node, depth: int) -> int:
        key = id(node)
        known = self.sizes.get(key)
        if known is not None:
            return known  # an alias of a value measured already
        if key in self.on_path:
            raise RulesError([_at(node, self.file, "an alias refers to the value that holds it")])
        if depth > MAX_DEPTH:
            raise RulesError([_at(node, self.file, _TOO_DEEP)])
        self.on_path.add(key)
        total = 1
        scalar = yaml.ScalarNode
        if type(node) is yaml.MappingNode:
            for key_node, value_node in node.value:
                total += 1 if type(key_node) is scalar else self.size(key_node, depth + 1)
                total += 1 if type(value_node) is scalar else self.size(value_node, depth + 1)
            self.written += 1 + 2 * len(node.value)
        else:
            for item in node.value:
                total += 1 if type(item) is scalar else self.size(item, depth + 1)
            self.written += 1 + len(node.value)
        self.on_path.discard(key)
        self.sizes[key] = total
        return total

    def larger_child(self, node: yaml.Node, limit: int) -> yaml.Node | None:
        children = (
            [child for pair in node.value for child in pair]
            if type(node) is yaml.MappingNode
            else node.value
        )
        for child in children:
            if self.sizes.get(id(child), 0) > limit:
                return child  # type: ignore[no-any-return]
        return None


def _at(node: yaml.Node, file: str, message: str) -> ConfigIssue:
    mark = node.start_mark
    return ConfigIssue(file, mark.line + 1, mark.column + 1, "", message)


_STR = "tag:yaml.org,2002:str"


def _build(
    loader: yaml.SafeLoader, node: yaml.Node, path: Path, doc: Document, issues: list[ConfigIssue]
) -> Any:
    doc.mark(path, node.start_mark.line + 1, node.start_mark.column + 1, replace=False)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is yaml.ScalarNode and key_node.tag == _STR:
                key = key_node.value  # what construct_object gives, without its overhead
            else:
                key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                issues.append(doc.issue(path, "mapping keys must be plain strings"))
                continue
            key = str(key) if not isinstance(key, str) else key
            child = (*path, key)
            if key in result:
                line = key_node.start_mark.line + 1
                issues.append(
                    ConfigIssue(
                        doc.file,
                        line,
                        key_node.start_mark.column + 1,
                        format_path(child),
                        "duplicate key",
                    )
                )
                continue
            doc.mark(child, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            result[key] = _build(loader, value_node, child, doc, issues)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), doc, issues) for i, item in enumerate(node.value)]
    if node.tag == _STR and type(node) is yaml.ScalarNode:
        return node.value  # most scalars: the constructor would return this very string
    value = loader.construct_object(node, deep=True)
    if isinstance(value, int) and not isinstance(value, bool) and str(value) != node.value:
        # YAML 1.1 reads `+442079460958` as 442079460958 and `0100` as octal 64: a phone
        # number written without quotes would silently change. Keep what was written.
        return node.value
    return value
