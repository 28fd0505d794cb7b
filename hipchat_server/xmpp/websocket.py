"""XMPP over WebSocket (RFC 7395): client streams on the HTTPS port, for browser clients.

The negotiation is the one of `c2s.ClientConnection` (SASL, resource binding,
then stanzas to the router); only the framing differs from a TCP stream:

- the client must offer the ``xmpp`` WebSocket subprotocol, or the handshake is refused;
- every WebSocket message is one text frame holding one complete XML element,
  which declares its own namespaces;
- ``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>`` plays the stream
  header (first, and again after SASL success) and ``<close/>`` its end tag;
- a stream error is sent as one message, followed by ``<close/>``, and the
  WebSocket connection is closed.

TLS is the HTTPS connection's, so a stream starts at SASL. Each message is
parsed on its own by the hardened `xml_parser.StreamParser` (no DTDs or
entities, the same depth and attribute limits) and may be no larger than a
TCP stream's stanza: 8 KiB before authentication, 256 KiB after. Binary
messages are refused.

A login over WebSocket is a login to the web client, so the factory's
``login_allowed(username)`` (the ``web_client`` feature flag, asked per user
once the password has been proved) may refuse it: SASL ``<not-authorized/>``
with `WEB_CLIENT_OFF` as its text. The same account's TCP logins are not
affected. Guests (`hipchat_server.guests`) log in only here, and their
streams keep to their room (`xmpp.guests.GuestStream`).
"""

from __future__ import annotations

import re
import secrets

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.words.xish import domish

from hipchat_server.xmpp import guests as guest_streams
from hipchat_server.xmpp import stream_management as sm
from hipchat_server.xmpp.c2s import ClientConnection, ClientFactory
from hipchat_server.xmpp.errors import STREAM_NS, StreamError, stream_error_element
from hipchat_server.xmpp.features import SASL_NS
from hipchat_server.xmpp.sasl import NOT_AUTHORIZED, Failure as SaslFailure, SaslServer, Success
from hipchat_server.xmpp.stream import TokenBucket, XmppStreamProtocol
from hipchat_server.xmpp.xml_parser import CLIENT_NS, XML_NS, StreamLimits, StreamParser

FRAMING_NS = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"
PATH = b"xmpp-websocket"

#: Every message is parsed inside this stream, so that an element without a
#: namespace declaration is in jabber:client, as in a TCP stream.
_WRAPPER_OPEN = f"<stream:stream xmlns='{CLIENT_NS}' xmlns:stream='{STREAM_NS}'>".encode()
_WRAPPER_CLOSE = b"</stream:stream>"
_XML_DECLARATION = re.compile(rb"\s*<\?xml\s(?:[^?]|\?(?!>))*\?>")
_DECLARED_ENCODING = re.compile(rb"""\sencoding\s*=\s*(['"])([^'"]*)\1""")
#: The first start tag of serialised XML (domish escapes '<', '>' and quotes inside attribute values).
_START_TAG = re.compile(r"""<([^\s/>]+)((?:\s+[^\s=/>]+\s*=\s*(?:'[^']*'|"[^"]*"))*)\s*/?>""")
_ATTRIBUTE_NAME = re.compile(r"""\s+([^\s=/>]+)\s*=\s*(?:'[^']*'|"[^"]*")""")
_SASL_ANSWERS = frozenset({"challenge", "success", "failure"})
#: The SASL failure text for a user the ``web_client`` flag is off for.
WEB_CLIENT_OFF = "the web client is turned off for you; use a desktop XMPP client"


