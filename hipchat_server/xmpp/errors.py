"""Stream and stanza errors (RFC 6120 sections 4.9 and 8.3).

A stream error is fatal: the stream that caused it is closed, and only that
one. A stanza error answers one stanza and the stream goes on. This module
only builds the XML; `stream.XmppStreamProtocol.send_stream_error` sends a
stream error and closes the connection.
"""

from __future__ import annotations

from twisted.words.xish import domish

STREAM_NS = "http://etherx.jabber.org/streams"
STREAM_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

#: RFC 6120 section 4.9.3.
STREAM_CONDITIONS = frozenset(
    """bad-format bad-namespace-prefix conflict connection-timeout host-gone host-unknown
    improper-addressing internal-server-error invalid-from invalid-namespace invalid-xml
    not-authorized not-well-formed policy-violation remote-connection-failed reset
    resource-constraint restricted-xml see-other-host system-shutdown undefined-condition
    unsupported-encoding unsupported-feature unsupported-stanza-type unsupported-version""".split()
)

#: RFC 6120 section 8.3.3: each condition with the error type its examples use.
STANZA_CONDITIONS = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "modify",
    "unexpected-request": "modify",
}

#: RFC 6120 section 8.3.2.
STANZA_ERROR_TYPES = frozenset({"auth", "cancel", "continue", "modify", "wait"})


class StreamError(Exception):
    """A stream-level error: the stream must be closed with ``condition``.

    Raised by the stream parser (and by any layer above it) so that the
    protocol turns it into a ``<stream:error/>`` and closes the connection.
    """

    def __init__(self, condition: str, text: str | None = None):
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"{condition!r} is not an RFC 6120 stream error condition")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text

    def to_element(self) -> domish.Element:
        """The ``<stream:error/>`` element for this error."""
        return stream_error_element(self.condition, self.text)


def stream_error_element(condition: str, text: str | None = None) -> domish.Element:
    """Build ``<stream:error><condition/><text/></stream:error>``.

    The condition and the optional text are qualified by
    ``urn:ietf:params:xml:ns:xmpp-streams``; an unknown condition raises
    ValueError so a typo cannot reach a client.
    """
    if condition not in STREAM_CONDITIONS:
        raise ValueError(f"{condition!r} is not an RFC 6120 stream error condition")
    error = domish.Element((STREAM_NS, "error"))
    error.addElement((STREAM_ERRORS_NS, condition))
    if text:
        error.addElement((STREAM_ERRORS_NS, "text"), content=text)
    return error


def stanza_error_element(
    condition: str, error_type: str | None = None, text: str | None = None, by: str | None = None
) -> domish.Element:
    """Build ``<error type='...'><condition/><text/></error>`` (RFC 6120 8.3.2).

    ``error_type`` defaults to the type RFC 6120 gives the condition. The
    ``<error/>`` element itself is in the stanza's namespace (it inherits the
    stream's default namespace when serialised); condition and text are in
    ``urn:ietf:params:xml:ns:xmpp-stanzas``.
    """
    if condition not in STANZA_CONDITIONS:
        raise ValueError(f"{condition!r} is not an RFC 6120 stanza error condition")
    error_type = error_type or STANZA_CONDITIONS[condition]
    if error_type not in STANZA_ERROR_TYPES:
        raise ValueError(f"{error_type!r} is not an RFC 6120 stanza error type")
    error = domish.Element((None, "error"))
    error["type"] = error_type
    if by:
        error["by"] = by
    error.addElement((STANZA_ERRORS_NS, condition))
    if text:
        text_element = error.addElement((STANZA_ERRORS_NS, "text"), content=text)
        text_element[("http://www.w3.org/XML/1998/namespace", "lang")] = "en"
    return error


def copy_element(element: domish.Element) -> domish.Element:
    """A deep copy of ``element``: the original (perhaps still queued elsewhere) keeps its children.

    copy.deepcopy loops on domish's __getattr__.
    """
    clone = domish.Element(
        (element.uri, element.name), element.defaultUri, dict(element.attributes), dict(element.localPrefixes)
    )
    for child in element.children:
        clone.addChild(copy_element(child) if isinstance(child, domish.Element) else child)
    return clone


def stanza_error_reply(
    stanza: domish.Element,
    condition: str,
    error_type: str | None = None,
    text: str | None = None,
    by: str | None = None,
    include_payload: bool = False,
) -> domish.Element:
    """The error stanza that answers ``stanza`` (RFC 6120 8.3.1).

    The reply has the same element name and ``id``, ``type='error'``, and
    ``to``/``from`` swapped (an absent address stays absent, for the session to
    stamp). The original children are copied before the ``<error/>`` only when
    ``include_payload`` is true. Answering an error stanza with an error is
    forbidden (8.3.1 rule 3: it would let two entities loop), so that raises
    ValueError; check ``stanza.getAttribute('type') == 'error'`` first.
    """
    if stanza.getAttribute("type") == "error":
        raise ValueError("an error stanza must never be answered with another error")
    reply = domish.Element((stanza.uri, stanza.name), defaultUri=stanza.defaultUri)
    for ours, theirs in (("to", "from"), ("from", "to"), ("id", "id")):
        if stanza.hasAttribute(theirs):
            reply[ours] = stanza[theirs]
    reply["type"] = "error"
    if include_payload:
        for child in stanza.elements():
            reply.addChild(copy_element(child))
    reply.addChild(stanza_error_element(condition, error_type, text, by))
    return reply
