"""RoomService (XEP-0045) over the real stores: rooms in in-memory SQLite, occupants in a small in-memory Redis.

Two front ends share the stores; what one publishes to the other is pumped
by hand, so a test sees exactly which front end delivers what. The archive
is the real record-maker with a store whose durability the test controls.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, update
from twisted.internet import defer, task
from twisted.words.xish import domish

from hipchat_server.archive import MessageArchive, MessageIds
from hipchat_server.rooms import RoomService
from hipchat_server.routing import ClusterRouter
from hipchat_server.storage.recent import RecentMessages
from hipchat_server.storage.rooms import OccupantStore, RoomStore, may_change_affiliation
from hipchat_server.storage.schema import metadata, room_members, rooms, users
from hipchat_server.storage.spool import SpoolError
from hipchat_server.xmpp import muc
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.stanzas import stanza_from_xml
from tests.unit.fakes import FakeConnection
from tests.unit.test_routing import FakeDirectory, FakeOfflineStore

DOMAIN = "chat.example.com"
SERVICE = f"conference.{DOMAIN}"
ROOM = f"eng@{SERVICE}"
ADMIN_NS, OWNER_NS, USER_NS = muc.MUC_ADMIN_NS, muc.MUC_OWNER_NS, muc.MUC_USER_NS
DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(autouse=True)
def room_redis(redis_server):
    """Occupants live in a real (throwaway) Redis: its WATCH transactions and scripts are what runs."""
    redis_server.flushdb()
    World.redis = redis_server
    yield redis_server
    World.redis = None


class FakeRecent:
    """RecentMessages over a dict: each room's records newest first."""

    size = 75
    records_from = staticmethod(RecentMessages.records_from)

    def __init__(self):
        self.lists: dict[str, list[dict]] = {}

    def push(self, record):
        self.lists.setdefault(record["room"], []).insert(0, record)

    def room(self, room, limit):
        return self.lists.get(room, [])[:limit]

    def exists_room(self, room):
        return room in self.lists

    def restore_room(self, room, records):
        if room in self.lists:
            return 0
        self.lists[room] = list(records)
        return len(records)


class FakeArchive(MessageArchive):
    """The real record-maker; `store` pushes to the recent list and fires when the test says (``hold``) or fails (``broken``)."""

    def __init__(self, recent):
        self.ids, self.recent, self.stored = MessageIds(), recent, 0
        self.records: list[dict] = []
        self.hold, self.broken = False, False
        self.held: list[defer.Deferred] = []

    def store(self, record):
        if self.broken:
            return defer.fail(SpoolError("the spool's disk is full"))
        self.records.append(record)
        d = defer.Deferred()
        d.addCallback(lambda _: (self.recent.push(record), record)[1])
        if self.hold:
            self.held.append(d)
        else:
            d.callback(None)
        return d


class Gate:
    """run_blocking that runs at once, except the functions named in ``paused``, which wait for `release`."""

    def __init__(self):
        self.paused: set[str] = set()
        self.waiting: list[defer.Deferred] = []

    def __call__(self, fn, *args):
        if fn.__name__ in self.paused:
            d = defer.Deferred()
            self.waiting.append(d)
            return d.addCallback(lambda _: fn(*args))
        return defer.maybeDeferred(fn, *args)

    def release(self):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


class Front:
    """One front end: its router, sessions and rooms service over the world's shared stores."""

    def __init__(self, world, frontend_id, **options):
        self.world = world
        self.directory = FakeDirectory(frontend_id)
        self.directory.entries = world.entries  # one session directory for the cluster
        self.sessions = SessionTable()
        self.router = ClusterRouter(
            DOMAIN, self.sessions, self.directory, run_blocking=world.gate, offline_store=world.offline, clock=world.clock
        )
        self.service = RoomService(
            DOMAIN,
            "conference",
            world.rooms,
            world.occupants,
            self.router,
            recent=world.recent,
            archive=world.archive,
            rebuild_history=world.rebuild_history,
            **options,
        )
        self.service.register(self.router)

    def connect(self, username, resource="desk"):
        connection = FakeConnection(f"{username}@{DOMAIN}/{resource}")
        self.sessions.add(connection)
        self.router.session_started(connection)
        return connection

    def disconnect(self, connection):
        self.sessions.remove(connection)
        self.router.session_ended(connection)

    def send(self, connection, xml: str):
        stanza = stanza_from_xml(xml)
        stanza["from"] = connection.jid.full()
        d = self.router.stanza_from_client(connection, stanza)
        self.world.pump()
        return d


