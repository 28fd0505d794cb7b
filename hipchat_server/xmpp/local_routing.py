"""`EchoLessRouter`: stanza routing inside one front-end process (`routing.ClusterRouter` extends it across front ends).

It knows only the streams bound on this process (a `bind.SessionTable`):

- an iq to the server or to the sender's own account: XEP-0199 ping gets a
  result; disco#info/#items (XEP-0030) and version (XEP-0092) gets to the
  server are answered; any other get or set ``service-unavailable`` (RFC 6120 8.4);
- an iq to a full JID bound here is delivered; a get or set to anyone else
  gets ``service-unavailable``;
- a message to a full JID bound here goes to it; to a bare JID, or to a full
  JID not bound here (RFC 6121 8.5.3.2.1), to every resource of that user
  here; with none, ``service-unavailable`` (no offline storage yet);
- presence is ignored, and nothing is ever echoed back to its sender's stream.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.words.xish import domish

from hipchat_server.xmpp import disco
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.disco import DISCO_INFO_NS, DISCO_ITEMS_NS
from hipchat_server.xmpp.errors import stanza_error_reply
from hipchat_server.xmpp.jid import JID, parse_jid
from hipchat_server.xmpp.ping import is_ping
from hipchat_server.xmpp.stanzas import iq_result
from hipchat_server.xmpp.version import VERSION_NS, server_version

# Message types answered with an error when nobody can receive them (RFC 6121 8.5.2 and 8.5.3).
ANSWERED_MESSAGE_TYPES = frozenset({"normal", "chat", "groupchat"})


def _server_query(iq: domish.Element, services=()) -> domish.Element | None:
    """The server's own answer to a disco#info, disco#items or version get; None for anything else."""
    query = iq.firstChildElement()
    if iq.getAttribute("type") != "get" or query is None or query.name != "query":
        return None
    if query.uri == DISCO_INFO_NS:
        return disco.server_info(query.getAttribute("node"))
    if query.uri == DISCO_ITEMS_NS:
        return disco.server_items(services)
    if query.uri == VERSION_NS:
        return server_version()
    return None


def _account_query(iq: domish.Element) -> domish.Element | None:
    """A user's disco#info of their own bare JID (no node): the account's answer; None for anything else."""
    query = iq.firstChildElement()
    if iq.getAttribute("type") != "get" or query is None or query.uri != DISCO_INFO_NS or query.hasAttribute("node"):
        return None
    return disco.account_info()


def _asks_unknown_disco_node(iq: domish.Element) -> bool:
    """A disco#info get for a node the server does not have (XEP-0030: item-not-found)."""
    query = iq.firstChildElement()
    if query is None or query.uri != DISCO_INFO_NS or not query.hasAttribute("node"):
        return False
    return disco.server_info(query["node"]) is None


class EchoLessRouter:
    """A `c2s.StanzaRouter` over the sessions bound on this process."""

    log = Logger()

    def __init__(self, domain: str, sessions: SessionTable):
        self.domain = parse_jid(domain)
        self.sessions = sessions

    def service_domains(self) -> list[str]:
        """The services on subdomains (rooms), listed in the server's disco#items; none here."""
        return []

    def session_started(self, connection) -> None:
        self.log.debug("{jid} bound", jid=connection.jid)

    def session_ended(self, connection) -> None:
        self.log.debug("{jid} gone", jid=connection.jid)

    def stanza_from_client(self, connection, element: domish.Element) -> None:
        to = element.getAttribute("to")
        target = parse_jid(to) if to else None  # the connection checked that it parses
        if element.name == "iq":
            self._iq(connection, element, target)
        elif element.name == "message":
            self._message(connection, element, target)

    def _iq(self, connection, iq: domish.Element, target: JID | None) -> None:
        kind = iq.getAttribute("type")
        if target is None or target in (self.domain, connection.jid.bare()):
            if target in (None, self.domain):
                answer = _server_query(iq, self.service_domains())
            else:
                answer = _account_query(iq)
            if is_ping(iq):
                connection.deliver(iq_result(iq))
            elif target in (None, self.domain) and _asks_unknown_disco_node(iq):
                connection.deliver(stanza_error_reply(iq, "item-not-found", text="no such disco node"))
            elif answer is not None:
                connection.deliver(iq_result(iq, answer))
            elif kind in ("get", "set"):
                connection.deliver(stanza_error_reply(iq, "service-unavailable"))
            return
        recipient = self.sessions.get(target) if target.resourcepart is not None else None
        if recipient is not None:
            recipient.deliver(iq)
        elif kind in ("get", "set"):
            connection.deliver(stanza_error_reply(iq, "service-unavailable"))

    def _message(self, connection, message: domish.Element, target: JID | None) -> None:
        if target is None or target.localpart is None:
            return  # to the server itself: nothing handles it yet
        recipient = self.sessions.get(target) if target.resourcepart is not None else None
        recipients = [recipient] if recipient is not None else self.sessions.resources(target.bare())
        for recipient in recipients:
            if recipient is not connection:
                recipient.deliver(message)
        kind = message.getAttribute("type", "normal")
        if not recipients and kind in ANSWERED_MESSAGE_TYPES:
            connection.deliver(stanza_error_reply(message, "service-unavailable"))
