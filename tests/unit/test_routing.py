"""ClusterRouter with an in-memory session directory: which front end gets each stanza, and in what order."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.words.xish import domish

from hipchat_server.routing import ClusterRouter
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.jid import parse_jid

DOMAIN = "chat.example.com"


class FakeDirectory:
    """SessionDirectory's interface over dicts; `published` records (front end, payload)."""

    def __init__(self, frontend_id="fe-1"):
        self.frontend_id = frontend_id
        self.entries: dict[str, dict[str, str]] = {}
        self.published: list[tuple[str, dict]] = []
        self.subscribers = 1

    def add(self, bare, resource, frontend=None):
        self.entries.setdefault(bare, {})[resource] = frontend or self.frontend_id

    def remove(self, bare, resource):
        if self.entries.get(bare, {}).get(resource) == self.frontend_id:
            del self.entries[bare][resource]

    def resources(self, bare):
        return dict(self.entries.get(bare, {}))

    def publish(self, frontend, payload):
        self.published.append((frontend, json.loads(payload)))
        return self.subscribers


class FakeConnection:
    def __init__(self, jid):
        self.jid = parse_jid(jid)
        self.delivered: list[domish.Element] = []
        self.sent: list[str] = []

    def deliver(self, element):
        self.delivered.append(element)

    def send(self, data):
        self.sent.append(data)


def synchronous(fn, *args):
    return defer.maybeDeferred(fn, *args)


def make_router(directory=None):
    directory = directory or FakeDirectory()
    sessions = SessionTable()
    return ClusterRouter(DOMAIN, sessions, directory, run_blocking=synchronous), sessions, directory


def bind(router, sessions, jid):
    connection = FakeConnection(jid)
    sessions.add(connection)
    router.session_started(connection)
    return connection


def chat(frm, to, body="hello", kind="chat"):
    message = domish.Element(("jabber:client", "message"))
    message["from"], message["to"], message["type"] = frm, to, kind
    message.addElement("body", content=body)
    return message


def test_binding_and_unbinding_update_the_directory():
    """A bound session is recorded under this front end and forgotten when it ends."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    assert directory.resources(f"alice@{DOMAIN}") == {"laptop": "fe-1"}
    sessions.remove(alice)
    router.session_ended(alice)
    assert directory.resources(f"alice@{DOMAIN}") == {}


def test_message_to_a_session_on_another_front_end_is_published_there():
    """A chat to a user held by another front end is published on that front end's channel, intact."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "ship it"))
    assert [(fe, item["to"]) for fe, item in directory.published] == [("fe-2", f"bob@{DOMAIN}/phone")]
    assert "ship it" in directory.published[0][1]["xml"]
    assert alice.delivered == []  # no error back to the sender


def test_bare_jid_message_reaches_every_resource_wherever_it_is():
    """A message to a bare JID goes to each resource: local ones directly, remote ones by publishing."""
    router, sessions, directory = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    bob_desk = bind(router, sessions, f"bob@{DOMAIN}/desk")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}"))
    assert len(bob_desk.delivered) == 1
    assert [item["to"] for _, item in directory.published] == [f"bob@{DOMAIN}/phone"]


def test_message_to_a_user_with_no_session_is_answered_service_unavailable():
    """With nobody to receive a chat message, the sender gets service-unavailable (no offline storage yet)."""
    router, sessions, _ = make_router()
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    router.stanza_from_client(alice, chat(str(alice.jid), f"carol@{DOMAIN}"))
    [error] = alice.delivered
    assert error["type"] == "error"
    assert error.firstChildElement().firstChildElement().name == "service-unavailable"


def test_a_front_end_that_is_gone_counts_as_no_delivery():
    """When no subscriber takes the published stanza, the sender is told it was not delivered."""
    router, sessions, directory = make_router()
    directory.subscribers = 0
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-dead")
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}"))
    assert alice.delivered[0]["type"] == "error"


def test_each_senders_messages_keep_their_order_when_lookups_finish_out_of_order():
    """A second message waits for the first one's lookup, so they are published in the order sent."""
    pending: list[defer.Deferred] = []

    def deferred_lookups(fn, *args):
        if fn.__name__ == "resources":
            d = defer.Deferred()
            pending.append(d)
            return d.addCallback(lambda _: fn(*args))
        return defer.maybeDeferred(fn, *args)

    directory = FakeDirectory()
    sessions = SessionTable()
    router = ClusterRouter(DOMAIN, sessions, directory, run_blocking=deferred_lookups)
    alice = bind(router, sessions, f"alice@{DOMAIN}/laptop")
    directory.add(f"bob@{DOMAIN}", "phone", "fe-2")
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "first"))
    router.stanza_from_client(alice, chat(str(alice.jid), f"bob@{DOMAIN}", "second"))
    assert len(pending) == 1  # the second lookup has not started yet
    pending[0].callback(None)
    pending[1].callback(None)
    bodies = ["first" in item["xml"] for _, item in directory.published]
    assert bodies == [True, False]


def test_published_stanza_is_written_to_the_local_session_or_dropped():
    """A stanza published for a session held here is written raw to it; one for an ended session is dropped."""
    router, sessions, _ = make_router()
    bob = bind(router, sessions, f"bob@{DOMAIN}/phone")
    router.deliver_published(json.dumps({"to": f"bob@{DOMAIN}/phone", "xml": "<message><body>hi</body></message>"}))
    assert bob.sent == ["<message><body>hi</body></message>"]
    router.deliver_published(json.dumps({"to": f"bob@{DOMAIN}/gone", "xml": "<message/>"}))
    assert bob.sent == ["<message><body>hi</body></message>"]


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
