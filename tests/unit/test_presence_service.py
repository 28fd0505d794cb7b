"""PresenceService with in-memory stores and a fake router: rosters, subscriptions, broadcasts, probes."""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.xish import domish

from hipchat_server.presence import PresenceService
from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.roster import ROSTER_NS, RosterItem
from tests.unit.fakes import FakeConnection

DOMAIN = "chat.example.com"
ALICE, BOB, CAROL = (f"{u}@{DOMAIN}" for u in ("alice", "bob", "carol"))


class FakeRosterStore:
    """RosterStore's interface on a dict keyed by (username, contact JID)."""

    def __init__(self, users=("alice", "bob", "carol")):
        self.users = set(users)
        self.rows: dict[tuple[str, str], RosterItem] = {}

    def user_exists(self, username):
        return username in self.users

    def items(self, username):
        return [item for (owner, _), item in sorted(self.rows.items()) if owner == username]

    def get(self, username, contact):
        return self.rows.get((username, contact))

    def update(self, username, contact, change):
        assert username in self.users
        old = self.rows.get((username, contact))
        new = change(old)
        if new is None:
            self.rows.pop((username, contact), None)
        else:
            self.rows[(username, contact)] = new
        return old, new

    def delete(self, username, contact):
        return self.update(username, contact, lambda _: None)[0]


class FakePresenceStore:
    def __init__(self):
        self.presence: dict[str, dict[str, tuple[int, str]]] = {}
        self.interest: dict[str, set[str]] = {}

    def set_available(self, bare, resource, priority, xml):
        self.presence.setdefault(bare, {})[resource] = (priority, xml)

    def set_unavailable(self, bare, resource):
        self.presence.get(bare, {}).pop(resource, None)

    def available(self, bare):
        return dict(self.presence.get(bare, {}))

    def available_many(self, bares):
        return {b: self.available(b) for b in bares if self.available(b)}

    def set_roster_interest(self, bare, resource):
        self.interest.setdefault(bare, set()).add(resource)

    def roster_interested(self, bare):
        return set(self.interest.get(bare, set()))

    def remove_resource(self, bare, resource):
        self.set_unavailable(bare, resource)
        self.interest.get(bare, set()).discard(resource)


class FakeRouter:
    """The router's delivery contract over the sessions bound in this test."""

    def __init__(self):
        self.sessions: dict = {}
        self.announced: list = []

    def run_blocking(self, f, *args):
        return defer.maybeDeferred(f, *args)

    def deliver_to_full(self, full, stanza):
        connection = self.sessions.get(full)
        if connection is not None:
            connection.deliver(stanza)
        return defer.succeed(connection is not None)

    def deliver_to_bare(self, bare, stanza, resources=None):
        taken = 0
        for jid, connection in sorted(self.sessions.items(), key=lambda kv: kv[0].full()):
            if jid.bare() == bare and (resources is None or jid.resourcepart in resources):
                connection.deliver(stanza)
                taken += 1
        return defer.succeed(taken)

    def initial_presence_sent(self, connection):
        self.announced.append(connection)


class World:
    def __init__(self):
        self.rosters = FakeRosterStore()
        self.presences = FakePresenceStore()
        self.router = FakeRouter()
        self.service = PresenceService(parse_jid(DOMAIN), self.rosters, self.presences, self.router)

    def connect(self, full, roster=True, available=True):
        connection = FakeConnection(full)
        self.router.sessions[connection.jid] = connection
        if roster:
            self.roster_get(connection)
        if available:
            self.presence(connection)
        connection.take()
        return connection

    def disconnect(self, connection):
        del self.router.sessions[connection.jid]
        self.service.session_ended(connection)

    def presence(self, connection, kind=None, to=None, status=None, priority=None):
        element = domish.Element(("jabber:client", "presence"))
        element["from"] = connection.jid.full()
        if kind:
            element["type"] = kind
        if to:
            element["to"] = to
        if status:
            element.addElement("status", content=status)
        if priority is not None:
            element.addElement("priority", content=priority)
        self.service.presence_from_client(connection, element)

    def roster_get(self, connection):
        iq = domish.Element(("jabber:client", "iq"))
        iq["from"], iq["type"], iq["id"] = connection.jid.full(), "get", "get-1"
        iq.addElement((ROSTER_NS, "query"))
        self.service.roster_iq(connection, iq)

    def roster_set(self, connection, jid, name=None, groups=(), remove=False):
        iq = domish.Element(("jabber:client", "iq"))
        iq["from"], iq["type"], iq["id"] = connection.jid.full(), "set", "set-1"
        item = iq.addElement((ROSTER_NS, "query")).addElement("item")
        item["jid"] = jid
        if name:
            item["name"] = name
        if remove:
            item["subscription"] = "remove"
        for group in groups:
            item.addElement("group", content=group)
        self.service.roster_iq(connection, iq)

    def subscribe_both_ways(self, a, b):
        self.presence(a, "subscribe", b.jid.bare().full())
        self.presence(b, "subscribed", a.jid.bare().full())
        self.presence(b, "subscribe", a.jid.bare().full())
        self.presence(a, "subscribed", b.jid.bare().full())
        a.take(), b.take()


