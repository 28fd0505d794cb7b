"""ClusterRouter with an in-memory session directory: which front end gets each stanza, in what order, and
when a message counts as durable (delivered, confirmed by another front end, or stored offline)."""

from __future__ import annotations

import datetime
import json

from twisted.internet import defer, task
from twisted.words.xish import domish

from hipchat_server.routing import CONFIRM_TIMEOUT, ClusterRouter
from hipchat_server.storage.offline import OfflineMessage
from hipchat_server.storage.sessions import UserSessions
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.jid import parse_jid
from tests.unit.fakes import FakeConnection

DOMAIN = "chat.example.com"


class FakeDirectory:
    """SessionDirectory's interface over dicts; `published` records (front end, payload)."""

    def __init__(self, frontend_id="fe-1"):
        self.frontend_id = frontend_id
        self.entries: dict[str, dict[str, str]] = {}
        self.carbons: dict[str, set[str]] = {}
        self.priorities: dict[str, dict[str, int]] = {}
        self.published: list[tuple[str, dict]] = []
        self.subscribers = 1

    def add(self, bare, resource, frontend=None, available=True):
        self.entries.setdefault(bare, {})[resource] = frontend or self.frontend_id
        if available:
            self.priorities.setdefault(bare, {})[resource] = 0

    def remove(self, bare, resource):
        if self.entries.get(bare, {}).get(resource) == self.frontend_id:
            del self.entries[bare][resource]
            self.priorities.get(bare, {}).pop(resource, None)

    def resources(self, bare):
        return dict(self.entries.get(bare, {}))

    def lookup_many(self, bares):
        return [self.lookup(bare) for bare in bares]

    def lookup(self, bare):
        return UserSessions(
            frontends=dict(self.entries.get(bare, {})),
            carbons=set(self.carbons.get(bare, set())),
            priorities=dict(self.priorities.get(bare, {})),
        )

    def set_carbons(self, bare, resource, enabled):
        (self.carbons.setdefault(bare, set()).add if enabled else self.carbons.setdefault(bare, set()).discard)(resource)

    def publish(self, frontend, payload):
        self.published.append((frontend, json.loads(payload)))
        return self.subscribers


class FakeOfflineStore:
    def __init__(self, known=("alice", "bob", "carol")):
        self.known = set(known)
        self.kept: dict[str, list[OfflineMessage]] = {}
        self.next_id = 1

    def store(self, username, sender, stanza):
        if username not in self.known:
            return "no-such-user"
        self.kept.setdefault(username, []).append(
            OfflineMessage(self.next_id, sender, stanza, datetime.datetime(2026, 11, 26, 8, 0, 0))
        )
        self.next_id += 1
        return "stored"

    def pending(self, username, limit=1000):
        return list(self.kept.get(username, []))[:limit]

    def remove(self, ids):
        for username, items in self.kept.items():
            self.kept[username] = [m for m in items if m.id not in ids]
        return len(ids)


def synchronous(fn, *args):
    return defer.maybeDeferred(fn, *args)


def make_router(directory=None, run_blocking=synchronous):
    directory = directory or FakeDirectory()
    sessions = SessionTable()
    clock = task.Clock()
    router = ClusterRouter(DOMAIN, sessions, directory, run_blocking=run_blocking, offline_store=FakeOfflineStore(), clock=clock)
    return router, sessions, directory


def bind(router, sessions, jid, available=True):
    connection = FakeConnection(jid)
    sessions.add(connection)
    router.session_started(connection)
    if not available:
        router.directory.priorities.get(str(connection.jid.bare()), {}).pop(connection.jid.resourcepart, None)
    return connection


def chat(frm, to, body="hello", kind="chat"):
    message = domish.Element(("jabber:client", "message"))
    message["from"], message["to"], message["type"] = frm, to, kind
    message.addElement("body", content=body)
    return message


def fired(d) -> bool:
    return bool(d.called)


def error_condition(stanza) -> str:
    return stanza.firstChildElement().firstChildElement().name


def test_binding_and_unbinding_update_the_directory():
    """A bound session is recorded under this front end and forgotten when it ends."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    assert directory.resources(f"alice@{DOMAIN}") == {"laptop": "fe-1"}
    sessions.remove(alice)
    router.session_ended(alice)
    assert directory.resources(f"alice@{DOMAIN}") == {}


def test_message_to_another_front_end_is_durable_only_once_that_front_end_confirms():
    """A chat for a session held elsewhere is published there; its Deferred fires on the confirmation, not before."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "ship it"))
    [(frontend, item)] = directory.published
    assert (frontend, item["to"], item["origin"]) == ("fe-2", f"bob@{DOMAIN}/phone", "fe-1")
    assert "ship it" in item["xml"]
    assert not fired(durable)
    router.deliver_published(json.dumps({"kind": "delivered", "token": item["confirm"], "ok": True}))
    assert fired(durable)
    assert alice.delivered == []  # no error back to the sender
    assert router.offline_store.kept == {}


