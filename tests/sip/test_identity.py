"""Table-driven tests for app.sip.identity: SIP identity headers -> who is calling whom.

The real-world values come from published sources, named on each case: RFC 3261, the SIP
torture tests of RFC 4475 (and RFC 5118 for IPv6), RFC 3325, RFC 3966, RFC 5806 / RFC 6044,
RFC 7044, and carriers' and vendors' published INVITE examples and traces. Where a source
gives only a number format, the case puts that number in a SIP URI and says so; garbage and
policy variations are synthetic. Header values are given as they reach us in the webhook's
`sip_headers`: the text after `Name:`, line folding kept where the source folds.
"""

from __future__ import annotations

from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.sip import identity as sip
from app.sip.identity import (
    ANONYMOUS_HOST,
    ANONYMOUS_USERS,
    COMPACT_FORMS,
    MAX_ADDRESSES_PER_HEADER,
    Address,
    CallIdentity,
    Headers,
    IdentityPolicy,
    canonical_name,
    identify,
    parse_address,
    split_list,
    to_e164,
)

SAME = "<same as number>"


def _view(address: Address) -> dict[str, Any]:
    return {
        "display_name": address.display_name,
        "scheme": address.scheme,
        "user": address.user,
        "host": address.host,
        "number": address.number,
        "digits": address.digits,
        "uri_params": dict(address.uri_params),
        "params": dict(address.params),
        "anonymous": address.is_anonymous,
    }


def addr(
    value: str,
    case_id: str,
    *,
    scheme: str = "sip",
    display: str | None = None,
    user: str | None = None,
    host: str | None = None,
    number: str | None = None,
    digits: str | None = SAME,
    uri_params: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    anonymous: bool = False,
    region: str = "US",
) -> Any:
    """One parse_address case; fields not given are expected empty (digits: as number)."""
    want = {
        "display_name": display,
        "scheme": scheme,
        "user": user,
        "host": host,
        "number": number,
        "digits": number if digits == SAME else digits,
        "uri_params": uri_params or {},
        "params": params or {},
        "anonymous": anonymous,
    }
    return pytest.param(value, region, want, id=case_id)


# --- parse_address: real-world values ------------------------------------------------

# RFC 4475 3.1.1.7 (longreq) To and F: values; the repeated runs are written as products
# (their lengths approximate the RFC's)
LONG_TO = (
    '"I have a user name of ' + "extreme" * 10 + ' proportion"<sip:user@example.com:6000'
    ";unknownparam1=very" + "long" * 20 + "value"
    ";longparam" + "name" * 25 + "=shortvalue"
    ";very" + "long" * 25 + "ParameterNameWithNoValue>"
)
LONG_FROM = (
    "sip:" + "amazinglylongcallername" * 5 + "@example.net"
    ";tag=12" + "982" * 50 + "424"
    ";unknownheaderparam"
    + "name" * 20
    + "=unknowheaderparam"
    + "value" * 15
    + ";unknownValuelessparam"
    + "name" * 10
)

