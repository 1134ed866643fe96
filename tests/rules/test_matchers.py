"""Table-driven tests for the match language of routes.yaml and for the route index.

Calls are built as the router builds them: INVITE header values read by
`app.sip.identity.identify`. Times are explicit aware datetimes passed to `RuleSet.decide`, so
nothing here depends on the clock. Expected load errors are exact `file:line:column`
strings.
"""

from __future__ import annotations

import math
import random
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from app.rules import Reject, RulesError, RuleSet, compile_rules, load_rules
from app.rules.schedule import minute_of
from app.sip.identity import CallIdentity, Headers, IdentityPolicy, identify

FILE = "routes.yaml"
# A Monday, noon in New York: no schedule in these tests depends on it unless it says so.
NOON = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)

ALICE = "+14155550100"  # US: FIXED_LINE_OR_MOBILE
TOLL_FREE = "+18005550100"
PREMIUM = "+19005550199"
GB_MOBILE = "+447400123456"
GB_FIXED = "+442079460958"
GB_DRAMA = "+447700900123"  # Ofcom's range for TV drama: libphonenumber calls it invalid
GG_MOBILE = "+447911123456"  # a +44 7 number that belongs to Guernsey, not GB
IE_MOBILE = "+353861234567"
IE_FIXED = "+35312345678"
FR_MOBILE = "+33612345678"


def rules(text: str, *, region: str = "US") -> RuleSet:
    return compile_rules(textwrap.dedent(text), FILE, region=region)


def issues(text: str, *, region: str = "US") -> list[str]:
    with pytest.raises(RulesError) as caught:
        rules(text, region=region)
    return [str(issue) for issue in caught.value.issues]


def load_issues(path: Path, *, region: str = "US") -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_rules(path, region=region)
    return [str(issue) for issue in caught.value.issues]


def sip(user: str, host: str = "trunk.example.net", name: str | None = None) -> str:
    shown = f'"{name}" ' if name is not None else ""
    return f"{shown}<sip:{user}@{host}>;tag=4711"


def invite(
    *extra: tuple[str, str],
    caller: str | None = ALICE,
    called: str = TOLL_FREE,
    name: str | None = None,
    from_: str | None = None,
    media: str | None = None,
    region: str = "US",
) -> CallIdentity:
    """An INVITE with From (unless caller is None), To, then `extra` headers in order."""
    items = [("Via", "SIP/2.0/TLS 198.51.100.7:5061;branch=z9hG4bK776asdhds")]
    if from_ is not None:
        items.append(("From", from_))
    elif caller is not None:
        items.append(("From", sip(caller, name=name)))
    items += [
        ("To", f"<sip:{called}@sip.api.openai.com>"),
        ("Call-ID", "a84b4c76e667@pc33"),
        *extra,
    ]
    return identify(Headers(items), IdentityPolicy(default_region=region), media)


def hit(match: str, call: CallIdentity, *, prelude: str = "", region: str = "US") -> bool:
    """Whether one route with this `match:` (a YAML flow mapping) takes the call."""
    text = textwrap.dedent(prelude) + f"routes:\n  - name: hit\n    match: {match}\n"
    ruleset = rules(text + "    reject: 486\n", region=region)
    decision = ruleset.decide(call, NOON)
    assert decision.route in ("hit", "default")
    return decision.route == "hit"


# --- numbers: exact, prefix, regex, country, type, inline lists --------------------------

LISTS = """
lists:
  vips: ["+1 415 555 0100", "+1900*"]
  staff: ["(415) 555-0111"]
"""

NUMBER_CASES = [
    # exact
    pytest.param("{caller: {equals: '+14155550100'}}", invite(), True, id="equals"),
    pytest.param("{caller: {equals: '(415) 555-0100'}}", invite(), True, id="equals-national"),
    pytest.param("{caller: {equals: '+14155550101'}}", invite(), False, id="equals-other"),
    pytest.param(
        "{caller: {equals: ['+14155550199', '+14155550100']}}", invite(), True, id="equals-list"
    ),
    pytest.param("{called: {equals: '+18005550100'}}", invite(), True, id="called-equals"),
    pytest.param("{called: '1-800-555-0100'}", invite(), True, id="called-shorthand-national"),
    # prefix: with or without the trailing *
    pytest.param("{caller: {prefix: '+1415'}}", invite(), True, id="prefix"),
    pytest.param("{caller: {prefix: '+1415*'}}", invite(), True, id="prefix-with-star"),
    pytest.param("{caller: {prefix: '+1 (415) 555'}}", invite(), True, id="prefix-formatted"),
    pytest.param("{caller: {prefix: ['+1900', '+1415']}}", invite(), True, id="prefix-list"),
    pytest.param("{caller: {prefix: '+1650'}}", invite(), False, id="prefix-other"),
    pytest.param("{caller: {prefix: '+14155550100'}}", invite(), True, id="prefix-equal-to-number"),
    pytest.param(
        "{caller: {prefix: '+141555501000'}}", invite(), False, id="prefix-longer-than-number"
    ),
    pytest.param("{called: {prefix: '+1800'}}", invite(), True, id="called-prefix"),
    # regex: searched in the E.164 form
    pytest.param(r"{caller: {regex: '^\+1415555'}}", invite(), True, id="regex-anchored"),
    pytest.param("{caller: {regex: '0100$'}}", invite(), True, id="regex-unanchored-search"),
    pytest.param(
        "{caller: {regex: '^415'}}",
        invite(from_=sip("4155550100")),
        False,
        id="regex-sees-e164-not-as-dialled",
    ),
    pytest.param("{caller: {regex: '^\\+44'}}", invite(), False, id="regex-no-match"),
    # country
    pytest.param("{caller: {country: US}}", invite(), True, id="country-US"),
    pytest.param("{caller: {country: us}}", invite(), True, id="country-lower-case"),
    pytest.param("{caller: {country: GB}}", invite(), False, id="country-US-is-not-GB"),
    pytest.param("{caller: {country: GB}}", invite(caller=GB_FIXED), True, id="country-GB"),
    pytest.param(
        "{caller: {country: [GB, IE]}}", invite(caller=IE_FIXED), True, id="country-list-IE"
    ),
    pytest.param(
        "{caller: {country: [GB, IE]}}", invite(caller=FR_MOBILE), False, id="country-list-FR"
    ),
    pytest.param(
        "{caller: {country: US}}", invite(caller=TOLL_FREE), True, id="country-US-toll-free"
    ),
    pytest.param(
        "{caller: {country: GB}}",
        invite(caller=GG_MOBILE),
        False,
        id="country-GB-excludes-guernsey-+447911",
    ),
    pytest.param(
        "{caller: {country: GG}}", invite(caller=GG_MOBILE), True, id="country-GG-guernsey"
    ),
    pytest.param(
        "{caller: {country: GB}}",
        invite(caller=GB_DRAMA),
        False,
        id="country-GB-not-the-invalid-drama-range",
    ),
    pytest.param(
        "{caller: {country: US}}",
        invite(from_=sip("alice", name="Alice")),
        False,
        id="country-caller-without-number",
    ),
    pytest.param(
        "{caller: {country: US}}",
        invite(from_=sip("1001")),
        False,
        id="country-extension-is-no-country",
    ),
    # type: the US cannot tell fixed from mobile, so US numbers are both
    pytest.param("{caller: {type: mobile}}", invite(), True, id="type-US-is-mobile"),
    pytest.param("{caller: {type: fixed_line}}", invite(), True, id="type-US-is-fixed"),
    pytest.param(
        "{caller: {type: fixed_line_or_mobile}}", invite(), True, id="type-US-fixed-or-mobile"
    ),
    pytest.param("{caller: {type: toll_free}}", invite(), False, id="type-US-not-toll-free"),
    pytest.param("{caller: {type: mobile}}", invite(caller=GB_MOBILE), True, id="type-GB-mobile"),
    pytest.param(
        "{caller: {type: fixed_line}}", invite(caller=GB_MOBILE), False, id="type-GB-mobile-fixed"
    ),
    pytest.param("{caller: {type: mobile}}", invite(caller=GB_FIXED), False, id="type-GB-fixed"),
    pytest.param(
        "{caller: {type: fixed_line}}", invite(caller=GB_FIXED), True, id="type-GB-fixed-line"
    ),
    pytest.param(
        "{caller: {type: mobile}}", invite(caller=GB_DRAMA), False, id="type-drama-not-mobile"
    ),
    pytest.param(
        "{caller: {type: unknown}}", invite(caller=GB_DRAMA), True, id="type-drama-unknown"
    ),
    pytest.param(
        "{caller: {type: toll_free}}", invite(caller=TOLL_FREE), True, id="type-toll-free"
    ),
    pytest.param(
        "{caller: {type: [toll_free, premium_rate]}}",
        invite(caller=PREMIUM),
        True,
        id="type-list-premium",
    ),
    pytest.param(
        "{called: {type: toll_free}}", invite(called=TOLL_FREE), True, id="called-type-toll-free"
    ),
    # every key of a number condition must hold
    pytest.param(
        "{caller: {country: GB, type: mobile}}",
        invite(caller=GB_MOBILE),
        True,
        id="country-and-type",
    ),
    pytest.param(
        "{caller: {country: IE, type: mobile}}",
        invite(caller=IE_FIXED),
        False,
        id="country-and-type-one-fails",
    ),
    pytest.param(
        "{caller: {prefix: '+1415', regex: '0100$'}}", invite(), True, id="prefix-and-regex"
    ),
    pytest.param(
        "{caller: {prefix: '+1415', regex: '0199$'}}",
        invite(),
        False,
        id="prefix-and-regex-fails",
    ),
    pytest.param(
        "{caller: {equals: '+14155550100', prefix: '+1650'}}",
        invite(),
        False,
        id="equals-and-prefix-both-needed",
    ),
    # inline lists
    pytest.param("{caller: {list: vips}}", invite(), True, id="list-exact"),
    pytest.param("{caller: {list: vips}}", invite(caller=PREMIUM), True, id="list-prefix"),
    pytest.param("{caller: {list: vips}}", invite(caller="+14155550111"), False, id="list-not-in"),
    pytest.param(
        "{caller: {list: [vips, staff]}}",
        invite(caller="+14155550111"),
        True,
        id="list-either-of-two",
    ),
    pytest.param(
        "{caller: {list: staff, country: US}}",
        invite(caller="+14155550111"),
        True,
        id="list-and-country",
    ),
    pytest.param("{called: {list: vips}}", invite(called=PREMIUM), True, id="called-in-list"),
    # forwarded_from: Diversion first, else the History-Info entry before the last
    pytest.param(
        "{forwarded_from: '+14155550123'}",
        invite(("Diversion", "<sip:+14155550123@pbx.example.com>;reason=unconditional")),
        True,
        id="forwarded-from-diversion",
    ),
    pytest.param(
        "{forwarded_from: {prefix: '+1415'}}",
        invite(
            ("History-Info", "<sip:+14155550123@pbx.example.com>;index=1"),
            ("History-Info", "<sip:+18005550100@sip.api.openai.com>;index=1.1"),
        ),
        True,
        id="forwarded-from-history-info",
    ),
    pytest.param("{forwarded_from: {country: US}}", invite(), False, id="forwarded-from-absent"),
    pytest.param(
        "{forwarded_from: {list: vips}}",
        invite(("Diversion", "<tel:+19005550123>;reason=user-busy")),
        True,
        id="forwarded-from-tel-in-list",
    ),
    # no caller number at all: number conditions fail, their negation holds
    pytest.param("{caller: {prefix: '+1'}}", invite(caller=None), False, id="no-caller"),
    pytest.param(
        "{not: {caller: {country: US}}}", invite(caller=None), True, id="no-caller-not-country"
    ),
]


