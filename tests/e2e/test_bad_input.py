"""Bad input on real sockets: each kind closes only the offending stream, and the front ends carry on.

Raw TLS connections to the direct-TLS port send what no client library would:
XML bombs, oversized stanzas, invalid UTF-8, broken XML, malformed JIDs. A
slixmpp bystander stays logged in throughout and must still chat afterwards,
and no front-end process may have restarted.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl

import pytest

from tests.conftest import program_pid
from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, login, run

FRONT_ENDS = ("chat-core:xmpp-0", "chat-core:xmpp-1")


def header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' "
        "xmlns:stream='http://etherx.jabber.org/streams'>"
    ).encode()


class RawStream:
    """One TLS connection to the direct-TLS port, read as text."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.text = ""

    @classmethod
    async def open(cls, endpoint) -> "RawStream":
        context = ssl.create_default_context(cafile=endpoint.ca_certificate)
        context.check_hostname = False  # the certificate names the appliance's host, we dial 127.0.0.1
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.c2s_tls_port, ssl=context)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, pattern: str) -> str:
        """Read until ``pattern`` (a regular expression) matches what arrived; fail after TIMEOUT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not re.search(pattern, self.text):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"never read {pattern!r}; got {self.text[-500:]!r}")
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not chunk:
                raise AssertionError(f"closed before {pattern!r}; got {self.text[-500:]!r}")
            self.text += chunk.decode("utf-8", errors="replace")
        return self.text

    async def closed_by_server(self) -> bool:
        """True once the server closed the connection (read returns end of file)."""
        try:
            while True:
                chunk = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
                if not chunk:
                    return True
                self.text += chunk.decode("utf-8", errors="replace")
        except (ConnectionError, ssl.SSLError):
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError):
            pass

    async def log_in(self, endpoint, username: str) -> None:
        """SASL PLAIN (inside TLS) and bind, by hand."""
        await self.send(header(endpoint.domain))
        await self.read_until(r"</stream:features>")
        token = base64.b64encode(f"\0{username}\0{PASSWORD}".encode()).decode()
        await self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
        await self.read_until(r"<success")
        self.text = ""
        await self.send(header(endpoint.domain))
        await self.read_until(r"</stream:features>")
        await self.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        await self.read_until(r"<jid>")
        self.text = ""


BOMB = (
    b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
    b"<!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>"
    b"<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]>"
)

BEFORE_LOGIN = {
    "xml-bomb": (lambda domain: BOMB + header(domain) + b"<message><body>&lol3;</body></message>", "restricted-xml"),
    "oversized-before-login": (lambda domain: header(domain) + b"<auth>" + b"A" * 9000 + b"</auth>", "policy-violation"),
    "invalid-utf8": (lambda domain: header(domain) + b"<message><body>\xff\xfe\xfd</body></message>", "unsupported-encoding"),
    "broken-xml": (lambda domain: header(domain) + b"<message><body></message>", "not-well-formed"),
}


@pytest.fixture(scope="module")
def bystander_user(new_user):
    return new_user()


@pytest.mark.parametrize("case", sorted(BEFORE_LOGIN))
def test_bad_input_before_login_closes_only_that_stream(endpoint, new_user, bystander_user, case):
    """An XML bomb, an oversized element, invalid UTF-8 or broken XML: a stream error, then the close."""
    payload, condition = BEFORE_LOGIN[case]
    peer = new_user()

    async def scenario():
        pids = {p: program_pid(p) for p in FRONT_ENDS}
        bystander, ok = await login(endpoint, bystander_user)
        other, ok2 = await login(endpoint, peer)
        assert ok and ok2
        raw = await RawStream.open(endpoint)
        try:
            await raw.send(payload(endpoint.domain))
            await raw.read_until(rf"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'")
            assert await raw.closed_by_server()
            # Everyone else is unharmed: the bystander still chats, no front end restarted.
            other.send_message(mto=bystander.boundjid.full, mbody=f"still here after {case}", mtype="chat")
            message = await asyncio.wait_for(bystander.received.get(), TIMEOUT)
            assert message["body"] == f"still here after {case}"
            assert {p: program_pid(p) for p in FRONT_ENDS} == pids
        finally:
            await raw.close()
            await bystander.close()
            await other.close()

    run(scenario())


def test_malformed_jid_gets_a_stanza_error_and_the_stream_stays(endpoint, new_user):
    """A message to 'a@@b' is answered jid-malformed; the same stream then sends a good message."""
    sender, recipient = new_user(), new_user()

    async def scenario():
        receiver, ok = await login(endpoint, recipient)
        assert ok
        raw = await RawStream.open(endpoint)
        try:
            await raw.log_in(endpoint, sender)
            await raw.send(b"<message to='a@@b' id='bad1' type='chat'><body>x</body></message>")
            await raw.read_until(r"<jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'")
            await raw.send(f"<message to='{receiver.boundjid.full}' type='chat'><body>after the error</body></message>".encode())
            message = await asyncio.wait_for(receiver.received.get(), TIMEOUT)
            assert message["body"] == "after the error"
        finally:
            await raw.close()
            await receiver.close()

    run(scenario())


def test_oversized_stanza_after_login_is_a_policy_violation(endpoint, new_user):
    """Past 256 KiB a stanza is refused while it is still arriving, with policy-violation."""
    sender = new_user()

    async def scenario():
        raw = await RawStream.open(endpoint)
        try:
            await raw.log_in(endpoint, sender)
            await raw.send(b"<message to='x@" + endpoint.domain.encode() + b"'><body>" + b"A" * (300 * 1024))
            await raw.read_until(r"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'")
            assert await raw.closed_by_server()
        finally:
            await raw.close()

    run(scenario())
