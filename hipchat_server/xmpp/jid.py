"""XMPP addresses (JIDs): parse, validate and compare them as RFC 7622 says, as far as practical.

Preparation of each part uses Twisted's stringprep profiles (nodeprep,
nameprep, resourceprep from RFC 6122), which agree with RFC 7622's PRECIS
profiles on everything ordinary clients send: case folding of the localpart
and domainpart, refusal of the characters ``"&'/:<>@`` and spaces in a
localpart, of control characters anywhere. On top of that we enforce the
structural rules of RFC 7622 section 3 that Twisted's parser lets through:
an ``@`` or ``/`` with an empty part beside it, and parts over 1023 bytes.
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
from dataclasses import dataclass

from twisted.words.protocols.jabber.xmpp_stringprep import nameprep, nodeprep, resourceprep

#: RFC 7622 sections 3.2 to 3.4: each part is at most 1023 bytes once prepared.
MAX_PART_BYTES = 1023


class InvalidJID(ValueError):
    """The text is not a valid JID; ``reason`` says which rule it breaks."""

    def __init__(self, text: str, reason: str):
        super().__init__(f"invalid JID {text[:80]!r}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class JID:
    """A prepared JID: equal JIDs have equal parts, so JIDs are dict keys and set members."""

    localpart: str | None
    domainpart: str
    resourcepart: str | None = None

    def bare(self) -> "JID":
        """The JID without its resource (``user@domain``); itself when already bare."""
        if self.resourcepart is None:
            return self
        return JID(self.localpart, self.domainpart)

    def with_resource(self, resourcepart: str) -> "JID":
        """The full JID of this JID's bare part and ``resourcepart`` (prepared and checked)."""
        return JID(self.localpart, self.domainpart, _prepare_resource(resourcepart, resourcepart))

    @property
    def is_bare(self) -> bool:
        """True when the JID has no resource."""
        return self.resourcepart is None

    def full(self) -> str:
        """The JID as text: ``[local@]domain[/resource]``."""
        text = self.domainpart if self.localpart is None else f"{self.localpart}@{self.domainpart}"
        return text if self.resourcepart is None else f"{text}/{self.resourcepart}"

    def __str__(self) -> str:
        return self.full()


def _check_length(text: str, what: str, value: str) -> str:
    if not value:
        raise InvalidJID(text, f"empty {what}")
    if len(value.encode("utf-8")) > MAX_PART_BYTES:
        raise InvalidJID(text, f"{what} longer than {MAX_PART_BYTES} bytes")
    return value


def _prepare(text: str, what: str, profile, value: str) -> str:
    # A raw part is prepared only if it could fit once prepared: preparation
    # of megabytes of attacker text would cost CPU for a certain refusal.
    if len(value) > 4 * MAX_PART_BYTES:
        raise InvalidJID(text, f"{what} longer than {MAX_PART_BYTES} bytes")
    try:
        prepared = profile.prepare(value)
    except (UnicodeError, ValueError, IndexError) as e:
        raise InvalidJID(text, f"{what}: {e}") from None
    return _check_length(text, what, prepared)


def _prepare_resource(text: str, value: str) -> str:
    return _prepare(text, "resourcepart", resourceprep, value)


def _prepare_domain(text: str, value: str) -> str:
    # RFC 7622 3.2: one trailing dot is stripped before anything else.
    if value.endswith("."):
        value = value[:-1]
    if value.startswith("[") and value.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(value[1:-1]).compressed}]"
        except ValueError:
            raise InvalidJID(text, "domainpart: not an IPv6 address literal") from None
    if not value:
        raise InvalidJID(text, "empty domainpart")
    if any(not label for label in value.split(".")):
        raise InvalidJID(text, "domainpart: empty label")
    prepared = _prepare(text, "domainpart", nameprep, value)
    try:
        # DNS limits each label to 63 octets in its ASCII (punycode) form.
        for label in prepared.split("."):
            encodings.idna.ToASCII(label)
    except UnicodeError as e:
        raise InvalidJID(text, f"domainpart: {e}") from None
    return prepared


@functools.lru_cache(maxsize=8192)
def parse_jid(text: str) -> JID:
    """Parse and prepare ``text`` (RFC 7622 section 3.1), or raise InvalidJID with the reason.

    The resource is everything after the first ``/`` (it may itself contain
    ``@`` and ``/``); the localpart is what precedes the first ``@`` before
    that. Results are cached: every stanza's ``to`` and ``from`` is parsed,
    and JIDs are immutable.
    """
    if not isinstance(text, str):
        raise TypeError("a JID is parsed from str")
    rest, slash, resource = text.partition("/")
    local, at, domain = rest.partition("@")
    if not at:
        local, domain = None, rest
    if slash and not resource:
        raise InvalidJID(text, "empty resourcepart after '/'")
    if at and not local:
        raise InvalidJID(text, "empty localpart before '@'")
    domainpart = _prepare_domain(text, domain)
    localpart = _prepare(text, "localpart", nodeprep, local) if local is not None else None
    resourcepart = _prepare_resource(text, resource) if slash else None
    return JID(localpart, domainpart, resourcepart)


def is_valid_jid(text: str) -> bool:
    """True when ``text`` parses as a JID."""
    try:
        parse_jid(text)
    except InvalidJID:
        return False
    return True
