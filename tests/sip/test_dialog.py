"""app.sip.dialog: the key that ties a Realtime and a Live event of one INVITE."""

from __future__ import annotations

from app.sip.dialog import dialog_key

FROM = ("From", "<sip:+14155550123@trunk.example.com>;tag=a1")
TO = ("To", "<sip:+18005550100@sip.api.openai.com>")


def test_call_id_and_from_tag_make_the_key() -> None:
    key = dialog_key([FROM, TO, ("Call-ID", "abc@10.0.0.1")])
    assert key is not None and len(key) == 32
    assert dialog_key([("call-id", " abc@10.0.0.1 "), TO, FROM]) == key  # order, case, space
    assert dialog_key([FROM, TO, ("Call-ID", "abd@10.0.0.1")]) != key
    assert dialog_key([("From", "<sip:x@y>;tag=b2"), TO, ("Call-ID", "abc@10.0.0.1")]) != key


def test_a_long_call_id_still_ties_the_events() -> None:
    # Caller-controlled: a Call-ID over any length limit must not untie the two events.
    headers = [FROM, TO, ("Call-ID", "x" * 8000)]
    assert dialog_key(headers) is not None
    assert dialog_key(list(headers)) == dialog_key(headers)


def test_without_a_call_id_every_header_makes_the_key() -> None:
    headers = [FROM, TO, ("X-Foo", "1")]
    key = dialog_key(headers)
    assert key is not None
    assert dialog_key(list(headers)) == key  # the other event: the same INVITE headers
    assert dialog_key([FROM, TO, ("X-Foo", "2")]) != key  # another INVITE
    assert dialog_key([FROM, TO, ("Call-ID", "")]) is not None


def test_no_headers_no_key() -> None:
    assert dialog_key([]) is None


def test_a_lone_surrogate_in_a_header_does_not_raise() -> None:
    # JSON may carry \\ud800 (UTF-8 cannot): the key is made all the same.
    assert dialog_key([FROM, ("Call-ID", "a\ud800b")]) is not None
    assert dialog_key([FROM, ("X-Foo", "a\ud800b")]) is not None
