"""The regular expressions users write in routes.yaml, compiled with RE2.

Header values and display names are chosen by whoever places the call. Python's `re`
backtracks: `(a+)+$` against 26 characters of `a` took seconds, with the event loop
blocked. RE2 (google-re2) runs in time linear in the text whatever the pattern, and it
refuses at load time what it cannot run that way (backreferences, lookaround). Each such
refusal names the construct and says what to write instead (docs/routes.md#regular-
expressions).
"""

from __future__ import annotations

import re
from typing import Any, Final

import re2

# Memory RE2 may use for one compiled pattern and its matching caches (RE2's `max_mem`).
# A pattern larger than this is refused at load; matching that would need more falls back
# to RE2's slower automaton, still linear in the text.
MAX_MEM: Final = 2 << 20
# Longest pattern compiled. RE2 parses the whole pattern before max_mem can refuse it, in
# one call that holds the GIL: 8 MB took 220 ms, stalling the event loop while a worker
# thread loaded the rules; 8,192 characters take ~2 ms.
MAX_PATTERN: Final = 8192
# Characters of a pattern quoted in an error message.
SHOWN_CHARS: Final = 60

SYNTAX_HINT: Final = "routes.yaml regular expressions use the RE2 syntax, see docs/routes.md"


def _options(*, ignore_case: bool) -> Any:
    options = re2.Options()
    options.max_mem = MAX_MEM
    options.log_errors = False  # a refused pattern is reported to the user, not on stderr
    options.case_sensitive = not ignore_case
    # Leftmost-first (Perl and Python's choice among alternatives), not POSIX leftmost-longest.
    options.longest_match = False
    return options


_CASE_SENSITIVE: Final = _options(ignore_case=False)
_IGNORE_CASE: Final = _options(ignore_case=True)


_SURROGATES: Final = re.compile("[\ud800-\udfff]")


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message says why and what to write instead."""


class Regex:
    """A compiled pattern, shown as `/pattern/` (as /admin/routes shows a condition's
    fields). Equal to another with the same text and case rule."""

    __slots__ = ("_compiled", "ignore_case", "pattern")

    def __init__(self, pattern: str, ignore_case: bool, compiled: Any) -> None:
        self.pattern = pattern
        self.ignore_case = ignore_case
        self._compiled = compiled

    def search(self, text: str) -> bool:
        """Whether the pattern is found anywhere in `text` (`^`/`$` anchor it)."""
        try:
            return self._compiled.search(text) is not None
        except UnicodeEncodeError:
            # A lone surrogate (JSON lets a webhook carry "\ud800"), which RE2's UTF-8
            # cannot: matched as U+FFFD, the replacement character.
            return self._compiled.search(_SURROGATES.sub("\ufffd", text)) is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Regex):
            return NotImplemented
        return (self.pattern, self.ignore_case) == (other.pattern, other.ignore_case)

    def __hash__(self) -> int:
        return hash((self.pattern, self.ignore_case))

    def __str__(self) -> str:
        return f"/{self.pattern}/"

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r}, ignore_case={self.ignore_case})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The RE2 object is rebuilt in the process that unpickles the rules.
        return (compile_regex, (self.pattern, self.ignore_case))


def compile_regex(pattern: str, ignore_case: bool = False) -> Regex:
    """`pattern` compiled by RE2, or RegexError saying what is not supported."""
    if len(pattern) > MAX_PATTERN:
        raise RegexError(
            f"invalid regular expression {_shown(pattern)}: longer than {MAX_PATTERN:,}"
            " characters: split it over several conditions with any:"
        )
    _refuse_python_only(pattern)
    try:
        compiled = re2.compile(pattern, _IGNORE_CASE if ignore_case else _CASE_SENSITIVE)
    except re2.error as exc:
        raise RegexError(_explain(pattern, exc)) from None
    return Regex(pattern, ignore_case, compiled)


def check_regex(pattern: str) -> str:
    """`pattern` if it compiles both case-sensitive and not (a schema validator)."""
    compile_regex(pattern)
    compile_regex(pattern, ignore_case=True)
    return pattern


# `{,3}`: at most 3 in Python, but the literal text "{,3}" in RE2. Found outside a [class].
_EMPTY_MIN: Final = re.compile(r"\{,[0-9]*\}")


def _refuse_python_only(pattern: str) -> None:
    """Refuse what RE2 compiles with another meaning than Python's `re` gave it."""
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            elif pattern.startswith("[:", i) and (end := pattern.find(":]", i + 2)) > 0:
                i = end + 2  # [:alpha:], a class inside the class
                continue
        elif char == "[":
            in_class = True
            # `[]...]` and `[^]...]`: a leading `]` is a member, not the end.
            i += 1
            if pattern.startswith("^", i):
                i += 1
            if pattern.startswith("]", i):
                i += 1
            continue
        elif char == "{" and (found := _EMPTY_MIN.match(pattern, i)):
            text = found.group()
            raise RegexError(
                f"invalid regular expression {_shown(pattern)}: {text} at position {i} would be"
                f" read as the literal text {text!r}: write {{0{text[1:]} for 'at most'"
                f" ({SYNTAX_HINT})"
            )
        i += 1


