"""Message Carbons (XEP-0280): every device of a user sees the one-to-one messages of the others.

A resource enables carbons with an iq set; from then on it receives a
``<received/>`` copy of chat messages delivered to its user's other
resources, and a ``<sent/>`` copy of those its user's other resources send.
A message marked ``<private/>`` or ``<no-copy/>`` is not copied (XEP-0280 section 6, XEP-0334).
"""

from __future__ import annotations

from twisted.words.xish import domish

CARBONS_NS = "urn:xmpp:carbons:2"
FORWARD_NS = "urn:xmpp:forward:0"
HINTS_NS = "urn:xmpp:hints"


def carbons_request(iq: domish.Element) -> bool | None:
    """True for an ``<enable/>`` iq set, False for ``<disable/>``, None for anything else."""
    if iq.getAttribute("type") != "set":
        return None
    child = iq.firstChildElement()
    if child is None or child.uri != CARBONS_NS or child.name not in ("enable", "disable"):
        return None
    return child.name == "enable"


def is_copied(message: domish.Element) -> bool:
    """Whether a message is eligible for carbons: chat, or normal with a body, and not marked private."""
    kind = message.getAttribute("type", "normal")
    if kind not in ("chat", "normal"):
        return False
    children = list(message.elements())
    if kind == "normal" and not any(c.name == "body" for c in children):
        return False
    for child in children:
        if (child.uri, child.name) in ((CARBONS_NS, "private"), (HINTS_NS, "no-copy")):
            return False
        if child.uri == CARBONS_NS:  # already a carbon: never copy a copy
            return False
    return True


def carbon_copy(message: domish.Element, direction: str, owner_bare: str, recipient_full: str) -> domish.Element:
    """The ``<sent/>`` or ``<received/>`` wrapper of ``message`` for ``recipient_full``, from the owner's bare JID."""
    copy = domish.Element(("jabber:client", "message"))
    copy["from"], copy["to"] = owner_bare, recipient_full
    copy["type"] = message.getAttribute("type", "normal")
    wrapper = copy.addElement((CARBONS_NS, direction))
    forwarded = wrapper.addElement((FORWARD_NS, "forwarded"))
    forwarded.addChild(message)
    return copy
