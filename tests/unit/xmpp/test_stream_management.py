"""Stream Management (XEP-0198): counters, acks that wait for durability, hibernation and resumption.

Client streams run on StringTransport and task.Clock against a fake router
whose Deferreds the tests fire by hand; two front ends are two factories whose
fake routers publish to each other through an in-memory bus.
"""

from __future__ import annotations

import json
import re

import pytest
from twisted.internet import defer, task
from twisted.words.xish import domish

from hipchat_server.xmpp import stream_management as sm
from hipchat_server.xmpp.c2s import ClientFactory
from tests.unit.xmpp.test_c2s import DOMAIN, HEADER, Client, make_client_factory

SM = "urn:xmpp:sm:3"


class Bus:
    """Pub/sub between fake front ends: items wait until `flush`, like messages in flight."""

    def __init__(self):
        self.routers: dict[str, FakeRouter] = {}
        self.in_flight: list = []
        self.directory: dict[str, str] = {}  # the session directory: full JID -> front end

    def flush(self) -> None:
        while self.in_flight:
            self.in_flight.pop(0)()


class FakeRouter:
    """A router whose stanza Deferreds the test fires; records the session lifecycle calls."""

    def __init__(self, frontend_id: str = "fe-a", bus: Bus | None = None):
        self.frontend_id = frontend_id
        self.bus = bus or Bus()
        self.bus.routers[frontend_id] = self
        self.handlers: dict = {}
        self.routed: list[tuple[object, domish.Element, defer.Deferred]] = []
        self.events: list[tuple[str, object]] = []
        self.undelivered_stanzas: list[str] = []
        self.deaf = False  # receives (counts as a subscriber) but never answers: a hung front end

    def session_started(self, connection):
        self.events.append(("started", connection))
        self.bus.directory[connection.jid.full()] = self.frontend_id

    def session_ended(self, connection):
        self.events.append(("ended", connection))
        if self.bus.directory.get(connection.jid.full()) == self.frontend_id:
            del self.bus.directory[connection.jid.full()]

    def session_moved(self, connection, frontend):
        self.events.append(("moved", frontend))

    def frontends_of_user(self, username):
        return sorted({f for full, f in self.bus.directory.items() if full.startswith(f"{username}@")})

    def undelivered(self, connection, stanzas):
        self.events.append(("undelivered", connection))
        self.undelivered_stanzas.extend(stanzas)

    def stanza_from_client(self, connection, element):
        d = defer.Deferred()
        self.routed.append((connection, element, d))
        return d

    def on_published(self, kind, handler):
        self.handlers[kind] = handler

    def publish_to_frontend(self, frontend_id, kind, payload):
        target = self.bus.routers.get(frontend_id)
        if target is None:
            return defer.succeed(0)
        item = json.loads(json.dumps(dict(payload, kind=kind)))
        if not target.deaf:
            self.bus.in_flight.append(lambda: target.handlers[kind](item))
        return defer.succeed(1)


def make_factory(clock, router: FakeRouter) -> ClientFactory:
    return make_client_factory(clock, router, sm_resume_timeout=300, sm_max_unacked=20)


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def router():
    return FakeRouter()


@pytest.fixture
def factory(clock, router):
    return make_factory(clock, router)


def message(n: int, to: str = f"alice@{DOMAIN}/phone") -> domish.Element:
    element = domish.Element(("jabber:client", "message"))
    element["to"], element["from"], element["type"], element["id"] = to, f"bob@{DOMAIN}/desk", "chat", f"m{n}"
    element.addElement("body", content=f"message {n}")
    return element


def bodies(xml: str) -> list[str]:
    return re.findall(r"<body>([^<]*)</body>", xml)


def enabled_client(
    factory, resume: bool = True, resource: str = "phone", user=("alice", "wonderland")
) -> tuple[Client, str | None]:
    client = Client(factory)
    client.login(*user)
    client.bind(resource)
    flag = " resume='true'" if resume else ""
    answer = client.send(f"<enable xmlns='{SM}'{flag}/>")
    assert answer.startswith("<enabled xmlns='urn:xmpp:sm:3'"), answer
    match = re.search(r"id='([^']+)'", answer)
    return client, match.group(1) if match else None


