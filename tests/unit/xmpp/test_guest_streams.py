"""A guest's WebSocket stream (`xmpp.guests` in `xmpp.websocket`): it logs in only where guests are let in, and keeps to its room."""

from __future__ import annotations

import base64

from twisted.internet import defer, task

from hipchat_server.guests import Guest, GuestRoom
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.c2s import ClientFactory
from hipchat_server.xmpp.local_routing import EchoLessRouter
from hipchat_server.xmpp.sasl import SaslServer
from hipchat_server.xmpp.websocket import MessageTransport, WebSocketClientConnection
from hipchat_server.xmpp.xml_parser import StreamLimits
from tests.unit.xmpp.test_c2s import FakeCredentials
from tests.unit.xmpp.test_websocket import DOMAIN, OPEN, SASL, FakeWebSocket

ROOM = f"lobby@conference.{DOMAIN}"
GUEST = Guest("guest-abc", "Ada (guest)", GuestRoom(1, ROOM, "Lobby"))


class UsersAndGuests(FakeCredentials):
    """The users' credentials as `users.UserCredentials` has them: a guest's password is right, but it is never active."""

    def is_active(self, username):
        return super().is_active(username) and not username.startswith("guest-")


class Guests:
    """`guests.Guests` stand-in: admits guest-abc once; records who left."""

    def __init__(self):
        self.logged_in = False
        self.left = []

    def login(self, username):
        if username != GUEST.username or self.logged_in:
            return None
        self.logged_in = True
        return GUEST

    def still_admitted(self, username):
        return True

    def leave(self, username):
        self.left.append(username)


def make_factory(clock) -> ClientFactory:
    credentials = UsersAndGuests()
    credentials.add("alice", "wonderland")
    credentials.add(GUEST.username, "one-session-pass")
    sessions = SessionTable()
    return ClientFactory(
        DOMAIN, SaslServer(credentials, DOMAIN, fake_salt_secret=b"s" * 32), EchoLessRouter(DOMAIN, sessions), None,
        direct_tls=True, sessions=sessions, limits=StreamLimits(rate_bytes_per_second=None), clock=clock,
        run_blocking=lambda f, *args: defer.maybeDeferred(f, *args),
    )


class Browser:
    def __init__(self, factory, clock, guests=None):
        self.clock, self.websocket = clock, FakeWebSocket()
        self.connection = WebSocketClientConnection(factory, guests=guests)
        self.connection.makeConnection(MessageTransport(self.websocket))

    def send(self, xml: str) -> list[str]:
        self.websocket.messages.clear()
        self.connection.message_received(xml.encode())
        self.clock.advance(0)
        return list(self.websocket.messages)

    def log_in(self, username: str, password: str) -> str:
        self.send(OPEN)
        data = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{data}</auth>")[0]

    def bind(self) -> None:
        self.send(OPEN)
        self.send("<iq xmlns='jabber:client' type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>")


def test_a_guest_logs_in_only_where_guests_are_let_in_and_only_once():
    """Without guests (every other login path) its right password gets account-disabled; with them it logs in, once."""
    clock = task.Clock()
    factory = make_factory(clock)
    assert "account-disabled" in Browser(factory, clock).log_in(GUEST.username, "one-session-pass")
    guests = Guests()
    assert "<success" in Browser(factory, clock, guests).log_in(GUEST.username, "one-session-pass")
    assert "<success" not in Browser(factory, clock, guests).log_in(GUEST.username, "one-session-pass")
    assert "<success" in Browser(factory, clock, guests).log_in("alice", "wonderland")  # users log in as before


def test_a_guest_stream_keeps_to_its_room_both_ways_and_its_end_ends_the_guest():
    clock, guests = task.Clock(), Guests()
    factory = make_factory(clock)
    guest, alice = Browser(factory, clock, guests), Browser(factory, clock, guests)
    guest.log_in(GUEST.username, "one-session-pass")
    guest.bind()
    alice.log_in("alice", "wonderland")
    alice.bind()
    assert alice.connection.guest is None and guest.connection.guest is not None

    refused = guest.send(f"<message xmlns='jabber:client' to='alice@{DOMAIN}/web' type='chat' id='m1'><body>hi</body></message>")
    assert len(refused) == 1 and "type='error'" in refused[0] and "forbidden" in refused[0]
    assert "<body>hi</body>" not in "".join(alice.websocket.messages)
    joined = guest.send(f"<presence xmlns='jabber:client' to='other@conference.{DOMAIN}/Ada' id='p1'/>")
    assert len(joined) == 1 and "type='error'" in joined[0] and "forbidden" in joined[0]

    guest.websocket.messages.clear()
    alice.send(f"<message xmlns='jabber:client' to='{GUEST.username}@{DOMAIN}/web' type='chat' id='m2'><body>psst</body></message>")
    assert guest.websocket.messages == []  # a one-to-one message never reaches a guest

    guest.connection.connectionLost(None)
    assert guests.left == [GUEST.username]
