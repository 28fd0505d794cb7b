"""Service Discovery (XEP-0030): what the server is and which protocols it speaks."""

from __future__ import annotations

from typing import Iterable

from twisted.words.xish import domish

from hipchat_server.xmpp import caps
from hipchat_server.xmpp.carbons import CARBONS_NS
from hipchat_server.xmpp.mam import FULLTEXT_NS, MAM_EXTENDED_FEATURE, MAM_NS
from hipchat_server.xmpp.ping import PING_NS
from hipchat_server.xmpp.vcard import VCARD_NS
from hipchat_server.xmpp.version import VERSION_NS

DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS_NS = "http://jabber.org/protocol/disco#items"
#: XEP-0160: messages to a user with no available resource are stored and delivered later (routing.py).
OFFLINE_FEATURE = "msgoffline"

# Only what the server really answers; each later XEP module adds its namespace here.
# Entity Capabilities (XEP-0115) hashes this list: the server's caps `ver` changes with it.
SERVER_FEATURES = (
    caps.CAPS_NS,
    CARBONS_NS,
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    FULLTEXT_NS,
    MAM_NS,
    MAM_EXTENDED_FEATURE,
    OFFLINE_FEATURE,
    PING_NS,
    VCARD_NS,
    VERSION_NS,
)


def server_info(node: str | None = None) -> domish.Element | None:
    """The disco#info payload of the server: identity server/im and its features.

    The caps node ``<node>#<ver>`` (XEP-0115) is answered exactly
    like no node, echoing the node; any other node is not the server's: None,
    for the caller to answer ``item-not-found`` (XEP-0030).
    """
    if node is not None and node != caps.server_caps_node():
        return None
    query = domish.Element((DISCO_INFO_NS, "query"))
    if node:
        query["node"] = node
    identity = query.addElement("identity")
    identity["category"], identity["type"], identity["name"] = "server", "im", "HipChat Server"
    for feature in SERVER_FEATURES:
        query.addElement("feature")["var"] = feature
    return query


def server_items(services: Iterable[str] = ()) -> domish.Element:
    """The disco#items payload of the server: one item per service on a subdomain (the rooms, XEP-0045 6.1)."""
    query = domish.Element((DISCO_ITEMS_NS, "query"))
    for jid in sorted(services):
        query.addElement("item")["jid"] = jid
    return query


# What a user's own bare JID answers (XEP-0313 section 6: clients look for MAM on the account).
ACCOUNT_FEATURES = (DISCO_INFO_NS, FULLTEXT_NS, MAM_NS, MAM_EXTENDED_FEATURE)


def account_info() -> domish.Element:
    """The disco#info payload of a user's own account: identity account/registered and its archive's features."""
    query = domish.Element((DISCO_INFO_NS, "query"))
    identity = query.addElement("identity")
    identity["category"], identity["type"] = "account", "registered"
    for feature in ACCOUNT_FEATURES:
        query.addElement("feature")["var"] = feature
    return query
