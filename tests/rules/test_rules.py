"""Table-driven tests for app.rules: routes.yaml -> RuleSet -> Decision.

Calls are built the way the router builds them: realistic INVITE header values through
`app.sip.identity.identify`, so a rule is only as good as what a real trunk's headers make of it.
Rules files are written inline; every expected error names its exact file:line:column.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.rules import (
    Accept,
    ConfigIssue,
    Decision,
    Refer,
    Reject,
    RulesError,
    RuleSet,
    compile_rules,
    load_rules,
)
from app.rules.numbers import MAX_LIST_BYTES
from app.sip.identity import CallIdentity, Headers, IdentityPolicy, identify

FILE = "routes.yaml"
SAMPLE = Path(__file__).resolve().parents[2] / "routes.yaml"

# Header values as trunks send them.
FROM_ALICE = '"Alice Example" <sip:+14155550100@trunk.example.net>;tag=9fxced76sl'
TO_SUPPORT = "<sip:+18005550100@sip.api.openai.com>"
FROM_ANONYMOUS = '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1928301774'
VIA = "SIP/2.0/TLS 198.51.100.7:5061;branch=z9hG4bK776asdhds"
CALL_ID = "a84b4c76e66710@pc33.example.net"


def rules(text: str, *, region: str = "US") -> RuleSet:
    return compile_rules(textwrap.dedent(text), FILE, region=region)


def issues(text: str, *, region: str = "US") -> list[str]:
    with pytest.raises(RulesError) as caught:
        rules(text, region=region)
    assert str(caught.value) == "\n".join(str(i) for i in caught.value.issues)
    return [str(issue) for issue in caught.value.issues]


def invite(
    *extra: tuple[str, str],
    from_: str | None = FROM_ALICE,
    to: str = TO_SUPPORT,
    region: str = "US",
) -> CallIdentity:
    """An INVITE's headers, in wire order, read with the given default region."""
    items = [("Via", VIA)]
    if from_ is not None:
        items.append(("From", from_))
    items += [("To", to), ("Call-ID", CALL_ID), ("CSeq", "1 INVITE"), *extra]
    return identify(Headers(items), IdentityPolicy(default_region=region))


def body(action: Accept | Reject | Refer) -> dict[str, Any]:
    """The accept body an action sends (for refer: the accept sent before the REFER)."""
    assert not isinstance(action, Reject)
    result: dict[str, Any] = json.loads(
        action.body if isinstance(action, Accept) else action.accept_body
    )
    return result


# --- matching -----------------------------------------------------------------------


def single_route(match: str, *, region: str = "US") -> RuleSet:
    """One route `hit` with the given `match:` (YAML flow mapping), then the built-in default."""
    return rules(
        f"""
        routes:
          - name: hit
            match: {match}
            reject: 486
        """,
        region=region,
    )


def sip_from(user: str, host: str = "trunk.example.net") -> str:
    return f"<sip:{user}@{host}>;tag=4711"