def ack_count(answer: str) -> int:
    return int(re.search(rf"<a xmlns='{SM}' h='(\d+)'/>", answer).group(1))


def drop(client: Client) -> None:
    """The client's connection dies without </stream> (a phone losing its network)."""
    client.connection.connectionLost(None)


# The protocol module.
def test_counters_wrap_at_two_to_the_32():
    """h counts modulo 2^32: acknowledging across the wrap drops exactly the stanzas sent."""
    state = sm.StreamState("x", 300)
    state.sent = state.acked = sm.MAX_SEQ - 1
    for n in range(3):
        state.queue(f"<message id='{n}'/>")
    assert state.sent == 2
    assert state.acknowledge(0) == 1 and list(state.unacked) == ["<message id='1'/>", "<message id='2'/>"]
    assert state.acknowledge(2) == 2 and not state.unacked


def test_acknowledging_more_than_was_sent_raises():
    """An h beyond the stanzas sent raises HandledCountTooHigh and drops nothing."""
    state = sm.StreamState()
    state.queue("<message/>")
    with pytest.raises(sm.HandledCountTooHigh):
        state.acknowledge(2)
    assert len(state.unacked) == 1


def test_inbound_stanzas_count_in_order_only():
    """A stanza that became durable is not counted before every earlier one is."""
    state = sm.StreamState()
    first, second, third = state.inbound(), state.inbound(), state.inbound()
    second()
    assert state.handled == 0
    first()
    assert state.handled == 2
    third()
    assert state.handled == 3 and state.in_flight == 0


def test_settled_waits_for_stanzas_in_flight_or_the_timeout(clock):
    """`settled` fires when nothing is in flight, or after its timeout with the count so far."""
    state = sm.StreamState()
    done = state.inbound()
    results = []
    state.settled(clock, 3.0).addCallback(results.append)
    assert results == []
    done()
    assert results == [1]
    state.inbound()
    state.settled(clock, 3.0).addCallback(results.append)
    clock.advance(3)
    assert results == [1, 1]


def test_ids_name_their_front_end_and_are_unguessable():
    """An SM id decodes to the front end that made it; two ids differ; junk decodes to None."""
    first, second = sm.new_id("host:xmpp-1"), sm.new_id("host:xmpp-1")
    assert first != second and sm.origin_of(first) == "host:xmpp-1"
    assert sm.origin_of("nonsense") is None and sm.origin_of("!!.x") is None