def test_unconfirmed_message_is_stored_offline_after_the_timeout():
    """A front end that took the publish but never confirmed (it crashed) leaves the message in offline storage."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "are you there"))
    router.clock.advance(CONFIRM_TIMEOUT + 0.1)
    assert fired(durable)
    [kept] = router.offline_store.kept["bob"]
    assert "are you there" in kept.stanza


def test_a_front_end_that_is_gone_counts_as_no_delivery():
    """When no subscriber takes the published stanza, the message is stored at once."""
    router, sessions, directory = make_router()
    directory.subscribers = 0
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-dead")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}"))
    assert fired(durable)
    assert len(router.offline_store.kept["bob"]) == 1
    assert alice.delivered == []


def test_bare_jid_message_reaches_every_available_resource_wherever_it_is():
    """A message to a bare JID goes to each available resource: local ones directly, remote ones by publishing;
    a resource that has not sent presence yet gets none (RFC 6121 8.5.2.1)."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob_desk = bind(router, sessions, f"bob@{DOMAIN}/desk")
    bob_new = bind(router, sessions, f"bob@{DOMAIN}/new", available=False)
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}"))
    assert len(bob_desk.delivered) == 1 and bob_new.delivered == []
    assert [item["to"] for _, item in directory.published] == [f"bob@{DOMAIN}/phone"]
    assert not fired(durable)  # the phone's front end has not confirmed yet
    router.deliver_published(json.dumps({"kind": "delivered", "token": directory.published[0][1]["confirm"], "ok": True}))
    assert fired(durable)


def test_message_to_a_full_jid_that_is_bound_goes_there_even_before_presence():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob = bind(router, sessions, f"bob@{DOMAIN}/desk", available=False)
    router.stanza_from_client(alice, chat(str(alice.jid), str(bob.jid)))
    assert len(bob.delivered) == 1


def test_message_to_a_user_with_no_available_resource_is_stored_then_delivered_at_presence():
    """Offline storage (XEP-0160): kept while the user is away, handed over with a delay stamp at initial presence."""
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "while you were out"))
    assert fired(durable) and alice.delivered == []
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone", available=False)
    assert bob.delivered == []
    router.initial_presence_sent(bob)
    [message] = bob.delivered
    assert message["to"] == str(bob.jid) and message["from"] == str(alice.jid)
    assert "while you were out" in message.toXml()
    delay = next(message.elements("urn:xmpp:delay", "delay"))
    assert delay["stamp"] == "2026-11-26T08:00:00.000Z"
    assert router.offline_store.kept["bob"] == []


def test_message_to_an_unknown_user_is_answered_service_unavailable():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, chat(str(alice.jid), f"nobody@{DOMAIN}"))
    [error] = alice.delivered
    assert error["type"] == "error" and error_condition(error) == "service-unavailable"


def test_groupchat_to_a_user_is_an_error_and_headline_to_an_offline_user_is_dropped():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", kind="groupchat"))
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", kind="headline"))
    [error] = alice.delivered
    assert error_condition(error) == "service-unavailable"
    assert router.offline_store.kept == {}


def test_message_to_another_domain_is_remote_server_not_found():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, chat(str(alice.jid), "bob@elsewhere.example.org"))
    assert error_condition(alice.delivered[0]) == "remote-server-not-found"


def test_each_senders_messages_keep_their_order_when_lookups_finish_out_of_order():
    """A second message waits for the first one's lookup, so they are published in the order sent."""
    pending: list[defer.Deferred] = []

    def deferred_lookups(fn, *args):
        if fn.__name__ in ("lookup", "lookup_many"):
            d = defer.Deferred()
            pending.append(d)
            return d.addCallback(lambda _: fn(*args))
        return defer.maybeDeferred(fn, *args)

    router, sessions, directory = make_router(run_blocking=deferred_lookups)
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "first"))
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "second"))
    assert len(pending) == 1  # the second lookup has not started yet
    pending[0].callback(None)
    pending[1].callback(None)
    bodies = ["first" in item["xml"] for _, item in directory.published]
    assert bodies == [True, False]


