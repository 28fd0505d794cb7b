"""XMPP over WebSocket (RFC 7395): the framing adapter on fake WebSockets, and the handshake on StringTransport."""

from __future__ import annotations

import base64
import re

import pytest
from scramp import ScramClient
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from hipchat_server.xmpp.c2s import ClientFactory
from hipchat_server.xmpp.errors import StreamError
from hipchat_server.xmpp.websocket import (
    WEB_CLIENT_OFF,
    MessageTransport,
    WebSocketClientConnection,
    XmppWebSocketFactory,
    parse_message,
    with_content_namespace,
)
from hipchat_server.xmpp.xml_parser import StreamLimits
from tests.unit.xmpp.test_c2s import make_client_factory

DOMAIN = "chat.example.com"
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
OPEN = f"<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>"
CLOSE = f"<close xmlns='{FRAMING}'/>"


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def factory(clock):
    return make_client_factory(clock, tls_options=None, direct_tls=True)


class FakeWebSocket:
    """Stands in for the autobahn protocol: records each message and the closing handshake."""

    def __init__(self):
        self.messages: list[str] = []
        self.close_code = None
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        assert not isBinary
        self.messages.append(payload.decode())

    def sendClose(self, code=None, reason=None) -> None:
        self.close_code = code


class Client:
    """One browser client: feeds messages to a WebSocketClientConnection and reads the messages it sent."""

    def __init__(self, factory: ClientFactory, clock, login_allowed=None):
        self.clock = clock
        self.websocket = FakeWebSocket()
        self.connection = WebSocketClientConnection(factory, login_allowed)
        self.connection.makeConnection(MessageTransport(self.websocket))

    def send(self, xml: str | bytes) -> list[str]:
        """Feed one message; return (and clear) the messages sent in answer, once queued work has run."""
        self.websocket.messages.clear()
        self.connection.message_received(xml.encode() if isinstance(xml, str) else xml)
        self.clock.advance(0)
        return list(self.websocket.messages)

    @property
    def closed(self) -> bool:
        return self.websocket.close_code is not None

    def auth_plain(self, username: str = "alice", password: str = "wonderland") -> list[str]:
        data = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{data}</auth>")

    def login(self) -> list[str]:
        self.send(OPEN)
        assert "<success" in self.auth_plain()[0]
        return self.send(OPEN)

    def bind(self, resource: str = "web") -> list[str]:
        bind = f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind>"
        return self.send(f"<iq xmlns='jabber:client' type='set' id='b1'>{bind}</iq>")


def stream_error(messages: list[str]) -> str | None:
    for message in messages:
        match = re.match(r"<stream:error xmlns:stream='http://etherx.jabber.org/streams'><([a-z-]+) ", message)
        if match:
            return match.group(1)
    return None


def test_open_is_answered_with_open_and_sasl_features_without_starttls(factory, clock):
    """The client's <open/> gets our <open/> (from, id, version, xml:lang) and SASL features, each its own message."""
    answer = Client(factory, clock).send(OPEN)
    assert len(answer) == 2
    assert answer[0].startswith(f"<open xmlns='{FRAMING}'") and answer[0].endswith("/>")
    for attribute in (f"from='{DOMAIN}'", "version='1.0'", "xml:lang='en'", "id='"):
        assert attribute in answer[0]
    assert answer[1].startswith("<stream:features xmlns:stream='http://etherx.jabber.org/streams'>")
    assert "<mechanism>SCRAM-SHA-256</mechanism>" in answer[1] and "starttls" not in answer[1]