MATCH_CASES = [
    # caller / called numbers, written in various formats
    pytest.param('{caller: "+1 (415) 555-0100"}', {}, "US", True, id="caller-formatted-e164"),
    pytest.param('{caller: "+1.415.555.0100"}', {}, "US", True, id="caller-dotted-e164"),
    pytest.param('{caller: "+1 (415) 555-0101"}', {}, "US", False, id="caller-other-number"),
    pytest.param('{caller: "4155550100"}', {}, "US", True, id="caller-national-US-vs-e164-call"),
    pytest.param(
        '{caller: "4155550100"}',
        {"from_": sip_from("4155550100")},
        "US",
        True,
        id="caller-national-US-vs-national-call",
    ),
    pytest.param(
        '{caller: "+14155550100"}',
        {"from_": "<tel:+1-415-555-0100>;tag=x"},
        "US",
        True,
        id="caller-tel-uri-with-separators",
    ),
    pytest.param(
        '{caller: "020 7946 0958"}',
        {"from_": sip_from("+442079460958")},
        "GB",
        True,
        id="caller-national-GB-vs-e164-call",
    ),
    pytest.param(
        '{caller: "020 7946 0958"}',
        {"from_": "<sip:02079460958@gw.example.co.uk;user=phone>;tag=1"},
        "GB",
        True,
        id="caller-national-GB-vs-national-call",
    ),
    pytest.param(
        '{caller: "020 7946 0958"}',
        {"from_": sip_from("+442079460958")},
        "US",
        False,
        id="caller-national-GB-pattern-read-as-US",
    ),
    pytest.param(
        '{caller: ["+14155550199", "+1 415 555 0100"]}', {}, "US", True, id="caller-list-second"
    ),
    pytest.param(
        '{caller: ["+14155550199", "+14155550198"]}', {}, "US", False, id="caller-list-none"
    ),
    pytest.param('{caller: "+1415*"}', {}, "US", True, id="caller-prefix"),
    pytest.param('{caller: "+1 415 *"}', {}, "US", True, id="caller-prefix-with-spaces"),
    pytest.param('{caller: "+1650*"}', {}, "US", False, id="caller-prefix-other"),
    pytest.param('{caller: ["+1900*", "+1415*"]}', {}, "US", True, id="caller-prefix-list-second"),
    pytest.param(
        '{caller: "1001"}',
        {"from_": sip_from("1001", "pbx.example.com")},
        "US",
        True,
        id="caller-extension",
    ),
    pytest.param(
        '{caller: "1001"}',
        {"from_": sip_from("1002", "pbx.example.com")},
        "US",
        False,
        id="caller-other-extension",
    ),
    pytest.param(
        '{caller: "10*"}',
        {"from_": sip_from("1042", "pbx.example.com")},
        "US",
        True,
        id="caller-extension-prefix",
    ),
    pytest.param(
        '{caller: "+1415*"}',
        {"from_": FROM_ANONYMOUS},
        "US",
        False,
        id="caller-anonymous-has-no-number",
    ),
    pytest.param(
        '{caller: "+14155550100"}',
        {
            "from_": sip_from("+19995550000"),
            "extra": [("P-Asserted-Identity", "<sip:+14155550100@carrier.example.net>")],
        },
        "US",
        True,
        id="caller-from-p-asserted-identity",
    ),
    pytest.param(
        '{caller: "+14155550100"}',
        {"from_": None, "extra": [("f", FROM_ALICE)]},
        "US",
        True,
        id="caller-from-compact-f",
    ),
    pytest.param('{called: "+1 800 555 0100"}', {}, "US", True, id="called-e164"),
    pytest.param('{called: "800-555-0100"}', {}, "US", True, id="called-national"),
    pytest.param('{called: "+1800*"}', {}, "US", True, id="called-prefix"),
    pytest.param(
        '{called: "+18005550100"}', {"to": "<tel:+18005550100>"}, "US", True, id="called-tel"
    ),
    pytest.param('{called: "+18005550199"}', {}, "US", False, id="called-other"),
    pytest.param('{called: "+1415*"}', {}, "US", False, id="called-not-caller"),
    # unquoted numbers: YAML would read them as integers (dropping + and reading octal)
    pytest.param(
        "{caller: +442079460958}",
        {"from_": sip_from("+442079460958")},
        "US",
        True,
        id="caller-unquoted-foreign-e164",
    ),
    pytest.param("{caller: +14155550100}", {}, "GB", True, id="caller-unquoted-e164-other-region"),
    pytest.param(
        "{caller: 0100}",
        {"from_": sip_from("0100", "pbx.example.com")},
        "US",
        True,
        id="caller-unquoted-leading-zero-extension",
    ),
    pytest.param(
        "{caller: 1001}",
        {"from_": sip_from("1001", "pbx.example.com")},
        "US",
        True,
        id="caller-unquoted-extension",
    ),
    # headers
    pytest.param(
        "{headers: {X-Customer-Tier: gold}}",
        {"extra": [("X-Customer-Tier", "gold")]},
        "US",
        True,
        id="header-equals-shorthand",
    ),
    pytest.param(
        "{headers: {X-Customer-Tier: gold}}",
        {"extra": [("X-Customer-Tier", "silver")]},
        "US",
        False,
        id="header-equals-other-value",
    ),
    pytest.param("{headers: {X-Customer-Tier: gold}}", {}, "US", False, id="header-equals-absent"),
    pytest.param(
        "{headers: {X-Customer-Tier: gold}}",
        {"extra": [("X-Customer-Tier", "Gold")]},
        "US",
        False,
        id="header-value-case-sensitive",
    ),
    pytest.param(
        "{headers: {X-Customer-Tier: gold}}",
        {"extra": [("X-Customer-Tier", "  gold ")]},
        "US",
        True,
        id="header-value-surrounding-space-ignored",
    ),
    pytest.param(
        "{headers: {X-Customer-Tier: {equals: gold}}}",
        {"extra": [("X-Customer-Tier", "gold")]},
        "US",
        True,
        id="header-equals-long-form",
    ),
    pytest.param(
        "{headers: {X-Customer-Tier: {equals: gold}}}",
        {"extra": [("X-Customer-Tier", "bronze")]},
        "US",
        False,
        id="header-equals-long-form-other-value",
    ),
    pytest.param(
        "{headers: {x-customer-tier: gold}}",
        {"extra": [("X-CUSTOMER-TIER", "gold")]},
        "US",
        True,
        id="header-name-case-insensitive",
    ),
    pytest.param(
        "{headers: {X-Tag: b}}",
        {"extra": [("X-Tag", "a"), ("X-Tag", "b"), ("X-Tag", "c")]},
        "US",
        True,
        id="header-repeated-any-value",
    ),
    pytest.param(
        "{headers: {X-Tag: d}}",
        {"extra": [("X-Tag", "a"), ("X-Tag", "b")]},
        "US",
        False,
        id="header-repeated-no-value",
    ),
    pytest.param(
        "{headers: {X-Legacy-Pbx: {present: true}}}",
        {"extra": [("X-Legacy-Pbx", "")]},
        "US",
        True,
        id="header-present-empty-value",
    ),
    pytest.param(
        "{headers: {X-Legacy-Pbx: {present: true}}}", {}, "US", False, id="header-present-absent"
    ),
    pytest.param(
        "{headers: {X-Legacy-Pbx: {present: false}}}", {}, "US", True, id="header-absent-absent"
    ),
    pytest.param(
        "{headers: {X-Legacy-Pbx: {present: false}}}",
        {"extra": [("x-legacy-pbx", "1")]},
        "US",
        False,
        id="header-absent-present",
    ),
    pytest.param(
        "{headers: {Subject: urgent}}",
        {"extra": [("s", "urgent")]},
        "US",
        True,
        id="header-full-name-rule-compact-call",
    ),
    pytest.param(
        "{headers: {s: urgent}}",
        {"extra": [("Subject", "urgent")]},
        "US",
        True,
        id="header-compact-rule-full-call",
    ),
    pytest.param("{headers: {f: {present: true}}}", {}, "US", True, id="header-compact-f-is-from"),
    pytest.param(
        "{headers: {Referred-By: {present: true}}}",
        {"extra": [("b", "<sip:alice@example.com>")]},
        "US",
        True,
        id="header-compact-b-is-referred-by",
    ),
    # anonymous
    pytest.param("{anonymous: true}", {"from_": FROM_ANONYMOUS}, "US", True, id="anonymous-from"),
    pytest.param(
        "{anonymous: true}",
        {"extra": [("P-Asserted-Identity", "<sip:+14155550100@x.net>"), ("Privacy", "id")]},
        "US",
        True,
        id="anonymous-privacy-id",
    ),
    pytest.param("{anonymous: true}", {}, "US", False, id="anonymous-true-known-caller"),
    pytest.param("{anonymous: false}", {}, "US", True, id="anonymous-false-known-caller"),
    pytest.param(
        "{anonymous: false}", {"from_": FROM_ANONYMOUS}, "US", False, id="anonymous-false-anon"
    ),
    # several conditions: all must hold
    pytest.param(
        '{caller: "+1415*", called: "+18005550100", headers: {X-Tier: gold}, anonymous: false}',
        {"extra": [("X-Tier", "gold")]},
        "US",
        True,
        id="all-conditions-hold",
    ),
    pytest.param(
        '{caller: "+1415*", called: "+18005550100", headers: {X-Tier: gold}, anonymous: false}',
        {"extra": [("X-Tier", "silver")]},
        "US",
        False,
        id="all-but-header",
    ),
    pytest.param(
        '{caller: "+1415*", called: "+18005550199", headers: {X-Tier: gold}}',
        {"extra": [("X-Tier", "gold")]},
        "US",
        False,
        id="all-but-called",
    ),
    pytest.param(
        "{headers: {X-Tier: gold, X-Region: {present: true}}}",
        {"extra": [("X-Tier", "gold")]},
        "US",
        False,
        id="two-headers-one-missing",
    ),
    pytest.param("{}", {"from_": FROM_ANONYMOUS}, "US", True, id="empty-match-matches-all"),
]