def _explain(pattern: str, exc: Exception) -> str:
    raw = exc.args[0] if exc.args else ""
    reason = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    kind, _, construct = reason.partition(": ")
    advice = _advice(pattern, reason, construct)
    if advice is not None and advice[0].endswith("(?P=name)"):
        construct = "(?P="  # RE2 names only "(?P"
    where = pattern.find(construct) if construct else -1
    at = f" at position {where}" if where >= 0 else ""
    if advice is None:
        if where >= 0 and pattern.endswith(construct):
            reason = kind  # "missing ): (" says nothing the position does not
        return f"invalid regular expression {_shown(pattern)}: {reason}{at} ({SYNTAX_HINT})"
    shown = _shown(pattern)
    return f"invalid regular expression {shown}: {advice[0]}{at} is not supported: {advice[1]}"


def _shown(pattern: str) -> str:
    """The pattern as quoted in a message: its start only when it is long."""
    if len(pattern) <= SHOWN_CHARS:
        return repr(pattern)
    return f"{pattern[:SHOWN_CHARS]!r}... ({len(pattern):,} characters)"


_NO_BACKTRACKING = "RE2 never backtracks, so it is not needed"
_COMBINE = (
    "match the text itself, or combine two conditions with all:, any: and not:"
    " (e.g. not: {headers: {X-Test: {regex: '^test'}}})"
)


def _advice(pattern: str, reason: str, construct: str) -> tuple[str, str] | None:
    """(the construct, what to write instead) for RE2's refusals a user can fix."""
    if reason.startswith("invalid perl operator"):
        return _group_advice(pattern, construct)
    if reason.startswith("invalid escape sequence"):
        return _escape_advice(construct)
    if reason.startswith("bad repetition operator") and construct.endswith("+"):
        return (
            f"the possessive quantifier {construct}",
            f"{_NO_BACKTRACKING}: write {construct[:-1]}",
        )
    if reason.startswith("invalid repetition size"):
        return (
            f"the repetition {construct}",
            "counts go up to 1000, nested counts multiplied: write + or * instead",
        )
    if reason.startswith("pattern too large"):
        return (
            "a pattern this large",
            f"it needs more than {MAX_MEM >> 20} MiB to run: shorten it, or split it over"
            " several conditions with any:",
        )
    return None


def _group_advice(pattern: str, construct: str) -> tuple[str, str] | None:
    if construct in ("(?=", "(?!"):
        return f"lookahead {construct}", _COMBINE
    if construct in ("(?<=", "(?<!"):
        return f"lookbehind {construct}", _COMBINE
    if construct == "(?>":
        return "the atomic group (?>", f"{_NO_BACKTRACKING}: write (?:"
    if construct == "(?P" and "(?P=" in pattern:
        return "the backreference (?P=name)", _BACKREFERENCE
    if construct == "(?(":
        return "the conditional group (?(", "use two conditions with any:"
    if construct == "(?#":
        return "the comment (?#", "remove it (use a YAML # comment)"
    if construct == "(?x":
        return "verbose mode (?x", "write the pattern without spaces and comments"
    if construct in ("(?a", "(?u", "(?L"):
        return (
            f"the flag {construct})",
            r"\d \w \s \b are always ASCII; for letters of any script write \pL",
        )
    return None


_BACKREFERENCE = r"repeat the group's pattern instead: (ab)\1 -> (ab)(ab)"


def _escape_advice(construct: str) -> tuple[str, str] | None:
    if construct[1:].isdigit():
        return f"the backreference {construct}", _BACKREFERENCE
    if construct == r"\k" or construct == r"\g":
        return f"the backreference {construct}", _BACKREFERENCE
    if construct == r"\Z":
        return r"\Z", r"write \z (end of the text) or $"
    if construct in (r"\u", r"\U", r"\N"):
        return f"the escape {construct}", r"write the character itself or \x{20AC}"
    return None
