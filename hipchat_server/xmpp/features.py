"""Stream features (RFC 6120 section 4.3.2): what the server offers after each stream header.

A client stream negotiates in three steps, each ending in a stream restart:
STARTTLS (section 5, required here), SASL (section 6), then resource binding
(section 7) with the old session establishment kept for clients of RFC 3921
that still ask for it (marked optional, as RFC 6121 appendix E allows).
Stream Management (XEP-0198) is offered next to binding: a client either
resumes an earlier session instead of binding, or enables it after binding.
"""

from __future__ import annotations

from typing import Iterable

from twisted.words.xish import domish

from hipchat_server.xmpp.errors import STREAM_NS

TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION_NS = "urn:ietf:params:xml:ns:xmpp-session"
SM_NS = "urn:xmpp:sm:3"


def stream_features(*features: domish.Element) -> domish.Element:
    """``<stream:features/>`` holding ``features`` (it may be empty: nothing left to negotiate)."""
    element = domish.Element((STREAM_NS, "features"))
    for feature in features:
        element.addChild(feature)
    return element


def starttls_required() -> domish.Element:
    """``<starttls><required/></starttls>``: the client must negotiate TLS before anything else."""
    element = domish.Element((TLS_NS, "starttls"))
    element.addElement("required")
    return element


def sasl_mechanisms(names: Iterable[str]) -> domish.Element:
    """``<mechanisms/>`` listing the SASL mechanisms in order of preference."""
    element = domish.Element((SASL_NS, "mechanisms"))
    for name in names:
        element.addElement("mechanism", content=name)
    return element


def resource_binding() -> domish.Element:
    """``<bind/>``: the client binds a resource next (RFC 6120 7.4)."""
    return domish.Element((BIND_NS, "bind"))


def optional_session() -> domish.Element:
    """``<session><optional/></session>``: RFC 3921 session establishment, accepted but not needed."""
    element = domish.Element((SESSION_NS, "session"))
    element.addElement("optional")
    return element


def stream_management() -> domish.Element:
    """``<sm xmlns='urn:xmpp:sm:3'/>``: XEP-0198 acks and resumption (offered after authentication)."""
    return domish.Element((SM_NS, "sm"))