ADDRESS_CASES = [
    # --- RFC 3261 ---------------------------------------------------------------------
    # RFC 3261 §20.20: quoted display name, LWS before the header parameter
    addr(
        '"A. G. Bell" <sip:agb@bell-telephone.com> ;tag=a48s',
        "rfc3261-20.20-from-quoted-display",
        display="A. G. Bell",
        user="agb",
        host="bell-telephone.com",
        params={"tag": "a48s"},
    ),
    # RFC 3261 §20.20: addr-spec without <>, so ;tag is a header parameter
    addr(
        "sip:+12125551212@server.phone2net.com;tag=887s",
        "rfc3261-20.20-from-bare-e164",
        user="+12125551212",
        host="server.phone2net.com",
        number="+12125551212",
        params={"tag": "887s"},
    ),
    # RFC 3261 §20.20: an "anonymous" From by display name only; the URI is an opaque token,
    # so the address itself is not anonymous and carries no number
    addr(
        "Anonymous <sip:c8oqz84zk7z@privacy.org>;tag=hyh8",
        "rfc3261-20.20-from-opaque-token-user",
        display="Anonymous",
        user="c8oqz84zk7z",
        host="privacy.org",
        params={"tag": "hyh8"},
        anonymous=True,  # RFC 3323 privacy service: the display name says so, no number
    ),
    # RFC 3261 §20.39: unquoted multi-token display name
    addr(
        "The Operator <sip:operator@cs.columbia.edu>;tag=287447",
        "rfc3261-20.39-to-token-display",
        display="The Operator",
        user="operator",
        host="cs.columbia.edu",
        params={"tag": "287447"},
    ),
    # RFC 3261 §4 (F1 INVITE): the canonical Alice/Bob From and To
    addr(
        "Alice <sip:alice@atlanta.com>;tag=1928301774",
        "rfc3261-4-from-alice",
        display="Alice",
        user="alice",
        host="atlanta.com",
        params={"tag": "1928301774"},
    ),
    addr(
        "Bob <sip:bob@biloxi.com>",
        "rfc3261-4-to-bob",
        display="Bob",
        user="bob",
        host="biloxi.com",
    ),
    # RFC 3261 §8.1.1.3: the recommended anonymous From (anonymous.invalid host)
    addr(
        '"Anonymous" <sip:thisis@anonymous.invalid>;tag=1928301774',
        "rfc3261-8.1.1.3-anonymous-invalid-host",
        display="Anonymous",
        user="thisis",
        host=ANONYMOUS_HOST,
        params={"tag": "1928301774"},
        anonymous=True,
    ),
    # RFC 3261 §19.1.3: password in userinfo; without <> ;transport is a header parameter
    addr(
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "rfc3261-19.1.3-password-bare-params-are-header-params",
        user="alice",
        host="atlanta.com",
        params={"transport": "tcp"},
    ),
    # RFC 3261 §19.1.3: the same URI inside <>: ;transport is a URI parameter
    addr(
        "<sip:alice:secretword@atlanta.com;transport=tcp>",
        "rfc3261-19.1.3-password-angle-params-are-uri-params",
        user="alice",
        host="atlanta.com",
        uri_params={"transport": "tcp"},
    ),
    # RFC 3261 §19.1.3: sips with escaped URI headers
    addr(
        "<sips:alice@atlanta.com?subject=project%20x&priority=urgent>",
        "rfc3261-19.1.3-sips-uri-headers",
        scheme="sips",
        user="alice",
        host="atlanta.com",
    ),
    # RFC 3261 §19.1.3: visual separators in a telephone-subscriber, password 1234, user=phone
    addr(
        "<sip:+1-212-555-1212:1234@gateway.com;user=phone>",
        "rfc3261-19.1.3-user-phone-separators-password",
        user="+1-212-555-1212",
        host="gateway.com",
        number="+12125551212",
        uri_params={"user": "phone"},
    ),
    # RFC 3261 §19.1.3: a four-digit dial string is not an E.164 number
    addr(
        "sips:1212@gateway.com",
        "rfc3261-19.1.3-sips-short-dial-string",
        scheme="sips",
        user="1212",
        host="gateway.com",
        digits="1212",
    ),
    # RFC 3261 §19.1.3: IPv4 host
    addr(
        "<sip:alice@192.0.2.4>",
        "rfc3261-19.1.3-ipv4-host",
        user="alice",
        host="192.0.2.4",
    ),
    # RFC 3261 §19.1.3: no user part at all -> an empty identity, treated as anonymous
    addr(
        "<sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com>",
        "rfc3261-19.1.3-no-user-part",
        host="atlanta.com",
        uri_params={"method": "REGISTER"},
        anonymous=True,
    ),
    # RFC 3261 §19.1.3: user parameters are part of the user
    addr(
        "<sip:alice;day=tuesday@atlanta.com>",
        "rfc3261-19.1.3-user-with-semicolon",
        user="alice;day=tuesday",
        host="atlanta.com",
    ),
    # RFC 3261 §19.1.6: tel URI parameters carried in the user part of a user=phone URI
    addr(
        "<sip:+358-555-1234567;postd=pp22@foo.com;user=phone>",
        "rfc3261-19.1.6-tel-params-in-user",
        user="+358-555-1234567;postd=pp22",
        host="foo.com",
        number="+3585551234567",
        uri_params={"user": "phone"},
    ),
    # RFC 3261 §20.10: a non-SIP scheme, parameters after LWS
    addr(
        '"Mr. Watson" <mailto:watson@bell-telephone.com> ;q=0.1',
        "rfc3261-20.10-mailto",
        scheme="mailto",
        display="Mr. Watson",
        params={"q": "0.1"},
    ),
    # RFC 3261 §20.10: compact m:, sips, IPv4 host
    addr(
        "<sips:bob@192.0.2.4>;expires=60",
        "rfc3261-20.10-sips-contact",
        scheme="sips",
        user="bob",
        host="192.0.2.4",
        params={"expires": "60"},
    ),
    # --- RFC 4475 torture tests ---------------------------------------------------------
    # RFC 4475 3.1.1.1 (wsinv): backslash-escaped backslash and quote, LWS around ; and =
    addr(
        '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>   ;   tag = 98asjd8',
        "rfc4475-wsinv-from-escapes-lws",
        display='J Rosenberg \\"',
        user="jdrosen",
        host="example.com",
        params={"tag": "98asjd8"},
    ),
    # RFC 4475 3.1.1.1 (wsinv): the same From with its line folding left in
    addr(
        '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8',
        "rfc4475-wsinv-from-folded",
        display='J Rosenberg \\"',
        user="jdrosen",
        host="example.com",
        params={"tag": "98asjd8"},
    ),
    # RFC 4475 3.1.1.1 (wsinv): bare To with LWS before the header parameter
    addr(
        "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        "rfc4475-wsinv-to-bare-lws",
        user="vivekg",
        host="chair-dnrc.example.com",
        params={"tag": "1918181833n"},
    ),
    # RFC 4475 3.1.1.1 (wsinv): escaped quotes, valueless header parameter
    addr(
        '"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n'
        "  secondparam ; q = 0.33",
        "rfc4475-wsinv-contact-valueless-param",
        display='Quoted string ""',
        user="jdrosen",
        host="example.com",
        params={"newparam": "newvalue", "secondparam": "", "q": "0.33"},
    ),
    # RFC 4475 3.1.1.2 (intmeth): quoted-pair control characters (BEL, NUL, DEL) in the
    # display name; a user part full of unusual legal characters, including , ? ;
    addr(
        '"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" '
        "<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>",
        "rfc4475-intmeth-to-controls-unusual-user",
        display="BEL:\x07 NUL:\x00 DEL:\x7f",
        user="1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
        host="example.com",
    ),
    # RFC 4475 3.1.1.2 (intmeth): Request-URI with an unusual password (dropped)
    addr(
        "<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too."
        "(doesn't-it)@example.com>",
        "rfc4475-intmeth-ruri-unusual-password",
        user="1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*",
        host="example.com",
    ),
    # RFC 4475 3.1.1.2 (intmeth): token display name of punctuation, UTF-8 parameter value
    addr(
        "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;"
        "fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.",
        "rfc4475-intmeth-from-token-display-utf8-param",
        display="token1~` token2'+_ token3*%!.-",
        user="mundane",
        host="example.com",
        params={"fromparam''~+*_!.-%": "работающий", "tag": "_token~1'+`*%!-."},
    ),
    # RFC 4475 3.1.1.3 (esc01): % escapes in the user part are decoded
    addr(
        "sip:%75se%72@example.com",
        "rfc4475-esc01-to-escaped-user",
        user="user",
        host="example.com",
    ),
    addr(
        "<sip:I%20have%20spaces@example.net>;tag=938",
        "rfc4475-esc01-from-escaped-spaces",
        user="I have spaces",
        host="example.net",
        params={"tag": "938"},
    ),
    # RFC 4475 3.1.1.3 (esc01): escapes in URI parameters are not decoded (nor recursively)
    addr(
        "<sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        "rfc4475-esc01-contact-escaped-uri-params",
        user="caller",
        host="host5.example.net",
        uri_params={"%6c%72": "", "n%61me": "v%61lue%25%34%31"},
    ),
    # RFC 4475 3.1.1.4 (escnull): an escaped NUL must not shorten the user
    addr(
        "sip:null-%00-null@example.com;tag=839923423",
        "rfc4475-escnull-from",
        user="null-\x00-null",
        host="example.com",
        params={"tag": "839923423"},
    ),
    # RFC 4475 3.1.1.5 (esc02): % is not an escape in a display name
    addr(
        '"%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
        "rfc4475-esc02-percent-display",
        display="%Z%45",
        user="resource",
        host="example.com",
        params={"tag": "f232jadfj23"},
    ),
    # RFC 4475 3.1.1.6 (lwsdisp): no LWS between display token and <
    addr(
        "caller<sip:caller@example.com>;tag=323",
        "rfc4475-lwsdisp-no-space-before-angle",
        display="caller",
        user="caller",
        host="example.com",
        params={"tag": "323"},
    ),
    # RFC 4475 3.1.1.7 (longreq): long display name, port, long URI parameters
    addr(
        LONG_TO,
        "rfc4475-longreq-to",
        display="I have a user name of " + "extreme" * 10 + " proportion",
        user="user",
        host="example.com",
        uri_params={
            "unknownparam1": "very" + "long" * 20 + "value",
            "longparam" + "name" * 25: "shortvalue",
            ("very" + "long" * 25 + "ParameterNameWithNoValue").lower(): "",
        },
    ),
    # RFC 4475 3.1.1.7 (longreq): compact F:, bare URI with long header parameters
    addr(
        LONG_FROM,
        "rfc4475-longreq-from",
        user="amazinglylongcallername" * 5,
        host="example.net",
        params={
            "tag": "12" + "982" * 50 + "424",
            "unknownheaderparam" + "name" * 20: "unknowheaderparam" + "value" * 15,
            "unknownvaluelessparam" + "name" * 10: "",
        },
    ),
    # RFC 4475 3.1.1.9 (semiuri): parameter in the user part, with an escaped @
    addr(
        "sip:user;par=u%40example.net@example.com",
        "rfc4475-semiuri-escaped-at-in-user",
        user="user;par=u@example.net",
        host="example.com",
    ),
    # RFC 4475 3.1.2.14 (badaspec): LWS inside <>; a quoted comma in the display name
    addr(
        '"Watson, Thomas" < sip:t.watson@example.org >',
        "rfc4475-badaspec-spaces-inside-angle",
        display="Watson, Thomas",
        user="t.watson",
        host="example.org",
    ),
    # RFC 4475 3.1.2.16 (badvers): unquoted display name with a dot
    addr(
        "A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
        "rfc4475-badvers-token-display-with-dot",
        display="A. Bell",
        user="a.g.bell",
        host="example.com",
        params={"tag": "qweoiqpe"},
    ),
    # RFC 4475 3.4.1 (inv2543): user=phone inside <> is a URI parameter ...
    addr(
        "<sip:+13035551111@ift.client.example.net;user=phone>",
        "rfc4475-inv2543-from-user-phone-uri-param",
        user="+13035551111",
        host="ift.client.example.net",
        number="+13035551111",
        uri_params={"user": "phone"},
    ),
    # ... and without <> a header parameter (RFC 3261 §20); the number is read all the same
    addr(
        "sip:+16505552222@ss1.example.net;user=phone",
        "rfc4475-inv2543-to-user-phone-header-param",
        user="+16505552222",
        host="ss1.example.net",
        number="+16505552222",
        params={"user": "phone"},
    ),
    # RFC 4475 3.3.12 (cparam01) / 3.3.13 (cparam02): the same parameter, header vs URI
    addr(
        "sip:+19725552222@gw1.example.net;unknownparam",
        "rfc4475-cparam01-bare-valueless-header-param",
        user="+19725552222",
        host="gw1.example.net",
        number="+19725552222",
        params={"unknownparam": ""},
    ),
    addr(
        "<sip:+19725552222@gw1.example.net;unknownparam>",
        "rfc4475-cparam02-angle-valueless-uri-param",
        user="+19725552222",
        host="gw1.example.net",
        number="+19725552222",
        uri_params={"unknownparam": ""},
    ),
    # RFC 4475 3.3.4 (unksm2): unknown schemes are kept, with no user or number
    addr("isbn:2983792873", "rfc4475-unksm2-to-isbn", scheme="isbn"),
    addr(
        "<http://www.example.com>;tag=3234233",
        "rfc4475-unksm2-from-http",
        scheme="http",
        params={"tag": "3234233"},
    ),
    # RFC 4475 3.1.2.13 (regbadct, malformed) / 3.3.14 (regescrt): escaped URI headers
    addr(
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "rfc4475-regbadct-bare-uri-headers",
        user="user",
        host="example.com",
    ),
    addr(
        "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
        "rfc4475-regescrt-angle-uri-headers",
        user="user",
        host="example.com",
    ),
    # --- RFC 5118 (IPv6 torture tests) -------------------------------------------------
    # RFC 5118 §4.1 (ipv6-good): IPv6 reference in a Contact
    addr(
        '"Caller" <sip:caller@[2001:db8::1]>',
        "rfc5118-4.1-ipv6-host",
        display="Caller",
        user="caller",
        host="[2001:db8::1]",
    ),
    # RFC 5118 §4.3 (port-ambiguous) and §4.4 (port-unambiguous)
    addr(
        "<sip:[2001:db8::10:5070]>",
        "rfc5118-4.3-port-ambiguous",
        host="[2001:db8::10:5070]",
        anonymous=True,
    ),
    addr(
        "<sip:[2001:db8::10]:5070>",
        "rfc5118-4.4-port-unambiguous",
        host="[2001:db8::10]",
        anonymous=True,
    ),
    # RFC 5118 §4.9: IPv4-mapped IPv6 address
    addr(
        '"T. desk phone" <sip:ted@[::ffff:192.0.2.2]>',
        "rfc5118-4.9-ipv4-mapped",
        display="T. desk phone",
        user="ted",
        host="[::ffff:192.0.2.2]",
    ),
    # --- RFC 3325 ----------------------------------------------------------------------
    # RFC 3325 §9.1: the two P-Asserted-Identity examples; §10.1: the anonymous From
    addr(
        '"Cullen Jennings" <sip:fluffy@cisco.com>',
        "rfc3325-10.1-pai-sip",
        display="Cullen Jennings",
        user="fluffy",
        host="cisco.com",
    ),
    addr(
        "tel:+14085264000",
        "rfc3325-10.1-pai-tel",
        scheme="tel",
        user="+14085264000",
        number="+14085264000",
    ),
    addr(
        '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=9802748',
        "rfc3325-10.1-anonymous-from",
        display="Anonymous",
        user="anonymous",
        host=ANONYMOUS_HOST,
        params={"tag": "9802748"},
        anonymous=True,
    ),
    # --- RFC 3966 tel URIs ---------------------------------------------------------------
    # RFC 3966 §6: global number with visual separators
    addr(
        "<tel:+1-201-555-0123>",
        "rfc3966-6-global-number",
        scheme="tel",
        user="+1-201-555-0123",
        number="+12015550123",
    ),
    # RFC 3966 §6: local number in a domain context: no E.164, the dial string is kept
    addr(
        "<tel:7042;phone-context=example.com>",
        "rfc3966-6-local-domain-context",
        scheme="tel",
        user="7042",
        digits="7042",
        uri_params={"phone-context": "example.com"},
    ),
    # RFC 3966 §6: local number in a global-prefix context (the two together are too long
    # for a NANP number, so no E.164)
    addr(
        "<tel:863-1234;phone-context=+1-914-555>",
        "rfc3966-6-local-global-prefix-context",
        scheme="tel",
        user="863-1234",
        digits="8631234",
        uri_params={"phone-context": "+1-914-555"},
    ),
    # RFC 3966 §6 value without <>: phone-context becomes a header parameter (RFC 3261 §20),
    # leaving a 7-digit local number that has no E.164 form
    addr(
        "tel:863-1234;phone-context=+1-914-555",
        "rfc3966-6-bare-context-is-header-param",
        scheme="tel",
        user="863-1234",
        digits="8631234",
        params={"phone-context": "+1-914-555"},
    ),
    # RFC 4694: number portability parameters on a tel URI
    addr(
        "<tel:+1-202-533-1234;npdi;rn=+1-202-544-0000>",
        "rfc4694-tel-npdi-rn",
        scheme="tel",
        user="+1-202-533-1234",
        number="+12025331234",
        uri_params={"npdi": "", "rn": "+1-202-544-0000"},
    ),
    # Ofcom drama range 020 7946 0xxx in UK national format, region GB
    addr(
        "<tel:020-7946-0018>",
        "gb-national-tel-region-gb",
        scheme="tel",
        user="020-7946-0018",
        number="+442079460018",
        digits="02079460018",
        region="GB",
    ),
    # --- carriers and vendors -----------------------------------------------------------
    # OpenAI Realtime SIP guide, realtime.call.incoming example: the From number has one
    # digit too many for +1, so it is no E.164 number; the dial string is kept
    addr(
        "sip:+142555512112@sip.example.com",
        "openai-guide-from-too-long",
        user="+142555512112",
        host="sip.example.com",
        digits="+142555512112",
    ),
    addr(
        "sip:+18005551212@sip.example.com",
        "openai-guide-to",
        user="+18005551212",
        host="sip.example.com",
        number="+18005551212",
    ),
    # Twilio "SIP INVITEs" glossary example INVITE
    addr(
        '"Bob" <sip:+14155552222@example.pstn.twilio.com>',
        "twilio-glossary-to",
        display="Bob",
        user="+14155552222",
        host="example.pstn.twilio.com",
        number="+14155552222",
    ),
    addr(
        '"Alice" <sip:+14155551111@example.pstn.twilio.com>;tag=1',
        "twilio-glossary-from",
        display="Alice",
        user="+14155551111",
        host="example.pstn.twilio.com",
        number="+14155551111",
        params={"tag": "1"},
    ),
    # Telnyx caller-ID policy: number formats (USA and Ireland localization) in a SIP URI
    addr(
        "sip:13129457420@sip.telnyx.com",
        "telnyx-us-11-digit",
        user="13129457420",
        host="sip.telnyx.com",
        number="+13129457420",
        digits="13129457420",
    ),
    addr(
        "sip:3129457420@sip.telnyx.com",
        "telnyx-us-national",
        user="3129457420",
        host="sip.telnyx.com",
        number="+13129457420",
        digits="3129457420",
    ),
    addr(
        "sip:+353-1-840-1234@sip.telnyx.com",
        "telnyx-ie-e164-separators",
        user="+353-1-840-1234",
        host="sip.telnyx.com",
        number="+35318401234",
    ),
    addr(
        "sip:01-840-1234@sip.telnyx.com",
        "telnyx-ie-national-region-ie",
        user="01-840-1234",
        host="sip.telnyx.com",
        number="+35318401234",
        digits="018401234",
        region="IE",
    ),
    # Vonage Voice/SIP number format: E.164 without the leading + (US and UK examples)
    addr(
        "sip:14155550101@sip.nexmo.com",
        "vonage-us-no-plus",
        user="14155550101",
        host="sip.nexmo.com",
        number="+14155550101",
        digits="14155550101",
    ),
    addr(
        "sip:447700900123@sip.nexmo.com",
        "vonage-uk-no-plus-region-gb",
        user="447700900123",
        host="sip.nexmo.com",
        number="+447700900123",
        digits="447700900123",
        region="GB",
    ),
    # ... the same UK number under a US default region cannot be told apart from a (too
    # long) national number: no E.164, the dial string is kept
    addr(
        "sip:447700900123@sip.nexmo.com",
        "vonage-uk-no-plus-region-us",
        user="447700900123",
        host="sip.nexmo.com",
        digits="447700900123",
    ),
    # NFON nconnect Voice SIP trunk: incoming numbers in international format with 00
    addr(
        "<sip:0049894531234@trunk.cloud-cfg.com>",
        "nfon-00-international-region-de",
        user="0049894531234",
        host="trunk.cloud-cfg.com",
        number="+49894531234",
        digits="0049894531234",
        region="DE",
    ),
    # Commio (thinQ) INVITE examples: 11-digit From; the doc's masked IP is replaced by a
    # documentation address
    addr(
        '"thinQ" <sip:19198900000@192.0.2.10>;tag=as08310909',
        "commio-11-digit-from",
        display="thinQ",
        user="19198900000",
        host="192.0.2.10",
        number="+19198900000",
        digits="19198900000",
        params={"tag": "as08310909"},
    ),
    # Cisco Unified CM SIP line messaging guide: Remote-Party-ID with a 5-digit extension
    addr(
        '"sip line" <sip:69005@10.10.10.2>;party=calling;id-type=subscriber;privacy=off;screen=yes',
        "cisco-cucm-rpid-extension",
        display="sip line",
        user="69005",
        host="10.10.10.2",
        digits="69005",
        params={"party": "calling", "id-type": "subscriber", "privacy": "off", "screen": "yes"},
    ),
    # Cisco Unified CM: a 7-digit localized number has no E.164 form (no area code)
    addr(
        '"sip line" <sip:2325757@10.10.10.2;x-cisco-callback-number=99192325757>'
        ";party=calling;id-type=subscriber;privacy=off;screen=yes",
        "cisco-cucm-rpid-7-digit-local",
        display="sip line",
        user="2325757",
        host="10.10.10.2",
        digits="2325757",
        uri_params={"x-cisco-callback-number": "99192325757"},
        params={"party": "calling", "id-type": "subscriber", "privacy": "off", "screen": "yes"},
    ),
    # Cisco Unified CM blended identity: a non-numeric user stays a SIP identity
    addr(
        "<sip:alice@cisco.com;x-cisco-number=2000;x-cisco-callback-number=2000>;party=calling;",
        "cisco-cucm-rpid-blended-uri-user",
        user="alice",
        host="cisco.com",
        uri_params={"x-cisco-number": "2000", "x-cisco-callback-number": "2000"},
        params={"party": "calling"},
    ),
    # Cisco Unified CM, privacy=uri: From user "Anonymous" (any case)
    addr(
        '"sip line" <sip:Anonymous@10.10.10.2>;tag=1234',
        "cisco-cucm-from-anonymous-user",
        display="sip line",
        user="Anonymous",
        host="10.10.10.2",
        params={"tag": "1234"},
        anonymous=True,
    ),
    # AudioCodes SBC manipulation guide, Diversion example: host case is not significant
    addr(
        "<sip:654@IPG2Host;user=phone>;reason=user-busy;screen=no;privacy=off;counter=1",
        "audiocodes-diversion-user-phone-extension",
        user="654",
        host="ipg2host",
        digits="654",
        uri_params={"user": "phone"},
        params={"reason": "user-busy", "screen": "no", "privacy": "off", "counter": "1"},
    ),
    # AudioCodes SBC manipulation guide, Remote-Party-ID example (LWS between parameters)
    addr(
        '"John Smith" <sip:john.smith@itsp.com>;party=calling; privacy=full;screen=yes',
        "audiocodes-rpid-privacy-full",
        display="John Smith",
        user="john.smith",
        host="itsp.com",
        params={"party": "calling", "privacy": "full", "screen": "yes"},
    ),
    # Huawei SoftX3000 INVITE trace (public pastebin): anonymous From with an IP host
    addr(
        "Anonymous <sip:Anonymous@94.198.1.100>;tag=0syx2bcd-CC-22",
        "huawei-softx3000-anonymous-from",
        display="Anonymous",
        user="Anonymous",
        host="94.198.1.100",
        params={"tag": "0syx2bcd-CC-22"},
        anonymous=True,
    ),
    # VoxStack GSM gateway INVITE trace (public pastebin): E.164 number as display name
    addr(
        '"+380638162963" <sip:+380638162963@93.170.1.24>;tag=as7c1ae748',
        "voxstack-ua-number-display",
        display="+380638162963",
        user="+380638162963",
        host="93.170.1.24",
        number="+380638162963",
        params={"tag": "as7c1ae748"},
    ),
    # Cisco CUBE blog (afterthenumber.com) INVITE trace, typographic quotes made plain:
    # escaped spaces in a display name are not decoded; South African national number
    addr(
        '"Jonathan%20%20Els" <sip:0112223333@55.66.77.88>;tag=gK0c7b172a',
        "cube-blog-za-national-region-za",
        display="Jonathan%20%20Els",
        user="0112223333",
        host="55.66.77.88",
        number="+27112223333",
        digits="0112223333",
        params={"tag": "gK0c7b172a"},
        region="ZA",
    ),
    # RFC 7044 §5: History-Info entry, Reason escaped in the URI headers, index and an
    # extension parameter as header parameters
    addr(
        "<sip:UserA@ims.example.com?Reason=SIP%3Bcause%3D302>;index=1;foo=bar",
        "rfc7044-5-history-info-entry",
        user="UserA",
        host="ims.example.com",
        params={"index": "1", "foo": "bar"},
    ),
    # Twilio changelog on withheld caller IDs (ANONYMOUS, RESTRICTED, ...): the alpha strings,
    # in any case; UNKNOWN and UNAVAILABLE are the other usual withheld values
    addr(
        "<sip:RESTRICTED@example.pstn.twilio.com>",
        "twilio-withheld-restricted",
        user="RESTRICTED",
        host="example.pstn.twilio.com",
        anonymous=True,
    ),
    addr(
        "<sip:unknown@example.pstn.twilio.com>",
        "twilio-withheld-unknown",
        user="unknown",
        host="example.pstn.twilio.com",
        anonymous=True,
    ),
    addr(
        "<sip:Unavailable@example.pstn.twilio.com>",
        "twilio-withheld-unavailable",
        user="Unavailable",
        host="example.pstn.twilio.com",
        anonymous=True,
    ),
    # Twilio's legacy keypad rendering of ANONYMOUS: not a possible number, kept as dialled
    addr(
        "<sip:+266696687@example.pstn.twilio.com>",
        "twilio-anonymous-keypad-sentinel",
        user="+266696687",
        host="example.pstn.twilio.com",
        digits="+266696687",
    ),
    # tel URI with an empty number: an empty identity
    addr("<tel:>", "tel-empty-number", scheme="tel", anonymous=True),
]


