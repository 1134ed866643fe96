"""SIP INVITE headers -> who is calling whom. Pure: no I/O, never raises on input.

Follows the RFC 3261 grammar for name-addr / addr-spec closely enough for the values
real trunks send, and degrades to "could not parse" rather than failing: every field of
the result may be None, and the call is still routed on what was understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NamedTuple
from urllib.parse import unquote

import phonenumbers

from app.sip.cache import RepeatCache

# RFC 3261 7.3.3 and later RFCs' compact header names.
COMPACT_FORMS: Final = MappingProxyType(
    {
        "a": "accept-contact",
        "b": "referred-by",
        "c": "content-type",
        "d": "request-disposition",
        "e": "content-encoding",
        "f": "from",
        "i": "call-id",
        "j": "reject-contact",
        "k": "supported",
        "l": "content-length",
        "m": "contact",
        "o": "event",
        "r": "refer-to",
        "s": "subject",
        "t": "to",
        "u": "allow-events",
        "v": "via",
        "x": "session-expires",
        "y": "identity",
    }
)

ANONYMOUS_USERS: Final = frozenset(
    {"anonymous", "restricted", "unknown", "unavailable", "private", "withheld"}
)
ANONYMOUS_HOST: Final = "anonymous.invalid"

_VISUAL_SEPARATORS: Final = re.compile(r"[\s\-.()\[\]]")
MIN_DIAL_DIGITS: Final = 2
MAX_DIAL_DIGITS: Final = 20
_DIAL_STRING: Final = re.compile(rf"\+?[0-9]{{{MIN_DIAL_DIGITS},{MAX_DIAL_DIGITS}}}")
MAX_ADDRESSES_PER_HEADER: Final = 16
_NO_PARAMS: Final[Mapping[str, str]] = MappingProxyType({})


# Header names seen, canonical. A plain dict rather than lru_cache: a lookup is what every
# header of every call costs. Names are caller-controlled, so it stops growing when full
# (a flood of made-up names costs only their own lookups).
_CANONICAL_NAMES: Final[dict[str, str]] = {}
MAX_CANONICAL_NAMES: Final = 4096


def canonical_name(name: str) -> str:
    """Lower-case header name with compact forms expanded (`f` -> `from`)."""
    found = _CANONICAL_NAMES.get(name)
    if found is None:
        key = name.strip().lower()
        found = COMPACT_FORMS.get(key, key)
        if len(_CANONICAL_NAMES) < MAX_CANONICAL_NAMES:
            _CANONICAL_NAMES[name] = found
    return found


class Headers:
    """Case-insensitive, order-preserving multi-map of SIP headers."""

    __slots__ = ("_by_name", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        pairs: list[tuple[str, str]] = []
        by_name: dict[str, tuple[str, ...]] = {}
        for name, value in items:
            pairs.append((name, value))
            key = canonical_name(name)
            found = by_name.get(key)
            by_name[key] = (value,) if found is None else (*found, value)
        self._items = tuple(pairs)
        self._by_name = by_name

    def get_all(self, name: str) -> tuple[str, ...]:
        return self._by_name.get(canonical_name(name), ())

    def _values(self, key: str) -> tuple[str, ...]:
        """get_all for a name already canonical (this module's lookups: no memo lookup)."""
        return self._by_name.get(key, ())

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name) in self._by_name

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


class Address(NamedTuple):
    """One parsed name-addr or addr-spec, with a phone number when it carries one.

    A NamedTuple rather than a frozen dataclass: immutable all the same, and built several
    times per call at a sixth of the cost (no `object.__setattr__` per field)."""

    raw: str
    uri: str
    scheme: str
    display_name: str | None = None
    user: str | None = None
    host: str | None = None
    uri_params: Mapping[str, str] = _NO_PARAMS
    params: Mapping[str, str] = _NO_PARAMS
    number: str | None = None
    """E.164 (`+14155550123`) when the user part is a possible phone number."""
    digits: str | None = None
    """The dialled digits as sent (separators removed), when the user part is a dial string."""

    number_key: str | None = None
    """What number matchers compare: E.164 when known, else the dial string. Set by the
    parser (like `is_anonymous`): fields rather than properties, read several times per
    call, cost a tuple index instead of a Python-level call."""
    is_anonymous: bool = False
    """A withheld identity (`anonymous@anonymous.invalid`, `sip:anonymous@...`, or an
    RFC 3323 `Anonymous` display name without a number)."""