def test_elements_serialize_as_xep_0198_says():
    """enabled, resumed, failed, a and r have the XEP-0198 shape."""
    assert sm.enabled("i", 300).toXml() == f"<enabled xmlns='{SM}' id='i' resume='true' max='300'/>"
    assert sm.enabled(None, None).toXml() == f"<enabled xmlns='{SM}'/>"
    assert sm.resumed(5, "i").toXml() == f"<resumed xmlns='{SM}' h='5' previd='i'/>"
    assert sm.failed("item-not-found").toXml() == (
        f"<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    )
    assert sm.ack(7).toXml() == f"<a xmlns='{SM}' h='7'/>" and sm.request().toXml() == f"<r xmlns='{SM}'/>"


# Negotiation.
def test_stream_management_is_offered_after_authentication(factory):
    """The features after SASL offer <sm xmlns='urn:xmpp:sm:3'/> next to binding; before SASL it is not offered."""
    client = Client(factory)
    client.starttls()
    assert SM not in client.send(HEADER)
    client.auth_plain("alice", "wonderland")
    assert f"<sm xmlns='{SM}'/>" in client.send(HEADER)


def test_enable_before_bind_or_twice_is_an_unexpected_request(factory):
    """<enable/> before binding, or a second time, is answered with <failed><unexpected-request/>."""
    client = Client(factory)
    client.login()
    assert "<unexpected-request" in client.send(f"<enable xmlns='{SM}'/>")
    client.bind("phone")
    assert client.send(f"<enable xmlns='{SM}'/>") == f"<enabled xmlns='{SM}'/>"
    assert "<unexpected-request" in client.send(f"<enable xmlns='{SM}'/>")
    assert not client.closed


def test_enable_with_resume_gets_an_id_and_the_resume_timeout(factory):
    """<enable resume='true'/> is answered with an id, resume='true' and max = the resume timeout."""
    client, sm_id = enabled_client(factory)
    assert sm.origin_of(sm_id) == "fe-a"
    assert client.connection.sm.max_seconds == 300


def test_ack_request_before_enable_is_an_unexpected_request(factory):
    """<r/> on a stream without Stream Management gets <failed><unexpected-request/>."""
    client = Client(factory)
    client.login()
    client.bind("phone")
    assert "<unexpected-request" in client.send(f"<r xmlns='{SM}'/>")


# Acks wait for durability.
def test_stanzas_are_acked_only_once_durable_and_in_order(factory, router):
    """<r/> is answered once every stanza sent before it is durable: never counting one before an earlier one."""
    client, _ = enabled_client(factory, resume=False)
    for n in range(3):
        client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m{n}'><body>{n}</body></message>")
    durable = [d for _, _, d in router.routed]
    assert client.send(f"<r xmlns='{SM}'/>") == ""  # nothing durable yet: the answer waits
    client.transport.clear()
    durable[1].callback(None)
    durable[0].callback(None)
    assert client.transport.value() == b""  # stanza 2 is still in flight
    durable[2].callback(None)
    assert ack_count(client.transport.value().decode()) == 3
    assert ack_count(client.send(f"<r xmlns='{SM}'/>")) == 3  # nothing in flight: answered at once


def test_each_ack_request_is_answered_with_what_preceded_it(factory, router):
    """Two <r/> with stanzas between them get two answers, each counting what was sent before it."""
    client, _ = enabled_client(factory, resume=False)
    client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m0'><body>0</body></message>")
    client.send(f"<r xmlns='{SM}'/>")
    client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m1'><body>1</body></message>")
    client.send(f"<r xmlns='{SM}'/>")
    client.transport.clear()
    first, second = [d for _, _, d in router.routed]
    first.callback(None)
    assert ack_count(client.transport.value().decode()) == 1
    client.transport.clear()
    second.callback(None)
    assert ack_count(client.transport.value().decode()) == 2


def test_refused_stanzas_count_as_handled(factory, router):
    """A stanza answered with an error by the stream itself is handled at once (the error is the answer)."""
    client, _ = enabled_client(factory, resume=False)
    client.send("<message to='a@@b' id='bad'><body>x</body></message>")
    assert ack_count(client.send(f"<r xmlns='{SM}'/>")) == 1


def test_a_routing_failure_is_answered_and_counted(factory, router):
    """When the router's Deferred fails, the stream answers internal-server-error and counts the stanza."""
    client, _ = enabled_client(factory, resume=False)
    client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m1'><body>x</body></message>")
    client.transport.clear()
    router.routed[0][2].errback(RuntimeError("boom"))
    assert "<internal-server-error" in client.transport.value().decode()
    assert ack_count(client.send(f"<r xmlns='{SM}'/>")) == 1


# Outbound queue.
def test_delivered_stanzas_wait_for_the_clients_ack(factory, clock):
    """Stanzas sent under SM stay queued; the server asks <r/>; the client's <a h/> drops what it acknowledges."""
    client, _ = enabled_client(factory, resume=False)
    client.transport.clear()
    for n in range(3):
        client.connection.deliver(message(n))
    assert bodies(client.transport.value().decode()) == ["message 0", "message 1", "message 2"]
    client.transport.clear()
    clock.advance(1)
    assert client.transport.value().decode() == f"<r xmlns='{SM}'/>"
    client.send(f"<a xmlns='{SM}' h='2'/>")
    assert list(client.connection.sm.unacked) == [client.connection.stanza_text(message(2))]


def test_a_queue_filling_fast_gets_an_ack_request_at_once(factory, clock):
    """At half of sm_max_unacked the server asks <r/> right away (a client paging MAM fast would hit the cap first)."""
    client, _ = enabled_client(factory, resume=False)
    client.transport.clear()
    for n in range(9):
        client.connection.deliver(message(n))
    assert f"<r xmlns='{SM}'/>" not in client.transport.value().decode()  # 9 of 20: the usual half-second wait
    client.connection.deliver(message(9))
    assert client.transport.value().decode().endswith(f"<r xmlns='{SM}'/>")
    client.send(f"<a xmlns='{SM}' h='10'/>")
    for n in range(10, 25):  # acknowledged as it goes, the client never reaches the cap
        client.connection.deliver(message(n))
        if client.transport.value().decode().endswith(f"<r xmlns='{SM}'/>"):
            client.send(f"<a xmlns='{SM}' h='{n + 1}'/>")
    assert not client.closed


def test_an_ack_beyond_what_was_sent_closes_the_stream(factory):
    """<a h/> above the count of stanzas sent is an undefined-condition stream error with handled-count-too-high."""
    client, _ = enabled_client(factory, resume=False)
    client.connection.deliver(message(1))
    answer = client.send(f"<a xmlns='{SM}' h='5'/>")
    assert "<undefined-condition" in answer and "handled-count-too-high" in answer and client.closed


def test_a_client_that_never_acks_is_closed_and_its_queue_rerouted(factory, router):
    """Past sm_max_unacked the stream closes with policy-violation and the queue goes to router.undelivered."""
    client, _ = enabled_client(factory, resume=False)
    for n in range(21):
        client.connection.deliver(message(n))
    assert client.stream_error() == "policy-violation"
    drop(client)
    assert len(router.undelivered_stanzas) == 21


# Hibernation and resumption on one front end.
def test_a_dropped_session_resumes_with_every_missed_stanza_once(factory, router, clock):
    """Dropped without </stream>, the session hibernates and queues; <resume/> gets <resumed/> and exactly the unacked stanzas."""
    client, sm_id = enabled_client(factory)
    old = client.connection
    for n in range(3):
        old.deliver(message(n))
    client.send(f"<a xmlns='{SM}' h='1'/>")
    drop(client)
    assert old.hibernating and factory.sessions.get(old.jid) is old
    old.deliver(message(3))  # while nobody is connected
    assert ("ended", old) not in router.events

    again = Client(factory)
    again.login()
    answer = again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='3'/>")
    assert answer.startswith(f"<resumed xmlns='{SM}' h='0' previd='{sm_id}'/>")
    assert bodies(answer) == ["message 3"]  # 0 to 2 reached the client (h=3), only 0 was acknowledged
    new = again.connection
    assert new.jid == old.jid and factory.sessions.get(old.jid) is new and ("started", new) in router.events
    old.deliver(message(4))  # a stale route to the old stream reaches the new one
    assert bodies(again.transport.value().decode())[-1] == "message 4"
    clock.advance(400)
    assert not [e for e in router.events if e[0] in ("ended", "undelivered")]


def test_resume_reports_stanzas_that_became_durable_while_dropped(factory, router):
    """A stanza still in flight when the connection dropped is counted in <resumed h/> once durable."""
    client, sm_id = enabled_client(factory)
    client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m1'><body>x</body></message>")
    drop(client)
    again = Client(factory)
    again.login()
    assert again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>") == ""  # waits for the stanza
    router.routed[0][2].callback(None)
    assert f"<resumed xmlns='{SM}' h='1' previd='{sm_id}'/>" in again.transport.value().decode()


def test_a_hibernating_session_ends_after_the_timeout_and_its_queue_is_rerouted(factory, router, clock):
    """Not resumed in time, the session ends (session_ended, then undelivered with the unacked stanzas)."""
    client, _ = enabled_client(factory)
    old = client.connection
    old.deliver(message(1))
    drop(client)
    old.deliver(message(2))
    clock.advance(299)
    assert router.undelivered_stanzas == []
    clock.advance(2)
    assert [kind for kind, c in router.events if c is old][-2:] == ["ended", "undelivered"]
    assert [bodies(s)[0] for s in router.undelivered_stanzas] == ["message 1", "message 2"]
    assert factory.sessions.get(old.jid) is None


def test_a_clean_close_ends_the_session_at_once(factory, router):
    """After </stream> the session is over: nothing hibernates, unacked stanzas go to router.undelivered."""
    client, sm_id = enabled_client(factory)
    client.connection.deliver(message(1))
    client.send("</stream:stream>")
    drop(client)
    assert ("ended", client.connection) in router.events and len(router.undelivered_stanzas) == 1
    again = Client(factory)
    again.login()
    assert "<item-not-found" in again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")


def test_resuming_another_users_session_fails(factory, router):
    """bob cannot resume alice's session: <failed><item-not-found/>, and alice's session still hibernates."""
    client, sm_id = enabled_client(factory)
    drop(client)
    thief = Client(factory)
    thief.login("bob", "builder99")
    assert "<item-not-found" in thief.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    assert client.connection.hibernating


def test_a_failed_resume_lets_the_client_bind_a_new_session(factory):
    """After <failed/> for an unknown id the client binds as usual."""
    client = Client(factory)
    client.login()
    assert "<item-not-found" in client.send(f"<resume xmlns='{SM}' previd='{sm.new_id('fe-a')}' h='0'/>")
    assert "<jid>" in client.bind("phone")


def test_resume_after_bind_is_an_unexpected_request(factory):
    """<resume/> on a stream that already bound a resource gets <failed><unexpected-request/>."""
    client, sm_id = enabled_client(factory)
    assert "<unexpected-request" in client.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")


def test_binding_the_resource_of_a_hibernating_session_replaces_it(factory, router):
    """A new bind of the same resource ends the hibernating session; its queue goes to router.undelivered."""
    client, _ = enabled_client(factory)
    client.connection.deliver(message(1))
    drop(client)
    other, _ = enabled_client(factory)
    assert ("ended", client.connection) in router.events and len(router.undelivered_stanzas) == 1
    assert factory.sessions.get(other.connection.jid) is other.connection


def test_a_stream_error_to_a_hibernating_session_ends_it(factory, router):
    """system-shutdown sent to every session ends the hibernating ones too, so their queues are rerouted."""
    client, _ = enabled_client(factory)
    client.connection.deliver(message(1))
    drop(client)
    client.connection.send_stream_error("system-shutdown")
    assert len(router.undelivered_stanzas) == 1


def test_system_shutdown_reroutes_a_live_sessions_queue_before_the_connection_closes(factory, router):
    """A stopping server ends each live session at once: its unacknowledged stanzas reach the router while it still runs."""
    client, _ = enabled_client(factory)
    client.connection.deliver(message(1))
    client.connection.deliver(message(2))
    client.connection.system_shutdown()
    assert client.stream_error() == "system-shutdown"
    assert len(router.undelivered_stanzas) == 2  # the transport has not reported the connection lost yet
    assert factory.sessions.get(client.connection.jid) is None
    drop(client)
    assert len(router.undelivered_stanzas) == 2  # and the later loss does not hand them over again


# Resumption on another front end.
@pytest.fixture
def two_front_ends(clock):
    bus = Bus()
    first, second = FakeRouter("fe-a", bus), FakeRouter("fe-b", bus)
    return bus, make_factory(clock, first), make_factory(clock, second)


def test_a_session_resumes_on_another_front_end_with_nothing_lost_or_doubled(two_front_ends):
    """Resumed on front end B, a session of front end A gets its unacked stanzas, then what A still receives, each once."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    old = client.connection
    for n in range(3):
        old.deliver(message(n))
    client.send(f"<a xmlns='{SM}' h='1'/>")
    drop(client)
    old.deliver(message(3))

    again = Client(factory_b)
    again.login()
    assert again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='3'/>") == ""
    bus.in_flight.pop(0)()  # A receives the request and answers with the session
    old.deliver(message(4))  # routed to A while the answer is in flight
    bus.flush()
    old.deliver(message(5))  # routed to A after B took the session
    bus.flush()
    received = again.transport.value().decode()
    assert f"<resumed xmlns='{SM}' h='0' previd='{sm_id}'/>" in received
    assert bodies(received) == ["message 3", "message 4", "message 5"]
    new = again.connection
    assert new.jid == old.jid and factory_b.sessions.get(new.jid) is new
    assert ("started", new) in factory_b.router.events
    assert not [e for e in factory_a.router.events if e[0] in ("ended", "undelivered")]


@pytest.mark.parametrize("origin_restarted", [False, True], ids=["origin-knows", "origin-restarted"])
def test_a_session_moves_on_from_front_end_to_front_end(clock, two_front_ends, origin_restarted):
    """A session of A resumed on B can be resumed again on C: A knows where it went; or, once A restarted
    and forgot it, A refuses and C finds B in the session directory."""
    bus, factory_a, factory_b = two_front_ends
    factory_c = make_factory(clock, FakeRouter("fe-c", bus))
    client, sm_id = enabled_client(factory_a)
    drop(client)
    on_b = Client(factory_b)
    on_b.login()
    on_b.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.flush()
    on_b.connection.deliver(message(1))
    drop(on_b)
    if origin_restarted:
        restart_front_end(bus, clock, "fe-a")
    on_c = Client(factory_c)
    on_c.login()
    on_c.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.flush()
    received = on_c.transport.value().decode()
    assert f"<resumed xmlns='{SM}' h='0' previd='{sm_id}'/>" in received and bodies(received) == ["message 1"]


def test_a_silent_front_end_fails_the_resume_after_five_seconds(clock, two_front_ends):
    """When the old front end does not answer within 5 s, <failed><item-not-found/> and the client may bind."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    drop(client)
    factory_a.router.deaf = True
    again = Client(factory_b)
    again.login()
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    clock.advance(4.9)
    assert "<failed" not in again.transport.value().decode()
    clock.advance(0.2)
    assert "<item-not-found" in again.transport.value().decode()
    assert "<jid>" in again.bind("phone")


def test_an_answer_after_the_deadline_gives_the_session_back(clock, two_front_ends):
    """A session state that arrives after B gave up is declined; A's session hibernates again and nothing is lost."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    old = client.connection
    old.deliver(message(1))
    drop(client)
    again = Client(factory_b)
    again.login()
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.in_flight.pop(0)()  # A lends the session; its answer is still in flight
    clock.advance(5.1)
    assert "<item-not-found" in again.transport.value().decode()
    bus.flush()  # the late answer, then B's decline
    assert old.hibernating
    clock.advance(301)
    assert [bodies(s)[0] for s in factory_a.router.undelivered_stanzas] == ["message 1"]


def test_another_user_cannot_take_a_session_from_another_front_end(two_front_ends):
    """bob resuming alice's id on B is refused by A: <failed><item-not-found/>."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    drop(client)
    thief = Client(factory_b)
    thief.login("bob", "builder99")
    thief.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.flush()
    assert "<item-not-found" in thief.transport.value().decode()
    assert client.connection.hibernating


def test_a_hibernating_session_that_queues_too_much_ends(factory, router):
    """Past sm_max_unacked a hibernating session ends at once and its whole queue goes to router.undelivered."""
    client, _ = enabled_client(factory)
    drop(client)
    for n in range(21):
        client.connection.deliver(message(n))
    assert ("ended", client.connection) in router.events and len(router.undelivered_stanzas) == 21


def test_a_session_being_handed_over_keeps_everything_queued(two_front_ends):
    """While lent to another front end, a session does not end on overflow: every stanza reaches the new stream once."""
    bus, factory_a, factory_b = two_front_ends
    factory_b.sm_max_unacked = 100  # only A's limit is under test
    client, sm_id = enabled_client(factory_a)
    old = client.connection
    drop(client)
    again = Client(factory_b)
    again.login()
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.in_flight.pop(0)()
    for n in range(25):
        old.deliver(message(n))
    bus.flush()
    assert bodies(again.transport.value().decode()) == [f"message {n}" for n in range(25)]
    assert not factory_a.router.undelivered_stanzas


def test_resuming_while_the_old_connection_still_looks_open_closes_it(factory, router):
    """A client back before the server noticed the loss resumes anyway; the old transport is dropped, the session not ended."""
    client, sm_id = enabled_client(factory)
    client.connection.deliver(message(1))
    again = Client(factory)
    again.login()
    answer = again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    assert f"<resumed xmlns='{SM}' h='0' previd='{sm_id}'/>" in answer and bodies(answer) == ["message 1"]
    assert client.transport.disconnecting or client.transport.disconnected
    drop(client)  # the old connection's close arrives late
    assert not [e for e in router.events if e[0] in ("ended", "undelivered")]
    assert factory.sessions.get(again.connection.jid) is again.connection


# Handing sessions over when a front end stops.
def stop_front_end(bus: Bus, factory, peers: list[str]) -> list[int]:
    """``factory``'s front end hands its sessions to ``peers`` as it stops; the returned list gets how many were taken."""
    taken: list[int] = []
    factory.resumable.hand_over_all(peers).addCallback(taken.append)
    bus.flush()
    return taken


def restart_front_end(bus: Bus, clock, frontend_id: str):
    """A new process for ``frontend_id``: it remembers nothing of the sessions it created before."""
    return make_factory(clock, FakeRouter(frontend_id, bus))


def test_a_stopping_front_end_hands_its_session_over_and_the_client_resumes_on_the_peer(two_front_ends):
    """A's live session goes to B to hibernate; A drops the connection without a stream error, ends nothing;
    what still reaches A is forwarded; the client resumes on B and gets each unacknowledged stanza once."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    old = client.connection
    old.deliver(message(1))
    old.deliver(message(2))
    client.send(f"<a xmlns='{SM}' h='1'/>")
    client.transport.clear()

    assert stop_front_end(bus, factory_a, ["fe-b"]) == [1]
    assert client.transport.disconnecting or client.transport.disconnected
    assert client.transport.value() == b""  # no stream error: the client is to resume, not start anew
    assert not [e for e in factory_a.router.events if e[0] in ("ended", "undelivered")]
    assert ("moved", "fe-b") in factory_a.router.events  # the rooms follow the session at once
    held = factory_b.resumable.get(sm_id)
    assert held is not None and held.hibernating and held.jid == old.jid
    assert bus.directory[old.jid.full()] == "fe-b"
    old.deliver(message(3))  # a stale route still reaches A while it stops: forwarded
    bus.flush()
    drop(client)

    again = Client(factory_b)
    again.login()
    answer = again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='1'/>")
    assert f"<resumed xmlns='{SM}' h='0' previd='{sm_id}'/>" in answer
    assert bodies(answer) == ["message 2", "message 3"]
    assert factory_b.sessions.get(old.jid) is again.connection


def test_what_the_client_sends_during_the_handover_is_not_counted_so_it_resends_it(two_front_ends):
    """Stanzas in flight are waited for and counted; what arrives once the handover began is neither routed nor counted."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m1'><body>1</body></message>")
    taken: list[int] = []
    factory_a.resumable.hand_over_all(["fe-b"]).addCallback(taken.append)
    client.send(f"<message to='bob@{DOMAIN}' type='chat' id='m2'><body>2</body></message>")  # read after the pause began
    assert len(factory_a.router.routed) == 1
    assert not bus.in_flight  # the offer waits for message 1 to become durable
    factory_a.router.routed[0][2].callback(None)
    bus.flush()
    assert taken == [1]
    again = Client(factory_b)
    again.login()
    answer = again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    assert f"<resumed xmlns='{SM}' h='1' previd='{sm_id}'/>" in answer  # message 1 counted, message 2 not


