"""Regular expressions in routes.yaml run on RE2: linear in the text whatever the pattern.

A pattern that backtracks exponentially in Python's `re` is matched here against inputs
where backtracking would take longer than the universe has existed: in a child process
with a generous time limit, so that the old engine fails the test instead of hanging the
suite. Patterns RE2 cannot run are refused at load with `file:line:column`, the construct
and what to write instead.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from app.cli.main import main
from app.ops.admin import describe_condition
from app.rules import RulesError, compile_rules
from app.rules.regex import MAX_PATTERN, SHOWN_CHARS, Regex, RegexError, compile_regex
from tests.rules.fresh import run_python
from tests.rules.test_matchers import NOON, hit, invite, one_route

# Run by a child interpreter: hostile headers and names against backtracking patterns,
# through the same path a call takes (identify -> RuleSet.decide). Prints the routes.
HOSTILE = r"""
import sys
from app.rules import compile_rules
from app.sip.identity import Headers, IdentityPolicy, identify
from tests.rules.test_matchers import NOON

rules = compile_rules('''
routes:
  - name: nested
    match: {headers: {X-Foo: {regex: '(a+)+$'}}}
    reject: 486
  - name: alternation
    match: {caller_name: {regex: '^(a|a)*$'}}
    reject: 486
  - name: number
    match: {caller: {regex: '^(\+?1?)*[0-9]$'}}
    reject: 486
''', "routes.yaml", region="US")

def call(header, name, user):
    items = [
        ("From", f'"{name}" <sip:{user}@trunk.example.net>;tag=1'),
        ("To", "<sip:+18005550100@sip.api.openai.com>"),
        ("X-Foo", header),
    ]
    return identify(Headers(items), IdentityPolicy(default_region="US"), None)

# 2^500 paths for a backtracking engine; RE2 reads each character once.
routes = [
    rules.decide(call("a" * 500 + "!", "a" * 500 + "!", "+1415555"), NOON).route,
    rules.decide(call("a" * 100_000 + "!", "b", "+1415555"), NOON).route,
    rules.decide(call("x" + "a" * 400, "a" * 400 + "!", "+1415555"), NOON).route,
    rules.decide(call("b", "a" * 400, "+1415555"), NOON).route,
    rules.decide(call("b", "b", "+" + "1" * 14 + "x"), NOON).route,
]
print(" ".join(routes))
"""


def test_backtracking_patterns_return_on_hostile_input() -> None:
    # Under RE2 this takes well under a second. With a backtracking engine it would run for
    # ages: the limit only turns that into a failure instead of a hung suite.
    out = run_python(HOSTILE)
    # The first: no match (the text ends in "!"); the second: the header is cut at 512
    # characters, which then end in "a"; then a match of the display name pattern.
    assert out.split() == ["default", "nested", "nested", "alternation", "default"]


def test_conditions_compile_with_re2() -> None:
    ruleset = compile_rules(
        one_route("{headers: {X-Foo: {regex: '(a+)+$', ignore_case: true}}}"),
        "routes.yaml",
        region="US",
    )
    (condition,) = ruleset.routes[0].conditions
    regex = condition.regex  # type: ignore[attr-defined]
    assert isinstance(regex, Regex)
    assert type(regex._compiled).__module__ == "re2"
    assert regex == compile_regex("(a+)+$", ignore_case=True)
    assert regex != compile_regex("(a+)+$")
    # /admin/routes shows it as it showed Python's patterns
    assert describe_condition(condition)["fields"]["regex"] == "/(a+)+$/"


@pytest.mark.parametrize(
    ("match", "call", "expected"),
    [
        # The meaning of the patterns users wrote for Python's `re` is kept.
        ("{caller: {regex: '^\\+1(212|646|917)'}}", invite(caller="+12125550100"), True),
        ("{caller: {regex: '0100$'}}", invite(), True),
        ("{caller_name: {regex: '^(acme|globex)\\b', ignore_case: true}}", "ACME Corp", True),
        ("{caller_name: {regex: '^(acme|globex)\\b', ignore_case: true}}", "Acmeco", False),
        ("{caller_name: {regex: '^Jos\\pL$'}}", "José", True),
        # \w is ASCII in RE2 (documented): letters of any script are \pL
        ("{caller_name: {regex: '^\\w+$'}}", "José", False),
        ("{caller_name: {regex: '^[\\pL ]+$'}}", "Zoë Ångström", True),
        ("{caller_name: {regex: 'smith\\z'}}", "Alan Smith", False),
        ("{caller_name: {regex: '(?i)smith\\z'}}", "Alan Smith", True),
        ("{caller_name: {regex: '^a{0,3}$'}}", "aaa", True),
        ("{caller_name: {regex: '^a{0,3}$'}}", "aaaa", False),
        ("{caller_name: {regex: '^(?P<first>\\w+) '}}", "Alan Smith", True),
    ],
)
def test_dialect(match: str, call: object, expected: bool) -> None:
    if isinstance(call, str):
        call = invite(name=call)
    assert hit(match, call) is expected  # type: ignore[arg-type]


PREFIX = "routes.yaml:3:31: routes[0].match.headers.X-Foo.regex: invalid regular expression"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (
            r"(ab)\1",
            r"'(ab)\\1': the backreference \1 at position 4 is not supported:"
            r" repeat the group's pattern instead: (ab)\1 -> (ab)(ab)",
        ),
        (
            r"(?P<x>a)(?P=x)",
            r"'(?P<x>a)(?P=x)': the backreference (?P=name) at position 8 is not supported",
        ),
        (
            r"^(?=.*vip)",
            "'^(?=.*vip)': lookahead (?= at position 1 is not supported: match the text"
            " itself, or combine two conditions with all:, any: and not:",
        ),
        (r"^(?!test)", "'^(?!test)': lookahead (?! at position 1 is not supported"),
        (r"(?<=x)y", "'(?<=x)y': lookbehind (?<= at position 0 is not supported"),
        (r"(?<!x)y", "'(?<!x)y': lookbehind (?<! at position 0 is not supported"),
        (
            r"(?>a+)b",
            "'(?>a+)b': the atomic group (?> at position 0 is not supported:"
            " RE2 never backtracks, so it is not needed: write (?:",
        ),
        (
            r"a++b",
            "'a++b': the possessive quantifier ++ at position 1 is not supported:"
            " RE2 never backtracks, so it is not needed: write +",
        ),
        (
            r"gold\Z",
            r"'gold\\Z': \Z at position 4 is not supported: write \z (end of the text) or $",
        ),
        (r"(?x) a", "'(?x) a': verbose mode (?x at position 0 is not supported"),
        (
            r"a{2000}",
            "'a{2000}': the repetition {2000} at position 1 is not supported: counts go up to 1000",
        ),
        (
            r"^a{,3}$",
            "'^a{,3}$': {,3} at position 2 would be read as the literal text '{,3}':"
            " write {0,3} for 'at most'",
        ),
    ],
)
def test_unsupported_constructs_are_refused_where_written(pattern: str, message: str) -> None:
    text = one_route(f"{{headers: {{X-Foo: {{regex: '{pattern}'}}}}}}")
    with pytest.raises(RulesError) as caught:
        compile_rules(text, "routes.yaml", region="US")
    errors = [str(issue) for issue in caught.value.issues]
    assert (
        errors[0]
        == "routes.yaml:3:23: routes[0].match.headers.X-Foo: Input should be a valid string"
    )
    assert errors[1].startswith(f"{PREFIX} {message}"), errors[1]
    assert len(errors) == 2


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("a" * (MAX_PATTERN + 1), f"longer than {MAX_PATTERN:,} characters: split it over"),
        ("a" * 5000 + "(?=x)", "lookahead (?= at position 5000 is not supported"),
    ],
    ids=["too-long", "long-unsupported"],
)
def test_a_long_pattern_is_quoted_by_its_start(pattern: str, message: str) -> None:
    """An 8 MB pattern was parsed by RE2 in one call holding the GIL (220 ms of stalled
    event loop during a reload), and quoted whole in the error, the log and /admin/status."""
    with pytest.raises(RegexError) as caught:
        compile_regex(pattern)
    shown = f"'{'a' * SHOWN_CHARS}'... ({len(pattern):,} characters)"
    assert str(caught.value).startswith(f"invalid regular expression {shown}: {message}")
    assert len(str(caught.value)) < 400


def test_check_names_the_construct(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            routes:
              - name: vip
                match:
                  caller_name: {regex: '^(?!anonymous)'}
                reject: 486
            """
        )
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{path}:4:21: routes[0].match.caller_name.regex: invalid regular expression"
        " '^(?!anonymous)': lookahead (?! at position 1 is not supported" in err
    )