class CallIdentity(NamedTuple):
    """Who is calling whom, as far as the INVITE's headers say (immutable, like Address)."""

    headers: Headers
    caller: Address | None = None
    caller_header: str | None = None
    called: Address | None = None
    forwarded_from: Address | None = None
    anonymous: bool = False
    display_name: str | None = None
    media_security: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """How to read identities; comes from settings."""

    default_region: str = "US"
    caller_headers: Sequence[str] = ("P-Asserted-Identity", "Remote-Party-ID", "From")
    anonymous_numbers: frozenset[str] = frozenset()


def identify(
    headers: Headers, policy: IdentityPolicy, media_security: str | None = None
) -> CallIdentity:
    region = policy.default_region
    parsed = _ParsedHeaders(headers, region)
    caller, caller_header = _pick_caller(parsed, policy)
    from_addresses = parsed.addresses("from")
    from_address = from_addresses[0] if from_addresses else None
    to_addresses = parsed.addresses("to", cached=True)
    anonymous = (
        # No caller header at all is a withheld caller; one we cannot read is merely unknown.
        (
            caller is None
            and not any(v.strip() for n in policy.caller_headers for v in headers.get_all(n))
        )
        or (caller is not None and caller.is_anonymous)
        or (from_address is not None and from_address.is_anonymous)
        or _privacy_requested(headers)
        or (
            # Not any(<generator>): this runs on nearly every call.
            caller is not None
            and bool(policy.anonymous_numbers)
            and (
                caller.number in policy.anonymous_numbers
                or caller.digits in policy.anonymous_numbers
            )
        )
        or _rpid_private(headers)
    )
    display = (caller.display_name if caller else None) or (
        from_address.display_name if from_address else None
    )
    called = to_addresses[0] if to_addresses else None
    forwarded = _forwarded_from(parsed)
    # As for Address: tuple.__new__ skips the NamedTuple's interpreted __new__.
    return tuple.__new__(
        CallIdentity,
        (headers, caller, caller_header, called, forwarded, anonymous, display, media_security),
    )


def _pick_caller(
    parsed: _ParsedHeaders, policy: IdentityPolicy
) -> tuple[Address | None, str | None]:
    """The first header in policy order that names a (non-anonymous) caller."""
    fallback: tuple[Address | None, str | None] = (None, None)
    for name in policy.caller_headers:
        key = canonical_name(name)
        addresses = parsed.addresses(key)
        usable = [a for a in addresses if not a.is_anonymous]
        if usable:
            with_number = [a for a in usable if a.number_key]
            return (with_number or usable)[0], key
        if addresses and fallback[0] is None:
            fallback = (addresses[0], key)
    return fallback


class _ParsedHeaders:
    """Each address header parsed at most once per call."""

    __slots__ = ("_cache", "_headers", "_region")

    def __init__(self, headers: Headers, region: str) -> None:
        self._headers = headers
        self._region = region
        self._cache: dict[str, list[Address]] = {}

    def addresses(self, key: str, *, cached: bool = False) -> list[Address]:
        """The addresses in header `key` (a canonical name). `cached`: for a header whose
        values repeat across calls (To: our own numbers)."""
        found = self._cache.get(key)
        if found is None:
            found = []
            for value in self._headers._values(key):
                for part in split_list(value)[:MAX_ADDRESSES_PER_HEADER]:
                    if cached:
                        address = _cached_address(part, self._region)
                    else:
                        address = parse_address(part, self._region)
                    if address is not None:
                        found.append(address)
            self._cache[key] = found
        return found


# To header values already parsed. The called party is one of the numbers the trunk routes
# here, so they repeat; values seen once (a call to a number nobody routes) are not kept
# (RepeatCache). Address is immutable, so calls can share one.
MAX_CACHED_ADDRESSES: Final = 8192
_ADDRESSES: Final[RepeatCache[tuple[str, str], Address | None]] = RepeatCache(MAX_CACHED_ADDRESSES)
_UNPARSED: Final = Address(raw="", uri="", scheme="")