def parse_message(payload: bytes, limits: StreamLimits, max_size: int) -> domish.Element | None:
    """The one element a WebSocket message holds, or None for a message of whitespace only.

    Raises StreamError as a TCP stream's parser would (``not-well-formed``,
    ``restricted-xml``, ``policy-violation`` for a limit), and ``bad-format``
    when the message holds more than one element. An XML declaration may
    precede the element; it must not name an encoding other than UTF-8.
    """
    declaration = _XML_DECLARATION.match(payload)
    if declaration:
        encoding = _DECLARED_ENCODING.search(declaration.group())
        if encoding and encoding.group(2).lower() not in (b"utf-8", b"utf8"):
            raise StreamError("unsupported-encoding", "XMPP over WebSocket is UTF-8")
        payload = payload[declaration.end() :]
    elements: list[domish.Element] = []
    parser = StreamParser(limits, max_size, lambda attrs: None, elements.append, lambda: None)
    parser.feed(_WRAPPER_OPEN)
    if parser.feed(payload) is not None:  # the message ended the wrapping stream: '</stream:stream>'
        raise StreamError("bad-format", f"close the stream with <close xmlns='{FRAMING_NS}'/>")
    parser.feed(_WRAPPER_CLOSE)  # an unfinished element makes this not-well-formed
    if len(elements) > 1:
        raise StreamError("bad-format", "a WebSocket message holds one element (RFC 7395 3.3.3)")
    return elements[0] if elements else None


def with_content_namespace(xml: str) -> str:
    """``xml`` with ``xmlns='jabber:client'`` declared on its root element when it declares no default namespace.

    A TCP stream declares jabber:client once in its header; over WebSocket each
    message must declare it itself (RFC 7395 3.3.3). Stanzas that other front
    ends publish arrive serialised for a TCP stream, so they pass through here too.
    """
    match = _START_TAG.match(xml)
    if match is None or ":" in match.group(1) or "xmlns" in _ATTRIBUTE_NAME.findall(match.group(2)):
        return xml
    return f"{xml[: match.end(1)]} xmlns='{CLIENT_NS}'{xml[match.end(1) :]}"


def framing_element(name: str, **attributes: str | None) -> domish.Element:
    """``<open/>`` or ``<close/>`` in the framing namespace, with the attributes that are not None."""
    element = domish.Element((FRAMING_NS, name))
    for key, value in attributes.items():
        if value is not None:
            element[(XML_NS, "lang") if key == "xml_lang" else key] = value
    return element


def _open_attributes(element: domish.Element) -> dict[str, str]:
    """The attributes of an ``<open/>`` as `ClientConnection.stream_started` takes a stream header's."""
    attrs = {}
    for key, value in element.attributes.items():
        if isinstance(key, tuple):
            key = f"xml:{key[1]}" if key[0] == XML_NS else "{%s}%s" % key
        attrs[key] = value
    return attrs


class MessageTransport:
    """What a `WebSocketClientConnection` writes to: each write becomes one WebSocket text message."""

    def __init__(self, websocket: WebSocketServerProtocol):
        self.websocket = websocket
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.websocket.sendMessage(data, isBinary=False)

    def loseConnection(self) -> None:
        """Start the WebSocket closing handshake (the TCP connection closes when it completes or times out)."""
        if not self.disconnecting:
            self.disconnecting = True
            self.websocket.sendClose(code=1000)

    def abortConnection(self) -> None:
        """Drop the connection without a closing handshake (a resumed session moved to another stream)."""
        self.disconnecting = True
        self.websocket.dropConnection(abort=True)

    def getPeer(self):
        return self.websocket.transport.getPeer()

    def getHost(self):
        return self.websocket.transport.getHost()

    def pauseProducing(self) -> None:
        self.websocket.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.websocket.transport.resumeProducing()