@pytest.mark.parametrize(("value", "region", "want"), ADDRESS_CASES)
def test_parse_address(value: str, region: str, want: dict[str, Any]) -> None:
    address = parse_address(value, region)
    assert address is not None
    assert _view(address) == want
    assert address.raw == value.strip()
    assert address.number_key == (address.number or address.digits)


def test_at_least_forty_real_world_address_values() -> None:
    assert len(ADDRESS_CASES) >= 40


def test_parse_address_default_region_is_us() -> None:
    address = parse_address("<sip:4155550123@carrier.example>")
    assert address is not None
    assert address.number == "+14155550123"


# --- parse_address: values that cannot be read (never raise, return None) ----------

UNPARSEABLE = [
    # RFC 4475 3.1.2.6 (quotbal): unterminated quote in the display name
    pytest.param('"Mr. J. User <sip:j.user@example.com>', id="rfc4475-quotbal"),
    # RFC 4475 3.1.2.6: the "reasonable inference" example
    pytest.param(
        '"Mr J. User <sip:j.user@example.com> <sip:realj@example.net>',
        id="rfc4475-quotbal-two-uris",
    ),
    # RFC 4475 3.1.2.15 (baddn): first part of an unquoted display name split at the comma
    pytest.param("Bell", id="rfc4475-baddn-display-fragment"),
    # Cisco Unified CM guide: a URI without a scheme in Remote-Party-ID
    pytest.param(
        '"Bob Jones"<9728135001@localhost; user=phone>;party=called;screen=no;privacy=full',
        id="cisco-cucm-rpid-no-scheme",
    ),
    pytest.param('"Alice" <sip:alice@atlanta.com', id="missing-closing-angle"),
    pytest.param("<sip:+14155550123@carrier.example;user=phone", id="missing-angle-bare-start"),
    pytest.param('"Alice" sip:alice@atlanta.com', id="quoted-display-without-angle"),
    pytest.param("", id="empty"),
    pytest.param("   \t\r\n ", id="whitespace"),
    pytest.param(";;", id="only-semicolons"),
    pytest.param("<>", id="empty-angle"),
    pytest.param("<;>", id="angle-semicolon"),
    pytest.param('""', id="empty-quotes"),
    pytest.param('"', id="lone-quote"),
    pytest.param("\\", id="lone-backslash"),
    pytest.param("<", id="lone-open-angle"),
    pytest.param(">", id="lone-close-angle"),
    pytest.param(":", id="lone-colon"),
    pytest.param(":user@host", id="empty-scheme"),
    pytest.param("s i p:user@host", id="scheme-with-spaces"),
    pytest.param("\x00\x01\x02\xff\ufffd", id="binary-junk"),
    pytest.param("<sip:" + "9" * 100_000, id="very-long-unterminated"),
]


