"""vcard-temp (XEP-0054): who may read and set which vCard, what is stored, and the names filled in."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from twisted.internet import defer
from twisted.words.xish import domish

from hipchat_server.storage.schema import metadata, users
from hipchat_server.storage.vcards import VCardRecord, VCardStore
from hipchat_server.xmpp.jid import parse_jid
from hipchat_server.xmpp.vcard import VCARD_NS, VCardService, parse_vcard
from hipchat_server.xmpp.xml_parser import StreamLimits, StreamParser
from tests.unit.fakes import FakeConnection

DOMAIN = "chat.example.com"
ALICE = f"alice@{DOMAIN}/laptop"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


class FakeVCardStore:
    """VCardStore's interface over dicts: users by username, with their names and stored XML."""

    def __init__(self):
        self.users: dict[str, dict] = {}
        self.vcards: dict[str, str] = {}
        self.fail = False

    def add_user(self, username, name, mention_name):
        self.users[username] = {"name": name, "mention_name": mention_name}

    def get_by_username(self, username):
        if self.fail:
            raise RuntimeError("MariaDB is gone")
        user = self.users.get(username)
        return VCardRecord(user["name"], user["mention_name"], self.vcards.get(username)) if user else None

    def set_by_username(self, username, xml):
        if self.fail:
            raise RuntimeError("MariaDB is gone")
        if username not in self.users:
            return False
        self.vcards[username] = xml
        return True


class FakeRouter:
    def __init__(self):
        self.handlers = {}

    def register_iq_handler(self, namespace, name, handler):
        self.handlers[(namespace, name)] = handler


def synchronous(fn, *args):
    return defer.maybeDeferred(fn, *args)


def parse(xml: str) -> domish.Element:
    """A stanza as the client stream's parser builds it (so namespaces and prefixes are real)."""
    stanzas: list[domish.Element] = []
    parser = StreamParser(StreamLimits(), 256 * 1024, lambda attrs: None, stanzas.append, lambda: None)
    parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" xmlns:x='urn:example:x'>"
    )
    parser.feed(xml.encode("utf-8"))
    return stanzas[0]


def vcard_iq(kind: str, to: str | None = None, payload: str = "", sender: str = ALICE) -> domish.Element:
    to_attr = f" to='{to}'" if to else ""
    iq = parse(f"<iq type='{kind}' id='v1'{to_attr}><vCard xmlns='vcard-temp'>{payload}</vCard></iq>")
    iq["from"] = sender  # as the connection stamps it
    return iq


@pytest.fixture
def store():
    store = FakeVCardStore()
    store.add_user("alice", "Alice Liddell", "alice")
    store.add_user("bob", "Bob Builder", "bobby")
    return store


@pytest.fixture
def service(store):
    return VCardService(store, synchronous)


def ask(service, iq, sender=ALICE):
    """Hand ``iq`` to the service as the router would; return the one reply the sender got."""
    connection = FakeConnection(sender)
    to = iq.getAttribute("to")
    service.iq(connection, iq, parse_jid(to) if to else None)
    assert len(connection.delivered) == 1, "exactly one reply"
    return connection.delivered[0]


def condition(reply: domish.Element) -> str:
    assert reply["type"] == "error"
    error = next(reply.elements(None, "error"))
    return next(e.name for e in error.elements() if e.uri == STANZAS)


def vcard_of(reply: domish.Element) -> domish.Element:
    """The <vCard/> of a result, read back from the XML the client would receive."""
    assert reply["type"] == "result"
    iq = parse(reply.toXml(defaultUri="jabber:client"))
    [vcard] = list(iq.elements(VCARD_NS, "vCard"))
    return vcard


def fields(vcard: domish.Element) -> dict[str, str]:
    return {child.name: str(child) for child in vcard.elements()}


def test_register_hands_vcard_iqs_to_the_service(service):
    """register() asks the router for every iq whose child is <vCard xmlns='vcard-temp'/>."""
    router = FakeRouter()
    service.register(router)
    assert router.handlers == {(VCARD_NS, "vCard"): service.iq}


def test_set_then_get_own_vcard_without_to(service, store):
    """A user sets their vCard with no 'to' and gets it back with no 'to'."""
    reply = ask(service, vcard_iq("set", payload="<FN>Alice L.</FN><TITLE>Engineer</TITLE>"))
    assert reply["type"] == "result" and reply["id"] == "v1" and reply.firstChildElement() is None
    assert fields(vcard_of(ask(service, vcard_iq("get")))) == {"FN": "Alice L.", "TITLE": "Engineer"}