def test_plain_login_restart_bind_and_close(factory, clock):
    """PLAIN, a new <open/> after success, bind; then <close/> is answered with <close/> and ends the session."""
    client = Client(factory, clock)
    features = client.login()
    assert features[0].startswith("<open ") and "urn:ietf:params:xml:ns:xmpp-bind" in features[1]
    bound = client.bind("web")
    assert len(bound) == 1 and bound[0].startswith("<iq xmlns='jabber:client' ")
    assert f"<jid>alice@{DOMAIN}/web</jid>" in bound[0]
    assert factory.sessions.get(client.connection.jid) is client.connection
    assert client.send(CLOSE) == [f"<close xmlns='{FRAMING}'/>"]
    assert client.websocket.close_code == 1000
    client.connection.connectionLost(None)
    assert factory.sessions.get(client.connection.jid) is None


def test_scram_sha_256_login(factory, clock):
    """SCRAM-SHA-256 works over WebSocket, a challenge and a response in their own messages."""
    client = Client(factory, clock)
    client.send(OPEN)
    scram = ScramClient(["SCRAM-SHA-256"], "alice", "wonderland")
    first = base64.b64encode(scram.get_client_first().encode()).decode()
    challenge = client.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")[0]
    scram.set_server_first(base64.b64decode(re.search(r">([^<]+)</challenge>", challenge).group(1)).decode())
    final = base64.b64encode(scram.get_client_final().encode()).decode()
    success = client.send(f"<response xmlns='{SASL}'>{final}</response>")[0]
    scram.set_server_final(base64.b64decode(re.search(r">([^<]+)</success>", success).group(1)).decode())
    assert client.connection.authenticated


def test_messages_between_two_websocket_clients_declare_jabber_client(factory, clock):
    """A chat message reaches the other session as one message whose root declares xmlns='jabber:client'."""
    alice, bob = Client(factory, clock), Client(factory, clock)
    alice.login(), alice.bind("a")
    bob.send(OPEN), bob.auth_plain("bob", "builder99"), bob.send(OPEN), bob.bind("b")
    bob.websocket.messages.clear()
    alice.send(f"<message xmlns='jabber:client' to='bob@{DOMAIN}/b' type='chat' id='m1'><body>hi</body></message>")
    assert len(bob.websocket.messages) == 1
    delivered = bob.websocket.messages[0]
    assert delivered.startswith("<message xmlns='jabber:client' ")
    assert f"from='alice@{DOMAIN}/a'" in delivered and "<body>hi</body>" in delivered


def test_a_user_the_web_client_is_off_for_is_refused_with_a_failure_saying_so(factory, clock):
    """With the right password, a user ``login_allowed`` refuses gets <not-authorized/> and its text; no session; a retry
    is answered alike, and such refusals are not failed logins (the address is never blocked for them)."""
    asked = []

    def allowed(username):
        asked.append(username)
        return False

    client = Client(factory, clock, allowed)
    client.send(OPEN)
    tries = factory.auth_limiter.max_failures + 1
    for _ in range(tries):
        failure = client.auth_plain()[0]
        assert failure == f"<failure xmlns='{SASL}'><not-authorized/><text>{WEB_CLIENT_OFF}</text></failure>"
        assert not client.connection.authenticated
    assert asked == ["alice"] * tries
    assert not factory.auth_limiter.blocked("192.0.2.7")
    assert "<not-authorized/>" in client.auth_plain(password="wrong")[0] and len(asked) == tries  # a wrong password is not asked about


def test_a_user_the_web_client_is_on_for_logs_in_through_the_gate(factory, clock):
    """``login_allowed`` saying yes changes nothing: SCRAM success, restart, bind."""
    client = Client(factory, clock, lambda username: username == "alice")
    client.send(OPEN)
    scram = ScramClient(["SCRAM-SHA-256"], "alice", "wonderland")
    first = base64.b64encode(scram.get_client_first().encode()).decode()
    challenge = client.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>")[0]
    scram.set_server_first(base64.b64decode(re.search(r">([^<]+)</challenge>", challenge).group(1)).decode())
    final = base64.b64encode(scram.get_client_final().encode()).decode()
    assert client.send(f"<response xmlns='{SASL}'>{final}</response>")[0].startswith(f"<success xmlns='{SASL}'")
    assert client.connection.authenticated
    client.send(OPEN)
    assert f"<jid>alice@{DOMAIN}/web</jid>" in client.bind("web")[0]