def kinds(stanzas):
    """(name, type or 'available', from) of each stanza."""
    return [(s.name, s.getAttribute("type") or "available", s.getAttribute("from")) for s in stanzas]


def pushes(stanzas):
    """(jid, subscription, ask) of each roster push."""
    found = []
    for s in stanzas:
        if s.name == "iq" and s.getAttribute("type") == "set":
            item = s.firstChildElement().firstChildElement()
            found.append((item["jid"], item["subscription"], item.getAttribute("ask")))
    return found


def presences(stanzas):
    return [(s.getAttribute("type") or "available", s["from"]) for s in stanzas if s.name == "presence"]


def error_condition(stanza):
    error = next(c for c in stanza.elements() if c.name == "error")
    return error.firstChildElement().name


def test_roster_get_returns_the_items_and_set_pushes_to_interested_resources():
    """A roster set answers result and pushes the item to every resource that asked for the roster (2.3.2)."""
    world = World()
    laptop = world.connect(f"{ALICE}/laptop")
    phone = world.connect(f"{ALICE}/phone")
    quiet = world.connect(f"{ALICE}/quiet", roster=False)
    laptop.take(), phone.take()  # each other's presence
    world.roster_set(laptop, BOB, name="Bob", groups=["Team"])
    reply, push = laptop.take()
    assert (reply["type"], reply["id"]) == ("result", "set-1")
    assert pushes([push]) == [(BOB, "none", None)]
    assert pushes(phone.take()) == [(BOB, "none", None)]
    assert quiet.take() == []
    world.roster_get(laptop)
    [result] = laptop.take()
    [item] = result.firstChildElement().elements()
    assert (item["jid"], item["name"], str(item.firstChildElement())) == (BOB, "Bob", "Team")


def test_roster_set_errors_are_answered():
    """A malformed roster set, or one about the user's own JID, is answered with an error and changes nothing."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    world.roster_set(alice, BOB, groups=["Team", "Team"])
    world.roster_set(alice, ALICE)
    world.roster_set(alice, CAROL, remove=True)
    assert [error_condition(s) for s in alice.take()] == ["bad-request", "not-allowed", "item-not-found"]
    assert world.rosters.rows == {}


def test_subscription_handshake_both_ways_makes_each_see_the_other():
    """subscribe/subscribed both ways: pushes on each side, and each receives the other's presence (3.1)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    bob = world.connect(f"{BOB}/phone")
    world.presence(alice, "subscribe", BOB)
    assert pushes(alice.take()) == [(BOB, "none", "subscribe")]
    assert kinds(bob.take()) == [("presence", "subscribe", ALICE)]  # stamped with the bare JID
    world.presence(bob, "subscribed", ALICE)
    assert pushes(bob.take()) == [(ALICE, "from", None)]
    got = alice.take()
    assert pushes(got) == [(BOB, "to", None)]
    assert presences(got) == [("subscribed", BOB), ("available", f"{BOB}/phone")]
    world.presence(bob, "subscribe", ALICE)
    world.presence(alice, "subscribed", BOB)
    assert world.rosters.get("alice", BOB).subscription == "both"
    assert world.rosters.get("bob", ALICE).subscription == "both"
    assert ("available", f"{ALICE}/laptop") in presences(bob.take())


def test_presence_changes_reach_subscribers_and_own_resources_only():
    """Subsequent presence goes to contacts with 'from'/'both' and the user's own resources, not to others (4.4)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    alice_phone = world.connect(f"{ALICE}/phone")
    bob = world.connect(f"{BOB}/phone")
    carol = world.connect(f"{CAROL}/desk")
    world.subscribe_both_ways(alice, bob)
    alice_phone.take()
    world.presence(alice, status="in a meeting")
    [to_bob] = bob.take()
    assert (to_bob["from"], str(to_bob.firstChildElement())) == (f"{ALICE}/laptop", "in a meeting")
    assert presences(alice_phone.take()) == [("available", f"{ALICE}/laptop")]
    assert presences(alice.take()) == [("available", f"{ALICE}/laptop")]  # self-presence
    assert carol.take() == []


def test_initial_presence_gets_contacts_presence_and_tells_the_router_once():
    """At initial presence the new session receives its contacts' current presence; the router learns it once (4.2)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    bob = world.connect(f"{BOB}/phone")
    world.subscribe_both_ways(alice, bob)
    bob_desk = world.connect(f"{BOB}/desk", available=False)
    world.presence(bob_desk, priority="5")
    got = presences(bob_desk.take())
    assert ("available", f"{ALICE}/laptop") in got and ("available", f"{BOB}/phone") in got
    assert ("available", f"{BOB}/desk") in presences(alice.take())
    assert world.presences.available(BOB)["desk"][0] == 5
    world.presence(bob_desk, status="again")
    assert world.router.announced.count(bob_desk) == 1