def test_published_stanza_is_written_to_the_local_session_and_confirmed_to_its_origin():
    """A stanza published for a session held here is handed over raw and confirmed; one for an ended session is
    confirmed as not delivered."""
    router, sessions, directory = make_router()
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone")
    xml = "<message><body>hi</body></message>"
    router.deliver_published(json.dumps({"kind": "deliver", "to": str(bob.jid), "xml": xml, "confirm": "fe-2#1", "origin": "fe-2"}))
    assert bob.delivered == [xml]
    router.deliver_published(json.dumps({"kind": "deliver", "to": f"bob@{DOMAIN}/gone", "xml": xml, "confirm": "fe-2#2", "origin": "fe-2"}))
    assert bob.delivered == [xml]
    assert [(fe, item["token"], item["ok"]) for fe, item in directory.published] == [("fe-2", "fe-2#1", True), ("fe-2", "fe-2#2", False)]


def carbons_iq(frm, action="enable"):
    iq = domish.Element(("jabber:client", "iq"))
    iq["from"], iq["type"], iq["id"] = frm, "set", "c1"
    iq.addElement(("urn:xmpp:carbons:2", action))
    return iq


def test_carbons_copy_sent_and_received_chats_to_the_users_other_devices():
    """XEP-0280: with carbons on, alice's tablet sees what her laptop sent and what bob sent to her phone."""
    router, sessions, directory = make_router()
    laptop = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    phone = bind(router, sessions, f"alice@{DOMAIN}/phone")
    tablet = bind(router, sessions, f"alice@{DOMAIN}/tablet")
    bob = bind(router, sessions, f"bob@{DOMAIN}/desk")
    router.stanza_from_client(tablet, carbons_iq(str(tablet.jid)))
    assert tablet.delivered[0]["type"] == "result"
    router.stanza_from_client(laptop, chat(str(laptop.jid), str(bob.jid), "from the laptop"))
    sent = tablet.delivered[1]
    assert sent.firstChildElement().name == "sent" and "from the laptop" in sent.toXml()
    assert phone.delivered == []  # no carbons for the phone: it did not ask
    router.stanza_from_client(bob, chat(str(bob.jid), str(phone.jid), "to the phone"))
    received = tablet.delivered[2]
    assert received.firstChildElement().name == "received" and received["from"] == f"alice@{DOMAIN}"
    assert len(phone.delivered) == 1 and laptop.delivered == []


def test_private_messages_are_not_copied():
    router, sessions, directory = make_router()
    laptop = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    tablet = bind(router, sessions, f"alice@{DOMAIN}/tablet")
    bob = bind(router, sessions, f"bob@{DOMAIN}/desk")
    router.stanza_from_client(tablet, carbons_iq(str(tablet.jid)))
    message = chat(str(laptop.jid), str(bob.jid), "just us")
    message.addElement(("urn:xmpp:carbons:2", "private"))
    router.stanza_from_client(laptop, message)
    assert len(tablet.delivered) == 1  # only the iq result
    assert len(bob.delivered) == 1


def test_unacknowledged_stanzas_of_an_ended_session_go_to_other_resources_or_offline():
    """XEP-0198: messages a client never acknowledged are re-routed when its session ends for good."""
    router, sessions, directory = make_router()
    phone = bind(router, sessions, f"bob@{DOMAIN}/phone")
    sessions.remove(phone)
    router.session_ended(phone)
    message = chat(f"alice@{DOMAIN}/laptop", str(phone.jid), "did you get this")
    router.undelivered(phone, [message.toXml()])
    [kept] = router.offline_store.kept["bob"]
    assert "did you get this" in kept.stanza
    desk = bind(router, sessions, f"bob@{DOMAIN}/desk")
    router.undelivered(phone, [chat(f"alice@{DOMAIN}/laptop", str(phone.jid), "second").toXml()])
    assert len(desk.delivered) == 1 and len(router.offline_store.kept["bob"]) == 1


def test_registered_iq_handler_answers_iqs_to_any_bare_jid_of_the_domain():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    calls = []
    router.register_iq_handler("vcard-temp", "vCard", lambda c, iq, target: calls.append((c, target)))
    iq = domish.Element(("jabber:client", "iq"))
    iq["from"], iq["to"], iq["type"], iq["id"] = str(alice.jid), f"bob@{DOMAIN}", "get", "v1"
    iq.addElement(("vcard-temp", "vCard"))
    router.stanza_from_client(alice, iq)
    assert calls == [(alice, parse_jid(f"bob@{DOMAIN}"))]


def test_roster_of_another_user_is_forbidden():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    iq = domish.Element(("jabber:client", "iq"))
    iq["from"], iq["to"], iq["type"], iq["id"] = str(alice.jid), f"bob@{DOMAIN}", "get", "r1"
    iq.addElement(("jabber:iq:roster", "query"))
    router.stanza_from_client(alice, iq)
    assert error_condition(alice.delivered[0]) == "forbidden"


