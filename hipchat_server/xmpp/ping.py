"""XMPP Ping (XEP-0199): a client checks that its server still answers."""

from __future__ import annotations

from twisted.words.xish import domish

PING_NS = "urn:xmpp:ping"


def is_ping(iq: domish.Element) -> bool:
    """True for ``<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>``."""
    return iq.getAttribute("type") == "get" and any(
        (child.uri, child.name) == (PING_NS, "ping") for child in iq.elements()
    )