def test_ignore_case_variant_is_checked_at_load() -> None:
    # A pattern is refused at load whichever case rule it is used with, never at compile.
    with pytest.raises(RegexError, match="a pattern this large is not supported"):
        compile_regex(r"\pL{900}", ignore_case=True)
    with pytest.raises(RulesError, match="a pattern this large is not supported"):
        compile_rules(one_route(r"{caller_name: {regex: '\pL{900}'}}"), "r.yaml", region="US")


@pytest.mark.parametrize(
    "pattern",
    [r"[{,3}]", r"\{,3}", r"a{1,3}", r"[\]{,]", r"[]{,3}]", r"[^]{,3}]", r"[[:alpha:]{,3}]"],
)
def test_braces_that_are_not_an_empty_minimum(pattern: str) -> None:
    compile_regex(pattern)


def test_rules_with_regexes_pickle() -> None:
    ruleset = compile_rules(
        one_route("{caller_name: {regex: '^al', ignore_case: true}}"), "routes.yaml", region="US"
    )
    copy = pickle.loads(pickle.dumps(ruleset))
    assert copy.decide(invite(name="ALAN"), NOON).route == "a"
    assert copy.decide(invite(name="Bob"), NOON).route == "default"


def test_a_lone_surrogate_in_a_header_is_matched_not_raised() -> None:
    # JSON lets a webhook carry "\ud800", which has no UTF-8 form: RE2 sees U+FFFD.
    ruleset = compile_rules(
        one_route("{headers: {X-Foo: {regex: '^a\\W?b$'}}}"), "routes.yaml", region="US"
    )
    call = invite(("X-Foo", "a\ud800b"))
    assert call.headers.get_all("X-Foo") == ("a\ud800b",)
    assert ruleset.decide(call, NOON).route == "a"
    assert ruleset.decide(invite(("X-Foo", "\udfff")), NOON).route == "default"
    assert compile_regex("^\ufffd$").search("\udc80")
