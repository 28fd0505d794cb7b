"""Stanzas from a bound client (RFC 6120 section 8): what is checked and stamped before routing.

The server stamps every stanza with the sender's full JID (8.1.2.1), refuses
a ``from`` that is not the client's own JID with a stream error, and answers
a malformed ``to`` or a malformed iq with a stanza error. An error stanza is
never answered with an error (8.3.1): a malformed one is dropped.
"""

from __future__ import annotations

from twisted.words.xish import domish

from hipchat_server import metrics
from hipchat_server.xmpp.errors import StreamError, stanza_error_reply
from hipchat_server.xmpp.jid import JID, InvalidJID, parse_jid
from hipchat_server.xmpp.xml_parser import CLIENT_NS, StreamLimits, StreamParser

STANZA_NAMES = frozenset({"message", "presence", "iq"})
IQ_TYPES = frozenset({"get", "set", "result", "error"})


class Refused(Exception):
    """The stanza is not routed; ``reply`` (an error stanza, or None to drop it silently) goes back to the client."""

    def __init__(self, reply: domish.Element | None):
        super().__init__("stanza refused")
        self.reply = reply


def _refuse(stanza: domish.Element, condition: str, text: str) -> Refused:
    if stanza.getAttribute("type") == "error":
        return Refused(None)
    return Refused(stanza_error_reply(stanza, condition, text=text))


def check_from_client(stanza: domish.Element, sender: JID) -> None:
    """Check ``stanza`` from the client bound to ``sender`` and stamp its ``from``.

    Raises StreamError for what must close the stream (not a stanza, a forged
    ``from``) and Refused for what only this stanza gets an error for.
    """
    if stanza.uri != CLIENT_NS or stanza.name not in STANZA_NAMES:
        raise StreamError("unsupported-stanza-type", f"<{stanza.name}/> in {stanza.uri!r} is not a stanza")
    metrics.count_stanza(stanza.name)
    claimed = stanza.getAttribute("from")
    if claimed is not None:
        try:
            claimed_jid = parse_jid(claimed)
        except InvalidJID:
            raise StreamError("invalid-from", "the 'from' address is not a JID") from None
        if claimed_jid not in (sender, sender.bare()):
            raise StreamError("invalid-from", "a client may only send from its own address")
    stanza["from"] = sender.full()
    to = stanza.getAttribute("to")
    if to is not None:
        try:
            parse_jid(to)
        except InvalidJID as e:
            del stanza["to"]  # the error reply must not come "from" the malformed address
            raise _refuse(stanza, "jid-malformed", e.reason) from None
    if stanza.name == "iq":
        kind = stanza.getAttribute("type")
        if kind not in IQ_TYPES or not stanza.getAttribute("id"):
            raise _refuse(stanza, "bad-request", "an iq needs an id and a type: get, set, result or error")
        if kind in ("get", "set") and len(list(stanza.elements())) != 1:
            raise _refuse(stanza, "bad-request", "an iq get or set has exactly one child element")


def iq_result(iq: domish.Element, child: domish.Element | None = None) -> domish.Element:
    """The ``type='result'`` answer to ``iq``: same id, addresses swapped, with ``child`` when given."""
    reply = domish.Element((iq.uri, "iq"), defaultUri=iq.defaultUri)
    for ours, theirs in (("to", "from"), ("from", "to"), ("id", "id")):
        if iq.hasAttribute(theirs):
            reply[ours] = iq[theirs]
    reply["type"] = "result"
    if child is not None:
        reply.addChild(child)
    return reply


_STREAM_OPEN = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"


def stanza_to_xml(stanza: domish.Element) -> str:
    """``stanza`` as text in the client namespace, to keep in Redis or MariaDB."""
    return stanza.toXml(defaultUri=CLIENT_NS)


def stanza_from_xml(xml: str) -> domish.Element:
    """Parse one stanza kept as text by `stanza_to_xml` (with the stream parser's limits)."""
    found: list[domish.Element] = []
    parser = StreamParser(StreamLimits(), StreamLimits().max_stanza_size, lambda attrs: None, found.append, lambda: None)
    parser.feed(_STREAM_OPEN + xml.encode("utf-8"))
    if len(found) != 1:
        raise ValueError("not exactly one stanza")
    return found[0]