def test_element_without_namespace_counts_as_jabber_client(factory, clock):
    """A stanza that declares no namespace is read in jabber:client, as in a TCP stream."""
    client = Client(factory, clock)
    client.login()
    bound = client.send("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert "<jid>" in bound[0]


def test_malformed_message_is_a_stream_error_then_close(factory, clock):
    """A message that is not well-formed XML gets <stream:error/> then <close/>, and the WebSocket closes."""
    client = Client(factory, clock)
    client.login(), client.bind()
    answer = client.send("<message><body>unfinished</message>")
    assert stream_error(answer) == "not-well-formed"
    assert answer[-1] == f"<close xmlns='{FRAMING}'/>"
    assert client.closed
    assert client.send(CLOSE) == []  # nothing more is read or sent


@pytest.mark.parametrize(
    "payload, condition",
    [
        ("<message/><message/>", "bad-format"),
        ("hello", "bad-format"),
        ("<!DOCTYPE m [<!ENTITY e 'x'>]><message>&e;</message>", "not-well-formed"),  # never expanded
        ("<message>&e;</message>", "restricted-xml"),
        ("</stream:stream>", "bad-format"),
        (f"<?xml version='1.0' encoding='ISO-8859-1'?>{OPEN}", "unsupported-encoding"),
    ],
)
def test_unacceptable_messages(factory, clock, payload, condition):
    """Two elements, bare text, DTDs, entities, a stream end tag, a foreign encoding: each closes the stream."""
    client = Client(factory, clock)
    client.send(OPEN)
    answer = client.send(payload)
    assert stream_error(answer) == condition and client.closed


def test_first_element_must_be_open_in_the_framing_namespace(factory, clock):
    """A TCP-style stream header or a stanza before <open/> is refused; our <open/> still goes first."""
    header = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='x'/>"
    answer = Client(factory, clock).send(header)
    assert answer[0].startswith("<open ") and stream_error(answer) == "bad-format"
    answer = Client(factory, clock).send(f"<open xmlns='jabber:client' to='{DOMAIN}' version='1.0'/>")
    assert stream_error(answer) == "invalid-namespace"


def test_open_for_another_domain_is_host_unknown(factory, clock):
    """The server answers <open/> and then closes with host-unknown (RFC 7395 3.7)."""
    answer = Client(factory, clock).send(f"<open xmlns='{FRAMING}' to='elsewhere.example' version='1.0'/>")
    assert answer[0].startswith("<open ") and stream_error(answer) == "host-unknown"
    assert answer[-1].startswith("<close ")


def test_xml_declaration_and_whitespace_messages_are_accepted(factory, clock):
    """A UTF-8 XML declaration before the element is fine; a whitespace-only message is ignored."""
    client = Client(factory, clock)
    assert client.send(f"<?xml version='1.0' encoding='UTF-8'?>{OPEN}")[0].startswith("<open ")
    assert client.send("  \n") == [] and not client.closed


def test_messages_wait_while_a_sasl_step_runs(factory, clock):
    """A message pipelined behind <auth/> waits for the (threaded) SASL answer, then is handled after it."""
    steps: list[tuple[defer.Deferred, object, tuple]] = []

    def run_later(f, *args):
        steps.append((defer.Deferred(), f, args))
        return steps[-1][0]

    factory.run_blocking = run_later
    client = Client(factory, clock)
    client.send(OPEN)
    data = base64.b64encode(b"\0alice\0wonderland").decode()
    assert client.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{data}</auth>") == []
    assert client.send(OPEN) == []  # held
    d, f, args = steps[0]
    client.websocket.messages.clear()
    d.callback(f(*args))
    clock.advance(0)
    answer = client.websocket.messages
    assert answer[0].startswith(f"<success xmlns='{SASL}'")
    assert answer[1].startswith("<open ") and "urn:ietf:params:xml:ns:xmpp-bind" in answer[2]


def test_stanza_before_authentication_is_not_authorized(factory, clock):
    """A stanza before SASL closes the stream with not-authorized, as on the TCP ports."""
    client = Client(factory, clock)
    client.send(OPEN)
    assert stream_error(client.send("<message to='bob@chat.example.com'><body>x</body></message>")) == "not-authorized"


def test_stanza_size_limit_applies_per_message(factory, clock):
    """Before authentication a message's element may be 8 KiB at most; after, 256 KiB."""
    with pytest.raises(StreamError) as refused:
        parse_message(b"<message><body>" + b"x" * 9000 + b"</body></message>", StreamLimits(), 8 * 1024)
    assert refused.value.condition == "policy-violation"
    element = parse_message(b"<message><body>" + b"x" * 9000 + b"</body></message>", StreamLimits(), 256 * 1024)
    assert len(str(element.body)) == 9000


def test_content_namespace_is_added_only_where_missing():
    """Serialised stanzas get xmlns='jabber:client' on the root unless it declares a namespace or is prefixed."""
    assert with_content_namespace("<message to='a@b'/>") == "<message xmlns='jabber:client' to='a@b'/>"
    assert with_content_namespace("<iq id=' xmlns=1'><x/></iq>").startswith("<iq xmlns='jabber:client' id=")
    assert with_content_namespace("<success xmlns='urn:x'/>") == "<success xmlns='urn:x'/>"
    assert with_content_namespace("<stream:features xmlns:stream='s'/>") == "<stream:features xmlns:stream='s'/>"


def test_published_stanza_from_another_front_end_is_framed_with_its_namespace(factory, clock):
    """deliver() with XML serialised for a TCP stream still reaches the browser as a namespaced message."""
    client = Client(factory, clock)
    client.login(), client.bind()
    client.websocket.messages.clear()
    client.connection.deliver(f"<message from='bob@{DOMAIN}/x' type='chat'><body>hey</body></message>")
    assert client.websocket.messages == [
        f"<message xmlns='jabber:client' from='bob@{DOMAIN}/x' type='chat'><body>hey</body></message>"
    ]


def test_replaced_session_gets_conflict_then_close(factory, clock):
    """A second stream binding the same resource closes the first with conflict, framed for WebSocket."""
    first, second = Client(factory, clock), Client(factory, clock)
    first.login(), first.bind("same")
    first.websocket.messages.clear()
    second.login(), second.bind("same")
    assert stream_error(first.websocket.messages) == "conflict" and first.closed


def test_negotiation_timeout_closes_the_stream(factory, clock):
    """A client that never binds is closed with connection-timeout, framed for WebSocket."""
    client = Client(factory, clock)
    client.send(OPEN)
    clock.advance(factory.negotiation_timeout + 1)
    assert stream_error(client.websocket.messages) == "connection-timeout" and client.closed


# The autobahn side: handshake, frames, limits.


def handshake(protocols: str | None) -> bytes:
    lines = [
        "GET /xmpp-websocket HTTP/1.1",
        f"Host: {DOMAIN}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Origin: https://chat.example.com",
    ]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked, final WebSocket frame as a client sends it (RFC 6455 5.2)."""
    mask = b"\x11\x22\x33\x44"
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked frame the server wrote."""
    frames = []
    while data:
        opcode, size, at = data[0] & 0x0F, data[1] & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(data[2:4], "big"), 4
        elif size == 127:
            size, at = int.from_bytes(data[2:10], "big"), 10
        frames.append((opcode, data[at : at + size]))
        data = data[at + size :]
    return frames


@pytest.fixture
def websocket_factory(factory):
    websocket_factory = XmppWebSocketFactory(factory)
    websocket_factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0, closeHandshakeTimeout=0)
    return websocket_factory