def _cached_address(value: str, region: str) -> Address | None:
    key = (value, region)
    # .get with a sentinel, not try/except: a raised KeyError costs a compiled function a
    # traceback entry, several times a hit's price.
    found = _ADDRESSES.get(key, _UNPARSED)
    if found is not _UNPARSED:
        return found
    address = parse_address(value, region)
    _ADDRESSES.put(key, address)
    return address


def _forwarded_from(parsed: _ParsedHeaders) -> Address | None:
    diversions = parsed.addresses("diversion")
    if diversions:
        return diversions[0]  # RFC 5806: the most recent redirection comes first
    # RFC 7044: entries in order; the one before the current target redirected the call.
    history = parsed.addresses("history-info")
    return history[-2] if len(history) >= 2 else None


def _privacy_requested(headers: Headers) -> bool:
    for value in headers._values("privacy"):
        tokens = {t.strip().lower() for t in value.replace(",", ";").split(";")}
        if "id" in tokens:
            return True
    return False


def _rpid_private(headers: Headers) -> bool:
    for value in headers._values("remote-party-id"):
        for part in split_list(value):
            params = _split_params(part.rpartition(">")[2] if ">" in part else part)
            if params.get("privacy", "").lower() in ("full", "uri"):
                return True
    return False


# --- grammar ------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...>."""
    single = value.strip()
    if "," not in value:  # the usual single address: nothing to split (same result, faster)
        return [single] if single else []
    if single[:1] == '"':
        # A comma only in the display name (`"Doe, Jane" <sip:...>`, a common CNAM form).
        # No quoted string can end before the next `"` (escaped or not): when no comma
        # follows that one, every comma is quoted and there is nothing to split.
        end = single.find('"', 1)
        if end > 0 and "," not in single[end + 1 :]:
            return [single]
    return _split_by_characters(value)