class FramedXmlStream(XmppStreamProtocol):
    """The RFC 7395 framing under a client stream: one element per WebSocket message, ``<open/>`` and ``<close/>``.

    It sits below `c2s.ClientConnection` in the method order (see
    `WebSocketClientConnection`), so the connection's own overrides of
    `send_stream_error` and `close_stream` (Stream Management's) run first and
    end here instead of in the TCP framing. `message_received` takes the
    payload of one text message; `send` writes one element per message with
    its namespaces declared.
    """

    def __init__(self, limits: StreamLimits | None = None, clock=None):
        super().__init__(limits, clock)
        self._opened = self._ended = False  # our <open/> sent; our <close/> sent or connection gone
        self._expect_open = True  # the next element must be the client's <open/>

    def message_received(self, payload: bytes) -> None:
        """Handle one WebSocket text message: a stream element, ``<open/>`` or ``<close/>``."""
        if self._ended:
            return
        try:
            element = parse_message(payload, self.limits, self.max_stanza_size)
            if element is not None:
                self._element_received(element)
        except StreamError as e:
            self.send_stream_error(e.condition, e.text)
        except Exception:
            self.log.failure("XMPP WebSocket stream handler failed")
            self.send_stream_error("internal-server-error")

    def _element_received(self, element: domish.Element) -> None:
        if (element.uri, element.name) == (FRAMING_NS, "close"):
            return self.stream_ended()
        if self._expect_open:
            if (element.uri, element.name) != (FRAMING_NS, "open"):
                condition = "invalid-namespace" if element.name == "open" else "bad-format"
                raise StreamError(condition, f"open the stream with <open xmlns='{FRAMING_NS}'/>")
            self._expect_open = False
            return self.stream_started(_open_attributes(element))
        if element.uri == FRAMING_NS:
            raise StreamError("bad-format", f"<{element.name}/> while the stream is open")
        self.stanza_received(element)

    def send(self, data: domish.Element | str | bytes) -> None:
        """Write one element (or one element's XML) as one WebSocket message, unless the stream ended."""
        if self._ended:
            return
        if isinstance(data, domish.Element):
            data = data.toXml(prefixes={STREAM_NS: "stream"}, defaultUri=self.content_namespace)
        elif isinstance(data, bytes):
            data = data.decode("utf-8")
        super().send(with_content_namespace(data))

    def send_stream_header(self, from_: str | None = None, to: str | None = None, version: str | None = "1.0") -> str:
        """Answer the client's ``<open/>`` with ours, with a new unpredictable stream id."""
        self.stream_id = secrets.token_urlsafe(16)
        self._opened = True
        self.send(framing_element("open", to=to, version=version, id=self.stream_id, xml_lang="en", **{"from": from_}))
        return self.stream_id

    def send_stream_error(self, condition: str, text: str | None = None) -> None:
        """Send ``<stream:error/>`` as one message, then ``<close/>``, and close the WebSocket (RFC 7395 3.6)."""
        if self._ended:
            return
        peer = self.transport.getPeer() if self.transport else None
        self.log.info("Closing the WebSocket stream from {peer}: {condition} {text}", peer=peer, condition=condition, text=text)
        if not self._opened:
            self.send_stream_header(from_=getattr(self, "factory", None) and self.factory.domain)
        self.send(stream_error_element(condition, text))
        self.close_stream()

    def close_stream(self) -> None:
        """Send ``<close/>`` and close the WebSocket connection; nothing more is read or sent."""
        if self._ended:
            return
        if not self._opened:
            self.send_stream_header(from_=getattr(self, "factory", None) and self.factory.domain)
        self.send(framing_element("close"))
        self._ended = True
        self.transport.loseConnection()

    def reset_parser(self, discard_pending: bool = False) -> None:
        """A stream restart (after SASL success): the client's next element is a new ``<open/>``."""
        self._expect_open = True

    def connectionLost(self, reason) -> None:
        self._ended = True
        super().connectionLost(reason)


class GatedSaslSession:
    """A `sasl.SaslSession` whose Success becomes ``<not-authorized/>`` when ``allowed(username)`` says no.

    ``allowed`` may block: it runs in the SASL step's thread, after the
    password was proved, so it tells nothing to someone without it. After a
    refusal the client may start again.
    """

    def __init__(self, server, allowed, text: str = WEB_CLIENT_OFF):
        self.server, self.allowed, self.text = server, allowed, text
        self.session = server.session(tls_active=True)

    def _checked(self, outcome):
        if isinstance(outcome, Success) and not self.allowed(outcome.username):
            self.session = self.server.session(tls_active=True)  # the refused exchange counts as not done
            return SaslFailure(NOT_AUTHORIZED, self.text, credentials_proved=True)  # not counted as a failed login
        return outcome

    def start(self, mechanism: str, initial_response):
        return self._checked(self.session.start(mechanism, initial_response))

    def respond(self, response):
        return self._checked(self.session.respond(response))

    def abort(self):
        return self.session.abort()