@pytest.mark.parametrize("value", UNPARSEABLE)
def test_parse_address_gives_up_without_raising(value: str) -> None:
    assert parse_address(value) is None


def test_parse_address_very_long_value() -> None:
    user = "a" * 100_000
    address = parse_address(f'"{"x" * 10_000}" <sip:{user}@example.com>;tag={"t" * 10_000}')
    assert address is not None
    assert address.user == user
    assert address.host == "example.com"
    assert address.number is None
    assert address.params == {"tag": "t" * 10_000}


def test_parse_address_very_long_number_is_no_number() -> None:
    address = parse_address("<sip:+" + "1" * 5_000 + "@example.com>")
    assert address is not None
    assert address.number is None
    assert address.digits is None


# --- split_list ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        # RFC 4475 3.1.2.14 (badaspec): a quoted comma does not split
        pytest.param(
            '"Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
            ['"Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423'],
            id="rfc4475-badaspec-quoted-comma",
        ),
        # RFC 4475 3.1.2.15 (baddn): an unquoted comma does (the value is malformed)
        pytest.param(
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            ["Bell", "Alexander <sip:a.g.bell@example.com>;tag=43"],
            id="rfc4475-baddn-unquoted-comma",
        ),
        # RFC 4475 3.1.1.2 (intmeth): commas inside <> do not split
        pytest.param(
            "<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>",
            ["<sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>"],
            id="rfc4475-intmeth-comma-in-angle",
        ),
        # RFC 4475 3.1.1.1 (wsinv): UnknownHeaderWithUnusualValue
        pytest.param(";;,,;;,;", [";;", ";;", ";"], id="rfc4475-wsinv-only-separators"),
        # RFC 3261 §20.10: two Contact values, the second with a non-SIP scheme
        pytest.param(
            '"Mr. Watson" <sip:watson@worcester.bell-telephone.com>;q=0.7; expires=3600, '
            '"Mr. Watson" <mailto:watson@bell-telephone.com> ;q=0.1',
            [
                '"Mr. Watson" <sip:watson@worcester.bell-telephone.com>;q=0.7; expires=3600',
                '"Mr. Watson" <mailto:watson@bell-telephone.com> ;q=0.1',
            ],
            id="rfc3261-20.10-two-contacts",
        ),
        # pidgin-sipe (Lync) P-Asserted-Identity: a sip and a tel value, quoted comma
        pytest.param(
            '"Lunch, Lucas" <sip:llucas@cisco.com>,<tel:+420123456;ext=88463>',
            ['"Lunch, Lucas" <sip:llucas@cisco.com>', "<tel:+420123456;ext=88463>"],
            id="sipe-pai-sip-and-tel",
        ),
        # RFC 7044 §5: three History-Info entries in one header, folded
        pytest.param(
            "<sip:UserA@ims.example.com?Reason=SIP%3Bcause%3D302>\r\n ;index=1.1,\r\n "
            "<sip:UserB@example.com?Privacy=history&Reason=SIP%3Bcause%3D486>\r\n "
            ";index=1.2;mp=1.1,\r\n <sip:45432@192.168.0.3>;index=1.3;rc=1.2",
            [
                "<sip:UserA@ims.example.com?Reason=SIP%3Bcause%3D302>\r\n ;index=1.1",
                "<sip:UserB@example.com?Privacy=history&Reason=SIP%3Bcause%3D486>\r\n "
                ";index=1.2;mp=1.1",
                "<sip:45432@192.168.0.3>;index=1.3;rc=1.2",
            ],
            id="rfc7044-5-three-entries",
        ),
        # 3GPP-style History-Info (MediaTek RIL sample): unescaped ; and quotes inside <>
        pytest.param(
            "<sip:UserB@ims.example.com>; index=1, <sip:UserC@ims.example.com?Reason=SIP;"
            'cause=302;text="CDIV">; index=1.1',
            [
                "<sip:UserB@ims.example.com>; index=1",
                '<sip:UserC@ims.example.com?Reason=SIP;cause=302;text="CDIV">; index=1.1',
            ],
            id="3gpp-history-info-quotes-in-uri",
        ),
        # RFC 4475 3.1.1.1 (wsinv): escaped quote and backslash before a comma
        pytest.param(
            '"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>, <sip:other@example.com>',
            ['"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>', "<sip:other@example.com>"],
            id="escaped-quote-then-comma",
        ),
        # CNAM as carriers send it: a comma in the display name only (no split, stripped)
        pytest.param(
            ' "DOE,JANE" <sip:+14155550123@trunk.example.net>;tag=9f ',
            ['"DOE,JANE" <sip:+14155550123@trunk.example.net>;tag=9f'],
            id="cnam-comma-in-display-name",
        ),
        pytest.param(
            '"Doe \\" , x" <sip:a@b>',
            ['"Doe \\" , x" <sip:a@b>'],
            id="escaped-quote-hides-the-comma",
        ),
        pytest.param(
            '"Doe, Jane" <sip:a@b>;tag=1,"Roe, Rick" <sip:c@d>',
            ['"Doe, Jane" <sip:a@b>;tag=1', '"Roe, Rick" <sip:c@d>'],
            id="quoted-commas-in-two-values",
        ),
        pytest.param('"a,b",', ['"a,b"'], id="trailing-comma-after-quote"),
        pytest.param("", [], id="empty"),
        pytest.param(" , ,, ", [], id="only-commas"),
        pytest.param('"unterminated, quote <sip:a@b>', ['"unterminated, quote <sip:a@b>'], id="uq"),
        pytest.param("a>, b", ["a>", "b"], id="stray-close-angle"),
    ],
)
def test_split_list(value: str, parts: list[str]) -> None:
    assert split_list(value) == parts


