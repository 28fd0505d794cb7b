"""Guest access over real stores (SQLite): guest links, guest accounts, one login, the end of a guest; and a guest stream's rules."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine
from twisted.internet import defer, task
from twisted.words.xish import domish

from hipchat_server.guests import LOGIN_WINDOW, GuestRefused, Guests
from hipchat_server.rooms_api import RoomsApi
from hipchat_server.storage.guests import GuestStore
from hipchat_server.storage.rooms import RoomStore
from hipchat_server.storage.schema import guests, metadata, room_members, rooms, user_credentials, users
from hipchat_server.storage.users import UserStore
from hipchat_server.users import UserCredentials
from hipchat_server.users_api import Caller, Invalid
from hipchat_server.xmpp import guests as guest_streams
from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.stanzas import stanza_from_xml
from tests.unit.test_rooms_api import DOMAIN, SERVICE, Delivery, Poster, result_of


class Flags:
    def __init__(self):
        self.on = True
        self.asked = []

    def enabled(self, name, username=None):
        self.asked.append((name, username))
        return self.on


class Closer:
    def __init__(self):
        self.closed = []

    def close(self, username, reason):
        self.closed.append(username)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 11, 26, 12, 0, 0)

    def __call__(self):
        return self.now


@pytest.fixture
def world():
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine, tables=[users, user_credentials, rooms, room_members, guests])
    user_store = UserStore(engine)
    user_store.insert(username="owner", name="Owner", mention_name="owner", email=f"owner@{DOMAIN}")
    flags, closer, clock = Flags(), Closer(), Clock()
    guest_domain = Guests(GuestStore(engine), user_store, flags, closer, service=SERVICE, clock=clock)
    api = RoomsApi(
        RoomStore(engine, SERVICE), user_store, history=None, poster=Poster(), delivery=Delivery(), domain=DOMAIN, service=SERVICE,
        run_database=lambda f, *args: defer.maybeDeferred(f, *args), guests=guest_domain,
    )
    room = result_of(api.create(Caller("owner"), {"name": "Lobby"}))
    result_of(api.update(Caller("owner"), "Lobby", {"is_guest_accessible": True}))
    token = api.rooms.details("Lobby").guest_token
    return dict(api=api, guests=guest_domain, flags=flags, closer=closer, clock=clock, room=room, token=token, users=user_store)


def test_turning_guest_access_on_gives_a_new_link_each_time_and_off_removes_it(world):
    """On: a random token; off: none (the old link is dead); on again: another token. A private room takes no guests."""
    api, first = world["api"], world["token"]
    assert first and len(first) >= 32
    result_of(api.update(Caller("owner"), "Lobby", {"is_guest_accessible": False}))
    details = api.rooms.details("Lobby")
    assert not details.is_guest_accessible and details.guest_token is None
    with pytest.raises(GuestRefused):
        world["guests"].room(first)
    result_of(api.update(Caller("owner"), "Lobby", {"is_guest_accessible": True}))
    second = api.rooms.details("Lobby").guest_token
    assert second and second != first
    with pytest.raises(Invalid):
        result_of(api.update(Caller("owner"), "Lobby", {"privacy": "private", "is_guest_accessible": True}))
    hidden = result_of(api.create(Caller("owner"), {"name": "Hidden", "privacy": "private", "guest_access": True}))
    assert not hidden.is_guest_accessible and hidden.guest_token is None  # hypchat asks by default: not refused


def test_a_guest_is_a_marked_account_that_logs_in_once_and_only_over_the_guest_path(world):
    """The guest gets a guest-* account named "<name> (guest)"; the users' credentials refuse it (TCP, API, web login);
    the guest login admits it once, to its room."""
    g = world["guests"]
    admission = g.admit(world["token"], "  Ada   Lovelace ")
    guest = admission.guest
    assert guest.username.startswith("guest-") and guest.name == "Ada Lovelace (guest)"
    assert guest.room.jid == f"lobby@{SERVICE}"
    row = world["users"].get_by_username(guest.username)
    assert row["is_guest"] and row["name"] == "Ada Lovelace (guest)"
    credentials = UserCredentials(world["users"])
    assert credentials.check_password(guest.username, admission.password)
    assert not credentials.is_active(guest.username)
    assert world["flags"].asked[-1] == ("guest_access", "owner")  # the flag is the room owner's
    assert g.login(guest.username) == guest
    assert g.login(guest.username) is None  # one session per guest page
    assert g.login("owner") is None


def test_the_flag_off_refuses_the_link_and_ends_guests_at_their_next_check(world):
    g, flags = world["guests"], world["flags"]
    guest = g.admit(world["token"], "Grace").guest
    assert g.login(guest.username)
    assert g.still_admitted(guest.username)
    flags.on = False
    with pytest.raises(GuestRefused, match="turned off"):
        g.room(world["token"])
    with pytest.raises(GuestRefused):
        g.admit(world["token"], "Eve")
    assert not g.still_admitted(guest.username)


def test_turning_guest_access_off_ends_the_rooms_guests_at_once(world):
    """Their accounts end (disabled, marked deleted, rows kept for authorship) and their streams are told to close."""
    g = world["guests"]
    one, two = g.admit(world["token"], "One").guest, g.admit(world["token"], "Two").guest
    result_of(world["api"].update(Caller("owner"), "Lobby", {"is_guest_accessible": False}))
    assert sorted(world["closer"].closed) == sorted([one.username, two.username])
    row = world["users"].get_by_username(one.username)
    assert not row["is_active"] and row["deleted_at"] is not None
    assert not g.still_admitted(one.username) and g.login(two.username) is None


def test_a_guest_page_not_used_in_time_cannot_log_in_and_is_ended(world):
    g, clock = world["guests"], world["clock"]
    late = g.admit(world["token"], "Late").guest
    clock.now += LOGIN_WINDOW + timedelta(seconds=1)
    assert g.login(late.username) is None
    g.admit(world["token"], "Next")  # each new guest ends the unused ones
    assert world["users"].get_by_username(late.username)["deleted_at"] is not None


def test_leaving_ends_the_guest(world):
    g = world["guests"]
    guest = g.admit(world["token"], "Leaver").guest
    assert g.login(guest.username)
    g.leave(guest.username)
    assert not g.still_admitted(guest.username)
    assert not world["users"].get_by_username(guest.username)["is_active"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 51, "bell\x07"])
def test_a_guest_needs_a_usable_name(world, name):
    with pytest.raises(GuestRefused, match="name"):
        world["guests"].admit(world["token"], name)


# The guest stream's rules.
OWN = parse_jid(f"guest-abc@{DOMAIN}/web")
ROOM = parse_jid(f"lobby@{SERVICE}")


def stanza(xml: str) -> domish.Element:
    return stanza_from_xml(xml)


@pytest.mark.parametrize(
    "xml",
    [
        f"<presence to='lobby@{SERVICE}/Ada (guest)'/>",
        f"<presence to='lobby@{SERVICE}/Ada (guest)' type='unavailable'/>",
        "<presence/>",
        f"<message to='lobby@{SERVICE}' type='groupchat'><body>hi</body></message>",
        f"<iq type='get' id='1' to='lobby@{SERVICE}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        f"<iq type='get' id='2' to='{SERVICE}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        f"<iq type='get' id='3' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<iq type='get' id='4'><vCard xmlns='vcard-temp'/></iq>",
    ],
)
def test_a_guest_may_use_its_room_and_the_server(xml):
    assert guest_streams.refusal(stanza(xml), OWN, ROOM) is None


@pytest.mark.parametrize(
    "xml",
    [
        f"<presence to='other@{SERVICE}/Ada'/>",
        f"<presence to='owner@{DOMAIN}' type='subscribe'/>",
        "<presence type='subscribe'/>",
        f"<message to='owner@{DOMAIN}' type='chat'><body>hi</body></message>",
        f"<message to='lobby@{SERVICE}/Owner' type='chat'><body>psst</body></message>",
        f"<message to='lobby@{SERVICE}' type='normal'><x xmlns='http://jabber.org/protocol/muc#user'><invite to='x@{DOMAIN}'/></x></message>",
        f"<message to='other@{SERVICE}' type='groupchat'><body>hi</body></message>",
        f"<iq type='get' id='5' to='{SERVICE}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        f"<iq type='get' id='6' to='owner@{DOMAIN}'><vCard xmlns='vcard-temp'/></iq>",
        f"<iq type='get' id='7' to='lobby@{SERVICE}/Owner'><vCard xmlns='vcard-temp'/></iq>",
    ],
)
def test_a_guest_reaches_no_one_and_nothing_beyond_its_room(xml):
    assert guest_streams.refusal(stanza(xml), OWN, ROOM)


def test_a_guest_receives_its_room_but_no_one_to_one_message():
    assert guest_streams.may_receive(stanza(f"<message from='lobby@{SERVICE}/Owner' type='groupchat'><body>hi</body></message>"), OWN, ROOM)
    assert guest_streams.may_receive(stanza(f"<presence from='lobby@{SERVICE}/Owner'/>"), OWN, ROOM)
    assert not guest_streams.may_receive(stanza(f"<message from='lobby@{SERVICE}/Owner' type='chat'><body>psst</body></message>"), OWN, ROOM)
    assert not guest_streams.may_receive(stanza(f"<message from='owner@{DOMAIN}/pc' type='chat'><body>hi</body></message>"), OWN, ROOM)
    assert not guest_streams.may_receive(stanza(f"<presence from='owner@{DOMAIN}' type='subscribe'/>"), OWN, ROOM)


class Connection:
    def __init__(self):
        self.jid = OWN
        self.delivered = []
        self.errors = []

    def deliver(self, element):
        self.delivered.append(element.toXml())

    def send_stream_error(self, condition, text=None):
        self.errors.append((condition, text))


class GuestsSeen:
    def __init__(self):
        self.admitted = True
        self.left = []

    def still_admitted(self, username):
        return self.admitted

    def leave(self, username):
        self.left.append(username)


def test_a_guest_stream_answers_its_roster_empty_refuses_the_rest_and_ends_when_access_goes_off():
    """Roster get: an empty result; a 1:1 message: forbidden (answered from its addressee); guest access off: not-authorized at the next check;
    the stream's end ends the guest."""
    from hipchat_server.guests import Guest, GuestRoom

    connection, seen, clock = Connection(), GuestsSeen(), task.Clock()
    guest = Guest("guest-abc", "Ada (guest)", GuestRoom(1, ROOM.full(), "Lobby"))
    stream = guest_streams.GuestStream(connection, guest, seen, lambda f, *a: defer.maybeDeferred(f, *a), clock)
    stream.start()
    roster = stream.refused(stanza("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"))
    assert len(roster) == 1 and roster[0]["type"] == "result" and not list(roster[0].firstChildElement().elements())
    chat = stream.refused(stanza(f"<message to='owner@{DOMAIN}' type='chat' id='m1'><body>hi</body></message>"))
    assert chat[0]["type"] == "error" and chat[0]["from"] == f"owner@{DOMAIN}" and "forbidden" in chat[0].toXml()
    assert stream.refused(stanza("<presence type='subscribe'/>")) == []  # dropped, not answered
    assert stream.refused(stanza(f"<message to='lobby@{SERVICE}' type='groupchat'><body>hi</body></message>")) is None
    clock.advance(guest_streams.CHECK_SECONDS)
    assert connection.errors == []
    seen.admitted = False
    clock.advance(guest_streams.CHECK_SECONDS)
    assert connection.errors == [("not-authorized", guest_streams.ENDED_TEXT)]
    stream.stop()
    assert seen.left == ["guest-abc"]
    assert not clock.getDelayedCalls()