class World:
    redis = None  # set by the room_redis fixture

    def __init__(self, **options):
        engine = create_engine("sqlite://", future=True)
        metadata.create_all(engine, tables=[users, rooms, room_members])
        with engine.begin() as c:
            for name in ("alice", "bob", "carol", "dave", "eve"):
                c.execute(users.insert().values(name=name, mention_name=name, email=f"{name}@example.com", username=name, is_admin=name == "dave"))
        self.engine = engine
        self.rooms = RoomStore(engine, SERVICE)
        self.occupants = OccupantStore(self.redis)
        self.recent = FakeRecent()
        self.archive = FakeArchive(self.recent)
        self.offline = FakeOfflineStore(known=("alice", "bob", "carol", "dave", "eve"))
        self.clock = task.Clock()
        self.clock.advance(1_795_000_000)
        self.gate = Gate()
        self.entries: dict = {}
        self.indexed: dict[str, list[dict]] = {}
        self.fronts = {fid: Front(self, fid, **options) for fid in ("fe-1", "fe-2")}

    def rebuild_history(self, room, limit):
        return self.indexed.get(room, [])[:limit]

    def pump(self):
        """Deliver every item front ends published to each other, until none is left."""
        moved = True
        while moved:
            moved = False
            for front in self.fronts.values():
                while front.directory.published:
                    target, item = front.directory.published.pop(0)
                    self.fronts[target].router.deliver_published(json.dumps(item))
                    moved = True


def received(connection) -> list[domish.Element]:
    """What the client got since last asked, as elements."""
    return [stanza_from_xml(s) if isinstance(s, str) else s for s in connection.take()]


def join_xml(nick, room=ROOM, history="", extra=""):
    return f"<presence to='{room}/{nick}'>{extra}<x xmlns='{muc.MUC_NS}'>{history}</x></presence>"


def groupchat(body, room=ROOM, extra=""):
    return f"<message to='{room}' type='groupchat' id='g-{body}'><body>{body}</body>{extra}</message>"


def iq(kind, child, to=ROOM, ident="q1"):
    return f"<iq type='{kind}' id='{ident}' to='{to}'>{child}</iq>"


def status_codes(stanza) -> list[str]:
    x = next(stanza.elements(USER_NS, "x"), None)
    return [s["code"] for s in x.elements(USER_NS, "status")] if x is not None else []


def item_of(stanza) -> domish.Element:
    return next(next(stanza.elements(USER_NS, "x")).elements(USER_NS, "item"))


def condition(stanza) -> str:
    error = next(e for e in stanza.elements() if e.name == "error")
    return next(c.name for c in error.elements() if c.uri == "urn:ietf:params:xml:ns:xmpp-stanzas" and c.name != "text")


def bodies(stanzas) -> list[str]:
    return [str(next(s.elements("jabber:client", "body"))) for s in stanzas if s.name == "message" and muc.has_body(s)]