@pytest.mark.parametrize(("match", "call", "expected"), NUMBER_CASES)
def test_number_match(match: str, call: CallIdentity, expected: bool) -> None:
    assert hit(match, call, prelude=LISTS) is expected


@pytest.mark.parametrize(
    ("region", "pattern", "caller", "expected"),
    [
        pytest.param("GB", "020 7946 0958", GB_FIXED, True, id="GB-national-pattern"),
        pytest.param("GB", "07400 123456", GB_MOBILE, True, id="GB-national-mobile-pattern"),
        pytest.param("GB", "020 7946 0958", "02079460958", True, id="GB-national-both"),
        pytest.param("US", "(415) 555-0100", "4155550100", True, id="US-national-both"),
        pytest.param("US", "020 7946 0958", GB_FIXED, False, id="GB-pattern-read-as-US"),
    ],
)
def test_national_formats_follow_the_region(
    region: str, pattern: str, caller: str, expected: bool
) -> None:
    call = invite(caller=caller, region=region)
    assert hit(f"{{caller: {{equals: '{pattern}'}}}}", call, region=region) is expected


# --- list files ------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def routes_with_lists(directory: Path, lists: str, match: str = "{caller: {list: vips}}") -> Path:
    body = textwrap.indent(textwrap.dedent(lists).strip(), "  ")
    text = f"lists:\n{body}\nroutes:\n  - name: vip\n    match: {match}\n    reject: 486\n"
    return write(directory / "routes.yaml", text)


TXT = """
# VIP callers, one per line
+14155550100

(415) 555-0101   # national format, read with the region
+1 415 555 0102
   +14155550103\x20\t\x20
+1900*           # a whole premium prefix
1-212-555-*      # national prefix: kept as dialled, not made E.164
"""

CSV = """
name,number,note
Alice,+1 415 555 0100,gold
"Smith, Bob","(415) 555-0101","a ""quoted"" note"
# a commented-out row,+14155550109,x
Carol,+1900*,prefix
Dave,,no number
"""


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        pytest.param("+14155550100", True, id="e164-line"),
        pytest.param("+14155550101", True, id="national-line-with-comment"),
        pytest.param("+14155550102", True, id="spaced-line"),
        pytest.param("+14155550103", True, id="padded-line"),
        pytest.param("+19005550199", True, id="prefix-line"),
        pytest.param("+12125550100", False, id="national-prefix-is-not-normalised"),
        pytest.param("+14155550104", False, id="not-listed"),
        pytest.param("+14155550109", False, id="commented-out"),
    ],
)
def test_txt_list_file(tmp_path: Path, caller: str, expected: bool) -> None:
    write(tmp_path / "lists" / "vips.txt", TXT)
    path = routes_with_lists(tmp_path, "vips: {file: lists/vips.txt}")
    ruleset = load_rules(path, region="US")
    assert (ruleset.decide(invite(caller=caller), NOON).route == "vip") is expected


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        pytest.param("+14155550100", True, id="row"),
        pytest.param("+14155550101", True, id="quoted-cells-national"),
        pytest.param("+19005550123", True, id="prefix-row"),
        pytest.param("+14155550109", False, id="commented-row"),
        pytest.param("+14155550104", False, id="not-listed"),
    ],
)
def test_csv_list_file(tmp_path: Path, caller: str, expected: bool) -> None:
    write(tmp_path / "vips.csv", CSV)
    path = routes_with_lists(tmp_path, "vips: {file: vips.csv, column: 2}")
    ruleset = load_rules(path, region="US")
    assert (ruleset.decide(invite(caller=caller), NOON).route == "vip") is expected


def test_csv_first_column_by_default(tmp_path: Path) -> None:
    write(tmp_path / "numbers.csv", "number,name\n+14155550100,Alice\n")
    path = routes_with_lists(tmp_path, "vips: {file: numbers.csv}")
    assert load_rules(path, region="US").decide(invite(), NOON).route == "vip"


def test_list_file_national_formats_use_the_region(tmp_path: Path) -> None:
    write(tmp_path / "uk.txt", "020 7946 0958\n07400 123456\n")
    path = routes_with_lists(tmp_path, "vips: {file: uk.txt}")
    ruleset = load_rules(path, region="GB")
    for caller in (GB_FIXED, GB_MOBILE):
        assert ruleset.decide(invite(caller=caller, region="GB"), NOON).route == "vip"


def test_list_file_path_is_relative_to_the_routes_file(tmp_path: Path) -> None:
    write(tmp_path / "shared" / "vips.txt", "+14155550100\n")
    path = routes_with_lists(tmp_path / "config", "vips: {file: ../shared/vips.txt}")
    ruleset = load_rules(path, region="US")
    assert ruleset.decide(invite(), NOON).route == "vip"
    assert ruleset.files == (str(path), str(tmp_path / "config" / "../shared/vips.txt"))


def test_inline_and_file_lists_together(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "+14155550100\n")
    write(tmp_path / "b.csv", "n\n+14155550101\n")
    path = routes_with_lists(
        tmp_path,
        """
        vips: {file: a.txt}
        more: {file: b.csv}
        inline: ["+14155550102"]
        """,
        match="{caller: {list: [vips, more, inline]}}",
    )
    ruleset = load_rules(path, region="US")
    assert ruleset.files == (str(path), str(tmp_path / "a.txt"), str(tmp_path / "b.csv"))
    for caller, route in [
        ("+14155550100", "vip"),
        ("+14155550101", "vip"),
        ("+14155550102", "vip"),
        ("+14155550103", "default"),
    ]:
        assert ruleset.decide(invite(caller=caller), NOON).route == route, caller


def test_version_follows_the_list_file(tmp_path: Path) -> None:
    numbers = write(tmp_path / "vips.txt", "+14155550100\n")
    path = routes_with_lists(tmp_path, "vips: {file: vips.txt}")
    first = load_rules(path, region="US")
    assert load_rules(path, region="US").version == first.version

    numbers.write_text("+14155550100\n+14155550101\n", encoding="utf-8")
    second = load_rules(path, region="US")
    assert second.version != first.version
    assert second.decide(invite(caller="+14155550101"), NOON).route == "vip"
    assert first.decide(invite(caller="+14155550101"), NOON).route == "default"

    numbers.write_text("+14155550100\n", encoding="utf-8")
    assert load_rules(path, region="US").version == first.version


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        pytest.param(
            "vips.txt",
            "+14155550100\n\n+1 415 abc\n# fine\n+999\n",
            [
                "{list}:3: lists.vips: line 3: '+1 415 abc' is not a phone number",
                "{list}:5: lists.vips: line 5: '+999' is not a possible E.164 number",
            ],
            id="txt-bad-lines",
        ),
        pytest.param(
            "vips.txt",
            "+1900*5\n",
            ["{list}:1: lists.vips: line 1: '+1900*5' is not a phone number"],
            id="txt-star-inside",
        ),
        pytest.param(
            "vips.txt",
            "+14155550100\n+1-415*-x*\n",
            [
                "{list}:2: lists.vips: line 2: '+1-415*-x*' is not a number prefix"
                " (digits, optional +, then *)"
            ],
            id="txt-bad-prefix",
        ),
        pytest.param(
            "vips.txt",
            "+14155550100\n+\u00b94155550101\n+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0660\u0662\n",
            [
                "{list}:2: lists.vips: line 2: '+\u00b94155550101' is not a phone number",
                "{list}:3: lists.vips: line 3: '+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0660"
                "\u0661\u0660\u0662' is not a phone number",
            ],
            id="txt-digits-of-other-scripts",
        ),
        pytest.param(
            "vips.csv",
            "name,number\nAlice,+14155550100\nBob,call me\n",
            ["{list}:3: lists.vips: line 3: 'call me' is not a phone number"],
            id="csv-bad-cell",
        ),
        pytest.param(
            "vips.txt",
            "".join(f"bad{i}\n" for i in range(1, 15)),
            [
                f"{{list}}:{i}: lists.vips: line {i}: 'bad{i}' is not a phone number"
                for i in range(1, 11)
            ],
            id="at-most-ten-problems",
        ),
    ],
)
def test_list_file_errors_name_the_list_file_and_line(
    tmp_path: Path, name: str, text: str, expected: list[str]
) -> None:
    listed = write(tmp_path / name, text)
    column = ", column: 2" if name.endswith(".csv") else ""
    path = routes_with_lists(tmp_path, f"vips: {{file: {name}{column}}}")
    assert load_issues(path) == [e.format(list=listed) for e in expected]