def connect(websocket_factory, protocols: str | None = "xmpp"):
    protocol = websocket_factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(handshake(protocols))
    return protocol, transport


def test_handshake_negotiates_the_xmpp_subprotocol(websocket_factory):
    """The upgrade succeeds and names 'xmpp' when the client offers it among others."""
    _, transport = connect(websocket_factory, "chat, xmpp")
    response = transport.value().decode("latin-1")
    assert response.startswith("HTTP/1.1 101 ")
    assert re.search(r"(?im)^Sec-WebSocket-Protocol: xmpp\r$", response)


@pytest.mark.parametrize("protocols", [None, "chat"])
def test_handshake_without_the_xmpp_subprotocol_is_refused(websocket_factory, protocols):
    """Without 'xmpp' among the offered subprotocols the upgrade is refused (400), so no stream starts."""
    protocol, transport = connect(websocket_factory, protocols)
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert protocol.connection is None


def test_handshake_is_refused_until_the_front_end_has_joined(websocket_factory):
    """Before the HTTPS process joined the session directory, clients are told to come back (503)."""
    websocket_factory.client_factory = None
    _, transport = connect(websocket_factory)
    assert transport.value().startswith(b"HTTP/1.1 503 ")


def test_frames_carry_the_stream(websocket_factory):
    """An <open/> text frame is answered with two text frames: <open/> and the features."""
    protocol, transport = connect(websocket_factory)
    transport.clear()
    protocol.dataReceived(client_frame(OPEN.encode()))
    frames = server_frames(transport.value())
    assert [opcode for opcode, _ in frames] == [1, 1]
    assert frames[0][1].startswith(b"<open ") and frames[1][1].startswith(b"<stream:features")


