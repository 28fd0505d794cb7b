"""XMPP over WebSocket (RFC 7395) against the installed appliance: wss://127.0.0.1/xmpp-websocket.

The WebSocket client is the `websockets` library (a test dependency): an
implementation independent of the server's autobahn, native to asyncio so it
shares the loop of the slixmpp client on the TCP port, and free of txaio's
one-framework-per-process rule, which the unit tests' autobahn on Twisted set.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import ssl
import uuid

import pytest
import websockets
from scramp import ScramClient

from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, login, run

FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
PATH = "/xmpp-websocket"


class WebSocketStream:
    """One client stream over WebSocket: each message the server sends, in order."""

    def __init__(self, connection):
        self.connection = connection

    @property
    def subprotocol(self) -> str | None:
        return self.connection.subprotocol

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    def send_xml(self, xml: str) -> None:
        asyncio.ensure_future(self.connection.send(xml))

    async def receive(self) -> str | None:
        """The next message; None once the server closed the connection."""
        try:
            return await asyncio.wait_for(self.connection.recv(), TIMEOUT)
        except websockets.ConnectionClosed:
            return None

    async def abort(self) -> None:
        await self.connection.close()

    async def receive_message_stanza(self) -> str:
        """The next <message/>, skipping anything else the server sends meanwhile."""
        while True:
            xml = await self.receive()
            assert xml is not None, "the stream closed while waiting for a message"
            if xml.startswith("<message"):
                return xml

    async def open_stream(self, domain: str) -> str:
        """Send <open/>; return the features that follow the server's <open/>."""
        self.send_xml(f"<open xmlns='{FRAMING}' to='{domain}' version='1.0'/>")
        opened = await self.receive()
        assert opened is not None and opened.startswith(f"<open xmlns='{FRAMING}'"), opened
        features = await self.receive()
        assert features is not None and features.startswith("<stream:features"), features
        return features

    async def log_in(self, domain: str, username: str, mechanism: str, password: str = PASSWORD) -> str:
        """SASL with ``mechanism``, the restart, and binding; return the bound full JID."""
        features = await self.open_stream(domain)
        assert f"<mechanism>{mechanism}</mechanism>" in features
        if mechanism == "PLAIN":
            credentials = b64("\0".join(("", username, password)))
            self.send_xml(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{credentials}</auth>")
        else:
            scram = ScramClient([mechanism], username, password)
            self.send_xml(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{b64(scram.get_client_first())}</auth>")
            scram.set_server_first(unb64(element_text(await self.receive(), "challenge")))
            self.send_xml(f"<response xmlns='{SASL}'>{b64(scram.get_client_final())}</response>")
        outcome = await self.receive()
        assert outcome is not None and outcome.startswith(f"<success xmlns='{SASL}'"), outcome
        if mechanism != "PLAIN":
            scram.set_server_final(unb64(element_text(outcome, "success")))  # the server proved it knows the key
        assert "urn:ietf:params:xml:ns:xmpp-bind" in await self.open_stream(domain)
        resource = f"ws-{uuid.uuid4().hex[:4]}"
        self.send_xml(
            f"<iq xmlns='jabber:client' type='set' id='bind1'>"
            f"<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        )
        return element_text(await self.receive(), "jid")

    async def close_stream(self) -> None:
        """<close/>, answered by <close/>, then the server closes the WebSocket."""
        self.send_xml(f"<close xmlns='{FRAMING}'/>")
        while (xml := await self.receive()) is not None:
            last = xml
        assert last == f"<close xmlns='{FRAMING}'/>"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def element_text(xml: str | None, name: str) -> str:
    match = re.search(rf"<{name}[^>]*>([^<]*)</{name}>", xml or "")
    assert match, f"no <{name}/> in {xml!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def https_port(config):
    return config.http.https_port


async def connect(endpoint, port: int, protocols=("xmpp",)) -> WebSocketStream:
    """Open wss://<domain>:<port>/xmpp-websocket on 127.0.0.1, trusting the installer's CA."""
    context = ssl.create_default_context(cafile=endpoint.ca_certificate)
    connection = await websockets.connect(
        f"wss://{endpoint.domain}:{port}{PATH}",
        subprotocols=list(protocols),
        ssl=context,
        host="127.0.0.1",
        server_hostname=endpoint.domain,
        open_timeout=TIMEOUT,
    )
    return WebSocketStream(connection)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "PLAIN"])
def test_websocket_user_and_tcp_user_chat_both_ways(chat_server, endpoint, https_port, new_user, mechanism):
    """A WebSocket client logs in (SCRAM-SHA-256 or PLAIN), binds, and chats both ways with slixmpp on 5222.

    The WebSocket session is in the session directory under the HTTPS process's
    own front-end id, so a TCP front end reaches it over Redis pub/sub and back.
    """
    from hipchat_server.storage.sessions import SESSIONS_KEY

    browser_user, tcp_user = new_user(), new_user()

    async def scenario():
        stream = await connect(endpoint, https_port)
        assert stream.subprotocol == "xmpp"
        tcp_client = None
        try:
            jid = await stream.log_in(endpoint.domain, browser_user, mechanism)
            bare, _, resource = jid.partition("/")
            assert bare == f"{browser_user}@{endpoint.domain}"
            await asyncio.sleep(0.3)  # the directory entry is written right after binding
            frontend = chat_server.get_redis_primary().hget(SESSIONS_KEY.format(bare=bare), resource)
            assert frontend is not None and frontend.decode().endswith(":web")

            tcp_client, ok = await login(endpoint, tcp_user)
            assert ok
            body = f"from the browser {uuid.uuid4().hex[:6]}"
            stream.send_xml(
                f"<message xmlns='jabber:client' to='{tcp_client.boundjid.full}' type='chat' id='w1'>"
                f"<body>{body}</body></message>"
            )
            received = await asyncio.wait_for(tcp_client.received.get(), TIMEOUT)
            assert received["body"] == body and received["from"] == jid

            tcp_client.send_message(mto=jid, mbody="and back to the browser", mtype="chat")
            reply = await stream.receive_message_stanza()
            assert reply.startswith("<message xmlns='jabber:client' ")
            assert f"from='{tcp_client.boundjid.full}'" in reply
            assert "<body>and back to the browser</body>" in reply
            await stream.close_stream()
        finally:
            if tcp_client is not None:
                await tcp_client.close()
            await stream.abort()

    run(scenario())


def test_handshake_without_the_xmpp_subprotocol_is_refused(endpoint, https_port):
    """A WebSocket upgrade that does not offer 'xmpp' gets 400 and no WebSocket."""
    context = ssl.create_default_context(cafile=endpoint.ca_certificate)
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: {endpoint.domain}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", https_port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=endpoint.domain) as tls:
            tls.sendall(request.encode())
            status_line = tls.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400 "), status_line

    async def scenario():
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(endpoint, https_port, protocols=("chat",))
        assert refused.value.response.status_code == 400

    run(scenario())


def test_malformed_frame_closes_only_that_stream(endpoint, https_port, new_user):
    """Malformed XML gets <stream:error><not-well-formed/> and <close/>; another WebSocket stream goes on."""
    first_user, second_user = new_user(), new_user()

    async def scenario():
        bystander = await connect(endpoint, https_port)
        broken = await connect(endpoint, https_port)
        try:
            bystander_jid = await bystander.log_in(endpoint.domain, first_user, "SCRAM-SHA-256")
            broken_jid = await broken.log_in(endpoint.domain, second_user, "PLAIN")
            broken.send_xml("<message xmlns='jabber:client'><body>unfinished</message>")
            answers = []
            while (xml := await broken.receive()) is not None:
                answers.append(xml)
            assert answers[0].startswith("<stream:error xmlns:stream='http://etherx.jabber.org/streams'>")
            assert "<not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" in answers[0]
            assert answers[-1] == f"<close xmlns='{FRAMING}'/>"
            assert broken.close_code == 1000

            # The other stream is untouched: it still talks to the server (the broken JID is gone now).
            bystander.send_xml(
                f"<iq xmlns='jabber:client' type='get' id='v1' to='{endpoint.domain}'>"
                "<query xmlns='jabber:iq:version'/></iq>"
            )
            version = await bystander.receive()
            assert version is not None and "type='result'" in version and "id='v1'" in version
            assert broken_jid != bystander_jid
            await bystander.close_stream()
        finally:
            await bystander.abort()
            await broken.abort()

    run(scenario())