class WebSocketClientConnection(ClientConnection, FramedXmlStream):
    """A client stream over WebSocket: `c2s.ClientConnection`'s negotiation on `FramedXmlStream`'s framing.

    TLS is on (HTTPS). While a SASL step runs (in a thread), later messages
    wait and are replayed once it has answered, as the TCP stream holds the
    bytes it reads meanwhile. ``login_allowed(username)`` (blocking; None:
    everyone) decides who may log in this way.
    """

    def __init__(self, factory: ClientFactory, login_allowed=None, guests=None):
        super().__init__(factory)
        self.tls_active = True  # inside HTTPS
        self.login_allowed = login_allowed
        self.guests = guests  # a guests.Guests: guest accounts may log in here (and only here)
        self.guest: guest_streams.GuestStream | None = None  # once a guest logged in: keeps it to its room
        self._guest_credentials: guest_streams.GuestCredentials | None = None
        self._queued: list[bytes] | None = None  # messages read while a SASL step runs
        self._release_call = None

    @property
    def may_hand_over(self) -> bool:
        # A guest's session keeps to its room only on this stream (GuestStream): it is not handed over.
        return super().may_hand_over and self.guest is None

    def _authenticating(self, element: domish.Element) -> None:
        if self._sasl is None and (self.login_allowed is not None or self.guests is not None):
            # The stream's SASL session, made here instead of by c2s, so that its Success passes the gate
            # and so that it knows guest accounts (which every other login path refuses).
            server = self.factory.sasl_server
            if self.guests is not None:
                self._guest_credentials = guest_streams.GuestCredentials(server.credentials, self.guests.login)
                server = SaslServer(self._guest_credentials, server.domain, server.fake_salt_secret)
            if self.login_allowed is not None:
                self._sasl = GatedSaslSession(server, self.login_allowed)
            else:
                self._sasl = server.session(tls_active=True)
        super()._authenticating(element)

    def _sasl_outcome(self, outcome) -> None:
        admitted = self._guest_credentials.admitted if self._guest_credentials is not None else None
        super()._sasl_outcome(outcome)
        if isinstance(outcome, Success) and admitted is not None and self.authenticated and not self._gone:
            self.guest = guest_streams.GuestStream(self, admitted, self.guests, self.factory.run_blocking, self.clock)
            self.guest.start()

    def _bound(self, element: domish.Element) -> None:
        answers = self.guest.refused(element) if self.guest is not None and not sm.is_sm(element) else None
        if answers is not None:  # stopped by the guest's rules
            for answer in answers:
                super().deliver(answer)
            return self._count_handled(None)
        super()._bound(element)

    def deliver(self, stanza: domish.Element | str) -> None:
        if self.guest is not None and not self.guest.inbound(stanza):
            return None  # not for a guest: nothing but its room reaches it
        return super().deliver(stanza)

    def message_received(self, payload: bytes) -> None:
        if self.handing_over:
            return  # as on the TCP ports: not counted, so the client resends it where it resumes
        if self._queued is not None and not self._ended:
            self._queued.append(payload)
            if sum(map(len, self._queued)) > self.limits.max_stanza_size_unauthenticated:
                self.send_stream_error("policy-violation", "wait for the answer to the last SASL element")
            return
        super().message_received(payload)

    def stanza_received(self, element: domish.Element) -> None:
        if not self.authenticated and element.uri == SASL_NS and element.name in ("auth", "response"):
            self._queued = []  # until the SASL step answers (see send)
        super().stanza_received(element)

    def send(self, data: domish.Element | str | bytes) -> None:
        if isinstance(data, domish.Element) and data.uri == SASL_NS and data.name in _SASL_ANSWERS:
            if self._queued is not None and self._release_call is None:
                # Replay held messages once the SASL outcome has been applied, after this call returns.
                self._release_call = self.clock.callLater(0, self._release_queued)
        super().send(data)

    def _release_queued(self) -> None:
        self._release_call = None
        queued, self._queued = self._queued or [], None
        for index, payload in enumerate(queued):
            if self._queued is not None:  # another SASL step started: the rest waits for it
                self._queued.extend(queued[index:])
                return
            self.message_received(payload)

    def connectionLost(self, reason) -> None:
        if self._release_call is not None and self._release_call.active():
            self._release_call.cancel()
        self._release_call = self._queued = None
        super().connectionLost(reason)
        if self.guest is not None:
            self.guest.stop()  # a guest's account ends with its session