def test_get_to_own_bare_jid_is_the_own_vcard(service):
    """A get to one's own bare JID is the same as a get with no 'to'."""
    ask(service, vcard_iq("set", payload="<FN>Alice L.</FN>"))
    assert fields(vcard_of(ask(service, vcard_iq("get", to=f"alice@{DOMAIN}")))) == {"FN": "Alice L."}


def test_set_to_own_bare_jid_is_allowed(service, store):
    """A set addressed to one's own bare JID replaces one's own vCard."""
    assert ask(service, vcard_iq("set", to=f"alice@{DOMAIN}", payload="<FN>A</FN>"))["type"] == "result"
    assert "alice" in store.vcards


def test_get_another_users_vcard(service):
    """Another local user's vCard is answered by the server, from the stored copy."""
    ask(
        service,
        vcard_iq("set", payload="<FN>Bob the Builder</FN>", sender=f"bob@{DOMAIN}/phone"),
        f"bob@{DOMAIN}/phone",
    )
    reply = ask(service, vcard_iq("get", to=f"bob@{DOMAIN}"))
    assert reply["from"] == f"bob@{DOMAIN}" and reply["to"] == ALICE
    assert fields(vcard_of(reply)) == {"FN": "Bob the Builder"}


def test_a_user_without_a_vcard_gets_names_from_the_users_table(service):
    """With no vCard set, the answer is a vCard with FN from users.name and NICKNAME from mention_name."""
    vcard = vcard_of(ask(service, vcard_iq("get", to=f"bob@{DOMAIN}")))
    assert fields(vcard) == {"FN": "Bob Builder", "NICKNAME": "bobby"}


def test_an_unknown_user_is_item_not_found(service):
    """A get for a user who does not exist is answered item-not-found."""
    assert condition(ask(service, vcard_iq("get", to=f"nobody@{DOMAIN}"))) == "item-not-found"


def test_setting_another_users_vcard_is_forbidden(service, store):
    """A set to another user's bare JID is forbidden and changes nothing."""
    reply = ask(service, vcard_iq("set", to=f"bob@{DOMAIN}", payload="<FN>Hacked</FN>"))
    assert condition(reply) == "forbidden"
    assert reply["type"] == "error" and reply["id"] == "v1"
    assert "bob" not in store.vcards


def test_setting_the_servers_vcard_is_forbidden(service, store):
    """A set to the server's domain is forbidden too."""
    assert condition(ask(service, vcard_iq("set", to=DOMAIN, payload="<FN>Evil</FN>"))) == "forbidden"
    assert store.vcards == {}


def test_the_server_has_a_vcard_of_its_own(service):
    """A get to the domain answers the server's vCard (its name)."""
    assert fields(vcard_of(ask(service, vcard_iq("get", to=DOMAIN)))) == {"FN": "HipChat Server"}


def test_the_stored_vcard_is_reserialised_not_the_bytes_received(service, store):
    """What is stored is our serialisation of the parsed element: escapes kept, prefixes declared, quotes ours."""
    payload = '<FN>Tom &amp; Jerry &lt;3</FN><x:EXTRA a="1"/><DESC xml:lang="en">hi</DESC>'
    iq = vcard_iq("set", payload=payload)
    assert ask(service, iq)["type"] == "result"
    stored = store.vcards["alice"]
    assert stored == iq.firstChildElement().toXml()
    assert stored.startswith("<vCard xmlns='vcard-temp'>")
    assert "Tom &amp; Jerry &lt;3" in stored
    assert "xmlns:" in stored and "urn:example:x" in stored  # the stream-level prefix is declared in the vCard
    vcard = parse_vcard(stored)
    assert str(next(vcard.elements(VCARD_NS, "FN"))) == "Tom & Jerry <3"
    assert any(child.uri == "urn:example:x" and child.name == "EXTRA" for child in vcard.elements())


def test_a_vcard_over_the_size_limit_is_not_acceptable(store):
    """A vCard larger than the limit once serialised is refused with not-acceptable and not stored."""
    service = VCardService(store, synchronous, max_vcard_bytes=1024)
    photo = "<PHOTO><TYPE>image/png</TYPE><BINVAL>" + "A" * 2000 + "</BINVAL></PHOTO>"
    reply = ask(service, vcard_iq("set", payload=photo))
    assert condition(reply) == "not-acceptable"
    assert "1024" in str(next(next(reply.elements(None, "error")).elements(STANZAS, "text")))
    assert store.vcards == {}
    assert (
        ask(service, vcard_iq("set", payload="<PHOTO><BINVAL>" + "A" * 500 + "</BINVAL></PHOTO>"))["type"] == "result"
    )


