"""JID parsing and validation (RFC 7622): what is accepted, how it is prepared, and why the rest is refused."""

from __future__ import annotations

import pytest

from hipchat_server.xmpp.jid import JID, InvalidJID, is_valid_jid, parse_jid


@pytest.mark.parametrize(
    "text,parts",
    [
        ("example.com", (None, "example.com", None)),
        ("juliet@example.com", ("juliet", "example.com", None)),
        ("juliet@example.com/balcony", ("juliet", "example.com", "balcony")),
        ("Juliet@EXAMPLE.com/Balcony", ("juliet", "example.com", "Balcony")),
        ("juliet@example.com/a/b@c", ("juliet", "example.com", "a/b@c")),
        ("example.com/r@s", (None, "example.com", "r@s")),
        ("juliet@example.com.", ("juliet", "example.com", None)),
        ("juliet@[2001:DB8:0::1]", ("juliet", "[2001:db8::1]", None)),
        ("juliet@192.0.2.1/r", ("juliet", "192.0.2.1", "r")),
        ("\u00e9l\u00e8ve@\u00e9cole.example/t\u00e9l", ("\u00e9l\u00e8ve", "\u00e9cole.example", "t\u00e9l")),
        ("juliet@\u2163.example", ("juliet", "iv.example", None)),
        ("juliet@example.com/ Balcony ", ("juliet", "example.com", " Balcony ")),
    ],
)
def test_valid_jids_are_prepared(text, parts):
    """Valid JIDs parse into their prepared parts: local and domain parts case-folded, resources kept as sent."""
    assert parse_jid(text) == JID(*parts)


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty domainpart"),
        ("juliet@", "empty domainpart"),
        ("@example.com", "empty localpart"),
        ("juliet@example.com/", "empty resourcepart"),
        ("/balcony", "empty domainpart"),
        ("jul iet@example.com", "localpart"),
        ("jul\"iet@example.com", "localpart"),
        ("ju<liet@example.com", "localpart"),
        ("juliet@exa mple.com", "domainpart"),
        ("juliet@exa_mple.com", "domainpart"),
        ("juliet@example..com", "empty label"),
        ("juliet@-example.com", "domainpart"),
        ("juliet@" + "a" * 64 + ".com", "domainpart"),
        ("juliet@[not:an:address]", "IPv6"),
        ("juliet@example.com/bal\x00cony", "resourcepart"),
        ("juliet@example.com/bal\u200econy", "resourcepart"),
        ("a@b@example.com", "domainpart"),
    ],
)
def test_invalid_jids_are_refused_with_a_reason(text, reason):
    """Each malformed JID raises InvalidJID whose reason names the part and the rule."""
    with pytest.raises(InvalidJID) as raised:
        parse_jid(text)
    assert reason in raised.value.reason
    assert not is_valid_jid(text)


@pytest.mark.parametrize(
    "template",
    ["{}@example.com", "juliet@example.com/{}", "juliet@{}"],
    ids=["localpart", "resourcepart", "domainpart"],
)
def test_each_part_is_at_most_1023_bytes(template):
    """A part of 1023 bytes (counted in UTF-8) is accepted; 1024 bytes is refused as too long."""
    if template.startswith("juliet@{}"):
        fits = ".".join(["a" * 63] * 16)  # 1023 bytes of valid DNS labels
        too_long = ".".join(["a" * 63] * 15 + ["a" * 62, "a"])  # 1024 bytes
    else:
        fits = "\u00e9" * 511 + "a"  # 1023 bytes, 512 characters
        too_long = "\u00e9" * 512
    assert is_valid_jid(template.format(fits))
    with pytest.raises(InvalidJID, match="longer than 1023 bytes"):
        parse_jid(template.format(too_long))


def test_huge_input_is_refused_without_preparing_it():
    """A megabyte of text is refused as too long at once, not run through stringprep."""
    with pytest.raises(InvalidJID, match="longer than 1023 bytes"):
        parse_jid("a" * 1_000_000 + "@example.com")


def test_bare_full_and_resource():
    """bare() drops the resource, full() gives the text back, with_resource() prepares and checks the resource."""
    jid = parse_jid("Juliet@Example.com/Balcony")
    assert jid.full() == str(jid) == "juliet@example.com/Balcony"
    assert jid.bare() == parse_jid("juliet@example.com") and jid.bare().is_bare and not jid.is_bare
    bare = jid.bare()
    assert bare.bare() is bare
    assert parse_jid("example.com").full() == "example.com"
    assert jid.bare().with_resource("Garden") == parse_jid("juliet@example.com/Garden")
    with pytest.raises(InvalidJID):
        jid.with_resource("")


def test_equality_and_hashing_follow_the_prepared_form():
    """JIDs that prepare to the same parts are equal, hash alike, and differ from other JIDs and from strings."""
    a, b = parse_jid("JULIET@example.COM/r"), parse_jid("juliet@EXAMPLE.com/r")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != parse_jid("juliet@example.com/R")
    assert a != "juliet@example.com/r"


def test_parse_refuses_non_text():
    """Only str is parsed; bytes are a caller's bug, not an invalid JID."""
    with pytest.raises(TypeError):
        parse_jid(b"juliet@example.com")  # type: ignore[arg-type]