class XmppWebSocketProtocol(WebSocketServerProtocol):
    """The WebSocket side of one browser client: handshake, message sizes, pacing; XMPP is the connection's."""

    connection: WebSocketClientConnection | None = None

    def onConnect(self, request):
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "XMPP over WebSocket needs the 'xmpp' subprotocol")
        if self.factory.client_factory is None:
            raise ConnectionDeny(503, "the chat service is starting; try again shortly")
        return SUBPROTOCOL

    def onOpen(self) -> None:
        client_factory = self.factory.client_factory
        limits = client_factory.limits
        rate = limits.rate_bytes_per_second
        self._bucket = TokenBucket(rate, limits.rate_burst_bytes, client_factory.clock) if rate else None
        self._resume_call = None
        self.connection = WebSocketClientConnection(client_factory, self.factory.login_allowed, self.factory.guests)
        self.connection.makeConnection(MessageTransport(self))

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)
        self._message_size = 0
        if isBinary and self.connection is not None:
            self.connection.send_stream_error("bad-format", "XMPP over WebSocket uses text messages only")

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        connection = self.connection
        if connection is None:
            return
        self._message_size += length
        if self._message_size > connection.max_stanza_size:
            connection.send_stream_error("policy-violation", f"a message is larger than {connection.max_stanza_size} bytes")
        elif self._bucket is not None:
            self._pace(self._bucket.consume(length))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.connection is not None and not isBinary:
            self.connection.message_received(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        if getattr(self, "_resume_call", None) is not None and self._resume_call.active():
            self._resume_call.cancel()
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.connectionLost(Failure(ConnectionDone(f"WebSocket closed ({code})")))

    def _pace(self, delay: float) -> None:
        # Over its byte rate the client is read more slowly, as on the TCP ports.
        if delay > 0 and self._resume_call is None:
            self.transport.pauseProducing()
            self._resume_call = self.connection.clock.callLater(delay, self._resume)

    def _resume(self) -> None:
        self._resume_call = None
        delay = self._bucket.consume(0)
        if delay > 0:
            self._resume_call = self.connection.clock.callLater(delay, self._resume) if self.connection else None
        elif self.connection is not None:
            self.transport.resumeProducing()


class XmppWebSocketFactory(WebSocketServerFactory):
    """Builds an `XmppWebSocketProtocol` per browser client.

    ``client_factory`` is the `c2s.ClientFactory` the streams share (domain,
    SASL, router, sessions, limits); until it is set, handshakes are refused
    with 503, so the HTTPS process can serve while it joins the session directory.
    ``login_allowed(username)`` (blocking; None: everyone) is asked at each
    login (`GatedSaslSession`). ``guests`` (a `guests.Guests`; None: no guests)
    lets guest accounts log in, kept to their room (`xmpp.guests`).
    """

    protocol = XmppWebSocketProtocol

    def __init__(self, client_factory: ClientFactory | None = None, url: str | None = None, login_allowed=None, guests=None):
        super().__init__(url=url, protocols=[SUBPROTOCOL])
        self.client_factory = client_factory
        self.login_allowed = login_allowed
        self.guests = guests
        hard_limit = (client_factory.limits if client_factory else StreamLimits()).max_stanza_size
        self.setProtocolOptions(
            webStatus=False,
            maxFramePayloadSize=hard_limit,
            maxMessagePayloadSize=hard_limit,  # each connection enforces its own, smaller before authentication
            autoPingInterval=60,  # finds browsers that vanished without closing
            autoPingTimeout=30,
            openHandshakeTimeout=30,
            closeHandshakeTimeout=5,
        )