def server_get(frm, namespace, to=DOMAIN):
    iq = domish.Element(("jabber:client", "iq"))
    iq["from"], iq["to"], iq["type"], iq["id"] = frm, to, "get", "q1"
    iq.addElement((namespace, "query"))
    return iq


def test_disco_info_names_the_server_and_only_features_it_answers():
    """disco#info to the server returns identity server/im and the features it really handles (XEP-0030)."""
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, server_get(str(alice.jid), "http://jabber.org/protocol/disco#info"))
    [reply] = alice.delivered
    assert (reply["type"], reply["id"], reply["to"]) == ("result", "q1", str(alice.jid))
    query = reply.firstChildElement()
    identity = next(query.elements(query.uri, "identity"))
    assert (identity["category"], identity["type"]) == ("server", "im")
    features = {f["var"] for f in query.elements(query.uri, "feature")}
    assert features == {
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "http://jabber.org/protocol/caps",
        "urn:xmpp:carbons:2",
        "msgoffline",
        "vcard-temp",
        "urn:xmpp:mam:2",
        "urn:xmpp:mam:2#extended",
        "urn:xmpp:fulltext:0",
    }


def test_version_query_returns_name_and_version_without_the_os():
    """jabber:iq:version to the server returns name and version and leaves out the operating system (XEP-0092)."""
    from hipchat_server import __version__

    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, server_get(str(alice.jid), "jabber:iq:version"))
    query = alice.delivered[0].firstChildElement()
    assert str(next(query.elements(query.uri, "name"))) == "HipChat Server"
    assert str(next(query.elements(query.uri, "version"))) == __version__
    assert [c.name for c in query.elements()] == ["name", "version"]


def test_unknown_server_query_is_service_unavailable():
    """A query namespace the server does not handle gets service-unavailable, not silence."""
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, server_get(str(alice.jid), "jabber:iq:private"))
    assert alice.delivered[0]["type"] == "error"


def test_disco_info_for_a_node_the_server_lacks_is_item_not_found():
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    iq = server_get(str(alice.jid), "http://jabber.org/protocol/disco#info")
    iq.firstChildElement()["node"] = "urn:example:nothing"
    router.stanza_from_client(alice, iq)
    assert error_condition(alice.delivered[0]) == "item-not-found"


def test_a_message_that_cannot_be_stored_is_never_counted_durable():
    """MariaDB down while storing offline: the Deferred fails (the stream answers internal-server-error), no ack."""
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")

    def broken(*args):
        raise ConnectionError("MariaDB is down")

    router.offline_store.store = broken
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "lost?"))
    failures = []
    durable.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ConnectionError)


def test_unconfirmed_message_whose_storage_is_full_is_answered_with_an_error():
    """No front end confirmed and offline storage refuses: the sender gets service-unavailable, not silence."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    router.offline_store.store = lambda *args: "full"
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "too many"))
    router.clock.advance(CONFIRM_TIMEOUT + 0.1)
    assert fired(durable)
    [error] = alice.delivered
    assert error_condition(error) == "service-unavailable"


def test_a_chat_message_is_archived_before_anyone_receives_it():
    """The recipient gets the message (with its stanza-id) only after the spool's fsync; the record names both."""
    from tests.unit.test_archive import make_archive

    router, sessions, _ = make_router()
    router.archive, spool, _ = make_archive()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "archived first"))
    assert bob.delivered == [] and not fired(durable)
    spool.commit()
    assert fired(durable)
    [record] = spool.committed
    assert (record["sender"], record["recipient"], record["body"]) == (f"alice@{DOMAIN}", f"bob@{DOMAIN}", "archived first")
    [received] = bob.delivered
    assert record["id"] in (received if isinstance(received, str) else received.toXml())


def test_a_message_the_spool_refuses_is_not_delivered_and_fails():
    """The spool could not make it durable: nobody receives it and the stream answers the sender with an error."""
    from hipchat_server.storage.spool import SpoolError
    from tests.unit.test_archive import make_archive

    router, sessions, _ = make_router()
    router.archive, spool, _ = make_archive()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "not durable"))
    failures = []
    durable.addErrback(failures.append)
    _, pending = spool.pending[0]
    pending.errback(SpoolError("disk error"))
    assert bob.delivered == [] and len(failures) == 1