@pytest.mark.parametrize(("match", "call", "region", "hit"), MATCH_CASES)
def test_match(match: str, call: dict[str, Any], region: str, hit: bool) -> None:
    ruleset = single_route(match, region=region)
    kwargs = dict(call)
    extra = kwargs.pop("extra", [])
    decision = ruleset.decide(invite(*extra, region=region, **kwargs))
    assert decision.route == ("hit" if hit else "default")
    assert decision.action == (Reject(486) if hit else Reject(603))


ORDERED = """
    routes:
      - name: spam
        match: {caller: "+1900*"}
        reject: 603
      - name: gold
        match: {headers: {X-Tier: gold}}
        reject: 486
      - name: everyone
        reject: 480
      - name: never
        match: {caller: "+1415*"}
        reject: 404
    """


@pytest.mark.parametrize(
    ("call", "route", "status"),
    [
        pytest.param(invite(from_=sip_from("+19005550199")), "spam", 603, id="first"),
        pytest.param(
            invite(("X-Tier", "gold"), from_=sip_from("+19005550199")),
            "spam",
            603,
            id="first-of-two-matching",
        ),
        pytest.param(invite(("X-Tier", "gold")), "gold", 486, id="second"),
        pytest.param(invite(), "everyone", 480, id="no-match-key-matches-all"),
        pytest.param(invite(from_=None), "everyone", 480, id="no-headers-to-match-on"),
    ],
)
def test_routes_are_tried_in_order_first_match_wins(
    call: CallIdentity, route: str, status: int
) -> None:
    ruleset = rules(ORDERED)
    assert ruleset.decide(call) == Decision(route, Reject(status), ruleset.version)


@pytest.mark.parametrize(
    ("default", "action"),
    [
        pytest.param("", Reject(603), id="built-in-603"),
        pytest.param("default: {reject: 480}", Reject(480), id="reject"),
        pytest.param("default: {reject: }", Reject(603), id="bare-reject"),
        pytest.param(
            "default: {accept: front}",
            Accept(b'{"type":"realtime","model":"gpt-realtime"}'),
            id="accept-session",
        ),
        pytest.param(
            "default: {refer: 'sip:operator@pbx.example.com'}",
            Refer("sip:operator@pbx.example.com", b'{"type":"realtime"}'),
            id="refer",
        ),
    ],
)
def test_default_action_when_no_route_matches(default: str, action: Any) -> None:
    ruleset = rules(
        f"""
        sessions:
          front: {{model: gpt-realtime}}
        routes:
          - name: spam
            match: {{caller: "+1900*"}}
            reject: 603
        {default}
        """
    )
    decision = ruleset.decide(invite())
    assert decision == Decision("default", action, ruleset.version)


def test_no_routes_at_all_uses_default() -> None:
    ruleset = rules("routes: []\n")
    assert ruleset.routes == ()
    assert ruleset.decide(invite()) == Decision("default", Reject(603), ruleset.version)
    decision = ruleset.decide(invite())
    assert len(decision) == len(Decision._fields)  # built with tuple.__new__
    assert decision.note is None and decision.rules_version == ruleset.version


# --- actions ------------------------------------------------------------------------

SESSIONS = """
sessions:
  desk:
    model: gpt-realtime
    instructions: You are the front desk.
    audio:
      input:
        turn_detection: {type: semantic_vad, eagerness: auto}
      output: {voice: marin, speed: 1.1}
    tools:
      - {type: function, name: lookup_order}
      - {type: function, name: transfer}
    tracing: auto
  bare: {}
"""

DESK = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "You are the front desk.",
    "audio": {
        "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "auto"}},
        "output": {"voice": "marin", "speed": 1.1},
    },
    "tools": [
        {"type": "function", "name": "lookup_order"},
        {"type": "function", "name": "transfer"},
    ],
    "tracing": "auto",
}


def only_action(route: str) -> Accept | Reject | Refer:
    """The action of a file with SESSIONS and one route (YAML lines, indented 4)."""
    text = SESSIONS + "routes:\n  - name: only\n" + textwrap.indent(textwrap.dedent(route), "    ")
    ruleset = compile_rules(text, FILE, region="US")
    decision = ruleset.decide(invite())
    assert decision.route == "only"
    return decision.action


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        pytest.param("accept: {}", {"type": "realtime"}, id="empty"),
        pytest.param("accept: desk", DESK, id="shorthand"),
        pytest.param("accept: {session: desk}", DESK, id="by-name"),
        pytest.param("accept: bare", {"type": "realtime"}, id="empty-named-session"),
        pytest.param(
            "accept: {model: gpt-realtime-mini, instructions: Be brief.}",
            {"type": "realtime", "model": "gpt-realtime-mini", "instructions": "Be brief."},
            id="inline-no-session",
        ),
        pytest.param(
            """
            accept:
              session: desk
              audio:
                output: {voice: sage}
            """,
            {
                **DESK,
                "audio": {
                    "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "auto"}},
                    "output": {"voice": "sage", "speed": 1.1},
                },
            },
            id="nested-dicts-merge",
        ),
        pytest.param(
            """
            accept:
              session: desk
              audio:
                input: {turn_detection: {type: server_vad}}
            """,
            {
                **DESK,
                "audio": {
                    # Another type replaces the mapping: semantic_vad's eagerness is not kept
                    # (server_vad has none; the API would refuse the accept).
                    "input": {"turn_detection": {"type": "server_vad"}},
                    "output": {"voice": "marin", "speed": 1.1},
                },
            },
            id="deeply-nested-merge",
        ),
        pytest.param(
            """
            accept:
              session: desk
              tools: [{type: function, name: escalate}]
            """,
            {**DESK, "tools": [{"type": "function", "name": "escalate"}]},
            id="lists-replace",
        ),
        pytest.param(
            """
            accept:
              session: desk
              instructions: You are the night desk.
              model: gpt-realtime-mini
            """,
            {**DESK, "instructions": "You are the night desk.", "model": "gpt-realtime-mini"},
            id="scalars-replace",
        ),
        pytest.param(
            """
            accept:
              session: desk
              tracing: {workflow_name: desk}
            """,
            {**DESK, "tracing": {"workflow_name": "desk"}},
            id="dict-replaces-scalar",
        ),
        pytest.param(
            """
            accept:
              session: desk
              max_output_tokens: 512
            """,
            {**DESK, "max_output_tokens": 512},
            id="new-key-added",
        ),
    ],
)
def test_accept_body(route: str, expected: dict[str, Any]) -> None:
    action = only_action(route)
    assert isinstance(action, Accept)
    assert body(action) == expected
    assert action.session == expected
    assert next(iter(body(action))) == "type"