def test_missing_list_file(tmp_path: Path) -> None:
    path = routes_with_lists(tmp_path, "vips: {file: nowhere.txt}")
    missing = tmp_path / "nowhere.txt"
    assert load_issues(path) == [
        f"{missing}: lists.vips: cannot read {missing}: No such file or directory"
    ]


def test_list_file_not_utf8(tmp_path: Path) -> None:
    listed = tmp_path / "vips.txt"
    listed.write_bytes(b"+14155550100 # caf\xe9\n")
    path = routes_with_lists(tmp_path, "vips: {file: vips.txt}")
    assert load_issues(path) == [f"{listed}: lists.vips: {listed} is not UTF-8 text"]


# --- display name and headers ----------------------------------------------------------------

TEXT_CASES = [
    # caller_name: the display name of the caller (or of From)
    pytest.param("{caller_name: Alice Example}", {"name": "Alice Example"}, True, id="name"),
    pytest.param("{caller_name: alice example}", {"name": "Alice Example"}, False, id="name-case"),
    pytest.param(
        "{caller_name: {equals: alice example, ignore_case: true}}",
        {"name": "Alice Example"},
        True,
        id="name-equals-ignore-case",
    ),
    pytest.param(
        "{caller_name: {equals: '  Alice Example '}}",
        {"name": "Alice Example"},
        True,
        id="name-equals-trims",
    ),
    pytest.param(
        "{caller_name: {contains: Example}}", {"name": "Alice Example"}, True, id="name-contains"
    ),
    pytest.param(
        "{caller_name: {contains: example}}",
        {"name": "Alice Example"},
        False,
        id="name-contains-case",
    ),
    pytest.param(
        "{caller_name: {contains: EXAMPLE, ignore_case: true}}",
        {"name": "Alice Example"},
        True,
        id="name-contains-ignore-case",
    ),
    pytest.param(
        "{caller_name: {regex: '^Al(ice|an) '}}", {"name": "Alan Smith"}, True, id="name-regex"
    ),
    pytest.param(
        "{caller_name: {regex: '^al'}}", {"name": "Alan Smith"}, False, id="name-regex-case"
    ),
    pytest.param(
        "{caller_name: {regex: '^al', ignore_case: true}}",
        {"name": "Alan Smith"},
        True,
        id="name-regex-ignore-case",
    ),
    pytest.param("{caller_name: {present: true}}", {"name": "Bob"}, True, id="name-present"),
    pytest.param("{caller_name: {present: true}}", {}, False, id="name-present-none"),
    pytest.param("{caller_name: {absent: true}}", {}, True, id="name-absent"),
    pytest.param("{caller_name: {absent: true}}", {"name": "Bob"}, False, id="name-absent-given"),
    pytest.param("{caller_name: {present: false}}", {}, True, id="name-present-false"),
    pytest.param("{caller_name: {contains: Bob}}", {}, False, id="name-contains-no-name"),
    # headers: names case-insensitive, compact forms expanded
    pytest.param("{headers: {X-Tier: gold}}", {"extra": [("X-Tier", "gold")]}, True, id="header"),
    pytest.param(
        "{headers: {x-tier: gold}}",
        {"extra": [("X-TIER", "gold")]},
        True,
        id="header-name-any-case",
    ),
    pytest.param(
        "{headers: {Subject: urgent}}",
        {"extra": [("s", "urgent")]},
        True,
        id="header-compact-form-in-call",
    ),
    pytest.param(
        "{headers: {X-Tier: gold}}", {"extra": [("X-Tier", "Gold")]}, False, id="header-case"
    ),
    pytest.param(
        "{headers: {X-Tier: {equals: GOLD, ignore_case: true}}}",
        {"extra": [("X-Tier", "Gold")]},
        True,
        id="header-equals-ignore-case",
    ),
    pytest.param(
        "{headers: {X-Tier: gold}}", {"extra": [("X-Tier", "gold-plus")]}, False, id="header-whole"
    ),
    pytest.param(
        "{headers: {X-Tier: {contains: gold}}}",
        {"extra": [("X-Tier", "gold-plus")]},
        True,
        id="header-contains",
    ),
    pytest.param(
        "{headers: {X-Tier: {contains: GOLD}}}",
        {"extra": [("X-Tier", "gold-plus")]},
        False,
        id="header-contains-case",
    ),
    pytest.param(
        "{headers: {X-Tier: {contains: GOLD, ignore_case: true}}}",
        {"extra": [("X-Tier", "gold-plus")]},
        True,
        id="header-contains-ignore-case",
    ),
    pytest.param(
        "{headers: {X-Account: {regex: '^[0-9]{6}$'}}}",
        {"extra": [("X-Account", "123456")]},
        True,
        id="header-regex",
    ),
    pytest.param(
        "{headers: {X-Account: {regex: '^[0-9]{6}$'}}}",
        {"extra": [("X-Account", "1234567")]},
        False,
        id="header-regex-no-match",
    ),
    pytest.param(
        "{headers: {X-Tier: {regex: '^GOLD', ignore_case: true}}}",
        {"extra": [("X-Tier", "gold")]},
        True,
        id="header-regex-ignore-case",
    ),
    pytest.param(
        "{headers: {X-Tier: {regex: gold}}}",
        {"extra": [("X-Tier", "x" * 600 + "gold")]},
        False,
        id="header-regex-sees-first-512-chars",
    ),
    pytest.param(
        "{headers: {X-Tier: {contains: gold}}}",
        {"extra": [("X-Tier", "x" * 600 + "gold")]},
        True,
        id="header-contains-sees-all",
    ),
    pytest.param(
        "{headers: {X-Legacy: {present: true}}}",
        {"extra": [("X-Legacy", "")]},
        True,
        id="header-present-empty-value",
    ),
    pytest.param("{headers: {X-Legacy: {present: true}}}", {}, False, id="header-present-missing"),
    pytest.param("{headers: {X-Legacy: {absent: true}}}", {}, True, id="header-absent"),
    pytest.param(
        "{headers: {X-Legacy: {absent: true}}}",
        {"extra": [("x-legacy", "1")]},
        False,
        id="header-absent-given",
    ),
    pytest.param(
        "{headers: {X-Legacy: {absent: false}}}",
        {"extra": [("x-legacy", "1")]},
        True,
        id="header-absent-false",
    ),
    pytest.param("{headers: {X-Tier: gold}}", {}, False, id="header-equals-missing"),
    # a repeated header matches if any of its values does
    pytest.param(
        "{headers: {X-Tag: vip}}",
        {"extra": [("X-Tag", "new"), ("X-Tag", "vip"), ("X-Tag", "east")]},
        True,
        id="repeated-header-any-value",
    ),
    pytest.param(
        "{headers: {X-Tag: {regex: '^ea'}}}",
        {"extra": [("X-Tag", "new"), ("x-tag", "east")]},
        True,
        id="repeated-header-regex",
    ),
    pytest.param(
        "{headers: {X-Tag: vip}}",
        {"extra": [("X-Tag", "new"), ("X-Tag", "east")]},
        False,
        id="repeated-header-none",
    ),
    pytest.param(
        "{headers: {X-Tag: vip}}",
        {"extra": [("X-Tag", "new, vip")]},
        False,
        id="comma-list-is-one-value",
    ),
    # every header given must hold
    pytest.param(
        "{headers: {X-Tier: gold, X-Region: {contains: eu}}}",
        {"extra": [("X-Tier", "gold"), ("X-Region", "eu-west")]},
        True,
        id="two-headers",
    ),
    pytest.param(
        "{headers: {X-Tier: gold, X-Region: {contains: eu}}}",
        {"extra": [("X-Tier", "gold"), ("X-Region", "us-east")]},
        False,
        id="two-headers-one-fails",
    ),
]


@pytest.mark.parametrize(("match", "call", "expected"), TEXT_CASES)
def test_text_match(match: str, call: dict[str, Any], expected: bool) -> None:
    kwargs = dict(call)
    extra = kwargs.pop("extra", [])
    assert hit(match, invite(*extra, **kwargs)) is expected


# --- anonymous, forwarded, media security ---------------------------------------------------

DIVERSION = ("Diversion", "<sip:+14155550123@pbx.example.com>;reason=no-answer")
HISTORY = ("History-Info", "<sip:+14155550123@pbx.example.com>;index=1")
HISTORY_TARGET = ("History-Info", "<sip:+18005550100@sip.api.openai.com;cause=302>;index=1.1")
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1928301774'