def test_guest_credentials_admit_users_as_before_and_guests_through_the_guest_login():
    class Users:
        def is_active(self, username):
            return username == "alice"

    admitted = {"guest-abc": "the guest"}
    credentials = guest_streams.GuestCredentials(Users(), admitted.get)
    assert credentials.is_active("alice") and credentials.admitted is None
    assert not credentials.is_active("guest-zzz")
    assert credentials.is_active("guest-abc") and credentials.admitted == "the guest"


# The guest page.
class PageGuests:
    """`guests.Guests` stand-in for the page: one working token."""

    def room(self, token):
        from hipchat_server.guests import GuestRoom

        if token != "good":
            raise GuestRefused("guest access is turned off on this server")
        return GuestRoom(1, f"lobby@{SERVICE}", "Lobby")

    def admit(self, token, name):
        from hipchat_server.guests import Admission, Guest, display_name

        return Admission(Guest("guest-0123456789ab", display_name(name), self.room(token)), "s3cret-pass")


def guest_page(tmp_path):
    from hipchat_server.web.guest_page import GuestPage

    (tmp_path / "converse.min.js").write_text("")
    return GuestPage(PageGuests(), DOMAIN, "conference", str(tmp_path), run_blocking=lambda f, *a: defer.maybeDeferred(f, *a))


