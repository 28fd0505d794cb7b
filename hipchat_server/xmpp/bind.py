"""Resource binding (RFC 6120 section 7) and RFC 3921 session establishment, and the sessions of one process.

A client asks for a resource or lets the server pick one. A resource already
bound by another stream of the same user on this process is taken over: the
old stream is closed with a ``conflict`` stream error (7.7.2.2, "override").
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from twisted.words.xish import domish

from hipchat_server.xmpp.features import BIND_NS, SESSION_NS
from hipchat_server.xmpp.jid import JID
from hipchat_server.xmpp.stanzas import iq_result
from hipchat_server.xmpp.xml_parser import CLIENT_NS

if TYPE_CHECKING:
    from hipchat_server.xmpp.c2s import ClientConnection


def _payload(iq: domish.Element, namespace: str, name: str) -> domish.Element | None:
    if (iq.uri, iq.name) != (CLIENT_NS, "iq") or iq.getAttribute("type") != "set":
        return None
    return next((c for c in iq.elements() if (c.uri, c.name) == (namespace, name)), None)


def is_bind_request(iq: domish.Element) -> bool:
    """True for ``<iq type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>``."""
    return _payload(iq, BIND_NS, "bind") is not None


def is_session_request(iq: domish.Element) -> bool:
    """True for the RFC 3921 ``<iq type='set'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>``."""
    return _payload(iq, SESSION_NS, "session") is not None


def bound_jid(iq: domish.Element, bare: JID) -> JID:
    """The full JID a bind request asks for: ``bare`` with the client's resource or a new random one.

    Raises InvalidJID when the requested resource is not a valid resourcepart.
    """
    bind = _payload(iq, BIND_NS, "bind")
    requested = next((c for c in bind.elements() if (c.uri, c.name) == (BIND_NS, "resource")), None)
    text = str(requested).strip() if requested is not None else ""
    return bare.with_resource(text if text else new_resource())


def new_resource() -> str:
    """A server-generated resource: random, so it cannot collide or be guessed."""
    return secrets.token_hex(8)


def bind_result(iq: domish.Element, jid: JID) -> domish.Element:
    """``<iq type='result'><bind><jid>full JID</jid></bind></iq>`` (RFC 6120 7.6.1)."""
    bind = domish.Element((BIND_NS, "bind"))
    bind.addElement("jid", content=jid.full())
    return iq_result(iq, bind)


class SessionTable:
    """The bound client streams of this process, by full JID and by bare JID."""

    def __init__(self):
        self._by_jid: dict[JID, ClientConnection] = {}
        self._by_bare: dict[JID, dict[str, ClientConnection]] = {}

    def __len__(self) -> int:
        return len(self._by_jid)

    def connections(self) -> list["ClientConnection"]:
        """Every bound stream."""
        return list(self._by_jid.values())

    def get(self, jid: JID) -> "ClientConnection | None":
        """The stream bound to the full JID ``jid``, if any."""
        return self._by_jid.get(jid)

    def resources(self, bare: JID) -> list["ClientConnection"]:
        """Every stream bound to a resource of ``bare``."""
        return list(self._by_bare.get(bare, {}).values())

    def add(self, connection: "ClientConnection") -> None:
        """Record ``connection`` under its bound JID (the caller replaced any earlier holder)."""
        jid = connection.jid
        self._by_jid[jid] = connection
        self._by_bare.setdefault(jid.bare(), {})[jid.resourcepart] = connection

    def remove(self, connection: "ClientConnection") -> None:
        """Forget ``connection``, unless another stream holds its JID by now."""
        jid = connection.jid
        if self._by_jid.get(jid) is not connection:
            return
        del self._by_jid[jid]
        resources = self._by_bare[jid.bare()]
        del resources[jid.resourcepart]
        if not resources:
            del self._by_bare[jid.bare()]