FLAG_CASES = [
    pytest.param("{anonymous: true}", invite(from_=ANONYMOUS_FROM), True, id="anonymous"),
    pytest.param("{anonymous: true}", invite(), False, id="anonymous-not"),
    pytest.param("{anonymous: false}", invite(), True, id="not-anonymous"),
    pytest.param(
        "{anonymous: true}", invite(("Privacy", "id")), True, id="anonymous-by-privacy-header"
    ),
    pytest.param("{anonymous: true}", invite(caller=None), True, id="anonymous-no-from"),
    pytest.param("{forwarded: true}", invite(DIVERSION), True, id="forwarded-diversion"),
    pytest.param(
        "{forwarded: true}", invite(HISTORY, HISTORY_TARGET), True, id="forwarded-history-info"
    ),
    # One History-Info entry records the call's target, not a redirection.
    pytest.param(
        "{forwarded: true}", invite(HISTORY), False, id="history-info-without-redirection"
    ),
    pytest.param("{forwarded: true}", invite(), False, id="forwarded-not"),
    pytest.param("{forwarded: false}", invite(), True, id="not-forwarded"),
    pytest.param("{forwarded: false}", invite(DIVERSION), False, id="not-forwarded-but-is"),
    pytest.param("{media_security: srtp}", invite(media="srtp"), True, id="srtp"),
    pytest.param("{media_security: srtp}", invite(media="rtp"), False, id="srtp-vs-rtp"),
    pytest.param("{media_security: rtp}", invite(media="rtp"), True, id="rtp"),
    pytest.param("{media_security: none}", invite(media=None), True, id="none-when-absent"),
    pytest.param("{media_security: none}", invite(media="srtp"), False, id="none-vs-srtp"),
    pytest.param("{media_security: srtp}", invite(media=None), False, id="srtp-vs-absent"),
]


@pytest.mark.parametrize(("match", "call", "expected"), FLAG_CASES)
def test_flag_match(match: str, call: CallIdentity, expected: bool) -> None:
    assert hit(match, call) is expected


# --- all / any / not -------------------------------------------------------------------------

SPAMMY = (
    "{any: [{caller: '+1900*'},"
    " {all: [{anonymous: true}, {not: {forwarded: true}}]},"
    " {headers: {X-Spam-Score: {regex: '^[89]'}}}]}"
)

COMBINATOR_CASES = [
    pytest.param(
        "{all: [{caller: '+1415*'}, {called: '+1800*'}]}", invite(), True, id="all-both-hold"
    ),
    pytest.param(
        "{all: [{caller: '+1415*'}, {called: '+1888*'}]}", invite(), False, id="all-one-fails"
    ),
    pytest.param("{any: [{caller: '+1900*'}, {called: '+1800*'}]}", invite(), True, id="any-one"),
    pytest.param(
        "{any: [{caller: '+1900*'}, {called: '+1888*'}]}", invite(), False, id="any-neither"
    ),
    pytest.param("{not: {caller: '+1900*'}}", invite(), True, id="not"),
    pytest.param("{not: {caller: '+1415*'}}", invite(), False, id="not-holds"),
    pytest.param(
        "{not: {caller: '+1415*', media_security: srtp}}",
        invite(media="rtp"),
        True,
        id="not-of-several-is-not-all",
    ),
    pytest.param("{not: {not: {caller: '+1415*'}}}", invite(), True, id="double-not"),
    pytest.param(
        "{caller: '+1415*', any: [{media_security: srtp}, {headers: {X-Tier: gold}}]}",
        invite(("X-Tier", "gold"), media="rtp"),
        True,
        id="plain-key-and-any",
    ),
    pytest.param(
        "{caller: '+1650*', any: [{media_security: srtp}, {headers: {X-Tier: gold}}]}",
        invite(("X-Tier", "gold"), media="rtp"),
        False,
        id="plain-key-fails-any-holds",
    ),
    pytest.param(SPAMMY, invite(caller=PREMIUM), True, id="nested-first-arm"),
    pytest.param(SPAMMY, invite(from_=ANONYMOUS_FROM), True, id="nested-anonymous-direct"),
    pytest.param(
        SPAMMY, invite(DIVERSION, from_=ANONYMOUS_FROM), False, id="nested-anonymous-forwarded"
    ),
    pytest.param(SPAMMY, invite(("X-Spam-Score", "93")), True, id="nested-third-arm"),
    pytest.param(SPAMMY, invite(("X-Spam-Score", "12")), False, id="nested-none"),
    pytest.param(
        "{not: {any: [{caller: '+1900*'}, {anonymous: true}]}}", invite(), True, id="not-any"
    ),
    pytest.param(
        "{not: {any: [{caller: '+1900*'}, {anonymous: true}]}}",
        invite(from_=ANONYMOUS_FROM),
        False,
        id="not-any-anonymous",
    ),
    pytest.param(
        "{all: [{any: [{called: '+1800*'}, {called: '+1888*'}]}, {not: {caller: {country: GB}}}]}",
        invite(),
        True,
        id="all-of-any-and-not",
    ),
]


@pytest.mark.parametrize(("match", "call", "expected"), COMBINATOR_CASES)
def test_combinators(match: str, call: CallIdentity, expected: bool) -> None:
    assert hit(match, call) is expected


# --- schedules -------------------------------------------------------------------------------

SCHEDULES = """
timezone: America/New_York
schedules:
  office:
    timezone: America/New_York
    weekly:
      mon-fri: ["09:00-12:00", "13:00-17:00"]
      sat: "10:00-14:00"
    include: ["2026-12-27"]
    exclude: [2026-12-25, "2026-12-31..2027-01-01", "2026-07-03"]
  late:
    timezone: Europe/London
    weekly:
      fri: "22:00-02:00"
      "mon,wed": ["08:00-09:00", "20:00-23:00"]
      sun: "23:00-01:00"
    exclude: ["2026-10-24", "2026-11-13"]
  ny-dst:
    timezone: America/New_York
    weekly:
      sun: "01:30-03:30"
      daily: "09:00-17:00"
  ny-fallback:
    timezone: America/New_York
    weekly:
      sun: "01:00-02:00"
  london-dst:
    timezone: Europe/London
    weekly:
      daily: "09:00-17:00"
      sat: "23:00-03:00"
  weekend:
    timezone: Asia/Tokyo
    weekly:
      fri-sun: "00:00-24:00"
  holiday-both:
    timezone: UTC
    weekly:
      daily: "00:00-24:00"
    include: ["2026-06-01"]
    exclude: ["2026-06-01"]
"""