def test_accept_body_is_compact_json_with_type_first() -> None:
    action = only_action("accept: {model: gpt-realtime}")
    assert action == Accept(b'{"type":"realtime","model":"gpt-realtime"}')


def test_overrides_do_not_change_the_shared_session() -> None:
    ruleset = rules(
        SESSIONS
        + """
routes:
  - name: sage
    match: {headers: {X-Voice: sage}}
    accept: {session: desk, audio: {output: {voice: sage}}}
  - name: plain
    accept: desk
"""
    )
    sage = ruleset.decide(invite(("X-Voice", "sage")))
    plain = ruleset.decide(invite())
    assert (sage.route, plain.route) == ("sage", "plain")
    assert body(sage.action)["audio"]["output"]["voice"] == "sage"
    assert body(plain.action) == DESK


@pytest.mark.parametrize(
    ("route", "status"),
    [
        pytest.param("reject: {}", 603, id="default-603"),
        pytest.param("reject:", 603, id="bare"),
        pytest.param("reject: {status_code: 486}", 486, id="given"),
        pytest.param("reject: 486", 486, id="shorthand"),
        pytest.param("reject: 400", 400, id="lowest"),
        pytest.param("reject: 699", 699, id="highest"),
    ],
)
def test_reject(route: str, status: int) -> None:
    assert only_action(route) == Reject(status)


@pytest.mark.parametrize(
    ("route", "target", "accept"),
    [
        pytest.param(
            "refer: tel:+14155550123", "tel:+14155550123", {"type": "realtime"}, id="tel-shorthand"
        ),
        pytest.param(
            "refer: {target_uri: 'tel:+1-415-555-0123'}",
            "tel:+1-415-555-0123",
            {"type": "realtime"},
            id="tel-visual-separators",
        ),
        pytest.param(
            "refer: 'tel:+14155550123;ext=22'",
            "tel:+14155550123;ext=22",
            {"type": "realtime"},
            id="tel-with-param",
        ),
        pytest.param(
            "refer: {target_uri: 'sip:operator@pbx.example.com'}",
            "sip:operator@pbx.example.com",
            {"type": "realtime"},
            id="sip",
        ),
        pytest.param(
            "refer: 'sip:+14155550123@pbx.example.com:5060;user=phone'",
            "sip:+14155550123@pbx.example.com:5060;user=phone",
            {"type": "realtime"},
            id="sip-port-params",
        ),
        pytest.param(
            "refer: 'sips:agent@secure.example.com;transport=tls'",
            "sips:agent@secure.example.com;transport=tls",
            {"type": "realtime"},
            id="sips",
        ),
        pytest.param(
            "refer: 'sip:queue@[2001:db8::1]:5061'",
            "sip:queue@[2001:db8::1]:5061",
            {"type": "realtime"},
            id="sip-ipv6-host",
        ),
        pytest.param(
            "refer: sip:pbx.example.com",
            "sip:pbx.example.com",
            {"type": "realtime"},
            id="sip-host-only",
        ),
        pytest.param(
            "refer: {target_uri: 'tel:+14155550123', session: bare}",
            "tel:+14155550123",
            {"type": "realtime"},
            id="named-empty-session",
        ),
        pytest.param(
            "refer: {target_uri: 'tel:+14155550123', session: desk}",
            "tel:+14155550123",
            DESK,
            id="named-session",
        ),
    ],
)
def test_refer(route: str, target: str, accept: dict[str, Any]) -> None:
    action = only_action(route)
    assert isinstance(action, Refer)
    assert action.target_uri == target
    assert json.loads(action.accept_body) == accept


def test_refer_minimal_accept_body_is_exact() -> None:
    assert only_action("refer: tel:+14155550123") == Refer(
        "tel:+14155550123", b'{"type":"realtime"}'
    )


def test_every_decision_names_its_route_and_carries_the_rules_version() -> None:
    text = textwrap.dedent(
        """
        routes:
          - name: gold
            match: {headers: {X-Tier: gold}}
            refer: tel:+14155550123
          - name: support
            match: {called: "+18005550100"}
            accept: {}
        default: {reject: 480}
        """
    )
    ruleset = compile_rules(text, FILE, region="US")
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    assert ruleset.version == version
    decisions = [
        ruleset.decide(invite(("X-Tier", "gold"))),
        ruleset.decide(invite()),
        ruleset.decide(invite(to="<sip:+18005550199@sip.api.openai.com>")),
    ]
    assert [(d.route, d.action.kind, d.rules_version) for d in decisions] == [
        ("gold", "refer", version),
        ("support", "accept", version),
        ("default", "reject", version),
    ]
    assert list(ruleset.route_actions()) == [
        ("gold", "refer"),
        ("support", "accept"),
        ("default", "reject"),
    ]


def test_version_is_a_content_hash() -> None:
    text = "routes: [{name: all, reject: 486}]\n"
    same = compile_rules(text, "a.yaml", region="US")
    again = compile_rules(text, "b.yaml", region="GB")
    edited = compile_rules(text.replace("486", "480"), "a.yaml", region="US")
    assert same.version == again.version != edited.version
    assert len(same.version) == 12
    assert same.source == "a.yaml"


# --- config errors --------------------------------------------------------------------

URI_HELP = "is not a transfer target: use tel:+14155550123, sip:user@host or sips:user@host"


def one_route(lines: str) -> str:
    """A file with one route named `r` whose body (indented 4) is `lines`."""
    return "routes:\n  - name: r\n" + textwrap.indent(textwrap.dedent(lines).strip(), "    ")