def test_chat_states_without_a_body_are_not_archived():
    from tests.unit.test_archive import make_archive

    router, sessions, _ = make_router()
    router.archive, spool, _ = make_archive()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone")
    message = domish.Element(("jabber:client", "message"))
    message["from"], message["to"], message["type"] = str(alice.jid), f"bob@{DOMAIN}", "chat"
    message.addElement(("http://jabber.org/protocol/chatstates", "composing"))
    router.stanza_from_client(alice, message)
    assert spool.pending == [] and len(bob.delivered) == 1


def test_a_resent_message_is_acknowledged_but_not_delivered_twice():
    """Same origin-id from the same sender again (a resend after a lost stream): durable at once, nobody gets it twice."""
    from tests.unit.test_archive import make_archive

    router, sessions, _ = make_router()
    router.archive, spool, _ = make_archive()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone")
    durables = []
    for _ in range(2):
        message = chat(str(alice.jid), f"bob@{DOMAIN}", "only once")
        message.addElement(("urn:xmpp:sid:0", "origin-id"))["id"] = "resend-1"
        durables.append(router.stanza_from_client(alice, message))
        spool.commit()
    assert all(fired(d) for d in durables)
    assert len(spool.committed) == 1 and len(bob.delivered) == 1


def test_unacknowledged_archive_results_and_carbons_are_not_stored_offline():
    """Only messages someone wrote are kept for later: a MAM result or a carbon copy left unacknowledged is not."""
    router, sessions, _ = make_router()
    phone = bind(router, sessions, f"bob@{DOMAIN}/phone")
    sessions.remove(phone)
    router.session_ended(phone)
    result = (
        f"<message xmlns='jabber:client' from='room@conference.{DOMAIN}' to='{phone.jid}'>"
        "<result xmlns='urn:xmpp:mam:2' id='1'><forwarded xmlns='urn:xmpp:forward:0'>"
        "<message xmlns='jabber:client' type='groupchat'><body>old</body></message></forwarded></result></message>"
    )
    router.undelivered(phone, [result])
    assert router.offline_store.kept == {}


def test_disco_info_of_ones_own_account_names_its_archive():
    """Clients look for MAM on the account (XEP-0313 6): the user's bare JID answers account/registered with mam:2."""
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    iq = domish.Element(("jabber:client", "iq"))
    iq["type"], iq["id"], iq["to"], iq["from"] = "get", "d1", f"alice@{DOMAIN}", str(alice.jid)
    iq.addElement(("http://jabber.org/protocol/disco#info", "query"))
    router.stanza_from_client(alice, iq)
    [answer] = alice.delivered
    assert answer["type"] == "result"
    query = answer.firstChildElement()
    identity = next(c for c in query.elements() if c.name == "identity")
    assert (identity["category"], identity["type"]) == ("account", "registered")
    assert "urn:xmpp:mam:2" in {c["var"] for c in query.elements() if c.name == "feature"}


def test_an_archived_message_for_another_front_end_needs_no_confirmation():
    """Durable in the spool already: once another front end took the publish, the sender's Deferred fires."""
    from tests.unit.test_archive import make_archive

    router, sessions, directory = make_router()
    router.archive, spool, _ = make_archive()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "handed over"))
    assert directory.published == [] and not fired(durable)
    spool.commit()
    [(frontend, item)] = directory.published
    assert frontend == "fe-2" and "confirm" not in item and item["offline_from"] == str(alice.jid)
    assert spool.committed[0]["id"] in item["xml"]
    assert fired(durable)
    assert router.offline_store.kept == {}


def test_the_receiving_front_end_keeps_an_archived_message_offline_when_the_session_is_gone():
    """The other front end's session ended before the message came: that front end stores it for the next login."""
    router, _, _ = make_router()
    item = {"kind": "deliver", "to": f"bob@{DOMAIN}/phone", "xml": "<message to='bob@example.com'><body>late</body></message>", "offline_from": f"alice@{DOMAIN}/laptop"}
    router.deliver_published(json.dumps(item))
    [kept] = router.offline_store.kept["bob"]
    assert "late" in kept.stanza
    # Without offline_from (a stanza that is not archived) a gone session drops it, as before.
    router.deliver_published(json.dumps(dict(item, offline_from=None)))
    assert len(router.offline_store.kept["bob"]) == 1


def test_an_archived_message_no_front_end_took_is_stored_offline_by_the_sender_front_end():
    from tests.unit.test_archive import make_archive

    router, sessions, directory = make_router()
    router.archive, spool, _ = make_archive()
    directory.subscribers = 0
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-dead")
    durable = router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "nobody listening"))
    spool.commit()
    assert fired(durable)
    [kept] = router.offline_store.kept["bob"]
    assert "nobody listening" in kept.stanza