def at(text: str) -> datetime:
    """An aware UTC instant, `2026-06-01T13:00Z`."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def in_schedule(name: str, now: datetime) -> bool:
    ruleset = rules(
        SCHEDULES
        + "routes:\n"
        + f"  - {{name: inside, match: {{schedule: {name}}}, reject: 486}}\n"
        + f"  - {{name: outside, match: {{outside_schedule: {name}}}, reject: 480}}\n"
    )
    route = ruleset.decide(invite(), now).route
    assert route in ("inside", "outside")  # exactly one of the two always holds
    return route == "inside"


SCHEDULE_CASES = [
    # office: New York, two windows on weekdays, one on Saturday (EDT = UTC-4 in June)
    pytest.param("office", "2026-06-01T13:00Z", True, id="office-mon-09:00-opens"),
    pytest.param("office", "2026-06-01T12:59Z", False, id="office-mon-08:59"),
    pytest.param("office", "2026-06-01T15:59Z", True, id="office-mon-11:59"),
    pytest.param("office", "2026-06-01T16:00Z", False, id="office-mon-lunch-12:00"),
    pytest.param("office", "2026-06-01T17:00Z", True, id="office-mon-13:00"),
    pytest.param("office", "2026-06-01T20:59Z", True, id="office-mon-16:59"),
    pytest.param("office", "2026-06-01T21:00Z", False, id="office-mon-17:00-closes"),
    pytest.param("office", "2026-06-05T14:00Z", True, id="office-fri"),
    pytest.param("office", "2026-06-06T14:00Z", True, id="office-sat-10:00"),
    pytest.param("office", "2026-06-06T18:00Z", False, id="office-sat-14:00-closes"),
    pytest.param("office", "2026-06-07T14:00Z", False, id="office-sun-closed"),
    pytest.param("office", "2026-06-02T02:00Z", False, id="office-utc-tuesday-ny-monday-night"),
    # office: holidays and an extra day (EST = UTC-5 in December)
    pytest.param("office", "2026-12-25T15:00Z", False, id="office-christmas-friday-excluded"),
    pytest.param("office", "2026-12-24T15:00Z", True, id="office-christmas-eve-open"),
    pytest.param("office", "2026-12-27T03:00Z", False, id="office-included-sunday-not-yet-ny"),
    pytest.param("office", "2026-12-27T05:00Z", True, id="office-included-sunday-00:00"),
    pytest.param("office", "2026-12-28T04:59Z", True, id="office-included-sunday-23:59"),
    pytest.param("office", "2026-12-31T15:00Z", False, id="office-range-first-day"),
    pytest.param("office", "2027-01-01T15:00Z", False, id="office-range-last-day"),
    pytest.param("office", "2027-01-04T15:00Z", True, id="office-after-range"),
    pytest.param("office", "2026-07-03T14:00Z", False, id="office-observed-holiday"),
    # late: London; windows crossing midnight belong to the day they start on
    pytest.param("late", "2026-06-05T20:59Z", False, id="late-fri-21:59-bst"),
    pytest.param("late", "2026-06-05T21:00Z", True, id="late-fri-22:00-bst"),
    pytest.param("late", "2026-06-05T23:30Z", True, id="late-sat-00:30-from-friday"),
    pytest.param("late", "2026-06-06T00:59Z", True, id="late-sat-01:59-from-friday"),
    pytest.param("late", "2026-06-06T01:00Z", False, id="late-sat-02:00-ends"),
    pytest.param("late", "2026-06-06T21:30Z", False, id="late-sat-22:30-no-window"),
    pytest.param("late", "2026-06-04T23:30Z", False, id="late-fri-00:30-thursday-had-none"),
    pytest.param("late", "2026-06-01T07:30Z", True, id="late-mon-08:30"),
    pytest.param("late", "2026-06-01T19:30Z", True, id="late-mon-20:30"),
    pytest.param("late", "2026-06-01T12:00Z", False, id="late-mon-13:00-between"),
    pytest.param("late", "2026-06-03T19:30Z", True, id="late-wed-20:30"),
    pytest.param("late", "2026-06-02T19:30Z", False, id="late-tue-20:30"),
    pytest.param("late", "2026-06-07T22:30Z", True, id="late-sun-23:30"),
    pytest.param("late", "2026-06-07T23:30Z", True, id="late-mon-00:30-from-sunday"),
    pytest.param("late", "2026-06-08T00:30Z", False, id="late-mon-01:30-ended"),
    # excluding the next day does not cut an overnight window short...
    pytest.param("late", "2026-10-23T23:30Z", True, id="late-excluded-sat-00:30-from-friday"),
    pytest.param("late", "2026-10-24T21:30Z", False, id="late-excluded-sat-22:30"),
    # ...but excluding the day it starts on removes all of it
    pytest.param("late", "2026-11-13T22:30Z", False, id="late-excluded-fri-22:30"),
    pytest.param("late", "2026-11-14T00:30Z", False, id="late-sat-00:30-friday-excluded"),
    # New York spring forward, Sun 2026-03-08: 02:00 EST -> 03:00 EDT
    pytest.param("ny-dst", "2026-03-08T06:29Z", False, id="ny-spring-01:29-est"),
    pytest.param("ny-dst", "2026-03-08T06:30Z", True, id="ny-spring-01:30-est"),
    pytest.param("ny-dst", "2026-03-08T06:59Z", True, id="ny-spring-01:59-est"),
    pytest.param("ny-dst", "2026-03-08T07:00Z", True, id="ny-spring-03:00-edt"),
    pytest.param("ny-dst", "2026-03-08T07:29Z", True, id="ny-spring-03:29-edt"),
    pytest.param("ny-dst", "2026-03-08T07:30Z", False, id="ny-spring-03:30-edt-ends"),
    pytest.param("ny-dst", "2026-03-07T13:30Z", False, id="ny-sat-before-13:30Z-is-08:30"),
    pytest.param("ny-dst", "2026-03-08T13:30Z", True, id="ny-dst-day-13:30Z-is-09:30"),
    pytest.param("ny-dst", "2026-03-08T21:30Z", False, id="ny-dst-day-21:30Z-is-17:30"),
    pytest.param("ny-dst", "2026-03-07T21:30Z", True, id="ny-sat-before-21:30Z-is-16:30"),
    # New York fall back, Sun 2026-11-01: 01:00-02:00 happens twice, both inside
    pytest.param("ny-fallback", "2026-11-01T04:59Z", False, id="ny-fall-00:59-edt"),
    pytest.param("ny-fallback", "2026-11-01T05:00Z", True, id="ny-fall-01:00-edt"),
    pytest.param("ny-fallback", "2026-11-01T05:30Z", True, id="ny-fall-01:30-edt"),
    pytest.param("ny-fallback", "2026-11-01T06:30Z", True, id="ny-fall-01:30-est-again"),
    pytest.param("ny-fallback", "2026-11-01T06:59Z", True, id="ny-fall-01:59-est"),
    pytest.param("ny-fallback", "2026-11-01T07:00Z", False, id="ny-fall-02:00-est"),
    # London spring forward, Sun 2026-03-29 01:00 GMT -> 02:00 BST
    pytest.param("london-dst", "2026-03-28T16:30Z", True, id="london-sat-16:30-gmt"),
    pytest.param("london-dst", "2026-03-29T16:30Z", False, id="london-dst-day-17:30-bst"),
    pytest.param("london-dst", "2026-03-29T08:30Z", True, id="london-dst-day-09:30-bst"),
    pytest.param("london-dst", "2026-03-29T00:30Z", True, id="london-spring-00:30-from-sat"),
    pytest.param("london-dst", "2026-03-29T01:30Z", True, id="london-spring-02:30-bst"),
    pytest.param("london-dst", "2026-03-29T02:00Z", False, id="london-spring-03:00-bst-ends"),
    # London fall back, Sun 2026-10-25 02:00 BST -> 01:00 GMT, in an overnight window
    pytest.param("london-dst", "2026-10-25T00:30Z", True, id="london-fall-01:30-bst"),
    pytest.param("london-dst", "2026-10-25T01:30Z", True, id="london-fall-01:30-gmt-again"),
    pytest.param("london-dst", "2026-10-25T02:30Z", True, id="london-fall-02:30-gmt"),
    pytest.param("london-dst", "2026-10-25T03:00Z", False, id="london-fall-03:00-gmt-ends"),
    # day ranges, whole days, a timezone ahead of UTC
    pytest.param("weekend", "2026-06-04T15:00Z", True, id="tokyo-fri-00:00"),
    pytest.param("weekend", "2026-06-04T14:59Z", False, id="tokyo-thu-23:59"),
    pytest.param("weekend", "2026-06-07T14:59Z", True, id="tokyo-sun-23:59"),
    pytest.param("weekend", "2026-06-07T15:00Z", False, id="tokyo-mon-00:00"),
    # a date both included and excluded is excluded
    pytest.param("holiday-both", "2026-06-01T12:00Z", False, id="exclude-beats-include"),
    pytest.param("holiday-both", "2026-06-02T12:00Z", True, id="daily-all-day"),
]


@pytest.mark.parametrize(("name", "now", "expected"), SCHEDULE_CASES)
def test_schedule(name: str, now: str, expected: bool) -> None:
    assert in_schedule(name, at(now)) is expected


def test_one_ruleset_answers_each_moment_as_a_fresh_one() -> None:
    """A schedule remembers its last minute's answer: walking one RuleSet through time
    (boundaries, DST changes, holidays, back and forth) must answer as a new RuleSet does."""
    text = (
        SCHEDULES
        + "routes:\n"
        + "".join(
            f"  - {{name: {name}, match: {{schedule: {name}}}, reject: 486}}\n"
            for name in ("office", "late", "ny-dst", "ny-fallback", "london-dst", "weekend")
        )
    )
    ruleset = rules(text)
    starts = ["2026-03-08T06:29Z", "2026-11-01T05:29Z", "2026-12-24T21:59Z", "2026-06-05T20:59Z"]
    moments = [
        at(start) + timedelta(seconds=step)
        for start in starts
        for step in range(0, 3 * 3600, 17 * 60 + 23)
    ]
    moments += [at("2026-06-01T16:59:59Z"), at("2026-06-01T17:00:00Z"), moments[0]]
    for now in moments + moments[::-1]:
        fresh = rules(text)
        assert ruleset.decide(invite(), now).route == fresh.decide(invite(), now).route, now


def test_schedule_answer_changes_on_the_minute() -> None:
    ruleset = rules(
        SCHEDULES + "routes:\n  - {name: open, match: {schedule: office}, reject: 486}\n"
    )
    # Monday 2026-06-01, 17:00 in New York closes the office (21:00 UTC).
    for now, route in [
        ("2026-06-01T20:59:00Z", "open"),
        ("2026-06-01T20:59:59.999Z", "open"),
        ("2026-06-01T21:00:00Z", "default"),
        ("2026-06-01T20:59:30Z", "open"),  # back in time: not the remembered minute
    ]:
        assert ruleset.decide(invite(), at(now)).route == route, now


@pytest.mark.parametrize(
    "moment",
    [
        "2026-06-01T20:59:59.999+00:00",
        "2026-06-01T21:00:00+00:00",
        "1970-01-01T00:00:00+00:00",
        "1969-12-31T23:59:30+00:00",  # before the epoch: still the minute it falls in
        "1900-01-01T00:00:00+00:00",
        "2400-02-29T12:34:56+00:00",
    ],
)
def test_minute_of_is_the_same_minute_in_every_timezone(moment: str) -> None:
    utc = datetime.fromisoformat(moment).replace(tzinfo=UTC)  # the fast path: tzinfo is UTC
    expected = math.floor(utc.timestamp() / 60)
    assert minute_of(utc) == expected
    for zone in ("Asia/Kolkata", "America/St_Johns", "Etc/GMT+12", "UTC"):
        assert minute_of(utc.astimezone(ZoneInfo(zone))) == expected, zone
    assert minute_of(utc.astimezone(timezone(timedelta(hours=-3)))) == expected
    # The last microsecond of a minute stays in it, in any zone, at any date.
    last = utc.replace(second=59, microsecond=999_999)
    for zone in ("Asia/Kolkata", "UTC"):
        assert minute_of(last.astimezone(ZoneInfo(zone))) == minute_of(last)
    if utc.year >= 1970:
        naive = utc.astimezone().replace(tzinfo=None)  # local time, as timestamp() reads it
        assert minute_of(naive) == math.floor(naive.timestamp() / 60)


def test_schedule_in_a_combinator() -> None:
    ruleset = rules(
        SCHEDULES
        + """
routes:
  - name: after-hours-vip
    match:
      headers: {X-Tier: gold}
      any: [{outside_schedule: office}, {schedule: late}]
    reject: 486