ERROR_CASES = [
    # unknown and misspelt keys
    pytest.param(
        "route: []\n",
        ["routes.yaml:1:1: route: unknown key (did you mean 'routes'?)"],
        id="misspelt-top-level",
    ),
    pytest.param(
        "routes: []\ndefualt: {reject: 480}\n",
        ["routes.yaml:2:1: defualt: unknown key (did you mean 'default'?)"],
        id="misspelt-default",
    ),
    pytest.param(
        one_route('match: {cller: "+14155550100"}\nreject: 486'),
        ["routes.yaml:3:13: routes[0].match.cller: unknown key (did you mean 'caller'?)"],
        id="misspelt-caller",
    ),
    pytest.param(
        one_route('mach: {caller: "+14155550100"}\nreject: 486'),
        ["routes.yaml:3:5: routes[0].mach: unknown key (did you mean 'match'?)"],
        id="misspelt-match",
    ),
    pytest.param(
        one_route("rejct: 486"),
        ["routes.yaml:3:5: routes[0].rejct: unknown key (did you mean 'reject'?)"],
        id="misspelt-action",
    ),
    pytest.param(
        one_route("reject: {status: 486}"),
        ["routes.yaml:3:14: routes[0].reject.status: unknown key (did you mean 'status_code'?)"],
        id="misspelt-status-code",
    ),
    pytest.param(
        one_route("refer: {target: 'tel:+14155550123'}"),
        [
            "routes.yaml:3:5: routes[0].refer.target_uri: required key is missing",
            "routes.yaml:3:13: routes[0].refer.target: unknown key (did you mean 'target_uri'?)",
        ],
        id="misspelt-target-uri",
    ),
    pytest.param(
        "sessions:\n  desk:\n    instruction: Hello\nroutes: []\n",
        ["routes.yaml:3:5: sessions.desk.instruction: unknown key (did you mean 'instructions'?)"],
        id="misspelt-session-key",
    ),
    pytest.param(
        "sessions:\n  desk:\n    audio: {output: {voise: marin}}\nroutes: []\n",
        ["routes.yaml:3:22: sessions.desk.audio.output.voise: unknown key (did you mean 'voice'?)"],
        id="misspelt-nested-session-key",
    ),
    pytest.param(
        "sessions: {desk: {}}\n" + one_route("session: desk\naccept: {}"),
        ["routes.yaml:4:5: routes[0].session: unknown key here: session belongs under accept"],
        id="known-key-misplaced",
    ),
    pytest.param(
        one_route("colour: red\nreject: 486"),
        [
            "routes.yaml:3:5: routes[0].colour: unknown key (expected one of: accept, fallback,"
            " match, name, rate_limit, refer, reject, split)"
        ],
        id="unknown-key-no-suggestion",
    ),
    # status codes
    pytest.param(
        one_route("reject: 399"),
        ["routes.yaml:3:5: routes[0].reject: Input should be greater than or equal to 400"],
        id="status-399-shorthand",
    ),
    pytest.param(
        one_route("reject: 200"),
        ["routes.yaml:3:5: routes[0].reject: Input should be greater than or equal to 400"],
        id="status-200-shorthand",
    ),
    pytest.param(
        one_route("reject: {status_code: 700}"),
        [
            "routes.yaml:3:14: routes[0].reject.status_code:"
            " Input should be less than or equal to 699"
        ],
        id="status-700",
    ),
    pytest.param(
        "routes: []\ndefault: {reject: 180}\n",
        ["routes.yaml:2:11: default.reject: Input should be greater than or equal to 400"],
        id="status-in-default",
    ),
    pytest.param(
        one_route("reject: busy"),
        [
            "routes.yaml:3:5: routes[0].reject:"
            " Input should be a valid dictionary or instance of RejectAction"
        ],
        id="status-not-a-number",
    ),
    # transfer targets
    pytest.param(
        one_route("refer: 'sip:alice @example.com'"),
        [f"routes.yaml:3:5: routes[0].refer: 'sip:alice @example.com' {URI_HELP}"],
        id="uri-space",
    ),
    pytest.param(
        one_route("refer: 'sip:alice@example.com?Subject=hi'"),
        [f"routes.yaml:3:5: routes[0].refer: 'sip:alice@example.com?Subject=hi' {URI_HELP}"],
        id="uri-embedded-headers",
    ),
    pytest.param(
        one_route("refer: '<sip:alice@example.com>'"),
        [f"routes.yaml:3:5: routes[0].refer: '<sip:alice@example.com>' {URI_HELP}"],
        id="uri-angle-brackets",
    ),
    pytest.param(
        one_route("refer: {target_uri: 'http://example.com/transfer'}"),
        [f"routes.yaml:3:13: routes[0].refer.target_uri: 'http://example.com/transfer' {URI_HELP}"],
        id="uri-http",
    ),
    pytest.param(
        one_route("refer: 'sip:alice@'"),
        [f"routes.yaml:3:5: routes[0].refer: 'sip:alice@' {URI_HELP}"],
        id="uri-missing-host",
    ),
    pytest.param(
        one_route("refer: 'sip:'"),
        [f"routes.yaml:3:5: routes[0].refer: 'sip:' {URI_HELP}"],
        id="uri-scheme-only",
    ),
    pytest.param(
        one_route("refer: 'sip:a@x.example.com,sip:b@y.example.com'"),
        [f"routes.yaml:3:5: routes[0].refer: 'sip:a@x.example.com,sip:b@y.example.com' {URI_HELP}"],
        id="uri-two-sip-uris",
    ),
    pytest.param(
        one_route("refer: 'tel:+14155550123,tel:+14155550124'"),
        [f"routes.yaml:3:5: routes[0].refer: 'tel:+14155550123,tel:+14155550124' {URI_HELP}"],
        id="uri-two-tel-uris",
    ),
    pytest.param(
        one_route("refer: 'tel:+1 415 555 0123'"),
        [f"routes.yaml:3:5: routes[0].refer: 'tel:+1 415 555 0123' {URI_HELP}"],
        id="uri-tel-with-spaces",
    ),
    pytest.param(
        one_route("refer: '+14155550123'"),
        [f"routes.yaml:3:5: routes[0].refer: '+14155550123' {URI_HELP}"],
        id="uri-bare-number",
    ),
    # number patterns
    pytest.param(
        one_route('match: {caller: "abc"}\nreject: 486'),
        ["routes.yaml:3:13: routes[0].match.caller: 'abc' is not a phone number"],
        id="number-letters",
    ),
    pytest.param(
        one_route('match: {called: "1-800-FLOWERS"}\nreject: 486'),
        ["routes.yaml:3:13: routes[0].match.called: '1-800-FLOWERS' is not a phone number"],
        id="number-vanity",
    ),
    pytest.param(
        one_route('match: {caller: "+1*5"}\nreject: 486'),
        ["routes.yaml:3:13: routes[0].match.caller: '+1*5' is not a phone number"],
        id="number-star-inside",
    ),
    pytest.param(
        one_route('match: {caller: "*"}\nreject: 486'),
        [
            "routes.yaml:3:13: routes[0].match.caller:"
            " '*' is not a number prefix (digits, optional +, then *)"
        ],
        id="number-star-only",
    ),
    pytest.param(
        one_route('match: {caller: "+1-415-x*"}\nreject: 486'),
        [
            "routes.yaml:3:13: routes[0].match.caller:"
            " '+1-415-x*' is not a number prefix (digits, optional +, then *)"
        ],
        id="number-bad-prefix",
    ),
    pytest.param(
        one_route('match: {caller: "+999"}\nreject: 486'),
        ["routes.yaml:3:13: routes[0].match.caller: '+999' is not a possible E.164 number"],
        id="number-impossible-e164",
    ),
    pytest.param(
        one_route('match: {called: ["+14155550100", "nope"]}\nreject: 486'),
        ["routes.yaml:3:13: routes[0].match.called: 'nope' is not a phone number"],
        id="number-bad-list-item",
    ),
    pytest.param(
        one_route("match: {caller: []}\nreject: 486"),
        [
            "routes.yaml:3:13: routes[0].match.caller:"
            " expected a number, a prefix ending in *, or a non-empty list of them"
        ],
        id="number-empty-list",
    ),
    pytest.param(
        one_route("match: {caller: true}\nreject: 486"),
        [
            "routes.yaml:3:13: routes[0].match.caller:"
            " numbers must be written as strings, e.g. '+14155550123'"
        ],
        id="number-bool",
    ),
    # match conditions
    pytest.param(
        one_route("match: {headers: {X-Tier: {equals: gold, present: true}}}\nreject: 486"),
        [
            "routes.yaml:3:23: routes[0].match.headers.X-Tier:"
            " Input should be a valid string;"
            " give exactly one of: equals, contains, regex, present, absent"
        ],
        id="header-equals-and-present",
    ),
    pytest.param(
        one_route("match: {headers: {X-Tier: {}}}\nreject: 486"),
        [
            "routes.yaml:3:23: routes[0].match.headers.X-Tier:"
            " Input should be a valid string;"
            " give exactly one of: equals, contains, regex, present, absent"
        ],
        id="header-condition-empty",
    ),
    pytest.param(
        one_route("match: {headers: {X-Tier: {equal: gold}}}\nreject: 486"),
        [
            "routes.yaml:3:23: routes[0].match.headers.X-Tier: Input should be a valid string",
            "routes.yaml:3:32: routes[0].match.headers.X-Tier.equal:"
            " unknown key (did you mean 'equals'?)",
        ],
        id="header-condition-misspelt",
    ),
    pytest.param(
        one_route("match: {headers: {X-Tier: gold, x-tier: silver}}\nreject: 486"),
        ["routes.yaml:3:13: routes[0].match.headers: header 'x-tier' is given twice"],
        id="header-twice-different-case",
    ),
    pytest.param(
        one_route("match: {headers: {'X Tier': gold}}\nreject: 486"),
        ["routes.yaml:3:13: routes[0].match.headers: 'X Tier' is not a SIP header name"],
        id="header-name-with-space",
    ),
    pytest.param(
        one_route("match: {anonymous: maybe}\nreject: 486"),
        [
            "routes.yaml:3:13: routes[0].match.anonymous:"
            " Input should be a valid boolean, unable to interpret input"
        ],
        id="anonymous-not-bool",
    ),
    # sessions
    pytest.param(
        "sessions:\n  front-desk: {}\nroutes:\n  - name: r\n    accept: front-dsk\n",
        [
            "routes.yaml:5:5: routes[0].accept.session:"
            " unknown session 'front-dsk' (did you mean 'front-desk'?)"
        ],
        id="unknown-session-suggestion",
    ),
    pytest.param(
        "sessions:\n  a: {}\n  b: {}\nroutes:\n  - name: r\n    accept: {session: zzz}\n",
        ["routes.yaml:6:14: routes[0].accept.session: unknown session 'zzz' (defined: a, b)"],
        id="unknown-session-lists-known",
    ),
    pytest.param(
        one_route("accept: desk"),
        [
            "routes.yaml:3:5: routes[0].accept.session:"
            " unknown session 'desk' (no sessions are defined)"
        ],
        id="unknown-session-none-defined",
    ),
    pytest.param(
        "sessions: {desk: {}}\n"
        + one_route("refer: {target_uri: 'tel:+14155550123', session: dsk}"),
        ["routes.yaml:4:45: routes[0].refer.session: unknown session 'dsk' (did you mean 'desk'?)"],
        id="unknown-refer-session",
    ),
    pytest.param(
        "sessions: {desk: {}}\nroutes: []\ndefault: {accept: dek}\n",
        ["routes.yaml:3:11: default.accept.session: unknown session 'dek' (did you mean 'desk'?)"],
        id="unknown-default-session",
    ),
    pytest.param(
        "sessions:\n  desk: {tracing: {workflow: x}}\nroutes: []\n",
        [
            "routes.yaml:2:10: sessions.desk.tracing: Input should be 'auto'",
            "routes.yaml:2:20: sessions.desk.tracing.workflow: unknown key"
            " (did you mean 'workflow_name'?)",
        ],
        id="session-union-value",
    ),
    # routes and actions
    pytest.param(
        "routes:\n  - name: a\n    reject: 486\n  - name: b\n    reject: 486\n"
        "  - name: a\n    reject: 480\n  - name: a\n    reject: 404\n",
        [
            "routes.yaml:6:5: routes[2].name: duplicate route name 'a' (first used by routes[0])",
            "routes.yaml:8:5: routes[3].name: duplicate route name 'a' (first used by routes[0])",
        ],
        id="duplicate-route-name",
    ),
    pytest.param(
        one_route("accept: {}\nreject: 486"),
        [
            "routes.yaml:2:5: routes[0]:"
            " give exactly one action: accept, reject, refer, split (found accept, reject)"
        ],
        id="two-actions",
    ),
    pytest.param(
        one_route("reject: 486\nrefer: tel:+14155550123\naccept: {}"),
        [
            "routes.yaml:2:5: routes[0]:"
            " give exactly one action: accept, reject, refer, split (found accept, reject, refer)"
        ],
        id="three-actions",
    ),
    pytest.param(
        one_route("match: {anonymous: true}"),
        ["routes.yaml:2:5: routes[0]: give exactly one action: accept, reject, refer, split"],
        id="no-action",
    ),
    pytest.param(
        "routes:\n  - reject: 486\n",
        ["routes.yaml:2:5: routes[0].name: required key is missing"],
        id="route-without-name",
    ),
    pytest.param(
        "routes:\n  - name: 'front desk'\n    reject: 486\n",
        ["routes.yaml:2:5: routes[0].name: String should match pattern '^[A-Za-z0-9_.:-]+$'"],
        id="route-name-with-space",
    ),
    pytest.param(
        "version: 2\nroutes: []\n",
        ["routes.yaml:1:1: version: Input should be 1"],
        id="unknown-version",
    ),
    pytest.param(
        "routes: {name: a, reject: 486}\n",
        ["routes.yaml:1:1: routes: Input should be a valid list"],
        id="routes-not-a-list",
    ),
    # YAML
    pytest.param(
        one_route("reject: 486\nreject: 480"),
        ["routes.yaml:4:5: routes[0].reject: duplicate key"],
        id="duplicate-key-in-route",
    ),
    pytest.param(
        "sessions:\n  desk: {}\n  desk: {model: x}\nroutes: []\n",
        ["routes.yaml:3:3: sessions.desk: duplicate key"],
        id="duplicate-session",
    ),
    pytest.param(
        "routes: []\nroutes: []\n",
        ["routes.yaml:2:1: routes: duplicate key"],
        id="duplicate-top-level-key",
    ),
    pytest.param(
        "routes: [\n  - name: a\n",
        ["routes.yaml:2:3: invalid YAML: expected the node content, but found '-'"],
        id="yaml-block-item-in-flow-list",
    ),
    pytest.param(
        "routes:\n  - name: a\n   reject: 486\n",
        ["routes.yaml:3:4: invalid YAML: expected <block end>, but found '<block mapping start>'"],
        id="yaml-bad-indentation",
    ),
    pytest.param(
        "routes:\n\t- name: a\n",
        ["routes.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token"],
        id="yaml-tab",
    ),
    pytest.param(
        'routes: [{name: "a}]\n',
        ["routes.yaml:2:1: invalid YAML: found unexpected end of stream"],
        id="yaml-unclosed-quote",
    ),
    pytest.param("", ["routes.yaml: the file is empty: add routes:"], id="empty"),
    pytest.param(
        "# nothing here yet\n\n", ["routes.yaml: the file is empty: add routes:"], id="comments"
    ),
    pytest.param("---\n", ["routes.yaml: the file is empty: add routes:"], id="empty-document"),
    pytest.param(
        "- name: a\n  reject: 486\n",
        ["routes.yaml:1:1: the top level must be a mapping with routes:"],
        id="top-level-list",
    ),
    pytest.param(
        "routes\n",
        ["routes.yaml:1:1: the top level must be a mapping with routes:"],
        id="top-level-scalar",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_config_error(text: str, expected: list[str]) -> None:
    assert issues(text) == expected


def test_config_issue_fields() -> None:
    with pytest.raises(RulesError) as caught:
        rules(one_route("reject: {status_code: 700}"))
    assert caught.value.issues == (
        ConfigIssue(
            file="routes.yaml",
            line=3,
            column=14,
            path="routes[0].reject.status_code",
            message="Input should be less than or equal to 699",
        ),
    )


def test_several_schema_errors_are_all_reported_in_file_order() -> None:
    text = """\
        sessions:
          desk: {voice: marin}
        routes:
          - name: spam
            match: {caller: "+1900*", calld: "+18005550100"}
            reject: 200
          - name: gold
            refer: 'sip:agent@example.com?Subject=vip'
          - name: legacy
          - name: desk
            accept: {}
            reject: 486
        default: {reject: 700}
        """
    assert issues(text) == [
        "routes.yaml:2:10: sessions.desk.voice: unknown key here: voice belongs under audio.output",
        "routes.yaml:5:31: routes[0].match.calld: unknown key (did you mean 'called'?)",
        "routes.yaml:6:5: routes[0].reject: Input should be greater than or equal to 400",
        f"routes.yaml:8:5: routes[1].refer: 'sip:agent@example.com?Subject=vip' {URI_HELP}",
        "routes.yaml:9:5: routes[2]: give exactly one action: accept, reject, refer, split",
        "routes.yaml:10:5: routes[3]:"
        " give exactly one action: accept, reject, refer, split (found accept, reject)",
        "routes.yaml:13:11: default.reject: Input should be less than or equal to 699",
    ]


def test_several_reference_errors_are_all_reported() -> None:
    text = """\
        sessions:
          front-desk: {model: gpt-realtime}
        routes:
          - name: a
            accept: front-dsk
          - name: a
            refer: {target_uri: 'tel:+14155550123', session: nope}
          - name: b
            accept: front-desk
          - name: b
            reject: 486
        default:
          accept: {session: frontdesk}
        """
    assert issues(text) == [
        "routes.yaml:5:5: routes[0].accept.session:"
        " unknown session 'front-dsk' (did you mean 'front-desk'?)",
        "routes.yaml:6:5: routes[1].name: duplicate route name 'a' (first used by routes[0])",
        "routes.yaml:7:45: routes[1].refer.session: unknown session 'nope' (defined: front-desk)",
        "routes.yaml:10:5: routes[3].name: duplicate route name 'b' (first used by routes[2])",
        "routes.yaml:13:12: default.accept.session:"
        " unknown session 'frontdesk' (did you mean 'front-desk'?)",
    ]


def test_several_duplicate_keys_are_all_reported() -> None:
    text = """\
        routes:
          - name: a
            name: b
            reject: 486
          - name: c
            reject: 486
            reject: 480
        """
    assert issues(text) == [
        "routes.yaml:3:5: routes[0].name: duplicate key",
        "routes.yaml:7:5: routes[1].reject: duplicate key",
    ]


def _fifo(directory: Path) -> Path:
    os.mkfifo(directory / "routes.yaml")
    return directory / "routes.yaml"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda d: d / "missing.yaml", "No such file or directory", id="missing"),
        pytest.param(lambda d: d, "Is a directory", id="directory"),
        pytest.param(_fifo, "not a regular file (a FIFO or a device)", id="fifo"),
    ],
)
@pytest.mark.timeout(20)  # a FIFO with no writer used to block the load for good
def test_load_rules_unreadable_file(make: Any, reason: str, tmp_path: Path) -> None:
    path = make(tmp_path)
    with pytest.raises(RulesError) as caught:
        load_rules(path, region="US")
    assert caught.value.issues == (
        ConfigIssue(str(path), None, None, "", f"cannot read: {reason}"),
    )
    assert str(caught.value) == f"{path}: cannot read: {reason}"