def test_session_end_broadcasts_unavailable_and_clears_redis():
    """A session that ends without unavailable: contacts get unavailable from it, its entry leaves Redis (4.5)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    bob = world.connect(f"{BOB}/phone")
    world.subscribe_both_ways(alice, bob)
    world.disconnect(alice)
    assert presences(bob.take()) == [("unavailable", f"{ALICE}/laptop")]
    assert world.presences.available(ALICE) == {}
    assert world.presences.roster_interested(ALICE) == set()


def test_directed_presence_reaches_a_non_contact_and_is_undone_at_the_end():
    """Directed presence to a non-contact is delivered; when the sender's session ends the target gets unavailable (4.6)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    carol = world.connect(f"{CAROL}/desk")
    world.presence(alice, to=f"{CAROL}/desk", status="hi")
    assert presences(carol.take()) == [("available", f"{ALICE}/laptop")]
    world.disconnect(alice)
    assert presences(carol.take()) == [("unavailable", f"{ALICE}/laptop")]


def test_request_to_an_offline_user_is_shown_at_the_next_login():
    """A subscribe to a user with no available resource is kept and delivered at their next initial presence (3.1.3)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    world.presence(alice, "subscribe", BOB)
    bob = world.connect(f"{BOB}/phone", available=False)
    world.roster_get(bob)
    [result] = bob.take()
    assert list(result.firstChildElement().elements()) == []  # a pending request is not a roster item
    world.presence(bob)
    assert ("subscribe", ALICE) in presences(bob.take())


def test_roster_remove_cancels_both_subscriptions():
    """Removing a 'both' item sends unsubscribe and unsubscribed: the contact ends at 'none', both see unavailable (2.5.2)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    bob = world.connect(f"{BOB}/phone")
    world.subscribe_both_ways(alice, bob)
    world.roster_set(alice, BOB, remove=True)
    got = alice.take()
    assert pushes(got) == [(BOB, "remove", None)]
    assert ("unavailable", f"{BOB}/phone") in presences(got)
    to_bob = bob.take()
    assert ("unsubscribe", ALICE) in presences(to_bob) and ("unsubscribed", ALICE) in presences(to_bob)
    assert ("unavailable", f"{ALICE}/laptop") in presences(to_bob)
    assert pushes(to_bob)[-1] == (ALICE, "none", None)
    assert world.rosters.get("alice", BOB) is None
    assert world.rosters.get("bob", ALICE).state.label == "None"


def test_subscribe_to_an_unknown_user_is_answered_unsubscribed():
    """A subscription request to a user who does not exist comes back 'unsubscribed' and the ask is cleared (8.5.1)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    world.presence(alice, "subscribe", f"nobody@{DOMAIN}")
    got = alice.take()
    assert pushes(got) == [(f"nobody@{DOMAIN}", "none", "subscribe"), (f"nobody@{DOMAIN}", "none", None)]
    assert ("unsubscribed", f"nobody@{DOMAIN}") in presences(got)


def test_probes_reveal_presence_only_to_subscribers():
    """A client's probe is answered for a contact it is subscribed to, and ignored otherwise (4.3)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    bob = world.connect(f"{BOB}/phone")
    carol = world.connect(f"{CAROL}/desk")
    world.subscribe_both_ways(alice, bob)
    world.presence(bob, "probe", ALICE)
    assert presences(bob.take()) == [("available", f"{ALICE}/laptop")]
    world.presence(carol, "probe", ALICE)
    assert carol.take() == []


def test_invalid_presence_and_remote_addresses_are_refused():
    """A bad priority is bad-request; presence to another domain is remote-server-not-found."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    world.presence(alice, priority="300")
    world.presence(alice, "subscribe", "bob@elsewhere.example.org")
    assert [error_condition(s) for s in alice.take()] == ["bad-request", "remote-server-not-found"]


def test_an_already_subscribed_contact_is_approved_automatically():
    """A subscribe from a contact that already has 'from' is not shown to the user: the server approves it
    and sends the user's presence again (A.3.1; the 'subscribed' itself changes nothing for 'both', A.3.3)."""
    world = World()
    alice = world.connect(f"{ALICE}/laptop")
    bob = world.connect(f"{BOB}/phone")
    world.subscribe_both_ways(alice, bob)
    world.presence(alice, "subscribe", BOB)
    assert "subscribe" not in [t for t, _ in presences(bob.take())]
    assert presences(alice.take()) == [("available", f"{BOB}/phone")]