# --- header names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("From", "from"),
        ("FROM", "from"),
        ("f", "from"),
        ("F", "from"),
        ("t", "to"),
        ("T", "to"),
        ("i", "call-id"),
        ("m", "contact"),
        ("l", "content-length"),
        ("v", "via"),
        ("k", "supported"),
        ("x", "session-expires"),
        ("y", "identity"),
        ("TO ", "to"),  # RFC 4475 wsinv: "TO :"
        ("  from   ", "from"),  # RFC 4475 wsinv: "from   :"
        ("MaX-fOrWaRdS", "max-forwards"),  # RFC 4475 wsinv
        ("P-Asserted-Identity", "p-asserted-identity"),
        ("p-asserted-identity", "p-asserted-identity"),
        ("Remote-Party-ID", "remote-party-id"),
        ("History-Info", "history-info"),
        ("C%6Fntact", "c%6fntact"),  # RFC 4475 esc02: not a Contact header
        ("ff", "ff"),
        ("", ""),
    ],
)
def test_canonical_name(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


def test_records_built_with_tuple_new_have_every_field() -> None:
    """identify builds Address and CallIdentity with tuple.__new__ (no arity check)."""
    headers = Headers(
        [
            ("From", '"A" <sip:+14155550123@example.com>;tag=1'),
            ("To", "<sip:+18005550100@example.com>"),
            ("Diversion", "<tel:+14155550199>;reason=unconditional"),
        ]
    )
    call = identify(headers, IdentityPolicy())
    assert len(call) == len(CallIdentity._fields)
    for address in (call.caller, call.called, call.forwarded_from):
        assert address is not None and len(address) == len(Address._fields)
    assert call._asdict()["called"].number == "+18005550100"


def test_a_flood_of_made_up_header_names_stops_the_name_memo_growing() -> None:
    for i in range(sip.MAX_CANONICAL_NAMES + 100):
        assert canonical_name(f"X-Junk-{i}") == f"x-junk-{i}"
    assert len(sip._CANONICAL_NAMES) <= sip.MAX_CANONICAL_NAMES
    assert canonical_name("F") == "from"  # still right, memo full or not
    assert canonical_name(" X-Never-Seen ") == "x-never-seen"


def test_cached_to_addresses_parse_as_uncached_and_stay_bounded() -> None:
    values = [
        "<sip:+18005550100@sip.api.openai.com>",
        '"Sales" <sip:+442071234567@sip.api.openai.com>;tag=1',
        "<tel:8005550100>",
        "not an address",
    ]
    for value in values * 2:
        assert sip._cached_address(value, "US") == parse_address(value, "US")
    assert sip._cached_address(values[2], "GB") == parse_address(values[2], "GB")
    for i in range(sip.MAX_CACHED_ADDRESSES + 10):
        sip._cached_address(f"<sip:+1800555{i:04d}@example.com>", "US")
    assert len(sip._ADDRESSES) <= sip.MAX_CACHED_ADDRESSES
    headers = Headers([("To", values[0]), ("From", "<sip:+14155550123@example.com>")])
    assert identify(headers, IdentityPolicy()).called == parse_address(values[0], "US")


def test_remembered_uri_parameters_read_as_parsed_ones_and_stay_bounded() -> None:
    sip._URI_PARAMS.clear()  # whatever earlier tests left
    for text in (";user=phone", ";transport=tls;lr", "", ';a="b;c"', ";USER=Phone;user=x"):
        assert sip._uri_params(text) == sip._split_params(text)
        assert sip._uri_params(text) is sip._uri_params(text)  # shared: read-only
    with pytest.raises(TypeError):
        sip._uri_params(";user=phone")["user"] = "ip"  # type: ignore[index]
    long = ";x=" + "y" * sip.MAX_URI_PARAMS_TEXT
    assert sip._uri_params(long) == {"x": "y" * sip.MAX_URI_PARAMS_TEXT}
    assert long not in sip._URI_PARAMS
    for i in range(sip.MAX_URI_PARAMS + 10):
        assert sip._uri_params(f";junk={i}") == {"junk": str(i)}
    assert len(sip._URI_PARAMS) <= sip.MAX_URI_PARAMS
    # After a burst of varying parameters the common ones are remembered again.
    assert sip._uri_params(";user=phone") is sip._uri_params(";user=phone")
    address = parse_address("<sip:+14155550123@trunk.example.net;user=phone;junk=1>", "US")
    assert address is not None and address.uri_params == {"user": "phone", "junk": "1"}


def test_every_compact_form_expands_to_a_long_name() -> None:
    for short, long in COMPACT_FORMS.items():
        assert len(short) == 1
        assert canonical_name(short.upper()) == long
        assert len(long) > 1


# RFC 4475 3.1.1.7 (longreq): Via in every case mix and compact form, order significant
LONGREQ_VIAS = [
    ("Via", "SIP/2.0/TCP sip33.example.com"),
    ("v", "SIP/2.0/TCP sip32.example.com"),
    ("V", "SIP/2.0/TCP sip31.example.com"),
    ("Via", "SIP/2.0/TCP sip30.example.com"),
    ("ViA", "SIP/2.0/TCP sip29.example.com"),
    ("VIa", "SIP/2.0/TCP sip28.example.com"),
    ("VIA", "SIP/2.0/TCP sip27.example.com"),
    ("via", "SIP/2.0/TCP sip26.example.com"),
    ("viA", "SIP/2.0/TCP sip25.example.com"),
    ("vIa", "SIP/2.0/TCP sip24.example.com"),
    ("vIA", "SIP/2.0/TCP sip23.example.com"),
    ("V ", "SIP/2.0/TCP sip22.example.com"),
    ("v ", "SIP/2.0/TCP sip21.example.com"),
]


def test_headers_case_insensitive_compact_and_ordered() -> None:
    headers = Headers(
        [
            ("F", "sip:amazinglylongcallername@example.net;tag=1"),
            *LONGREQ_VIAS,
            ("Call-ID", "longreq.onereallylongcallid"),
        ]
    )
    assert headers.get_all("via") == tuple(value for _, value in LONGREQ_VIAS)
    assert headers.get_all("V") == headers.get_all("VIA")
    assert headers.get("from") == "sip:amazinglylongcallername@example.net;tag=1"
    assert headers.get("i") == "longreq.onereallylongcallid"
    assert headers.get("Contact") is None
    assert headers.get_all("Contact") == ()
    assert len(headers) == len(LONGREQ_VIAS) + 2
    # iteration keeps the names and order as received
    assert list(headers)[:3] == [
        ("F", "sip:amazinglylongcallername@example.net;tag=1"),
        ("Via", "SIP/2.0/TCP sip33.example.com"),
        ("v", "SIP/2.0/TCP sip32.example.com"),
    ]


@pytest.mark.parametrize(
    ("name", "present"),
    [
        ("From", True),
        ("from", True),
        ("f", True),
        ("To", True),
        ("t", True),
        ("TO", True),
        ("Via", False),
        ("v", False),
        ("", False),
        (3, False),
        (None, False),
    ],
)
def test_headers_contains(name: object, present: bool) -> None:
    # RFC 4475 3.1.1.8 (dblreq): the INVITE's compact t: and long From:
    headers = Headers([("t", "sip:joe@example.com"), ("From", "sip:caller@example.net;tag=141334")])
    assert (name in headers) is present


def test_repeated_headers_are_kept_in_order() -> None:
    # RFC 4475 3.3.8 (multi01): To and From each appear twice, mixed with other headers
    headers = Headers(
        [
            ("From", "sip:caller@example.com;tag=3413415"),
            ("To", "sip:user@example.com"),
            ("To", "sip:other@example.net"),
            ("From", "sip:caller@example.net;tag=2923420123"),
        ]
    )
    assert headers.get_all("to") == ("sip:user@example.com", "sip:other@example.net")
    assert headers.get_all("f") == (
        "sip:caller@example.com;tag=3413415",
        "sip:caller@example.net;tag=2923420123",
    )
    identity = identify(headers, IdentityPolicy())
    assert identity.called is not None and identity.called.user == "user"
    assert identity.caller is not None and identity.caller.host == "example.com"


def test_headers_repr_and_empty() -> None:
    assert len(Headers()) == 0
    assert list(Headers()) == []
    assert "To" not in Headers()
    assert "sip:joe@example.com" in repr(Headers([("t", "sip:joe@example.com")]))


# --- identify ------------------------------------------------------------------------

POLICY = IdentityPolicy()

# RFC 3325 §10.1 (F4): anonymous From, Privacy: id, and the two asserted identities of §9.1
RFC3325_F4 = [
    ("To", "<sip:+14085551212@cisco.com>"),
    ("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=9802748'),
    ("Call-ID", "245780247857024504"),
    ("Privacy", "id"),
    ("P-Asserted-Identity", '"Cullen Jennings" <sip:fluffy@cisco.com>'),
    ("P-Asserted-Identity", "tel:+14085264000"),
]

# Twilio "SIP INVITEs" glossary example
TWILIO_INVITE = [
    ("Via", "SIP/2.0/UDP 192.168.10.10:5060;branch=z9hG4bK776asdhds"),
    ("Max-Forwards", "70"),
    ("To", '"Bob" <sip:+14155552222@example.pstn.twilio.com>'),
    ("From", '"Alice" <sip:+14155551111@example.pstn.twilio.com>;tag=1'),
    ("Call-ID", "a84b4c76e66710"),
    ("CSeq", "1 INVITE"),
    ("Contact", '"Alice" <sip:+14155551111@192.168.10.10:5060>'),
    ("Diversion", '"Sales" <sip:+14155550000@example.pstn.twilio.com>'),
    ("P-Asserted-Identity", '"Alice" <sip:+14155551111@example.pstn.twilio.com>'),
    ("Content-Length", "0"),
]

# OpenAI Realtime SIP guide, realtime.call.incoming example sip_headers
OPENAI_EXAMPLE = [
    ("From", "sip:+142555512112@sip.example.com"),
    ("To", "sip:+18005551212@sip.example.com"),
    ("Call-ID", "03782086-4ce9-44bf-8b0d-4e303d2cc590"),
]


def _cucm(privacy: str, rpid_display: str, from_value: str) -> list[tuple[str, str]]:
    """Cisco Unified CM SIP line messaging guide: calling line/name restriction examples."""
    return [
        (
            "Remote-Party-ID",
            f'"{rpid_display}" <sip:69005@10.10.10.2>;party=calling;id-type=subscriber;'
            f"privacy={privacy};screen=yes",
        ),
        ("From", from_value),
        ("To", "<sip:9728135001@10.10.10.1>"),
    ]


def who(address: Address | None) -> str | None:
    """The identity a router would use: the number key, else user@host."""
    if address is None:
        return None
    if address.number_key:
        return address.number_key
    return f"{address.user}@{address.host}" if address.user else address.host


def ident(
    headers: list[tuple[str, str]],
    case_id: str,
    *,
    caller: str | None,
    caller_header: str | None,
    called: str | None,
    anonymous: bool,
    display: str | None = None,
    forwarded: str | None = None,
    policy: IdentityPolicy = POLICY,
) -> Any:
    want = {
        "caller": caller,
        "caller_header": caller_header,
        "called": called,
        "forwarded_from": forwarded,
        "anonymous": anonymous,
        "display_name": display,
    }
    return pytest.param(headers, policy, want, id=case_id)


IDENTIFY_CASES = [
    ident(
        OPENAI_EXAMPLE,
        "openai-guide-example",
        caller="+142555512112",
        caller_header="from",
        called="+18005551212",
        anonymous=False,
    ),
    ident(
        TWILIO_INVITE,
        "twilio-glossary-pai-first-diversion",
        caller="+14155551111",
        caller_header="p-asserted-identity",
        called="+14155552222",
        anonymous=False,
        display="Alice",
        forwarded="+14155550000",
    ),
    # the tel identity is preferred for its number; the display name then comes from From
    ident(
        RFC3325_F4,
        "rfc3325-10.1-privacy-id",
        caller="+14085264000",
        caller_header="p-asserted-identity",
        called="+14085551212",
        anonymous=True,
        display="Anonymous",
    ),
    # RFC 3325 §10.1 (F1): P-Preferred-Identity is not trusted by default ...
    ident(
        [
            ("To", "<sip:+14085551212@cisco.com>"),
            ("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=9802748'),
            ("Privacy", "id"),
            ("P-Preferred-Identity", '"Cullen Jennings" <sip:fluffy@cisco.com>'),
        ],
        "rfc3325-10.1-f1-ppi-ignored-by-default",
        caller="anonymous@anonymous.invalid",
        caller_header="from",
        called="+14085551212",
        anonymous=True,
        display="Anonymous",
    ),
    # ... unless configured, in the order Telnyx documents (PPI, PAI, RPID, From)
    ident(
        [
            ("To", "<sip:+14085551212@cisco.com>"),
            ("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=9802748'),
            ("Privacy", "id"),
            ("P-Preferred-Identity", '"Cullen Jennings" <sip:fluffy@cisco.com>'),
        ],
        "telnyx-priority-ppi-configured",
        caller="fluffy@cisco.com",
        caller_header="p-preferred-identity",
        called="+14085551212",
        anonymous=True,
        display="Cullen Jennings",
        policy=IdentityPolicy(
            caller_headers=(
                "P-Preferred-Identity",
                "P-Asserted-Identity",
                "Remote-Party-ID",
                "From",
            )
        ),
    ),
    # caller_headers order is configurable: From only ignores the asserted identity
    ident(
        TWILIO_INVITE,
        "policy-from-only",
        caller="+14155551111",
        caller_header="from",
        called="+14155552222",
        anonymous=False,
        display="Alice",
        forwarded="+14155550000",
        policy=IdentityPolicy(caller_headers=("From",)),
    ),
    # ... and compact names work in the policy too
    ident(
        RFC3325_F4,
        "policy-compact-from-only",
        caller="anonymous@anonymous.invalid",
        caller_header="from",
        called="+14085551212",
        anonymous=True,
        display="Anonymous",
        policy=IdentityPolicy(caller_headers=("f",)),
    ),
    # ... and the asserted identity can be put last
    ident(
        [
            ("From", '"Cullen Jennings" <sip:fluffy@cisco.com>;tag=1'),
            ("To", "<sip:+14085551212@cisco.com>"),
            ("P-Asserted-Identity", "tel:+14085264000"),
        ],
        "policy-from-before-pai",
        caller="fluffy@cisco.com",
        caller_header="from",
        called="+14085551212",
        anonymous=False,
        display="Cullen Jennings",
        policy=IdentityPolicy(caller_headers=("From", "P-Asserted-Identity")),
    ),
    # an empty policy order finds no caller: anonymous
    ident(
        TWILIO_INVITE,
        "policy-no-caller-headers",
        caller=None,
        caller_header=None,
        called="+14155552222",
        anonymous=True,
        display="Alice",
        forwarded="+14155550000",
        policy=IdentityPolicy(caller_headers=()),
    ),
    # an anonymous asserted identity falls through to the next header that names someone
    ident(
        [
            ("P-Asserted-Identity", '"Anonymous" <sip:anonymous@anonymous.invalid>'),
            *_cucm("off", "sip line", '"sip line" <sip:69005@10.10.10.2>;tag=1234'),
        ],
        "anonymous-pai-falls-through-to-rpid",
        caller="69005",
        caller_header="remote-party-id",
        called="+19728135001",
        anonymous=False,
        display="sip line",
    ),
    ident(
        _cucm("off", "sip line", '"sip line" <sip:69005@10.10.10.2>;tag=1234'),
        "cisco-cucm-privacy-off",
        caller="69005",
        caller_header="remote-party-id",
        called="+19728135001",
        anonymous=False,
        display="sip line",
    ),
    # privacy=name hides the name only: the number is presented
    ident(
        _cucm("name", "Anonymous", '"Anonymous" <sip:69005@10.10.10.2>;tag=1234'),
        "cisco-cucm-privacy-name",
        caller="69005",
        caller_header="remote-party-id",
        called="+19728135001",
        anonymous=False,
        display="Anonymous",
    ),
    ident(
        _cucm("uri", "sip line", '"sip line" <sip:Anonymous@10.10.10.2>;tag=1234'),
        "cisco-cucm-privacy-uri",
        caller="69005",
        caller_header="remote-party-id",
        called="+19728135001",
        anonymous=True,
        display="sip line",
    ),
    ident(
        _cucm("full", "sip line", '"Anonymous" <sip:Anonymous@10.10.10.2>;tag=1234'),
        "cisco-cucm-privacy-full",
        caller="69005",
        caller_header="remote-party-id",
        called="+19728135001",
        anonymous=True,
        display="sip line",
    ),
    # draft-ietf-sip-privacy-04 Remote-Party-ID example (verbatim in Tropo's SDK tests):
    # privacy=full alone makes the call anonymous, even with a presented From
    ident(
        [
            (
                "Remote-Party-ID",
                '"John Doe"<sip:jdoe@foo.com>;party=calling;id-type=subscriber;'
                "privacy=full;screen=yes",
            ),
            ("From", '"John Doe" <sip:jdoe@foo.com>;tag=1'),
            ("To", "<sip:+14155550100@example.com>"),
        ],
        "draft-sip-privacy-rpid-full",
        caller="jdoe@foo.com",
        caller_header="remote-party-id",
        called="+14155550100",
        anonymous=True,
        display="John Doe",
    ),
    # Huawei SoftX3000 trace: only an anonymous From; the called number is a short DID
    ident(
        [
            ("From", "Anonymous <sip:Anonymous@94.198.1.100>;tag=0syx2bcd-CC-22"),
            ("To", "<sip:55555@94.198.4.101;user=phone>"),
            ("Call-ID", "SBC5u03x4l3ld534uyy43b10522xb3b4lb4@SoftX3000"),
        ],
        "huawei-anonymous-from-only",
        caller="Anonymous@94.198.1.100",
        caller_header="from",
        called="55555",
        anonymous=True,
        display="Anonymous",
    ),
    # RFC 3261 §8.1.1.3: anonymous.invalid host
    ident(
        [
            ("From", '"Anonymous" <sip:thisis@anonymous.invalid>;tag=1928301774'),
            ("To", "Bob <sip:bob@biloxi.com>"),
        ],
        "rfc3261-8.1.1.3-anonymous-invalid",
        caller="thisis@anonymous.invalid",
        caller_header="from",
        called="bob@biloxi.com",
        anonymous=True,
        display="Anonymous",
    ),
    # Telnyx caller-ID anonymization: Privacy: id with a presented number
    ident(
        [
            ("From", "<sip:+13129457420@sip.telnyx.com>;tag=a"),
            ("To", "<sip:+18005550100@example.com>"),
            ("Privacy", "id"),
        ],
        "telnyx-privacy-id",
        caller="+13129457420",
        caller_header="from",
        called="+18005550100",
        anonymous=True,
    ),
    # Privacy tokens are case-insensitive and may be listed (RFC 3323 §4.2)
    ident(
        [
            ("From", "<sip:+13129457420@sip.telnyx.com>;tag=a"),
            ("To", "<sip:+18005550100@example.com>"),
            ("Privacy", "header; ID"),
        ],
        "privacy-header-and-id",
        caller="+13129457420",
        caller_header="from",
        called="+18005550100",
        anonymous=True,
    ),
    ident(
        [
            ("From", "<sip:+13129457420@sip.telnyx.com>;tag=a"),
            ("To", "<sip:+18005550100@example.com>"),
            ("Privacy", "none"),
        ],
        "privacy-none",
        caller="+13129457420",
        caller_header="from",
        called="+18005550100",
        anonymous=False,
    ),
    # Twilio's keypad rendering of ANONYMOUS, configured as a sentinel (the example given in
    # the anonymous_numbers setting); it is no possible number, so it is matched as dialled
    ident(
        [
            ("From", "<sip:+266696687@example.pstn.twilio.com>;tag=1"),
            ("To", "<sip:+14155552222@example.pstn.twilio.com>"),
        ],
        "twilio-sentinel-configured",
        caller="+266696687",
        caller_header="from",
        called="+14155552222",
        anonymous=True,
        policy=IdentityPolicy(anonymous_numbers=frozenset({"+266696687", "+7378742833"})),
    ),
    ident(
        [
            ("From", "<sip:+266696687@example.pstn.twilio.com>;tag=1"),
            ("To", "<sip:+14155552222@example.pstn.twilio.com>"),
        ],
        "twilio-sentinel-not-configured",
        caller="+266696687",
        caller_header="from",
        called="+14155552222",
        anonymous=False,
    ),
    # 2600Hz Kazoo: withheld callers presented as 0000000000, configured as dialled ...
    ident(
        [
            ("From", '"anonymous" <sip:0000000000@kazoo.example.com>;tag=1'),
            ("To", "<sip:+14155552222@example.com>"),
        ],
        "kazoo-sentinel-as-dialled",
        caller="+10000000000",
        caller_header="from",
        called="+14155552222",
        anonymous=True,
        display="anonymous",
        policy=IdentityPolicy(anonymous_numbers=frozenset({"0000000000"})),
    ),
    # ... or configured in E.164
    ident(
        [
            ("From", '"anonymous" <sip:0000000000@kazoo.example.com>;tag=1'),
            ("To", "<sip:+14155552222@example.com>"),
        ],
        "kazoo-sentinel-as-e164",
        caller="+10000000000",
        caller_header="from",
        called="+14155552222",
        anonymous=True,
        display="anonymous",
        policy=IdentityPolicy(anonymous_numbers=frozenset({"+10000000000"})),
    ),
    # RFC 6044 §7.1 (as corrected by erratum 2603): three diversions in one header; the
    # first entry is the most recent (RFC 5806)
    ident(
        [
            ("From", "<sip:+14155551111@example.com>;tag=1"),
            ("To", "<sip:last_diverting_target@example.com>"),
            (
                "Diversion",
                "<sip:diverting_user3_address>;reason=unconditional;counter=1;privacy=off, "
                "<sip:diverting_user2_address>;reason=user-busy;counter=1;privacy=full, "
                "<sip:diverting_user1_address>;reason=no-answer;counter=1;privacy=off",
            ),
        ],
        "rfc6044-diversion-list-first-is-latest",
        caller="+14155551111",
        caller_header="from",
        called="last_diverting_target@example.com",
        anonymous=False,
        forwarded="diverting_user3_address",
    ),
    # DIDWW: a call diverted more than once carries several Diversion headers, most recent
    # first; Bandwidth's diversion fields (origTo, reason, counter, limit, privacy, screen)
    ident(
        [
            ("From", "<sip:+11111111111@sip.example.com>;tag=1"),
            ("To", "<sip:+13333333333@sip.example.com>"),
            (
                "Diversion",
                "<tel:+12222222222>;reason=unavailable;counter=1;limit=1;privacy=off;screen=no",
            ),
            ("Diversion", "<sip:+14155550000@example.com>;reason=unconditional;counter=1"),
        ],
        "didww-bandwidth-diversion-headers",
        caller="+11111111111",
        caller_header="from",
        called="+13333333333",
        anonymous=False,
        forwarded="+12222222222",
    ),
    # RFC 7044 §5: the entry before the current target is the one that redirected the call
    ident(
        [
            ("From", "<sip:+14155551111@example.com>;tag=1"),
            ("To", "<sip:UserA@ims.example.com>"),
            (
                "History-Info",
                "<sip:UserA@ims.example.com?Reason=SIP%3Bcause%3D302>;index=1.1,"
                "<sip:UserB@example.com?Privacy=history&Reason=SIP%3Bcause%3D486>"
                ";index=1.2;mp=1.1,<sip:45432@192.168.0.3>;index=1.3;rc=1.2",
            ),
        ],
        "rfc7044-5-history-info-second-to-last",
        caller="+14155551111",
        caller_header="from",
        called="UserA@ims.example.com",
        anonymous=False,
        forwarded="UserB@example.com",
    ),
    # Microsoft Exchange Test-ExchangeUMCallFlow example, as separate History-Info headers
    ident(
        [
            ("From", "<sip:+14155551111@example.com>;tag=1"),
            ("To", "<sip:10000@10.176.10.194;user=phone>"),
            (
                "History-Info",
                "<sip:10001@10.176.10.194;user=phone?Reason=SIP%3Bcause%3D487%3Btext%3D"
                "Timeout>;index=1",
            ),
            ("History-Info", "<sip:10000@10.176.10.194;user=phone?Reason=SIP>;index=1.1"),
        ],
        "exchange-um-history-info-headers",
        caller="+14155551111",
        caller_header="from",
        called="10000",
        anonymous=False,
        forwarded="10001",
    ),
    # [MS-SIPRE] §4.8: a single History-Info entry means no redirection
    ident(
        [
            ("From", "<sip:Alice@contoso.com>;epid=01010101"),
            ("To", "<sip:Bob@contoso.com>;epid=02020202"),
            ("History-Info", "<sip:Bob@contoso.com>;index=1"),
        ],
        "ms-sipre-single-history-info",
        caller="Alice@contoso.com",
        caller_header="from",
        called="Bob@contoso.com",
        anonymous=False,
    ),
    # Diversion wins over History-Info when both are present
    ident(
        [
            ("From", "<sip:+14155551111@example.com>;tag=1"),
            ("To", "<sip:+14155552222@example.com>"),
            ("History-Info", "<sip:front@example.com>;index=1"),
            ("History-Info", "<sip:desk@example.com>;index=1.1"),
            ("Diversion", '"Sales" <sip:+14155550000@example.pstn.twilio.com>'),
        ],
        "diversion-before-history-info",
        caller="+14155551111",
        caller_header="from",
        called="+14155552222",
        anonymous=False,
        forwarded="+14155550000",
    ),
    # RFC 4475 3.1.1.1 (wsinv): names with odd case and spacing, escaped display name
    ident(
        [
            ("TO ", "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n"),
            (
                "from   ",
                '"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8',
            ),
            ("MaX-fOrWaRdS", "0068"),
            ("Call-ID", "wsinv.ndaksdj@192.0.2.1"),
            ("UnknownHeaderWithUnusualValue", ";;,,;;,;"),
        ],
        "rfc4475-wsinv",
        caller="jdrosen@example.com",
        caller_header="from",
        called="vivekg@chair-dnrc.example.com",
        anonymous=False,
        display='J Rosenberg \\"',
    ),
    # RFC 4475 3.1.2.6 (quotbal): the unreadable To leaves no called party, the rest holds
    ident(
        [
            ("To", '"Mr. J. User <sip:j.user@example.com>'),
            ("From", "sip:caller@example.net;tag=93334"),
        ],
        "rfc4475-quotbal-to",
        caller="caller@example.net",
        caller_header="from",
        called=None,
        anonymous=False,
    ),
    # RFC 4475 3.1.2.15 (baddn): the From splits at the unquoted comma; the URI survives
    ident(
        [
            ("From", "Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            ("To", "Watson, Thomas <sip:t.watson@example.org>"),
        ],
        "rfc4475-baddn",
        caller="a.g.bell@example.com",
        caller_header="from",
        called="t.watson@example.org",
        anonymous=False,
        display="Alexander",
    ),
    # Vonage: UK numbers without + under a GB default region
    ident(
        [
            ("From", "<sip:447700900123@sip.nexmo.com>;tag=1"),
            ("To", "<sip:442079460018@sip.nexmo.com>"),
        ],
        "vonage-uk-region-gb",
        caller="+447700900123",
        caller_header="from",
        called="+442079460018",
        anonymous=False,
        policy=IdentityPolicy(default_region="GB"),
    ),
    # nothing usable at all: still a CallIdentity, anonymous for want of a caller
    ident(
        [
            ("From", '"unterminated <sip:'),
            ("To", "<"),
            ("P-Asserted-Identity", "\x00\xff"),
            ("Remote-Party-ID", ";;;"),
            ("Diversion", ",,,"),
            ("History-Info", '"'),
            ("Privacy", ""),
        ],
        "all-garbage",
        caller=None,
        caller_header=None,
        called=None,
        anonymous=False,  # unreadable is unknown, not withheld
    ),
    ident([], "no-headers", caller=None, caller_header=None, called=None, anonymous=True),
]


@pytest.mark.parametrize(("items", "policy", "want"), IDENTIFY_CASES)
def test_identify(
    items: list[tuple[str, str]], policy: IdentityPolicy, want: dict[str, Any]
) -> None:
    headers = Headers(items)
    identity = identify(headers, policy)
    assert isinstance(identity, CallIdentity)
    got = {
        "caller": who(identity.caller),
        "caller_header": identity.caller_header,
        "called": who(identity.called),
        "forwarded_from": who(identity.forwarded_from),
        "anonymous": identity.anonymous,
        "display_name": identity.display_name,
    }
    assert got == want
    assert identity.headers is headers
    assert identity.media_security is None


def test_identify_prefers_an_address_with_a_number_within_a_header() -> None:
    # pidgin-sipe (Lync): one P-Asserted-Identity value holding a sip and a tel identity
    headers = Headers(
        [
            (
                "P-Asserted-Identity",
                '"Lunch, Lucas" <sip:llucas@cisco.com>,<tel:+420123456;ext=88463>',
            )
        ]
    )
    identity = identify(headers, POLICY)
    assert identity.caller is not None
    assert identity.caller.scheme == "tel"
    assert identity.caller.number is None  # too short for a Czech number
    assert identity.caller.number_key == "+420123456"
    assert identity.caller.uri_params == {"ext": "88463"}
    assert identity.display_name is None  # the tel value has none, and there is no From


def test_identify_passes_media_security_through() -> None:
    identity = identify(Headers(OPENAI_EXAMPLE), POLICY, media_security="srtp")
    assert identity.media_security == "srtp"


def test_identify_limits_addresses_per_header() -> None:
    values = ", ".join(f"<sip:anonymous@h{i}.example>" for i in range(MAX_ADDRESSES_PER_HEADER))
    headers = Headers(
        [("P-Asserted-Identity", values + ", <sip:+14155550123@late.example>"), ("From", "")]
    )
    identity = identify(headers, POLICY)
    # the 17th value of the header is not read; the first anonymous one stands in
    assert identity.caller is not None and identity.caller.user == "anonymous"
    assert identity.anonymous is True


@pytest.mark.parametrize("user", sorted(ANONYMOUS_USERS | {"", "ANONYMOUS", " Restricted "}))
def test_anonymous_users(user: str) -> None:
    address = parse_address(f"<sip:{user}@carrier.example>")
    assert address is not None
    assert address.is_anonymous
    identity = identify(Headers([("From", f"<sip:{user}@carrier.example>;tag=1")]), POLICY)
    assert identity.anonymous is True


@pytest.mark.parametrize(
    "value",
    [
        "<sip:anonymousX@carrier.example>",
        "<sip:+14155550123@anonymous.example>",
        '"Anonymous" <sip:+14155550123@carrier.example>',
        "<mailto:anonymous@example.com>",
    ],
)
def test_not_anonymous(value: str) -> None:
    address = parse_address(value)
    assert address is not None
    assert not address.is_anonymous


# --- to_e164 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "region", "e164"),
    [
        ("+14155550123", None, "+14155550123"),
        ("+1 (415) 555-0123", None, "+14155550123"),
        ("4155550123", "US", "+14155550123"),
        ("14155550123", "US", "+14155550123"),
        ("5551234", "US", None),  # local only: no area code, no E.164
        ("+18631234", None, None),
        ("02079460018", "GB", "+442079460018"),
        ("447700900123", "GB", "+447700900123"),
        ("447700900123", "US", None),
        ("0049894531234", "DE", "+49894531234"),
        ("0049894531234", "US", None),
        ("+266696687", None, None),
        ("2000", "US", None),
        ("", "US", None),
        ("anonymous", "US", None),
        ("+", None, None),
        ("4155550123", None, None),  # no region and no +: unknown country
        ("9" * 200, "US", None),
    ],
)
def test_to_e164(text: str, region: str | None, e164: str | None) -> None:
    assert to_e164(text, region) == e164


# --- properties: never raise ---------------------------------------------------------

SIP_PIECES = st.sampled_from(
    [
        "sip:",
        "sips:",
        "tel:",
        "<",
        ">",
        '"',
        "\\",
        '\\"',
        ";",
        ",",
        ":",
        "@",
        "=",
        "?",
        "&",
        "%",
        "%2B",
        "%00",
        "[",
        "]",
        " ",
        "\r\n ",
        "\t",
        "+1",
        "415",
        "555",
        "0123",
        "anonymous",
        "anonymous.invalid",
        "user=phone",
        "phone-context=",
        "tag=",
        "privacy=full",
        "2001:db8::1",
        "example.com",
        "é",
        "\x00",
        "\ufffd",
    ]
)
SIP_LIKE = st.lists(SIP_PIECES, max_size=40).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=300), SIP_LIKE)
REGIONS = st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS))
HEADER_NAMES = st.one_of(
    st.sampled_from(
        [
            "From",
            "f",
            "To",
            "t",
            "P-Asserted-Identity",
            "Remote-Party-ID",
            "Diversion",
            "History-Info",
            "Privacy",
            "Contact",
        ]
    ),
    st.text(max_size=10),
)
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(value=ANY_TEXT, region=REGIONS)
def test_parse_address_never_raises(value: str, region: str) -> None:
    address = parse_address(value, region)
    if address is not None:
        assert address.raw == value.strip()
        assert address.scheme
        assert address.number is None or address.number.startswith("+")