def _list_file(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as file:  # sparse: nothing is written to disk
            file.truncate(MAX_LIST_BYTES + 1)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("fifo", "not a regular file (a FIFO or a device)"),
        ("device", "not a regular file (a FIFO or a device)"),
        ("huge", f"is larger than {MAX_LIST_BYTES >> 20} MiB: not read"),
    ],
)
@pytest.mark.timeout(20)
def test_a_list_file_that_never_ends_is_refused_without_reading_it(
    kind: str, reason: str, tmp_path: Path
) -> None:
    """A FIFO blocked the load for good (and every reload after it); /dev/zero or a huge
    sparse file was read until memory ran out."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "lists: {spam: {file: spam.txt}}\n"
        "routes: [{name: spam, match: {caller: {list: spam}}, reject: 603}]\n",
        encoding="utf-8",
    )
    _list_file(kind, tmp_path / "spam.txt")
    with pytest.raises(RulesError) as caught:
        load_rules(routes, region="US")
    (issue,) = caught.value.issues
    assert issue.file == str(tmp_path / "spam.txt")
    assert reason in issue.message


def test_a_csv_field_over_the_csv_limit_is_an_error_at_its_line(tmp_path: Path) -> None:
    """csv.Error escaped the list's error handling: check printed a traceback, and the
    service logged the reload as a compiler bug."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "lists: {vips: {file: vips.csv, column: 2}}\n"
        "routes: [{name: vip, match: {caller: {list: vips}}, reject: 486}]\n",
        encoding="utf-8",
    )
    notes = "x" * 200_000  # a CRM export's notes column
    (tmp_path / "vips.csv").write_text(f'name,phone,notes\nAnn,+14155550100,"{notes}"\n')
    with pytest.raises(RulesError) as caught:
        load_rules(routes, region="US")
    assert [str(issue) for issue in caught.value.issues] == [
        f"{tmp_path / 'vips.csv'}:2: lists.vips: line 2: field larger than field limit (131072)"
    ]