def make_room(world, owner="alice", members_only=False, **config):
    """``owner`` creates eng and makes it an instant room; returns the owner's connection (joined as its username)."""
    front = world.fronts["fe-1"]
    connection = front.connect(owner)
    front.send(connection, join_xml(owner))
    front.send(connection, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'/></query>"))
    if members_only or config:
        fields = {"muc#roomconfig_membersonly": "1" if members_only else "0"}
        fields.update(config)
        form = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
        front.send(connection, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'>{form}</x></query>"))
    connection.take()
    return connection


@pytest.fixture
def world():
    return World()


# Creating and joining.
def test_first_join_creates_a_locked_room_that_the_instant_form_opens(world):
    """201 and the owner's self-presence; others are refused until the owner accepts the instant room."""
    front = world.fronts["fe-1"]
    alice = front.connect("alice")
    front.send(alice, join_xml("al"))
    presence, subject = received(alice)
    assert presence["from"] == f"{ROOM}/al" and presence["to"] == alice.jid.full()
    assert status_codes(presence) == [muc.SELF, muc.NON_ANONYMOUS, muc.CREATED]
    assert (item_of(presence)["affiliation"], item_of(presence)["role"]) == ("owner", "moderator")
    assert muc.subject_of(subject) == ""
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    assert condition(received(bob)[0]) == "item-not-found"
    front.send(alice, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'/></query>"))
    assert received(alice)[0]["type"] == "result"
    front.send(bob, join_xml("bob"))
    assert [s.name for s in received(bob)] == ["presence", "presence", "message"]


def test_only_administrators_create_rooms_when_the_setting_says_so():
    """creators=admins: a user gets not-allowed, an administrator creates the room."""
    world = World(creators="admins")
    front = world.fronts["fe-1"]
    alice, dave = front.connect("alice"), front.connect("dave")
    front.send(alice, join_xml("al"))
    assert condition(received(alice)[0]) == "not-allowed"
    front.send(dave, join_xml("dave"))
    assert muc.CREATED in status_codes(received(dave)[0])


def test_joiner_gets_occupants_then_itself_then_history_then_subject_and_the_room_sees_it(world):
    """XEP-0045 7.2: presences of those present, own presence (110), history oldest first with delay, subject last."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    for n in range(3):
        front.send(alice, groupchat(f"m{n}"))
    front.send(alice, f"<message to='{ROOM}' type='groupchat'><subject>Ship it</subject></message>")
    alice.take()
    carol = front.connect("carol")
    front.send(carol, join_xml("carol"))
    got = received(carol)
    assert [s.name for s in got] == ["presence", "presence", "message", "message", "message", "message"]
    assert got[0]["from"] == f"{ROOM}/alice" and item_of(got[0])["jid"] == alice.jid.full()
    assert status_codes(got[1]) == [muc.SELF, muc.NON_ANONYMOUS]
    assert bodies(got[2:5]) == ["m0", "m1", "m2"]
    for message in got[2:5]:
        delay = next(message.elements("urn:xmpp:delay", "delay"))
        assert delay["from"] == ROOM and message["to"] == carol.jid.full()
        assert next(message.elements(muc.SID_NS, "stanza-id"))["by"] == ROOM
    assert muc.subject_of(got[5]) == "Ship it" and got[5]["from"] == f"{ROOM}/alice"
    [seen] = received(alice)
    assert seen["from"] == f"{ROOM}/carol" and status_codes(seen) == []


def test_history_request_limits_what_the_joiner_gets(world):
    """maxstanzas=1 gives only the newest message; maxchars=0 none."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    for n in range(3):
        front.send(alice, groupchat(f"m{n}"))
    bob, carol = front.connect("bob"), front.connect("carol")
    front.send(bob, join_xml("bob", history="<history maxstanzas='1'/>"))
    assert bodies(received(bob)) == ["m2"]
    front.send(carol, join_xml("carol", history="<history maxchars='0'/>"))
    assert bodies(received(carol)) == []


def test_a_message_stored_while_someone_joins_reaches_them_once_after_the_history(world):
    """A live message buffered during the join is not sent again when the history already held it."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    world.gate.paused.add("room")  # the joiner's history read waits
    front.send(bob, join_xml("bob"))
    front.send(alice, groupchat("during the join"))
    assert [s.name for s in received(bob)] == ["presence", "presence"]
    world.gate.paused.clear()
    world.gate.release()
    got = received(bob)
    assert bodies(got) == ["during the join"]  # as history (delayed), not twice
    assert next(got[0].elements("urn:xmpp:delay", "delay"), None) is not None
    assert muc.subject_of(got[-1]) == ""


def test_history_lost_by_redis_is_rebuilt_from_the_index(world):
    """No recent list in Redis: the newest records come from OpenSearch, refill the list, and are sent."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    front.send(alice, groupchat("indexed long ago"))
    world.indexed[ROOM] = world.recent.lists.pop(ROOM)
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    assert bodies(received(bob)) == ["indexed long ago"]
    assert world.recent.exists_room(ROOM)


def test_nicknames_are_unique_but_one_users_devices_may_share_theirs(world):
    """Another user taking a nickname in use gets 409 conflict; the same user's second device joins with it."""
    make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("alice"))
    [error] = received(bob)
    assert error["type"] == "error" and condition(error) == "conflict"
    assert next(error.elements(muc.MUC_NS, "x"), None) is not None  # the join's <x/> is echoed
    phone = front.connect("alice", "phone")
    front.send(phone, join_xml("alice"))
    assert status_codes(received(phone)[0])[:1] == [muc.SELF]


def test_nickname_change_announces_303_then_the_new_nickname(world):
    """XEP-0045 7.6: unavailable from the old nick with 303 and the new nick, then presence from the new nick."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    alice.take(), bob.take()
    front.send(bob, f"<presence to='{ROOM}/robert'/>")
    gone, back = received(alice)
    assert (gone["type"], gone["from"], status_codes(gone), item_of(gone)["nick"]) == ("unavailable", f"{ROOM}/bob", [muc.NICK_CHANGED], "robert")
    assert back["from"] == f"{ROOM}/robert" and back.getAttribute("type") is None
    assert [status_codes(s) for s in received(bob)] == [[muc.SELF, muc.NICK_CHANGED], [muc.SELF]]
    carol = front.connect("carol")
    front.send(carol, join_xml("bob"))  # the old nickname is free again
    assert [s["from"] for s in received(carol) if muc.SELF in status_codes(s)] == [f"{ROOM}/bob"]


# Private rooms, affiliations, kick and ban.
def test_private_room_refuses_non_members_until_the_owner_adds_them(world):
    """registration-required (407) for a non-member; after an admin item making them a member, the join works."""
    alice = make_room(world, members_only=True)
    front = world.fronts["fe-1"]
    eve = front.connect("eve")
    front.send(eve, join_xml("eve"))
    assert condition(received(eve)[0]) == "registration-required"
    front.send(alice, iq("set", f"<query xmlns='{ADMIN_NS}'><item jid='eve@{DOMAIN}' affiliation='member'/></query>"))
    assert received(alice)[0]["type"] == "result"
    front.send(eve, join_xml("eve"))
    assert item_of(received(eve)[1])["affiliation"] == "member"
    alice.take()
    front.send(alice, iq("get", f"<query xmlns='{ADMIN_NS}'><item affiliation='member'/></query>"))
    [answer] = received(alice)
    assert [i["jid"] for i in answer.firstChildElement().elements(ADMIN_NS, "item")] == [f"eve@{DOMAIN}"]


def test_a_moderator_kicks_and_the_kicked_session_leaves_the_room(world):
    """role=none: 307 to all (110 to the kicked), the kicked is no longer an occupant; non-moderators may not kick."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob, carol = front.connect("bob"), front.connect("carol")
    front.send(bob, join_xml("bob"))
    front.send(carol, join_xml("carol"))
    for c in (alice, bob, carol):
        c.take()
    front.send(carol, iq("set", f"<query xmlns='{ADMIN_NS}'><item nick='bob' role='none'/></query>"))
    assert condition(received(carol)[0]) == "forbidden"
    front.send(alice, iq("set", f"<query xmlns='{ADMIN_NS}'><item nick='bob' role='none'><reason>spam</reason></item></query>"))
    [kicked] = received(bob)
    assert kicked["type"] == "unavailable" and status_codes(kicked) == [muc.SELF, muc.KICKED]
    assert str(next(item_of(kicked).elements(USER_NS, "reason"))) == "spam"
    [seen] = received(carol)
    assert status_codes(seen) == [muc.KICKED]
    front.send(bob, groupchat("still here?"))
    assert condition(received(bob)[0]) == "not-acceptable"
    front.send(carol, iq("set", f"<query xmlns='{ADMIN_NS}'><item nick='alice' role='none'/></query>"))
    assert condition(received(carol)[0]) == "forbidden"


def test_owners_cannot_be_kicked_and_admins_cannot_ban_admins(world):
    """Roles of admins follow their affiliation (not-allowed); an admin may not touch another admin's affiliation."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    front.send(alice, iq("set", f"<query xmlns='{ADMIN_NS}'><item jid='bob@{DOMAIN}' affiliation='admin'/><item jid='carol@{DOMAIN}' affiliation='admin'/></query>"))
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    bob.take()
    front.send(bob, iq("set", f"<query xmlns='{ADMIN_NS}'><item nick='alice' role='none'/></query>"))
    assert condition(received(bob)[0]) == "not-allowed"
    front.send(bob, iq("set", f"<query xmlns='{ADMIN_NS}'><item jid='carol@{DOMAIN}' affiliation='outcast'/></query>"))
    assert condition(received(bob)[0]) == "not-allowed"
    assert world.rooms.affiliation("eng", "carol") == "admin"


def test_ban_removes_every_session_and_keeps_the_user_out(world):
    """affiliation=outcast: 301 to the banned user's sessions and the room; a later join is forbidden (403)."""
    alice = make_room(world)
    front, other = world.fronts["fe-1"], world.fronts["fe-2"]
    desk, phone = front.connect("bob"), other.connect("bob", "phone")
    front.send(desk, join_xml("bob"))
    other.send(phone, join_xml("bob"))
    for c in (alice, desk, phone):
        c.take()
    front.send(alice, iq("set", f"<query xmlns='{ADMIN_NS}'><item jid='bob@{DOMAIN}' affiliation='outcast'><reason>gone</reason></item></query>"))
    for session in (desk, phone):
        [banned] = [s for s in received(session) if s.name == "presence"]
        assert status_codes(banned) == [muc.SELF, muc.BANNED] and item_of(banned)["affiliation"] == "outcast"
    assert [status_codes(s) for s in received(alice) if s.name == "presence"] == [[muc.BANNED]]
    front.send(desk, join_xml("bob"))
    assert condition(received(desk)[0]) == "forbidden"
    assert world.occupants.occupants(ROOM).keys() == {alice.jid.full()}


def test_the_last_owner_cannot_be_removed(world):
    alice = make_room(world)
    front = world.fronts["fe-1"]
    front.send(alice, iq("set", f"<query xmlns='{ADMIN_NS}'><item jid='alice@{DOMAIN}' affiliation='member'/></query>"))
    assert condition(received(alice)[0]) == "conflict"


def test_admins_change_only_affiliations_below_their_own():
    """may_change_affiliation: owners anything; admins members, nobodies and outcasts only; others nothing."""
    assert may_change_affiliation("owner", "admin", "outcast")
    assert may_change_affiliation("admin", "member", "outcast") and may_change_affiliation("admin", "outcast", "none")
    assert not may_change_affiliation("admin", "admin", "none") and not may_change_affiliation("admin", "none", "admin")
    assert not may_change_affiliation("member", "none", "member")


# Messages.
def test_groupchat_is_reflected_to_every_occupant_only_once_durable(world):
    """Nothing is delivered (and the Deferred does not fire) until the archive's store fires; then all get it, the sender too."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    alice.take(), bob.take()
    world.archive.hold = True
    durable = front.send(alice, groupchat("ship it"))
    assert not durable.called and alice.delivered == [] and bob.delivered == []
    world.archive.held.pop().callback(None)
    assert durable.called
    for connection in (alice, bob):
        [message] = received(connection)
        assert (message["from"], message["to"], message["type"]) == (f"{ROOM}/alice", connection.jid.full(), "groupchat")
        assert bodies([message]) == ["ship it"]
    [record] = world.archive.records
    assert (record["room"], record["sender"], record["sender_name"], record["type"]) == (ROOM, f"alice@{DOMAIN}", "alice", "groupchat")
    assert "to=" not in record["xml"].split(">", 1)[0]


def test_a_message_the_archive_refuses_is_not_reflected_and_fails(world):
    """A spool failure: no occupant sees the message and the router's Deferred fails (the sender gets an error)."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    world.archive.broken = True
    durable = front.send(alice, groupchat("lost?"))
    failures = []
    durable.addErrback(failures.append)
    assert failures and failures[0].check(SpoolError)
    assert alice.delivered == []


def test_a_resend_with_the_same_origin_id_is_acknowledged_but_not_reflected_again(world):
    """The archive recognised a resend (same sender and origin-id): the Deferred fires, nobody sees it twice."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    alice.take()
    original_store = world.archive.store
    world.archive.store = lambda record: defer.succeed(dict(record, duplicate=True))
    durable = front.send(alice, groupchat("again"))
    world.archive.store = original_store
    assert durable.called and received(alice) == []


def test_a_durable_message_counts_as_sent_even_when_redis_fails_before_the_fan_out(world, monkeypatch):
    """After the store, a Redis failure must not make the sender resend what history already has."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    alice.take()
    failures = []

    def redis_down(room):
        raise ConnectionError("Redis is failing over")

    monkeypatch.setattr(world.occupants, "occupants", redis_down)
    durable = front.send(alice, groupchat("kept"))
    durable.addErrback(failures.append)
    assert durable.called and failures == [] and [r["body"] for r in world.archive.records] == ["kept"]


def test_chat_states_are_reflected_but_not_archived(world):
    alice = make_room(world)
    front = world.fronts["fe-1"]
    front.send(alice, f"<message to='{ROOM}' type='groupchat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert len(received(alice)) == 1 and world.archive.records == []


def test_messages_from_non_occupants_and_visitors_are_refused(world):
    """Not in the room: not-acceptable. A visitor of a moderated room: forbidden."""
    make_room(world, **{"muc#roomconfig_moderatedroom": "1"})
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, groupchat("hello?"))
    assert condition(received(bob)[0]) == "not-acceptable"
    front.send(bob, join_xml("bob"))
    assert item_of(received(bob)[1])["role"] == "visitor"
    front.send(bob, groupchat("may I?"))
    assert condition(received(bob)[0]) == "forbidden"


def test_fan_out_publishes_one_item_per_other_front_end(world):
    """Occupants on fe-2 get the message through one muc_deliver item naming them all; fe-1's are written directly."""
    alice = make_room(world)
    front, other = world.fronts["fe-1"], world.fronts["fe-2"]
    remote = [other.connect(name) for name in ("bob", "carol", "dave")]
    for connection in remote:
        other.send(connection, join_xml(connection.jid.localpart))
        connection.take()
    alice.take()
    stanza = stanza_from_xml(groupchat("to everyone"))
    stanza["from"] = alice.jid.full()
    front.router.stanza_from_client(alice, stanza)
    [(target, item)] = front.directory.published
    assert target == "fe-2" and item["kind"] == "muc_deliver" and sorted(item["to"]) == sorted(c.jid.full() for c in remote)
    world.pump()
    for connection in [alice, *remote]:
        assert bodies(received(connection)) == ["to everyone"]


def test_an_occupant_whose_session_moved_is_followed_to_its_new_front_end(world):
    """The session resumed on fe-2 (XEP-0198): fe-1 finds it in the directory, forwards, and updates the occupant."""
    alice = make_room(world)
    front, other = world.fronts["fe-1"], world.fronts["fe-2"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    front.sessions.remove(bob)  # handed over without ending
    other.sessions.add(bob)
    world.entries[f"bob@{DOMAIN}"]["desk"] = "fe-2"
    bob.take()
    front.send(alice, groupchat("where are you"))
    assert bodies(received(bob)) == ["where are you"]
    assert world.occupants.occupant(ROOM, bob.jid.full()).frontend == "fe-2"


def test_private_messages_go_to_the_occupants_real_jid(world):
    """type chat to room/nick reaches the occupant from room/sender-nick; an unknown nick is item-not-found."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    bob.take(), alice.take()
    front.send(alice, f"<message to='{ROOM}/bob' type='chat'><body>psst</body></message>")
    [message] = received(bob)
    assert (message["from"], message["to"], message["type"]) == (f"{ROOM}/alice", bob.jid.full(), "chat")
    front.send(alice, f"<message to='{ROOM}/nobody' type='chat'><body>psst</body></message>")
    assert condition(received(alice)[0]) == "item-not-found"


def test_subject_changes_follow_the_changesubject_setting(world):
    """With changesubject off, a participant may not change the subject; a moderator may, and everyone sees it."""
    alice = make_room(world, **{"muc#roomconfig_changesubject": "0"})
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    bob.take(), alice.take()
    front.send(bob, f"<message to='{ROOM}' type='groupchat'><subject>mine</subject></message>")
    assert condition(received(bob)[0]) == "forbidden"
    front.send(alice, f"<message to='{ROOM}' type='groupchat'><subject>Release day</subject></message>")
    assert muc.subject_of(received(bob)[0]) == "Release day"
    assert world.rooms.get("eng").subject == "Release day"


def test_invitation_to_a_private_room_makes_the_invitee_a_member(world):
    """A mediated invite reaches the invitee from the room (stored offline when away); the invitee may then join."""
    alice = make_room(world, members_only=True)
    front = world.fronts["fe-1"]
    front.send(alice, f"<message to='{ROOM}'><x xmlns='{USER_NS}'><invite to='eve@{DOMAIN}'><reason>join us</reason></invite></x></message>")
    assert alice.delivered == []
    [kept] = world.offline.kept["eve"]
    assert f"from='{ROOM}'" in kept.stanza and "join us" in kept.stanza
    assert world.rooms.affiliation("eng", "eve") == "member"
    eve = front.connect("eve")
    front.send(alice, f"<message to='{ROOM}'><x xmlns='{USER_NS}'><invite to='eve@{DOMAIN}'/></x></message>")
    [invite] = received(eve)
    assert next(next(invite.elements(USER_NS, "x")).elements(USER_NS, "invite"))["from"] == f"alice@{DOMAIN}"
    front.send(eve, f"<message to='{ROOM}'><x xmlns='{USER_NS}'><decline to='alice@{DOMAIN}'><reason>busy</reason></decline></x></message>")
    [decline] = received(alice)
    assert next(next(decline.elements(USER_NS, "x")).elements(USER_NS, "decline"))["from"] == f"eve@{DOMAIN}"
    front.send(eve, join_xml("eve"))
    assert status_codes(received(eve)[1])[:1] == [muc.SELF]


def test_invitations_follow_allowinvites(world):
    """With allowinvites off, a participant may not invite; invites to unknown users are item-not-found."""
    alice = make_room(world, **{"muc#roomconfig_allowinvites": "0"})
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    bob.take()
    front.send(bob, f"<message to='{ROOM}'><x xmlns='{USER_NS}'><invite to='carol@{DOMAIN}'/></x></message>")
    assert condition(received(bob)[0]) == "forbidden"
    front.send(alice, f"<message to='{ROOM}'><x xmlns='{USER_NS}'><invite to='nobody@{DOMAIN}'/></x></message>")
    assert condition(received(alice)[-1]) == "item-not-found"


# Configuration, discovery, sessions.
def test_configuration_form_is_for_owners_and_members_only_removes_outsiders(world):
    """Owners get the form; others forbidden; switching to members-only removes non-members (322) and says 104."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    bob.take(), alice.take()
    front.send(bob, iq("get", f"<query xmlns='{OWNER_NS}'/>"))
    assert condition(received(bob)[0]) == "forbidden"
    front.send(alice, iq("get", f"<query xmlns='{OWNER_NS}'/>"))
    form = next(received(alice)[0].firstChildElement().elements("jabber:x:data", "x"))
    assert form["type"] == "form"
    form_xml = "<field var='muc#roomconfig_membersonly'><value>1</value></field><field var='muc#roomconfig_roomname'><value>Engineering</value></field>"
    front.send(alice, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'>{form_xml}</x></query>"))
    got = received(bob)
    assert status_codes(got[0]) == [muc.CONFIG_CHANGED]
    assert got[1]["type"] == "unavailable" and status_codes(got[1]) == [muc.SELF, muc.MEMBERS_ONLY_NOW]
    assert world.rooms.get("eng").config.name == "Engineering"
    alice.take()
    front.send(alice, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_whois'><value>all</value></field></x></query>"))
    error = [s for s in received(alice) if s.name == "iq"][0]
    assert condition(error) == "not-acceptable"


def test_room_list_shows_open_rooms_and_private_rooms_to_their_members(world):
    """disco#items on the service; a private room's disco#info is item-not-found for non-members."""
    alice = make_room(world, members_only=True)
    front = world.fronts["fe-1"]
    front.send(alice, join_xml("alice", room=f"lobby@{SERVICE}"))
    front.send(alice, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'/></query>", to=f"lobby@{SERVICE}"))
    bob = front.connect("bob")
    items = "<query xmlns='http://jabber.org/protocol/disco#items'/>"
    for connection, expected in ((alice, [f"eng@{SERVICE}", f"lobby@{SERVICE}"]), (bob, [f"lobby@{SERVICE}"])):
        connection.take()
        front.send(connection, iq("get", items, to=SERVICE))
        [answer] = received(connection)
        assert sorted(i["jid"] for i in answer.firstChildElement().elements()) == expected
    info = f"<query xmlns='{DISCO_INFO}'/>"
    front.send(bob, iq("get", info))
    assert condition(received(bob)[0]) == "item-not-found"
    front.send(alice, iq("get", info))
    query = received(alice)[0].firstChildElement()
    features = {f["var"] for f in query.elements(DISCO_INFO, "feature")}
    assert {"muc_membersonly", "muc_persistent", "muc_nonanonymous", muc.MUC_NS, muc.MAM_NS} <= features
    assert next(query.elements(DISCO_INFO, "identity"))["name"] == "eng"


def test_the_server_lists_the_rooms_service_in_its_items(world):
    front = world.fronts["fe-1"]
    alice = front.connect("alice")
    front.send(alice, iq("get", "<query xmlns='http://jabber.org/protocol/disco#items'/>", to=DOMAIN))
    [answer] = received(alice)
    assert [i["jid"] for i in answer.firstChildElement().elements()] == [SERVICE]


def test_leaving_and_session_end_announce_unavailable(world):
    """An explicit leave gets 110 back; a session that ends leaves every room, and the others are told."""
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob, carol = front.connect("bob"), front.connect("carol")
    front.send(bob, join_xml("bob"))
    front.send(carol, join_xml("carol"))
    for c in (alice, bob, carol):
        c.take()
    front.send(carol, f"<presence to='{ROOM}/carol' type='unavailable'/>")
    assert status_codes(received(carol)[0]) == [muc.SELF]
    alice.take()
    front.disconnect(bob)
    world.pump()
    [gone] = received(alice)
    assert (gone["type"], gone["from"]) == ("unavailable", f"{ROOM}/bob")
    assert world.occupants.rooms_of(bob.jid.full()) == {}
    assert set(world.occupants.occupants(ROOM)) == {alice.jid.full()}


def test_a_restarted_front_end_clears_the_occupants_it_left_behind(world):
    """After a crash, the new process takes its predecessor's sessions out of their rooms and tells the others."""
    alice = make_room(world)
    other = world.fronts["fe-2"]
    bob = other.connect("bob")
    other.send(bob, join_xml("bob"))
    alice.take()
    restarted = Front(world, "fe-2")
    world.fronts["fe-2"] = restarted
    assert restarted.service.clear_frontend_occupants() == 1
    assert set(world.occupants.occupants(ROOM)) == {alice.jid.full()}
    world.clock.advance(0)  # the others are told once the reactor runs
    world.pump()
    [gone] = received(alice)
    assert (gone["type"], gone["from"]) == ("unavailable", f"{ROOM}/bob")


def test_readable_rooms_follow_privacy_and_affiliation(world):
    """Public rooms unless outcast; private rooms for owner, admin, member only."""
    make_room(world, members_only=True)
    front = world.fronts["fe-1"]
    dave = front.connect("dave")
    front.send(dave, join_xml("dave", room=f"open@{SERVICE}"))
    front.send(dave, iq("set", f"<query xmlns='{OWNER_NS}'><x xmlns='jabber:x:data' type='submit'/></query>", to=f"open@{SERVICE}"))
    front.send(dave, iq("set", f"<query xmlns='{ADMIN_NS}'><item jid='eve@{DOMAIN}' affiliation='outcast'/></query>", to=f"open@{SERVICE}"))
    assert world.rooms.readable_room_jids("alice") == {ROOM, f"open@{SERVICE}"}
    assert world.rooms.readable_room_jids("bob") == {f"open@{SERVICE}"}
    assert world.rooms.readable_room_jids("eve") == set()
    with world.engine.begin() as c:
        c.execute(update(rooms).where(rooms.c.jid_node == "eng").values(privacy="public"))
    assert world.rooms.readable_room_jids("bob") == {ROOM, f"open@{SERVICE}"}


def test_destroying_a_room_tells_the_occupants_and_deletes_it(world):
    alice = make_room(world)
    front = world.fronts["fe-1"]
    bob = front.connect("bob")
    front.send(bob, join_xml("bob"))
    bob.take()
    front.send(alice, iq("set", f"<query xmlns='{OWNER_NS}'><destroy><reason>done</reason></destroy></query>"))
    [gone] = received(bob)
    assert gone["type"] == "unavailable" and next(next(gone.elements(USER_NS, "x")).elements(USER_NS, "destroy"), None) is not None
    assert world.rooms.get("eng") is None and world.occupants.occupants(ROOM) == {}


def test_a_session_that_lives_on_elsewhere_keeps_its_rooms_when_its_old_stream_ends(world):
    """The same resource bound on another front end: the old stream's end does not take it out of the room."""
    make_room(world)
    front, other = world.fronts["fe-1"], world.fronts["fe-2"]
    old = front.connect("bob")
    front.send(old, join_xml("bob"))
    new = other.connect("bob")  # the directory now names fe-2 for bob/desk
    other.send(new, join_xml("bob"))
    front.sessions.remove(old)
    front.router.session_ended(old)
    world.pump()
    assert world.occupants.occupant(ROOM, new.jid.full()).frontend == "fe-2"


def test_occupants_of_a_front_end_that_is_gone_are_taken_out_of_the_room(world):
    """A publish no one received (the front end died): its sessions leave the room and the others are told."""
    alice = make_room(world)
    other = world.fronts["fe-2"]
    bob = other.connect("bob")
    other.send(bob, join_xml("bob"))
    alice.take()
    world.fronts["fe-1"].directory.subscribers = 0
    world.fronts["fe-1"].send(alice, groupchat("anyone there?"))
    assert set(world.occupants.occupants(ROOM)) == {alice.jid.full()}
    assert [s.getAttribute("type") for s in received(alice)] == ["groupchat", "unavailable"]


def test_clearing_a_front_end_leaves_sessions_that_moved_to_another_one(world):
    """OccupantStore.clear_frontend takes out only entries still naming the restarted front end."""
    make_room(world)
    other = world.fronts["fe-2"]
    bob, carol = other.connect("bob"), other.connect("carol")
    other.send(bob, join_xml("bob"))
    other.send(carol, join_xml("carol"))
    moved = world.occupants.occupant(ROOM, carol.jid.full())
    world.occupants.update(ROOM, [type(moved)(moved.full, moved.nick, moved.role, moved.affiliation, "fe-1", moved.presence)])
    gone = world.occupants.clear_frontend("fe-2")
    assert [d.occupant.full for d in gone] == [bob.jid.full()]
    assert carol.jid.full() in world.occupants.occupants(ROOM)