def test_the_default_limit_takes_a_typical_avatar():
    """The default limit holds a vCard with a 30 KiB base64 photo (a 96x96 avatar) but not 100 KiB."""
    store = FakeVCardStore()
    store.add_user("alice", "Alice", "alice")
    service = VCardService(store, synchronous)
    assert (
        ask(service, vcard_iq("set", payload="<PHOTO><BINVAL>" + "A" * 30_000 + "</BINVAL></PHOTO>"))["type"]
        == "result"
    )
    big = "<PHOTO><BINVAL>" + "A" * 100_000 + "</BINVAL></PHOTO>"
    assert condition(ask(service, vcard_iq("set", payload=big))) == "not-acceptable"


def test_a_set_for_a_deleted_account_is_item_not_found(service, store):
    """When the sender's own account is gone (deleted during the session), the set stores nothing."""
    del store.users["alice"]
    assert condition(ask(service, vcard_iq("set", payload="<FN>x</FN>"))) == "item-not-found"
    assert store.vcards == {}


@pytest.mark.parametrize("kind", ["get", "set"])
def test_a_storage_failure_is_one_internal_server_error(service, store, kind):
    """When MariaDB fails, the sender still gets exactly one reply: internal-server-error."""
    store.fail = True
    assert (
        condition(ask(service, vcard_iq(kind, payload="<FN>x</FN>" if kind == "set" else "")))
        == "internal-server-error"
    )


def test_a_stored_vcard_that_does_not_parse_is_an_internal_server_error(service, store):
    """A row changed outside the server into broken XML never reaches a client's stream."""
    store.vcards["bob"] = "<vCard xmlns='vcard-temp'><FN>unclosed"
    assert condition(ask(service, vcard_iq("get", to=f"bob@{DOMAIN}"))) == "internal-server-error"


def test_the_reply_waits_for_the_store():
    """The answer is delivered when the blocking store call completes, and the returned Deferred fires then."""
    store = FakeVCardStore()
    store.add_user("alice", "Alice", "alice")
    pending: list[defer.Deferred] = []

    def later(fn, *args):
        d = defer.Deferred()
        pending.append(d)
        return d.addCallback(lambda _: fn(*args))

    service = VCardService(store, later)
    connection = FakeConnection(ALICE)
    done = service.iq(connection, vcard_iq("get"), None)
    assert connection.delivered == [] and not done.called
    pending[0].callback(None)
    assert done.called and len(connection.delivered) == 1


def test_vcard_store_on_sqlite_round_trip():
    """VCardStore: no vCard yet, set, replace, unknown and deleted users (SQLite stands in for MariaDB)."""
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            users.insert().values(name="Alice A", mention_name="alice", email="a@e.example", username="alice")
        )
        connection.execute(
            users.insert().values(name="Gone", mention_name="gone", email="g@e.example", username="gone")
        )
        connection.execute(users.update().where(users.c.username == "gone").values(deleted_at=users.c.created_at))
    vcards = VCardStore(engine)
    assert vcards.get_by_username("alice") == VCardRecord("Alice A", "alice", None)
    assert vcards.set_by_username("alice", "<vCard xmlns='vcard-temp'><FN>1</FN></vCard>")
    assert vcards.set_by_username("alice", "<vCard xmlns='vcard-temp'><FN>2</FN></vCard>")
    assert vcards.get_by_username("alice").vcard == "<vCard xmlns='vcard-temp'><FN>2</FN></vCard>"
    assert vcards.get_by_username("nobody") is None and not vcards.set_by_username("nobody", "<vCard/>")
    assert vcards.get_by_username("gone") is None and not vcards.set_by_username("gone", "<vCard/>")


def test_service_over_the_real_store():
    """The service and VCardStore together: bob reads what alice set; carol's names fill her empty vCard."""
    engine = create_engine("sqlite://", future=True)
    metadata.create_all(engine)
    with engine.begin() as connection:
        for username, name in (("alice", "Alice A"), ("bob", "Bob B"), ("carol", "Carol C")):
            connection.execute(
                users.insert().values(
                    name=name, mention_name=f"{username}-m", email=f"{username}@e.example", username=username
                )
            )
    service = VCardService(VCardStore(engine), synchronous)
    assert ask(service, vcard_iq("set", payload="<FN>Alice!</FN>"))["type"] == "result"
    bob = f"bob@{DOMAIN}/desk"
    assert fields(vcard_of(ask(service, vcard_iq("get", to=f"alice@{DOMAIN}", sender=bob), bob))) == {"FN": "Alice!"}
    carol = vcard_of(ask(service, vcard_iq("get", to=f"carol@{DOMAIN}", sender=bob), bob))
    assert fields(carol) == {"FN": "Carol C", "NICKNAME": "carol-m"}