"""
    )
    gold = invite(("X-Tier", "gold"))
    assert ruleset.decide(gold, at("2026-06-01T13:00Z")).route == "default"  # office open
    assert ruleset.decide(gold, at("2026-06-01T23:00Z")).route == "after-hours-vip"
    assert ruleset.decide(invite(), at("2026-06-01T23:00Z")).route == "default"


def test_decide_uses_the_given_time_not_the_clock() -> None:
    ruleset = rules(
        """
        schedules:
          y2k: {timezone: UTC, include: ["2000-01-01"]}
        routes:
          - name: party
            match: {schedule: y2k}
            reject: 486
        """
    )
    assert ruleset.decide(invite(), at("2000-01-01T12:00Z")).route == "party"
    assert ruleset.decide(invite(), at("2000-01-02T12:00Z")).route == "default"


# --- load-time errors ------------------------------------------------------------------------


def one_route(match: str, prelude: str = "") -> str:
    return f"{prelude}routes:\n  - name: a\n    match: {match}\n    reject: 486\n"


def schedule_file(body: str) -> str:
    return f"schedules:\n  s:\n{textwrap.indent(body, '    ')}routes: []\n"


RE2_SYNTAX = "(routes.yaml regular expressions use the RE2 syntax, see docs/routes.md)"

ERROR_CASES = [
    # regular expressions: a dict is also tried as the shorthand (tuple / string) first
    pytest.param(
        one_route("{caller: {regex: '('}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller: Input should be a valid tuple",
            "routes.yaml:3:22: routes[0].match.caller.regex: invalid regular expression '(':"
            " missing ) at position 0 " + RE2_SYNTAX,
        ],
        id="number-regex",
    ),
    pytest.param(
        one_route("{headers: {X-Tier: {regex: '[a-'}}}"),
        [
            "routes.yaml:3:23: routes[0].match.headers.X-Tier: Input should be a valid string",
            "routes.yaml:3:32: routes[0].match.headers.X-Tier.regex: invalid regular expression"
            " '[a-': missing ] at position 0 " + RE2_SYNTAX,
        ],
        id="header-regex",
    ),
    pytest.param(
        one_route("{caller_name: {regex: '*x'}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller_name: Input should be a valid string",
            "routes.yaml:3:27: routes[0].match.caller_name.regex: invalid regular expression"
            " '*x': no argument for repetition operator: * at position 0 " + RE2_SYNTAX,
        ],
        id="caller-name-regex",
    ),
    # countries and types
    pytest.param(
        one_route("{caller: {country: [GB, XX]}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller: Input should be a valid tuple",
            "routes.yaml:3:22: routes[0].match.caller.country:"
            " 'XX' is not an ISO 3166 region code (e.g. US, GB, DE)",
        ],
        id="country-unknown",
    ),
    pytest.param(
        one_route("{called: {country: UK}}"),
        [
            "routes.yaml:3:13: routes[0].match.called: Input should be a valid tuple",
            "routes.yaml:3:22: routes[0].match.called.country:"
            " 'UK' is not an ISO 3166 region code (e.g. US, GB, DE)",
        ],
        id="country-UK-is-GB",
    ),
    pytest.param(
        one_route("{caller: {country: NO}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller: Input should be a valid tuple",
            "routes.yaml:3:22: routes[0].match.caller.country: Input should be a valid tuple",
        ],
        id="country-NO-unquoted-is-yaml-false",
    ),
    pytest.param(
        one_route("{caller: {type: cell}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller: Input should be a valid tuple",
            "routes.yaml:3:22: routes[0].match.caller.type: Input should be 'fixed_line',"
            " 'mobile', 'fixed_line_or_mobile', 'toll_free', 'premium_rate', 'shared_cost',"
            " 'voip', 'personal_number', 'pager', 'uan', 'voicemail' or 'unknown'",
        ],
        id="type-unknown",
    ),
    pytest.param(
        one_route("{caller: {equals: '+1415*'}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller: Input should be a valid tuple",
            "routes.yaml:3:22: routes[0].match.caller.equals:"
            " equals takes whole numbers; use prefix: for prefixes",
        ],
        id="equals-with-prefix",
    ),
    pytest.param(
        one_route("{caller: {}}"),
        [
            "routes.yaml:3:13: routes[0].match.caller: Input should be a valid tuple;"
            " give at least one of: equals, prefix, list, regex, country, type",
        ],
        id="empty-number-condition",
    ),
    # list and schedule references
    pytest.param(
        one_route("{caller: {list: vip}}", 'lists:\n  vips: ["+14155550100"]\n'),
        [
            "routes.yaml:5:22: routes[0].match.caller.list:"
            " unknown list 'vip' (did you mean 'vips'?)"
        ],
        id="unknown-list-close",
    ),
    pytest.param(
        one_route("{caller: {list: [vips, blocked]}}", 'lists:\n  vips: ["+14155550100"]\n'),
        ["routes.yaml:5:22: routes[0].match.caller.list: unknown list 'blocked' (defined: vips)"],
        id="unknown-list-second",
    ),
    pytest.param(
        one_route("{called: {list: vips}}"),
        [
            "routes.yaml:3:22: routes[0].match.called.list:"
            " unknown list 'vips' (no lists are defined)"
        ],
        id="unknown-list-none-defined",
    ),
    pytest.param(
        one_route("{any: [{not: {forwarded_from: {list: x}}}]}"),
        [
            "routes.yaml:3:43: routes[0].match.any[0].not.forwarded_from.list:"
            " unknown list 'x' (no lists are defined)"
        ],
        id="unknown-list-nested",
    ),
    pytest.param(
        one_route("{schedule: ofice}", "schedules:\n  office: {timezone: UTC}\n"),
        [
            "routes.yaml:5:13: routes[0].match.schedule: unknown schedule 'ofice'"
            " (did you mean 'office'?)"
        ],
        id="unknown-schedule-close",
    ),
    pytest.param(
        one_route("{outside_schedule: night}", "schedules:\n  office: {timezone: UTC}\n"),
        [
            "routes.yaml:5:13: routes[0].match.outside_schedule:"
            " unknown schedule 'night' (defined: office)"
        ],
        id="unknown-outside-schedule",
    ),
    pytest.param(
        one_route("{all: [{schedule: office}]}"),
        [
            "routes.yaml:3:20: routes[0].match.all[0].schedule:"
            " unknown schedule 'office' (no schedules are defined)"
        ],
        id="unknown-schedule-nested",
    ),
    # timezones
    pytest.param(
        schedule_file("timezone: Mars/Olympus_Mons\n"),
        [
            "routes.yaml:3:5: schedules.s.timezone:"
            " 'Mars/Olympus_Mons' is not an IANA timezone (e.g. America/New_York)"
        ],
        id="schedule-timezone",
    ),
    pytest.param(
        "timezone: New York\nroutes: []\n",
        ["routes.yaml:1:1: timezone: 'New York' is not an IANA timezone (e.g. America/New_York)"],
        id="file-timezone",
    ),
    pytest.param(
        schedule_file("weekly: {mon: '09:00-17:00'}\n"),
        ["routes.yaml:2:3: schedules.s.timezone: required key is missing"],
        id="schedule-timezone-missing",
    ),
    # windows and days
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {mon: 9-5}\n"),
        ["routes.yaml:4:5: schedules.s.weekly: '9-5' is not a time window like 09:00-17:30"],
        id="window-shape",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {mon: ['09:00-12:00', '13:00-25:00']}\n"),
        ["routes.yaml:4:5: schedules.s.weekly: '13:00-25:00' has an impossible time"],
        id="window-hour",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {mon: '09:60-10:00'}\n"),
        ["routes.yaml:4:5: schedules.s.weekly: '09:60-10:00' has an impossible time"],
        id="window-minute",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {mon: '24:00-02:00'}\n"),
        ["routes.yaml:4:5: schedules.s.weekly: '24:00-02:00' has an impossible time"],
        id="window-start-24",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {mon: '09:00-09:00'}\n"),
        ["routes.yaml:4:5: schedules.s.weekly: '09:00-09:00' is empty (start equals end)"],
        id="window-empty",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {weekdays: '09:00-17:00'}\n"),
        [
            "routes.yaml:4:5: schedules.s.weekly:"
            " 'weekdays' is not a day or day range (mon..sun, e.g. mon-fri)"
        ],
        id="day-unknown",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {'mon-xyz': '09:00-17:00'}\n"),
        [
            "routes.yaml:4:5: schedules.s.weekly:"
            " 'mon-xyz' is not a day or day range (mon..sun, e.g. mon-fri)"
        ],
        id="day-range-end",
    ),
    # dates
    pytest.param(
        schedule_file("timezone: UTC\nexclude: ['2026-02-30']\n"),
        ["routes.yaml:4:5: schedules.s.exclude: '2026-02-30' is not a real date"],
        id="date-impossible",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nexclude: [christmas]\n"),
        [
            "routes.yaml:4:5: schedules.s.exclude: 'christmas' is not a date (YYYY-MM-DD)"
            " or range (YYYY-MM-DD..YYYY-MM-DD)"
        ],
        id="date-word",
    ),
    pytest.param(
        schedule_file("timezone: UTC\ninclude: ['2026-12-26..2026-12-24']\n"),
        ["routes.yaml:4:5: schedules.s.include: '2026-12-26..2026-12-24' ends before it starts"],
        id="date-range-backwards",
    ),
    pytest.param(
        schedule_file("timezone: UTC\ninclude: ['26-12-2026']\n"),
        [
            "routes.yaml:4:5: schedules.s.include: '26-12-2026' is not a date (YYYY-MM-DD)"
            " or range (YYYY-MM-DD..YYYY-MM-DD)"
        ],
        id="date-order",
    ),
    pytest.param(
        schedule_file("timezone: UTC\nweekly: {mon: '09:00-17:00'}\nhours: {mon: x}\n"),
        [
            "routes.yaml:5:5: schedules.s.hours:"
            " unknown key (expected one of: exclude, include, timezone, weekly)"
        ],
        id="schedule-unknown-key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_load_error(text: str, expected: list[str]) -> None:
    assert issues(text) == expected


@pytest.mark.parametrize(
    "zone", ["UTC", "America/New_York", "Europe/London", "Asia/Kolkata", "EST5EDT", "Etc/GMT+5"]
)
def test_timezones_that_load(zone: str) -> None:
    ruleset = rules(f"timezone: {zone}\n" + schedule_file(f"timezone: {zone}\n"))
    assert str(ruleset.timezone) == zone


# --- the route index: same answer as a first-match scan ---------------------------------------


def scan(ruleset: RuleSet, call: CallIdentity, now: datetime) -> str:
    """The naive reference: the first route in file order that matches."""
    return next((r.name for r in ruleset.routes if r.matches(call, now)), "default")


def big_rules(seed: int, count: int) -> tuple[str, list[str], list[str]]:
    """Routes keyed by called number (exact, prefix, short lists), by caller, and unindexed
    ones (headers, regex, country, any) interleaved at random; plus the numbers to call."""
    rng = random.Random(seed)
    called = [f"+1800555{rng.randrange(3000):04d}" for _ in range(count // 2)]
    callers = [f"+1415555{rng.randrange(1000):04d}" for _ in range(200)]

    def tenant() -> str:
        return f"t{rng.randrange(60)}"

    lines = ["routes:"]
    for i in range(count):
        kind = rng.random()
        number = rng.choice(called)
        if kind < 0.45:
            match = f"{{called: '{number}'}}"
        elif kind < 0.6:
            match = f"{{called: '{number[: rng.randrange(10, 13)]}*'}}"
        elif kind < 0.65:
            others = ", ".join(f"'{rng.choice(called)}'" for _ in range(3))
            match = f"{{called: [{others}, '{number[:11]}*']}}"
        elif kind < 0.72:
            match = f"{{called: '{number}', headers: {{X-Tenant: {tenant()}}}}}"
        elif kind < 0.78:
            match = f"{{caller: '{rng.choice(callers)[: rng.randrange(11, 13)]}*'}}"
        elif kind < 0.82:
            match = f"{{caller: '{rng.choice(callers)}', called: {{prefix: '{number[:10]}'}}}}"
        elif kind < 0.9:
            match = f"{{headers: {{X-Tenant: {tenant()}}}}}"
        elif kind < 0.94:
            match = f"{{called: {{regex: '{number[-4:]}$'}}}}"
        elif kind < 0.97:
            match = f"{{caller: {{country: US, prefix: '{rng.choice(callers)[:11]}'}}}}"
        else:
            match = f"{{any: [{{called: '{number}'}}, {{headers: {{X-Tenant: {tenant()}}}}}]}}"
        lines += [f"  - name: r{i}", f"    match: {match}", "    reject: 486"]
    return "\n".join(lines) + "\n", called, callers


def random_call(rng: random.Random, called: list[str], callers: list[str]) -> CallIdentity:
    roll = rng.random()
    if roll < 0.8:
        number = rng.choice(called)
    elif roll < 0.9:
        number = f"+1800555{rng.randrange(10000):04d}"
    else:
        number = f"+1888555{rng.randrange(10000):04d}"
    caller = rng.choice(callers) if rng.random() < 0.5 else f"+1650555{rng.randrange(10000):04d}"
    extra = [("X-Tenant", f"t{rng.randrange(80)}")] if rng.random() < 0.3 else []
    if rng.random() < 0.05:
        return invite(*extra, caller=None, called=number)
    return invite(*extra, caller=caller, called=number)


@pytest.mark.parametrize(
    ("seed", "count", "calls"),
    [
        pytest.param(1, 2500, 600, id="2500-routes"),
        pytest.param(2, 800, 1200, id="800-routes"),
        pytest.param(3, 200, 2000, id="200-routes"),
    ],
)
def test_index_agrees_with_a_first_match_scan(seed: int, count: int, calls: int) -> None:
    text, called, callers = big_rules(seed, count)
    ruleset = rules(text)
    assert ruleset.index is not None
    assert len(ruleset.routes) == count
    # Most routes are filed under numbers, some are always candidates.
    assert 0 < len(ruleset.index.always) < count // 3
    rng = random.Random(seed * 1000)
    outcomes: set[str] = set()
    for _ in range(calls):
        call = random_call(rng, called, callers)
        expected = scan(ruleset, call, NOON)
        assert ruleset.decide(call, NOON).route == expected, call.headers
        order = ruleset.index.candidates(call)
        assert order == sorted(set(order)), "candidates: file order, each route once"
        outcomes.add(expected)
    # The calls reach many different routes, and the default too.
    assert len(outcomes) > min(count, calls) // 10
    assert "default" in outcomes


ORDER = """
routes:
  - name: tenant-a
    match: {headers: {X-Tenant: a}}
    reject: 480
  - name: support-exact
    match: {called: "+18005550100"}
    reject: 481
  - name: tenant-b
    match: {headers: {X-Tenant: b}}
    reject: 482
  - name: support-prefix
    match: {called: "+1800555*"}
    reject: 483
  - name: tenant-c
    match: {headers: {X-Tenant: c}}
    reject: 484
  - name: caller-prefix
    match: {caller: "+1415*"}
    reject: 485
  - name: tenant-d
    match: {headers: {X-Tenant: d}}
    reject: 486