def _split_by_characters(value: str) -> list[str]:
    """split_list without its shortcuts: one character at a time, commas inside quotes
    (with backslash escapes) or <...> not splitting."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    depth = 0
    for char in value:
        if in_quotes:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
            continue
        if char == '"':
            in_quotes = True
        elif char == "<":
            depth += 1
        elif char == ">":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def parse_address(value: str, region: str = "US") -> Address | None:
    """Parse one name-addr / addr-spec with its header parameters; None if hopeless."""
    text = value.strip()
    if not text:
        return None
    display: str | None = None
    rest = text
    if rest.startswith('"'):
        display, rest = _quoted_string(rest)
        if display is None:
            return None
        rest = rest.lstrip()
    angle = _find_unquoted(rest, "<")
    if angle >= 0:
        if display is None:
            token = rest[:angle].strip()
            display = token or None
        close = rest.find(">", angle)
        if close < 0:
            return None
        uri = rest[angle + 1 : close].strip()
        params = _split_params(rest[close + 1 :])
    else:
        if display is not None:
            return None  # a quoted display name must be followed by <uri>
        uri, params_text = _split_bare(rest)
        params = _split_params(params_text)
    return _parse_uri(text, uri, display, params, region)


def _quoted_string(text: str) -> tuple[str | None, str]:
    end = text.find('"', 1)
    if end > 0 and "\\" not in text[1:end]:
        return text[1:end], text[end + 1 :]  # the usual case: no escapes
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), text[i + 1 :]
        out.append(char)
        i += 1
    return None, ""


def _find_unquoted(text: str, target: str) -> int:
    if '"' not in text:
        return text.find(target)
    in_quotes = False
    for i, char in enumerate(text):
        if char == '"':
            in_quotes = not in_quotes
        elif char == target and not in_quotes:
            return i
    return -1


def _split_bare(text: str) -> tuple[str, str]:
    """addr-spec without <>: every `;param` belongs to the header (RFC 3261 20.10)."""
    text = text.strip()
    # Tolerate `Name sip:user@host` (display name without angle brackets).
    match = re.search(r"(?i)\b(sips?|tel):", text)
    if match and match.start() > 0:
        text = text[match.start() :]
    at = text.find("@")
    semi = text.find(";")
    if 0 <= semi < at:
        # A sloppy `sip:+1555;npdi@host`: the first `;` is inside the user part.
        semi = text.find(";", at)
    if semi < 0:
        return text, ""
    return text[:semi].strip(), text[semi:]


# URI parameters repeat from call to call (a trunk's `;user=phone`); header parameters
# carry a new tag each call, so only URI parameters are remembered. Caller-controlled
# text: short ones only, and the memo starts over when full.
_URI_PARAMS: Final[dict[str, Mapping[str, str]]] = {}
MAX_URI_PARAMS: Final = 1024
MAX_URI_PARAMS_TEXT: Final = 128


def _uri_params(text: str) -> Mapping[str, str]:
    found = _URI_PARAMS.get(text)
    if found is None:
        found = _split_params(text)
        if len(text) <= MAX_URI_PARAMS_TEXT:
            if len(_URI_PARAMS) >= MAX_URI_PARAMS:
                _URI_PARAMS.clear()  # a burst of varying ones must not shut the common out
            _URI_PARAMS[text] = found  # a read-only view: addresses can share it
    return found


def _split_params(text: str) -> Mapping[str, str]:
    if not text or ";" not in text:
        return _NO_PARAMS if not text.strip() else _split_params(";" + text)
    params: dict[str, str] = {}
    for chunk in _split_unquoted(text, ";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, _, raw = chunk.partition("=")
        name = name.strip().lower()
        if not name or name in params:
            continue
        raw = raw.strip()
        if raw.startswith('"'):
            quoted, _ = _quoted_string(raw)
            raw = quoted if quoted is not None else raw.strip('"')
        params[name] = raw
    return MappingProxyType(params)


def _split_unquoted(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    for char in text:
        if char == '"':
            in_quotes = not in_quotes
        if char == sep and not in_quotes:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_uri(
    raw: str, uri: str, display: str | None, params: Mapping[str, str], region: str
) -> Address | None:
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.strip().lower()
    if not colon or not scheme or not scheme.replace("+", "").replace("-", "").isalnum():
        return None
    display = display.strip() if display else None
    if scheme not in ("sip", "sips", "tel"):
        return Address(
            raw=raw,
            uri=uri,
            scheme=scheme,
            display_name=display or None,
            params=params,
            is_anonymous=_anonymous(scheme, display, None, None, None),
        )
    host = None
    number = digits = None
    if scheme == "tel":
        number_part, _, tel_params = rest.partition(";")
        uri_params = _uri_params(tel_params)
        user = _unescape(number_part)
        number, digits = _normalise(user, uri_params.get("phone-context"), region)
    else:
        at = rest.rfind("@")
        userinfo, hostpart = (rest[:at], rest[at + 1 :]) if at >= 0 else ("", rest)
        hostport, _, uri_param_text = hostpart.partition("?")[0].partition(";")
        uri_params = _uri_params(uri_param_text)
        host = _host(hostport)
        user = _unescape(userinfo.partition(":")[0])  # no password (RFC 3261 19.1.1)
        subscriber, _, user_params_text = user.partition(";")
        cleaned = _dial_string(subscriber)
        if cleaned is not None or uri_params.get("user") == "phone":
            # Most user parts have no parameters: no lookup (a Mapping's .get is a method call).
            context = (
                _uri_params(user_params_text).get("phone-context") if user_params_text else None
            )
            number, digits = _normalise(subscriber, context, region, cleaned)
    # tuple.__new__ rather than Address(...): the NamedTuple's generated __new__ is
    # interpreted Python even when this module is compiled, and costs more than the parse.
    key = number or digits
    anonymous = _anonymous(scheme, display, user, host, key)
    return tuple.__new__(
        Address,
        (
            raw,
            uri,
            scheme,
            display or None,
            user or None,
            host,
            uri_params,
            params,
            number,
            digits,
            key,
            anonymous,
        ),
    )


def _anonymous(
    scheme: str, display: str | None, user: str | None, host: str | None, number_key: str | None
) -> bool:
    """Address.is_anonymous, from the parsed parts (display and user stripped, host lower)."""
    if host == ANONYMOUS_HOST:
        return True
    if display and number_key is None and display.lower() in ANONYMOUS_USERS:
        return True  # RFC 3323 style: `Anonymous <sip:c8oqz84zk7z@privacy.org>`
    if scheme in ("sip", "sips", "tel"):
        return not user or user.lower() in ANONYMOUS_USERS
    return False


def _unescape(text: str) -> str:
    return (unquote(text) if "%" in text else text).strip()


def _host(hostport: str) -> str | None:
    hostport = hostport.strip()
    if hostport.startswith("["):
        end = hostport.find("]")
        return hostport[: end + 1].lower() if end > 0 else None
    host = hostport.partition(":")[0].strip().lower()
    return host or None


def _dial_string(user: str) -> str | None:
    """The user part without visual separators, if it is a dial string."""
    # The usual `+14155550123` has nothing to remove.
    if user[:1] == "+" and user[1:].isascii() and user[1:].isdigit():
        return user if MIN_DIAL_DIGITS <= len(user) - 1 <= MAX_DIAL_DIGITS else None
    cleaned = _VISUAL_SEPARATORS.sub("", user)
    return cleaned if _DIAL_STRING.fullmatch(cleaned) else None


def _normalise(
    user: str, context: str | None, region: str, cleaned: str | None = None
) -> tuple[str | None, str | None]:
    """(E.164 or None, cleaned dial string or None) for a telephone-subscriber."""
    if cleaned is None:
        cleaned = _dial_string(user)
    if cleaned is None:
        return None, None
    candidate = cleaned
    parse_region: str | None = region
    if cleaned.startswith("+"):
        parse_region = None
    elif context:
        prefix = _VISUAL_SEPARATORS.sub("", context)
        if _DIAL_STRING.fullmatch(prefix) and prefix.startswith("+"):
            candidate, parse_region = prefix + cleaned, None
    return to_e164(candidate, parse_region), cleaned


MAX_CACHED_E164: Final = 16384
_E164: Final[RepeatCache[tuple[str, str | None], str | None]] = RepeatCache(MAX_CACHED_E164)
_NOT_CACHED: Final = "\0"


def to_e164(text: str, region: str | None) -> str | None:
    """E.164 for a possible phone number, else None. Used for rules and calls alike.

    Cached when the same text comes back (returning callers, called numbers): parsing costs
    ~15 µs. A number seen once (a new caller, a list being loaded) is not kept."""
    key = (text, region)
    found = _E164.get(key, _NOT_CACHED)
    if found is not _NOT_CACHED:
        return found
    e164 = _to_e164(text, region)
    _E164.put(key, e164)
    return e164


def _to_e164(text: str, region: str | None) -> str | None:
    # isascii too: str.isdigit() holds for superscript and Arabic-Indic digits, which int()
    # (the fast path) rejects or the parser reads differently.
    if text.startswith("+") and text[1:].isascii() and text[1:].isdigit():
        fast = _possible_e164(text)
        if fast is not None:
            return fast
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    # IS_POSSIBLE_LOCAL_ONLY (`5551234` in US) lacks the area code: not an E.164 number.
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _possible_e164(text: str) -> str | None:
    """`+` and ASCII digits whose length the numbering plan allows: already E.164, no parse.

    The same test phonenumbers applies (country code, then the plan's possible lengths),
    from its own metadata, at a tenth of the cost; None sends anything else to the parser."""
    digits = text[1:]
    if digits[:1] == "0":
        return None  # no country code starts with 0 (`+01...` is not +1): the parser says no
    for size in (1, 2, 3):  # country codes are prefix-free (ITU-T E.164)
        if len(digits) <= size:
            return None
        plan = _numbering_plan(int(digits[:size]))
        if plan is None:
            continue
        trunk_prefix, lengths = plan
        national = digits[size:]
        if trunk_prefix is not None and trunk_prefix.match(national) is not None:
            return None  # a national or carrier prefix after the code: the parser strips it
        return text if len(national) in lengths else None
    return None


_Plan = tuple[re.Pattern[str] | None, frozenset[int]]
_PLANS: Final[dict[int, _Plan | None]] = {}


def _numbering_plan(code: int) -> _Plan | None:
    """(national prefix pattern, possible national lengths) for a country calling code;
    None if no country has that code. Read from phonenumbers' metadata once per code. No
    lengths when the metadata is missing: the parser decides those numbers."""
    try:
        return _PLANS[code]
    except KeyError:
        pass
    plan: _Plan | None = None
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    if regions:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
        if metadata is None or metadata.general_desc is None:
            plan = (None, frozenset())
        else:
            pattern = metadata.national_prefix_for_parsing
            plan = (
                re.compile(pattern) if pattern else None,
                frozenset(metadata.general_desc.possible_length or ()),
            )
    _PLANS[code] = plan  # at most 1,000 codes (1 to 3 digits)
    return plan