def render(resource, method: str, token: bytes, form: bytes = b""):
    import io

    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([token])
    request.method = method.encode()
    request.content = io.BytesIO(form)
    body = (resource.render_GET if method == "GET" else resource.render_POST)(request)
    if not isinstance(body, bytes):
        body = b"".join(request.written)
    return request, body.decode()


def test_the_guest_page_asks_a_name_then_opens_the_room_only(tmp_path):
    """GET: the name form; POST: Converse set to log in as the guest and join its one room; never cached; a bad link: 403."""
    import json
    import re

    page = guest_page(tmp_path)
    request, body = render(page, "GET", b"good")
    assert request.responseCode in (None, 200) and "Join Lobby as a guest" in body and 'name="name"' in body
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    request, body = render(page, "POST", b"good", b"name=")
    assert request.responseCode == 400 and "type a name" in body
    request, body = render(page, "POST", b"good", b"name=Ada")
    settings = json.loads(re.search(r'id="hipchat-settings">(.*?)</script>', body, re.S).group(1))
    assert settings["jid"] == f"guest-0123456789ab@{DOMAIN}" and settings["password"] == "s3cret-pass" and settings["auto_login"]
    assert settings["auto_join_rooms"] == [{"jid": f"lobby@{SERVICE}", "nick": "Ada (guest)"}] and settings["singleton"]
    assert "hipchat-search-link" not in body  # no search page for a guest
    request, body = render(page, "GET", b"bad")
    assert request.responseCode == 403 and "turned off" in body