def test_binary_frame_is_refused_with_a_stream_error(websocket_factory):
    """Binary messages are not XMPP: bad-format, <close/>, then a WebSocket close frame."""
    protocol, transport = connect(websocket_factory)
    protocol.dataReceived(client_frame(OPEN.encode()))
    transport.clear()
    protocol.dataReceived(client_frame(b"<message/>", opcode=2))
    frames = server_frames(transport.value())
    assert stream_error([payload.decode() for op, payload in frames if op == 1]) == "bad-format"
    assert frames[-2][1] == f"<close xmlns='{FRAMING}'/>".encode() and frames[-1][0] == 8


def test_frame_larger_than_the_unauthenticated_limit_is_refused_before_it_is_read(websocket_factory):
    """A 9 KiB message before authentication: policy-violation as soon as its frame header arrives."""
    protocol, transport = connect(websocket_factory)
    protocol.dataReceived(client_frame(OPEN.encode()))
    transport.clear()
    frame = client_frame(b"<message><body>" + b"x" * (9 * 1024) + b"</body></message>")
    protocol.dataReceived(frame[:20])
    frames = server_frames(transport.value())
    assert stream_error([payload.decode() for op, payload in frames if op == 1]) == "policy-violation"
    assert frames[-1][0] == 8  # close frame


def test_large_frame_after_authentication_is_accepted(websocket_factory, factory):
    """After SASL the limit is the authenticated one, as on the TCP ports: a 20 KiB message passes."""
    protocol, transport = connect(websocket_factory)
    plain = base64.b64encode(b"\0alice\0wonderland").decode()
    for xml in (OPEN, f"<auth xmlns='{SASL}' mechanism='PLAIN'>{plain}</auth>"):
        protocol.dataReceived(client_frame(xml.encode()))
    factory.clock.advance(0)
    protocol.dataReceived(client_frame(OPEN.encode()))
    protocol.dataReceived(client_frame(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>"))
    transport.clear()
    body = b"y" * (20 * 1024)
    protocol.dataReceived(client_frame(b"<message to='nobody@chat.example.com' type='chat'><body>" + body + b"</body></message>"))
    frames = server_frames(transport.value())
    assert frames and all(op == 1 for op, _ in frames)
    assert stream_error([payload.decode() for _, payload in frames]) is None