"""


@pytest.mark.parametrize(
    ("call", "route"),
    [
        pytest.param(invite(("X-Tenant", "a")), "tenant-a", id="unindexed-before-exact"),
        pytest.param(invite(("X-Tenant", "b")), "support-exact", id="exact-before-unindexed"),
        pytest.param(
            invite(("X-Tenant", "b"), called="+18005550199"),
            "tenant-b",
            id="unindexed-before-prefix",
        ),
        pytest.param(
            invite(("X-Tenant", "c"), called="+18005550199"),
            "support-prefix",
            id="prefix-before-unindexed",
        ),
        pytest.param(
            invite(("X-Tenant", "c"), called="+18885550100"),
            "tenant-c",
            id="unindexed-before-caller-prefix",
        ),
        pytest.param(
            invite(("X-Tenant", "d"), called="+18885550100"),
            "caller-prefix",
            id="caller-prefix-before-unindexed",
        ),
        pytest.param(
            invite(("X-Tenant", "d"), caller="+16505550100", called="+18885550100"),
            "tenant-d",
            id="last-unindexed",
        ),
        pytest.param(invite(caller="+16505550100", called="+18885550100"), "default", id="nothing"),
    ],
)
def test_first_match_wins_across_indexed_and_unindexed_routes(
    call: CallIdentity, route: str
) -> None:
    ruleset = rules(ORDER)
    assert ruleset.decide(call, NOON).route == route == scan(ruleset, call, NOON)


def test_large_number_lists_are_not_indexed_but_still_match(tmp_path: Path) -> None:
    write(tmp_path / "big.txt", "".join(f"+1800555{i:04d}\n" for i in range(1500)))
    path = write(
        tmp_path / "routes.yaml",
        """
        lists:
          big: {file: big.txt}
        routes:
          - name: tenant
            match: {headers: {X-Tenant: a}}
            reject: 480
          - name: listed
            match: {called: {list: big}}
            reject: 486
        """,
    )
    ruleset = load_rules(path, region="US")
    assert ruleset.index is not None
    assert ruleset.index.always == (0, 1)
    assert ruleset.decide(invite(called="+18005551499"), NOON).route == "listed"
    assert ruleset.decide(invite(("X-Tenant", "a"), called="+18005551499"), NOON).route == "tenant"
    assert ruleset.decide(invite(called="+18005551500"), NOON).route == "default"


# --- unreachable routes ------------------------------------------------------------------------

WARNING_CASES = [
    pytest.param(
        """
        - name: everyone
          reject: 480
        - name: support
          match: {called: "+18005550100"}
          reject: 486
        - name: gold
          match: {headers: {X-Tier: gold}}
          reject: 486
        """,
        [
            "route 'support' can never match: route 'everyone' before it matches every call",
            "route 'gold' can never match: route 'everyone' before it matches every call",
        ],
        id="catch-all-first",
    ),
    pytest.param(
        """
        - name: support
          match: {called: "+18005550100"}
          reject: 486
        - name: everyone
          match: {}
          reject: 480
        - name: after
          reject: 480
        """,
        ["route 'after' can never match: route 'everyone' before it matches every call"],
        id="empty-match-is-catch-all",
    ),
    pytest.param(
        """
        - name: all-toll-free
          match: {called: "+1800*"}
          reject: 486
        - name: support
          match: {called: "+18005550100"}
          reject: 486
        """,
        [
            "route 'support' can never match: route 'all-toll-free' before it matches every"
            " call it would"
        ],
        id="prefix-covers-exact",
    ),
    pytest.param(
        """
        - name: wide
          match: {caller: "+1415*"}
          reject: 486
        - name: narrow
          match: {caller: "+1415555*"}
          reject: 486
        """,
        ["route 'narrow' can never match: route 'wide' before it matches every call it would"],
        id="prefix-covers-longer-prefix",
    ),
    pytest.param(
        """
        - name: pair
          match: {called: ["+18005550100", "+18005550101"]}
          reject: 486
        - name: one
          match: {called: {equals: "+18005550101"}}
          reject: 486
        """,
        ["route 'one' can never match: route 'pair' before it matches every call it would"],
        id="list-covers-member",
    ),
    pytest.param(
        """
        - name: first
          match: {headers: {X-Tier: gold}}
          reject: 486
        - name: second
          match: {headers: {X-Tier: gold}}
          reject: 480
        """,
        ["route 'second' can never match: route 'first' before it matches every call it would"],
        id="identical-header-match",
    ),
    pytest.param(
        """
        - name: first
          match: {called: "+18005550100", anonymous: true}
          reject: 486
        - name: second
          match: {anonymous: true, called: "+1 800 555 0100"}
          reject: 480
        """,
        ["route 'second' can never match: route 'first' before it matches every call it would"],
        id="identical-match-written-differently",
    ),
    pytest.param(
        """
        - name: general
          match: {called: "+1800*"}
          reject: 486
        - name: specific
          match: {called: "+18005550100", headers: {X-Tier: gold}}
          reject: 480
        """,
        ["route 'specific' can never match: route 'general' before it matches every call it would"],
        id="general-before-more-conditions",
    ),
    pytest.param(
        """
        - name: tier
          match: {headers: {X-Tier: gold}}
          reject: 486
        - name: tier-support
          match: {headers: {X-Tier: gold}, called: "+18005550100"}
          reject: 480
        """,
        [
            "route 'tier-support' can never match: route 'tier' before it matches every call"
            " it would"
        ],
        id="unindexed-covers-indexed",
    ),
]

MONDAY_10 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
SUNDAY_10 = datetime(2026, 6, 7, 10, 0, tzinfo=UTC)

# Each case names, for every route, a call (and time) that the route is the first to take.
NO_WARNING_CASES = [
    pytest.param(
        """
        - name: support
          match: {called: "+18005550100"}
          reject: 486
        - name: all-toll-free
          match: {called: "+1800*"}
          reject: 486
        - name: everyone
          reject: 480
        """,
        {
            "support": invite(),
            "all-toll-free": invite(called="+18005550199"),
            "everyone": invite(called="+18885550100"),
        },
        id="specific-before-general-and-catch-all-last",
    ),
    pytest.param(
        """
        - name: a
          match: {called: "+1800*"}
          reject: 486
        - name: b
          match: {called: "+1888*"}
          reject: 486
        """,
        {"a": invite(), "b": invite(called="+18885550100")},
        id="disjoint-prefixes",
    ),
    pytest.param(
        """
        - name: gold-support
          match: {called: "+18005550100", headers: {X-Tier: gold}}
          reject: 486
        - name: support
          match: {called: "+18005550100"}
          reject: 480
        """,
        {"gold-support": invite(("X-Tier", "gold")), "support": invite()},
        id="earlier-has-an-extra-condition",
    ),
    pytest.param(
        """
        - name: as-called
          match: {called: "+18005550100"}
          reject: 486
        - name: as-caller
          match: {caller: "+18005550100"}
          reject: 480
        """,
        {
            "as-called": invite(),
            "as-caller": invite(caller="+18005550100", called="+18885550100"),
        },
        id="same-number-other-party",
    ),
    pytest.param(
        """
        - name: narrow
          match: {caller: "+1415555*"}
          reject: 486
        - name: wide
          match: {caller: "+1415*"}
          reject: 480
        """,
        {"narrow": invite(), "wide": invite(caller="+14152220100")},
        id="narrow-prefix-first",
    ),
    pytest.param(
        """
        - name: exact
          match: {called: "+18005550100"}
          reject: 486
        - name: prefix-equal-to-it
          match: {called: "+18005550100*"}
          reject: 480
        """,
        {"exact": invite(), "prefix-equal-to-it": invite(called="+180055501001")},
        id="exact-then-prefix-of-the-same-digits",
    ),
    pytest.param(
        """
        - name: gold
          match: {headers: {X-Tier: gold}}
          reject: 486
        - name: silver
          match: {headers: {X-Tier: silver}}
          reject: 480
        - name: gold-any-case
          match: {headers: {X-Tier: {equals: gold, ignore_case: true}}}
          reject: 480
        """,
        {
            "gold": invite(("X-Tier", "gold")),
            "silver": invite(("X-Tier", "silver")),
            "gold-any-case": invite(("X-Tier", "GOLD")),
        },
        id="different-header-values",
    ),
    pytest.param(
        """
        - name: open
          match: {schedule: office}
          reject: 486
        - name: closed
          match: {outside_schedule: office}
          reject: 480
        """,
        {"open": (invite(), MONDAY_10), "closed": (invite(), SUNDAY_10)},
        id="schedule-then-outside",
    ),
    pytest.param(
        """
        - name: not-spam
          match: {not: {caller: "+1900*"}}
          reject: 486
        - name: spam
          match: {caller: "+1900*"}
          reject: 480
        """,
        {"not-spam": invite(), "spam": invite(caller=PREMIUM)},
        id="negation",
    ),
    pytest.param(
        """
        - name: any-of-two
          match: {any: [{called: "+18005550100"}, {anonymous: true}]}
          reject: 486
        - name: support
          match: {called: "+18005550100"}
          reject: 480
        """,
        {"any-of-two": invite(), "support": None},
        id="any-is-not-compared-to-its-arms",
    ),
]


def route_list(routes: str) -> str:
    return (
        "schedules:\n  office: {timezone: UTC, weekly: {mon-fri: '09:00-17:00'}}\nroutes:\n"
        + textwrap.indent(textwrap.dedent(routes).strip(), "  ")
        + "\n"
    )


@pytest.mark.parametrize(("routes", "expected"), WARNING_CASES)
def test_unreachable_route_warnings(routes: str, expected: list[str]) -> None:
    assert list(rules(route_list(routes)).warnings) == expected


@pytest.mark.parametrize(("routes", "reach"), NO_WARNING_CASES)
def test_no_warning_for_routes_that_can_match(routes: str, reach: dict[str, Any]) -> None:
    ruleset = rules(route_list(routes))
    assert ruleset.warnings == ()
    assert [r.name for r in ruleset.routes] == list(reach)
    for name, how in reach.items():
        if how is None:
            continue  # really unreachable, but a warning here would need deeper analysis
        call, now = (how, NOON) if isinstance(how, CallIdentity) else how
        assert ruleset.decide(call, now).route == name


@pytest.mark.parametrize(
    ("routes", "call"),
    [
        pytest.param(
            """
            - name: us
              match: {called: {country: US}}
              reject: 486
            - name: support
              match: {called: "+18005550100"}
              reject: 480
            """,
            invite(),
            id="country-covers-a-number",
        ),
        pytest.param(
            """
            - name: from-alice
              match: {caller: "+14155550100"}
              reject: 486
            - name: alice-to-support
              match: {caller: "+14155550100", called: "+18005550100"}
              reject: 480
            """,
            invite(),
            id="earlier-filed-under-caller-later-under-called",
        ),
        pytest.param(
            """
            - name: toll-free
              match: {called: "+1800*"}
              reject: 486
            - name: support-like
              match: {called: {prefix: "+1800555", regex: "0100$"}}
              reject: 480
            """,
            invite(),
            id="later-has-a-regex-so-is-not-indexed",
        ),
        pytest.param(
            """
            - name: first
              match: {headers: {X-Tier: gold}}
              reject: 486
            - name: second
              match: {headers: {x-tier: gold}}
              reject: 480
            """,
            invite(("X-Tier", "gold")),
            id="same-header-name-in-another-case",
        ),
    ],
)
def test_unreachable_routes_the_check_does_not_see(routes: str, call: CallIdentity) -> None:
    """The check is conservative: it misses some dead routes, and never warns wrongly.

    In each case the second route is dead (the first takes every call it would), yet no
    warning is given. Should the check learn these, move the case to WARNING_CASES."""
    ruleset = rules(route_list(routes))
    first, second = ruleset.routes
    assert ruleset.warnings == ()
    assert second.matches(call, NOON)
    assert ruleset.decide(call, NOON).route == first.name


def test_no_warnings_for_a_large_rule_set_without_overlaps() -> None:
    lines = ["routes:"]
    for i in range(2000):
        lines += [f"  - name: r{i}", f"    match: {{called: '+1800555{i:04d}'}}", "    reject: 486"]
    for i in range(200):
        lines += [
            f"  - name: h{i}",
            f"    match: {{headers: {{X-Tenant: t{i}}}}}",
            "    reject: 486",
        ]
    lines += ["  - name: everyone", "    reject: 480"]
    ruleset = rules("\n".join(lines) + "\n")
    assert ruleset.warnings == ()
    assert ruleset.decide(invite(called="+18005551999"), NOON).route == "r1999"
    assert ruleset.decide(invite(("X-Tenant", "t7"), called="+18885550100"), NOON).route == "h7"


def test_warnings_do_not_change_decisions() -> None:
    ruleset = rules(route_list("- {name: everyone, reject: 480}\n- {name: gold, reject: 486}"))
    assert ruleset.warnings == (
        "route 'gold' can never match: route 'everyone' before it matches every call",
    )
    assert ruleset.decide(invite(), NOON).action == Reject(480)


@pytest.mark.parametrize("combinator", ["all", "any"])
def test_empty_combinators_are_errors(combinator: str) -> None:
    text = f"routes:\n  - name: a\n    match: {{{combinator}: []}}\n    reject: {{}}\n"
    with pytest.raises(RulesError) as caught:
        compile_rules(text, "routes.yaml", region="US")
    assert str(caught.value) == (
        f"routes.yaml:3:13: routes[0].match.{combinator}:"
        " List should have at least 1 item after validation, not 0"
    )


def test_national_prefixes_warn_with_their_e164_form() -> None:
    text = (
        "routes:\n"
        "  - {name: london, match: {caller: '020*'}, reject: {}}\n"
        "  - {name: extensions, match: {called: '10*'}, reject: {}}\n"
    )
    rules = compile_rules(text, "routes.yaml", region="GB")
    assert rules.warnings == (
        "prefix 020* is compared as dialled (extensions, short codes), but numbers arrive "
        "in E.164: for national numbers write +4420*",
    )
    assert compile_rules(text, "routes.yaml", region="US").warnings == ()