@PROPERTY_SETTINGS
@given(value=ANY_TEXT)
def test_split_list_never_raises(value: str) -> None:
    parts = split_list(value)
    assert all(part and part == part.strip() for part in parts)


# Quoted display names with commas, the shape split_list's shortcut is for.
QUOTED_FIRST = st.builds(
    lambda space, name, rest: f'{space}"{name}"{rest}',
    st.sampled_from(["", " ", "\t"]),
    st.lists(st.sampled_from(["DOE", ",", " ", "\\", '\\"', "JANE", "<", ">"]), max_size=6).map(
        "".join
    ),
    SIP_LIKE,
)


@settings(max_examples=1500, deadline=None)
@given(value=st.one_of(ANY_TEXT, QUOTED_FIRST))
def test_split_list_agrees_with_the_character_loop(value: str) -> None:
    assert split_list(value) == sip._split_by_characters(value)


def anonymous_by_fields(address: Address) -> bool:
    """Address.is_anonymous as the rules read, from the address's other fields."""
    if address.host is not None and address.host.lower() == "anonymous.invalid":
        return True
    display = (address.display_name or "").strip().lower()
    if display in sip.ANONYMOUS_USERS and (address.number or address.digits) is None:
        return True
    if address.scheme in ("sip", "sips", "tel"):
        return not address.user or address.user.strip().lower() in sip.ANONYMOUS_USERS
    return False