def test_load_rules_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_bytes(b"routes: []\n# caf\xe9\n")
    with pytest.raises(RulesError) as caught:
        load_rules(path, region="US")
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.path) == (str(path), None, "")
    assert issue.message.startswith("cannot read: 'utf-8' codec can't decode byte 0xe9")


def test_load_rules_reports_errors_against_the_path(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("routes:\n  - name: a\n    reject: 200\n", encoding="utf-8")
    with pytest.raises(RulesError) as caught:
        load_rules(path, region="US")
    assert str(caught.value) == (
        f"{path}:3:5: routes[0].reject: Input should be greater than or equal to 400"
    )


# --- the sample routes.yaml -------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> RuleSet:
    return load_rules(SAMPLE, region="US")


@pytest.fixture(scope="module")
def sample_sessions() -> dict[str, Any]:
    """The sample's sessions as plain YAML reads them: the oracle for accept bodies."""
    sessions: dict[str, Any] = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))["sessions"]
    return sessions


def test_sample_compiles(sample: RuleSet) -> None:
    assert [name for name, _ in sample.route_actions()] == [
        "blocked",
        "anonymous",
        "vip-to-human",
        "support-line",
        "legacy-pbx",
        "front-desk",
        "default",
    ]
    assert sample.default == Reject(480)
    assert sample.version == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()[:12]
    assert sample.source == str(SAMPLE)