def test_with_no_running_peer_the_session_is_served_again_until_shutdown_ends_it(two_front_ends):
    """No front end took the session: the client gets what was queued meanwhile, and the shutdown re-routes the rest."""
    bus, factory_a, _ = two_front_ends
    client, _ = enabled_client(factory_a)
    client.transport.clear()
    factory_a.resumable.hand_over_all(["fe-gone"]).addCallback(lambda n: client.connection.deliver(message(1)))
    taken = stop_front_end(bus, factory_a, [])
    assert taken == [0]
    assert bodies(client.transport.value().decode()) == ["message 1"]
    assert client.send(f"<r xmlns='{SM}'/>") == f"<a xmlns='{SM}' h='0'/>"  # reading again
    client.connection.system_shutdown()
    assert client.stream_error() == "system-shutdown"
    assert [bodies(s) for s in factory_a.router.undelivered_stanzas] == [["message 1"]]


def test_a_peer_that_never_answers_gives_the_session_back_after_five_seconds(clock, two_front_ends):
    """A hung peer: after `SHUTDOWN_HANDOVER_TIMEOUT` the session is A's again, so the shutdown ends it and loses nothing."""
    bus, factory_a, factory_b = two_front_ends
    client, _ = enabled_client(factory_a)
    factory_b.router.deaf = True
    taken = stop_front_end(bus, factory_a, ["fe-b"])
    assert taken == [] and not client.transport.disconnecting
    client.connection.deliver(message(1))
    clock.advance(sm.SHUTDOWN_HANDOVER_TIMEOUT + 0.1)
    assert taken == [0]
    assert bodies(client.transport.value().decode()) == ["message 1"]


