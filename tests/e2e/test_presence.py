"""Rosters, subscriptions and presence (RFC 6121) through the installed appliance, with real slixmpp clients.

Each test makes its own users (`hipchat-appliance user add`), so no roster
state leaks from one test into another. slixmpp's automatic answers to
subscription requests are turned off: the tests answer them explicitly.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.e2e.xmpp_client import TIMEOUT, login, run


def roster_items(iq) -> dict[str, dict]:
    """The items of a roster result or push, by JID as text."""
    return {str(jid): values for jid, values in iq["roster"]["items"].items()}


class Watched:
    """A logged-in client and everything it received: presence stanzas and roster pushes, in order."""

    def __init__(self, client):
        self.client = client
        self.jid = client.boundjid
        self.stanzas: list = []
        self.changed = asyncio.Event()
        client.add_event_handler("presence", self._record)
        client.add_event_handler("roster_update", lambda iq: iq["type"] == "set" and self._record(iq))

    def _record(self, stanza) -> None:
        self.stanzas.append(stanza)
        self.changed.set()

    def mark(self) -> int:
        """A position: `expect` with ``since`` only looks at what arrived after it."""
        return len(self.stanzas)

    async def expect(self, predicate, what: str, since: int = 0):
        """The first stanza since ``since`` matching ``predicate``, waiting up to TIMEOUT for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            for stanza in self.stanzas[since:]:
                if predicate(stanza):
                    return stanza
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.jid} never received {what}; got {[str(s) for s in self.stanzas[since:]]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def presence(self, kind: str, sender, since: int = 0, **more):
        """A presence of ``kind`` ('available' for no type) from ``sender`` (a JID or text; bare matches any resource)."""
        sender = str(sender)

        def match(stanza):
            if stanza.name != "presence" or (stanza.xml.get("type") or "available") != kind:
                return False
            frm = str(stanza["from"])
            if frm != sender and (stanza["from"].bare != sender or "/" in sender):
                return False
            return all(stanza[key] == value for key, value in more.items())

        return await self.expect(match, f"presence {kind} from {sender} {more or ''}", since)

    async def push(self, contact: str, since: int = 0, **fields):
        """A roster push of ``contact`` whose item has ``fields`` (subscription, name, ...)."""

        def match(stanza):
            if stanza.name != "iq":
                return False
            item = roster_items(stanza).get(contact)
            return item is not None and all(item.get(k) == v for k, v in fields.items())

        return await self.expect(match, f"a roster push of {contact} with {fields}", since)

    async def close(self) -> None:
        await self.client.close()


async def online(endpoint, username: str, available: bool = True, resource: str | None = None) -> Watched:
    """Log in, fetch the roster (so roster pushes come), then send initial presence like a real client."""
    client, ok = await login(endpoint, username, available=False, resource=resource)
    assert ok, f"{username} could not log in"
    client.auto_authorize, client.auto_subscribe = None, False
    watched = Watched(client)
    await asyncio.wait_for(client.get_roster(), TIMEOUT)
    if available:
        client.send_presence()
    return watched


def bare(endpoint, username: str) -> str:
    return f"{username}@{endpoint.domain}"


async def subscribe_both_ways(endpoint, a: Watched, b: Watched) -> None:
    """a subscribes to b and b approves; then b subscribes to a and a approves. Each then sees the other available."""
    for asker, approver in ((a, b), (b, a)):
        since_approver, since_asker = approver.mark(), asker.mark()
        asker.client.send_presence(pto=approver.jid.bare, ptype="subscribe")
        await approver.presence("subscribe", asker.jid.bare, since_approver)
        approver.client.send_presence(pto=asker.jid.bare, ptype="subscribed")
        await asker.presence("available", approver.jid.full, since_asker)
    await a.push(b.jid.bare, subscription="both")
    await b.push(a.jid.bare, subscription="both")


def test_roster_add_is_pushed_and_returned(endpoint, new_user):
    """Adding a contact answers the set and pushes the new item, which the next roster get returns (RFC 6121 2.3)."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a = await online(endpoint, alice)
        try:
            await asyncio.wait_for(a.client.update_roster(bare(endpoint, bob), name="Bob", groups=["Team"]), TIMEOUT)
            await a.push(bare(endpoint, bob), subscription="none", name="Bob", groups=["Team"])
            roster = await asyncio.wait_for(a.client.get_roster(), TIMEOUT)
            item = roster_items(roster)[bare(endpoint, bob)]
            assert (item["name"], item["subscription"], item["groups"]) == ("Bob", "none", ["Team"])
        finally:
            await a.close()

    run(scenario())


def test_subscriptions_both_ways_then_status_changes_are_broadcast(endpoint, new_user):
    """After subscribe/subscribed both ways each sees the other available; a status change reaches the contact (3.1, 4.4)."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a, b = await online(endpoint, alice), await online(endpoint, bob)
        try:
            since = b.mark()
            a.client.send_presence(pto=bare(endpoint, bob), ptype="subscribe")
            await a.push(bare(endpoint, bob), subscription="none", ask="subscribe")
            await b.presence("subscribe", bare(endpoint, alice), since)
            # A repeated request while one is pending is not delivered again (RFC 6121 3.1.3), so go on by hand.
            since_a = a.mark()
            b.client.send_presence(pto=a.jid.bare, ptype="subscribed")
            await a.presence("available", b.jid.full, since_a)
            since_a, since_b = a.mark(), b.mark()
            b.client.send_presence(pto=a.jid.bare, ptype="subscribe")
            await a.presence("subscribe", b.jid.bare, since_a)
            a.client.send_presence(pto=b.jid.bare, ptype="subscribed")
            await b.presence("available", a.jid.full, since_b)
            await a.push(b.jid.bare, subscription="both")
            await b.push(a.jid.bare, subscription="both")
            since = b.mark()
            a.client.send_presence(pshow="away", pstatus="in a meeting")
            await b.presence("available", a.jid.full, since, show="away", status="in a meeting")
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_contact_logging_in_later_sees_who_is_online(endpoint, new_user):
    """A user who logs in after a contact receives the contact's current presence at initial presence (4.2, probes)."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a, b = await online(endpoint, alice), await online(endpoint, bob)
        try:
            await subscribe_both_ways(endpoint, a, b)
            a.client.send_presence(pstatus="still here")
            await b.presence("available", a.jid.full, status="still here")
        finally:
            await b.close()
        b = await online(endpoint, bob)
        try:
            await b.presence("available", a.jid.full, status="still here")
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_socket_closed_without_unavailable_is_broadcast_as_unavailable(endpoint, new_user):
    """When a client's connection drops without unavailable presence, its contacts get unavailable from it (4.5)."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a, b = await online(endpoint, alice), await online(endpoint, bob)
        try:
            await subscribe_both_ways(endpoint, a, b)
            gone, since = a.jid.full, b.mark()
            a.client.abort()  # the socket closes: no unavailable, no stream end
            await b.presence("unavailable", gone, since)
        finally:
            await b.close()

    run(scenario())


def test_directed_presence_to_a_non_contact_and_its_end(endpoint, new_user):
    """Directed presence reaches a user with no subscription; when the sender leaves, that user gets unavailable (4.6)."""
    alice, carol = new_user(), new_user()

    async def scenario():
        a, c = await online(endpoint, alice), await online(endpoint, carol)
        try:
            a.client.send_presence(pto=c.jid.full, pstatus="knock knock")
            await c.presence("available", a.jid.full, status="knock knock")
            gone, since = a.jid.full, c.mark()
            a.client.abort()
            await c.presence("unavailable", gone, since)
        finally:
            await c.close()

    run(scenario())


def test_roster_remove_unsubscribes_both_ways(endpoint, new_user):
    """Removing a 'both' contact sends unsubscribe and unsubscribed: the contact's item drops to 'none' (2.5.2)."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a, b = await online(endpoint, alice), await online(endpoint, bob)
        try:
            await subscribe_both_ways(endpoint, a, b)
            since_a, since_b = a.mark(), b.mark()
            await asyncio.wait_for(a.client.del_roster_item(bare(endpoint, bob)), TIMEOUT)
            await a.push(bare(endpoint, bob), since_a, subscription="remove")
            await b.presence("unsubscribe", bare(endpoint, alice), since_b)
            await b.presence("unsubscribed", bare(endpoint, alice), since_b)
            await b.push(bare(endpoint, alice), since_b, subscription="none")
            await b.presence("unavailable", a.jid.full, since_b)
            await a.presence("unavailable", b.jid.full, since_a)
            roster = await asyncio.wait_for(a.client.get_roster(), TIMEOUT)
            assert bare(endpoint, bob) not in roster_items(roster)
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_request_to_an_offline_user_is_shown_at_their_next_login(endpoint, new_user):
    """A subscription request made while the contact is offline reaches the contact at their next login (3.1.3)."""
    alice, bob = new_user(), new_user()

    async def scenario():
        a = await online(endpoint, alice)
        try:
            a.client.send_presence(pto=bare(endpoint, bob), ptype="subscribe", pstatus="it's alice")
            await a.push(bare(endpoint, bob), ask="subscribe")
            b = await online(endpoint, bob, resource=f"late-{uuid.uuid4().hex[:4]}")
            try:
                request = await b.presence("subscribe", bare(endpoint, alice))
                assert request["status"] == "it's alice"
                b.client.send_presence(pto=bare(endpoint, alice), ptype="subscribed")
                await a.push(bare(endpoint, bob), subscription="to")
                await a.presence("available", b.jid.full)
            finally:
                await b.close()
        finally:
            await a.close()

    run(scenario())


def test_presence_store_keeps_only_available_resources(config):
    """The Redis presence store holds each available resource's priority and XML, and forgets it when told."""
    from hipchat_server.storage.presence import PresenceStore
    from hipchat_server.storage.redis import primary_client

    store = PresenceStore(primary_client(config.redis))
    user = f"e2e-presence-{uuid.uuid4().hex[:6]}@{config.server.domain}"
    try:
        store.set_available(user, "laptop", 5, "<presence/>")
        store.set_available(user, "phone", -1, "<presence><show>away</show></presence>")
        store.set_roster_interest(user, "laptop")
        assert store.available(user) == {"laptop": (5, "<presence/>"), "phone": (-1, "<presence><show>away</show></presence>")}
        assert store.available_many([user, "nobody@" + config.server.domain]) == {user: store.available(user)}
        store.set_unavailable(user, "phone")
        assert list(store.available(user)) == ["laptop"]
        assert store.roster_interested(user) == {"laptop"}
        store.remove_resource(user, "laptop")
        assert store.available(user) == {} and store.roster_interested(user) == set()
    finally:
        store.remove_resource(user, "laptop")
        store.remove_resource(user, "phone")