def to(number: str) -> str:
    return f"<sip:{number}@sip.api.openai.com>"


@pytest.mark.parametrize(
    ("call", "route", "action"),
    [
        pytest.param(
            invite(from_=sip_from("+19005550199")), "blocked", Reject(603), id="spam-number"
        ),
        pytest.param(
            invite(from_=sip_from("19005550123")), "blocked", Reject(603), id="spam-prefix"
        ),
        pytest.param(
            invite(("X-Customer-Tier", "gold"), from_=sip_from("+19005550123")),
            "blocked",
            Reject(603),
            id="spam-before-vip",
        ),
        pytest.param(invite(from_=FROM_ANONYMOUS), "anonymous", Reject(486), id="withheld"),
        pytest.param(
            invite(("Privacy", "id"), ("P-Asserted-Identity", "<sip:+14155550100@x.net>")),
            "anonymous",
            Reject(486),
            id="privacy-id",
        ),
        pytest.param(
            invite(from_=FROM_ANONYMOUS, to=to("+18005550100")),
            "anonymous",
            Reject(486),
            id="anonymous-before-support",
        ),
        pytest.param(
            invite(("X-Customer-Tier", "gold"), to=to("+14155550177")),
            "vip-to-human",
            Refer("tel:+14155550123", b'{"type":"realtime"}'),
            id="vip",
        ),
        pytest.param(
            invite(("X-Legacy-Pbx", "pbx-01"), to=to("+12125550100")),
            "legacy-pbx",
            Refer("sip:operator@pbx.example.com", b'{"type":"realtime"}'),
            id="legacy-pbx",
        ),
        pytest.param(
            invite(("X-Customer-Tier", "silver"), to=to("+12125550100")),
            "default",
            Reject(480),
            id="silver-is-not-vip",
        ),
        pytest.param(invite(to=to("+12125550100")), "default", Reject(480), id="no-match"),
    ],
)
def test_sample_routes_calls(
    sample: RuleSet, call: CallIdentity, route: str, action: Accept | Reject | Refer
) -> None:
    assert sample.decide(call) == Decision(route, action, sample.version)


def test_sample_support_line_gets_support_with_sage_voice(
    sample: RuleSet, sample_sessions: dict[str, Any]
) -> None:
    decision = sample.decide(invite(to=to("+1 800 555 0100")))
    assert decision.route == "support-line"
    assert body(decision.action) == {
        "type": "realtime",
        **sample_sessions["support"],
        "audio": {"output": {"voice": "sage"}},
    }


@pytest.mark.parametrize("called", ["+14155550177", "4155550123", "+16505550100"])
def test_sample_front_desk(sample: RuleSet, sample_sessions: dict[str, Any], called: str) -> None:
    decision = sample.decide(invite(to=to(called)))
    assert decision.route == "front-desk"
    assert body(decision.action) == {"type": "realtime", **sample_sessions["front-desk"]}
