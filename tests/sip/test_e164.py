"""The E.164 fast path agrees with phonenumbers wherever it answers."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sip.identity import _possible_e164, to_e164

CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def parsed_e164(text: str) -> str | None:
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(number) != (
        phonenumbers.ValidationResult.IS_POSSIBLE
    ):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@settings(max_examples=3000, deadline=None)
@given(
    code=st.sampled_from(CODES),
    national=st.text(alphabet="0123456789", min_size=1, max_size=15),
)
def test_fast_path_matches_phonenumbers(code: int, national: str) -> None:
    text = f"+{code}{national}"
    fast = _possible_e164(text)
    if fast is not None:
        assert fast == parsed_e164(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155550123", "+14155550123"),
        ("+442079460958", "+442079460958"),
        ("+390612345678", "+390612345678"),  # Italy keeps its leading 0
        ("+4402079460958", None),  # a trunk 0 after +44: not a possible number
        ("+375812345678", None),  # Belarus's 8 is a trunk prefix: left to the parser
        ("+1415", None),
        ("+999123456", None),  # no such country code
        ("+014155550123", None),  # no country code starts with 0: not +1 (int("01") is 1)
    ],
)
def test_examples(text: str, expected: str | None) -> None:
    assert to_e164(text, None) == parsed_e164(text)
    if expected is not None:
        assert _possible_e164(text) == expected
    else:
        assert _possible_e164(text) is None


@settings(max_examples=3000, deadline=None)
@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=18))
def test_fast_path_matches_phonenumbers_on_any_digits(digits: str) -> None:
    fast = _possible_e164("+" + digits)
    if fast is not None:
        assert fast == parsed_e164("+" + digits)


@pytest.mark.parametrize(
    "text",
    [
        "+\u00b94155550123",  # superscript one: isdigit() but not a digit int() reads
        "+\u0664\u0664\u0662\u0660\u0667\u0669\u0664\u0666\u0660\u0660\u0661\u0668",
        "+\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13",  # fullwidth
    ],
)
def test_non_ascii_digits_go_to_the_parser(text: str) -> None:
    assert to_e164(text, None) == parsed_e164(text)  # and never raise
