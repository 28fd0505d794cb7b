"""Service Discovery (XEP-0030): what the server is and which protocols it speaks."""

from __future__ import annotations

from twisted.words.xish import domish

from hipchat_server.xmpp.ping import PING_NS
from hipchat_server.xmpp.version import VERSION_NS

DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"

# Only what the server really answers; each later XEP module adds its namespace here.
SERVER_FEATURES = (DISCO_INFO_NS, DISCO_ITEMS_NS, PING_NS, VERSION_NS)


def server_info(node: str | None = None) -> domish.Element:
    """The disco#info payload of the server: identity server/im and its features."""
    query = domish.Element((DISCO_INFO_NS, "query"))
    if node:
        query["node"] = node
    identity = query.addElement("identity")
    identity["category"], identity["type"], identity["name"] = "server", "im", "HipChat Server"
    for feature in SERVER_FEATURES:
        query.addElement("feature")["var"] = feature
    return query


def server_items() -> domish.Element:
    """The disco#items payload of the server: no services yet (rooms arrive with MUC)."""
    return domish.Element((DISCO_ITEMS_NS, "query"))