ANONYMOUS_LIKE = st.builds(
    lambda display, scheme, user, host, params: f"{display}<{scheme}:{user}{host}{params}>",
    st.sampled_from(["", '"Anonymous" ', "Restricted ", '" withheld " ', '"Jane" ']),
    st.sampled_from(["sip", "sips", "tel", "mailto", "SIP"]),
    st.sampled_from(["", "anonymous", "Anonymous ", "unknown", "+14155550123", "c8oqz84zk7z"]),
    st.sampled_from(["", "@anonymous.invalid", "@ANONYMOUS.INVALID", "@privacy.org"]),
    st.sampled_from(["", ";user=phone"]),
)


@PROPERTY_SETTINGS
@given(value=st.one_of(ANY_TEXT, ANONYMOUS_LIKE), region=REGIONS)
def test_is_anonymous_follows_from_the_parsed_fields(value: str, region: str) -> None:
    address = parse_address(value, region)
    if address is not None:
        assert address.is_anonymous == anonymous_by_fields(address)
        assert address.number_key == (address.number or address.digits)


@PROPERTY_SETTINGS
@given(
    items=st.lists(st.tuples(HEADER_NAMES, ANY_TEXT), max_size=8),
    region=REGIONS,
    caller_headers=st.lists(HEADER_NAMES, max_size=4),
    media_security=st.none() | st.text(max_size=10),
)
def test_identify_never_raises(
    items: list[tuple[str, str]],
    region: str,
    caller_headers: list[str],
    media_security: str | None,
) -> None:
    headers = Headers(items)
    policy = IdentityPolicy(
        default_region=region,
        caller_headers=tuple(caller_headers),
        anonymous_numbers=frozenset({"+266696687", "0000000000"}),
    )
    identity = identify(headers, policy, media_security)
    assert isinstance(identity, CallIdentity)
    assert identity.headers is headers
    assert identity.media_security == media_security
    caller_values = [v for n in caller_headers for v in headers.get_all(n) if v.strip()]
    if identity.caller is None and not caller_values:
        assert identity.anonymous


@pytest.mark.parametrize("size", range(24))
def test_plain_dial_string_fast_path_agrees_with_the_grammar(size: int) -> None:
    from app.sip.identity import _DIAL_STRING, _dial_string

    for user in ("+" + "4" * size, "+" + "١" * size):  # ASCII digits, and Arabic-Indic ones
        assert _dial_string(user) == (user if _DIAL_STRING.fullmatch(user) else None)