def test_a_restarted_origin_finds_the_session_it_handed_over_through_the_directory(clock, two_front_ends):
    """A hands its session to B and restarts; the client reconnects to the new A, which asks the front end the
    session directory names, and resumes there."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    client.connection.deliver(message(1))
    assert stop_front_end(bus, factory_a, ["fe-b"]) == [1]
    new_a = restart_front_end(bus, clock, "fe-a")
    again = Client(new_a)
    again.login()
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.flush()
    received = again.transport.value().decode()
    assert f"<resumed xmlns='{SM}' h='0' previd='{sm_id}'/>" in received and bodies(received) == ["message 1"]
    assert bus.directory[again.connection.jid.full()] == "fe-a"


def test_a_session_no_front_end_holds_fails_to_resume_at_once(clock, two_front_ends):
    """Asked around and refused everywhere (or found nowhere): <failed><item-not-found/>, without the 5 s wait."""
    bus, factory_a, factory_b = two_front_ends
    client, sm_id = enabled_client(factory_a)
    client.connection.close_stream()  # closed cleanly: ended for good
    drop(client)
    again = Client(factory_b)
    again.login()
    again.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
    bus.flush()
    assert "<item-not-found" in again.transport.value().decode()


def test_a_peer_does_not_adopt_a_session_whose_resource_it_has_bound(two_front_ends):
    """The same full JID bound on B already: B declines, and A keeps the session for its shutdown to end."""
    bus, factory_a, factory_b = two_front_ends
    client, _ = enabled_client(factory_a)
    enabled_client(factory_b)  # alice/phone on B too
    assert stop_front_end(bus, factory_a, ["fe-b"]) == [0]
    assert not client.transport.disconnecting


def test_a_front_end_that_is_stopping_too_takes_no_session(two_front_ends):
    """Both front ends stop at once: neither adopts the other's sessions, so each ends its own with a stream error."""
    bus, factory_a, factory_b = two_front_ends
    client, _ = enabled_client(factory_a)
    stop_front_end(bus, factory_b, ["fe-a"])
    assert stop_front_end(bus, factory_a, ["fe-b"]) == [0]
    assert factory_b.resumable.get(client.connection.sm.id) is None
    client.connection.system_shutdown()
    assert client.stream_error() == "system-shutdown"


def test_sessions_go_to_xmpp_front_ends_of_the_same_host_first():
    """A stopping front end offers its sessions to the XMPP front ends (its own host's first), the HTTPS process last."""
    from hipchat_server.app.xmpp import peers_in_order

    running = ["h2:xmpp-0", "h1:web", "h1:xmpp-1", "h1:xmpp-0"]
    assert peers_in_order("h1:xmpp-0", running) == ["h1:xmpp-1", "h2:xmpp-0", "h1:web"]
    assert peers_in_order("h1:web", running) == ["h1:xmpp-0", "h1:xmpp-1", "h2:xmpp-0"]
