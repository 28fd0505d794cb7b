"""Client streams on StringTransport and task.Clock: STARTTLS, SASL, binding, the local router."""

from __future__ import annotations

import base64
import re

import pytest
from scramp import ScramClient
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from hipchat_server.users import make_scram_credentials
from hipchat_server.xmpp.auth_limits import AuthFailureLimiter
from hipchat_server.xmpp.bind import SessionTable
from hipchat_server.xmpp.c2s import ClientFactory
from hipchat_server.xmpp.local_routing import EchoLessRouter
from hipchat_server.xmpp.sasl import SaslServer
from hipchat_server.xmpp.xml_parser import StreamLimits

DOMAIN = "chat.example.com"
HEADER = (
    f"<?xml version='1.0'?><stream:stream to='{DOMAIN}' version='1.0' xml:lang='en'"
    " xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
).encode()
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
TLS_OPTIONS = object()  # what the connection hands to startTLS


class FakeCredentials:
    """A CredentialsStore over dicts, like the users table with SCRAM keys."""

    def __init__(self):
        self.passwords: dict[str, str] = {}
        self.keys: dict[tuple[str, str], object] = {}

    def add(self, username: str, password: str) -> None:
        self.passwords[username] = password
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-1"):
            self.keys[(username, mechanism)] = make_scram_credentials(password, mechanism)

    def get_scram_credentials(self, username, mechanism):
        return self.keys.get((username, mechanism))

    def check_password(self, username, password):
        return self.passwords.get(username) == password

    def is_active(self, username):
        return username in self.passwords


class TlsStringTransport(StringTransport):
    """A StringTransport that records startTLS calls (Twisted's has none)."""

    def __init__(self, host: str = "192.0.2.1"):
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.tls_started_with = None

    def startTLS(self, options):
        self.tls_started_with = options


@pytest.fixture
def clock():
    return task.Clock()


def make_client_factory(clock, router=None, tls_options=TLS_OPTIONS, **options) -> ClientFactory:
    """A ClientFactory for alice and bob (passwords wonderland, builder99) with inline blocking calls.

    Without ``router`` the streams of one process reach each other (EchoLessRouter).
    """
    credentials = FakeCredentials()
    credentials.add("alice", "wonderland")
    credentials.add("bob", "builder99")
    sessions = SessionTable()
    return ClientFactory(
        DOMAIN,
        SaslServer(credentials, DOMAIN, fake_salt_secret=b"s" * 32),
        router if router is not None else EchoLessRouter(DOMAIN, sessions),
        tls_options,
        sessions=sessions,
        auth_limiter=AuthFailureLimiter(5, 60.0, clock=clock),
        limits=StreamLimits(rate_bytes_per_second=None),
        clock=clock,
        run_blocking=lambda f, *args: defer.maybeDeferred(f, *args),
        **options,
    )


@pytest.fixture
def factory(clock):
    return make_client_factory(clock)


class Client:
    """One test client: feeds bytes to a ClientConnection and reads what it wrote."""

    def __init__(self, factory: ClientFactory, direct_tls: bool = False, host: str = "192.0.2.1"):
        factory.direct_tls = direct_tls
        self.connection = factory.buildProtocol(None)
        self.transport = TlsStringTransport(host)
        self.connection.makeConnection(self.transport)

    def send(self, data: str | bytes) -> str:
        """Feed ``data``; return (and clear) what the server wrote in answer."""
        self.transport.clear()
        self.connection.dataReceived(data.encode() if isinstance(data, str) else data)
        return self.transport.value().decode()

    def stream_error(self) -> str | None:
        match = re.search(r"<stream:error><([a-z-]+) ", self.transport.value().decode())
        return match.group(1) if match else None

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def starttls(self) -> str:
        self.send(HEADER)
        return self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")

    def auth_plain(self, username: str, password: str) -> str:
        data = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{data}</auth>")

    def login(self, username: str = "alice", password: str = "wonderland") -> str:
        """STARTTLS (unless direct TLS), PLAIN, restart; return the features after authentication."""
        if not self.connection.tls_active:
            self.starttls()
        self.send(HEADER)
        assert "<success" in self.auth_plain(username, password)
        return self.send(HEADER)

    def bind(self, resource: str | None = None) -> str:
        inner = f"<resource>{resource}</resource>" if resource else ""
        return self.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{inner}</bind></iq>")


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def element_text(xml: str, name: str) -> str:
    return re.search(rf"<{name}[^>]*>([^<]*)</{name}>", xml).group(1)


def test_plain_port_offers_only_required_starttls(factory):
    """The first features on the plain port are STARTTLS with <required/>, and nothing else."""
    client = Client(factory)
    answer = client.send(HEADER)
    assert f"from='{DOMAIN}'" in answer
    features = answer[answer.index("<stream:features>") :]
    assert features == (
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    )


def test_starttls_proceeds_starts_tls_and_then_offers_sasl_with_plain(factory):
    """<starttls/> is answered with <proceed/>, TLS starts with the server context, the new stream offers SASL."""
    client = Client(factory)
    assert "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in client.starttls()
    assert client.transport.tls_started_with is TLS_OPTIONS
    features = client.send(HEADER)
    assert (
        "<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>" in features
    )
    assert "starttls" not in features


def test_bytes_pipelined_after_starttls_are_discarded(factory):
    """Plaintext sent after <starttls/> in the same read never reaches the TLS stream (no injection)."""
    client = Client(factory)
    client.send(HEADER)
    data = b64("\0alice\0wonderland")
    client.send(
        f"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><auth xmlns='{SASL}' mechanism='PLAIN'>{data}</auth>"
    )
    assert not client.connection.authenticated
    assert "<mechanisms" in client.send(HEADER)


@pytest.mark.parametrize(
    "stanza",
    [
        f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'wonderland')}</auth>",
        "<message to='bob@chat.example.com'><body>hi</body></message>",
        "<iq type='set' id='1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
    ],
)
def test_anything_but_starttls_before_tls_is_a_policy_violation(factory, stanza):
    """On the plain port, SASL, stanzas or binding before STARTTLS close the stream with policy-violation."""
    client = Client(factory)
    client.send(HEADER)
    client.send(stanza)
    assert client.stream_error() == "policy-violation"
    assert client.closed and not client.connection.authenticated


def test_direct_tls_port_offers_sasl_at_once(factory):
    """On the direct-TLS port the first features are the SASL mechanisms; STARTTLS is neither offered nor called."""
    client = Client(factory, direct_tls=True)
    features = client.send(HEADER)
    assert "<mechanism>PLAIN</mechanism>" in features and "starttls" not in features
    assert client.transport.tls_started_with is None


def test_wrong_domain_is_host_unknown(factory):
    """A stream header addressed to another domain closes the stream with host-unknown."""
    client = Client(factory)
    client.send(HEADER.replace(DOMAIN.encode(), b"elsewhere.example.org"))
    assert client.stream_error() == "host-unknown" and client.closed


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_login_succeeds_and_the_server_signature_verifies(factory, mechanism):
    """A SCRAM exchange ends in <success/> whose data the client verifies; the next features offer binding."""
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    scram = ScramClient([mechanism], "alice", "wonderland")
    answer = client.send(f"<auth xmlns='{SASL}' mechanism='{mechanism}'>{b64(scram.get_client_first())}</auth>")
    scram.set_server_first(base64.b64decode(element_text(answer, "challenge")).decode())
    answer = client.send(f"<response xmlns='{SASL}'>{b64(scram.get_client_final())}</response>")
    scram.set_server_final(base64.b64decode(element_text(answer, "success")).decode())
    assert client.connection.authenticated and client.connection.username == "alice"
    features = client.send(HEADER)
    assert "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>" in features
    assert "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>" in features


def test_wrong_password_is_a_sasl_failure_and_the_client_may_retry(factory):
    """A wrong password gets <failure><not-authorized/>; the stream stays open and a retry can succeed."""
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    assert f"<failure xmlns='{SASL}'><not-authorized/></failure>" in client.auth_plain("alice", "wrong")
    assert not client.closed
    assert "<success" in client.auth_plain("alice", "wonderland")


def test_abort_ends_the_exchange_with_aborted(factory):
    """<abort/> during an exchange is answered with <failure><aborted/>; a new exchange may start."""
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    assert "<challenge" in client.send(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'/>")
    assert "<aborted/>" in client.send(f"<abort xmlns='{SASL}'/>")
    assert "<success" in client.auth_plain("alice", "wonderland")


def test_stanza_before_authentication_is_not_authorized(factory):
    """After TLS, a stanza before SASL succeeded closes the stream with not-authorized."""
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    client.send("<message to='bob@chat.example.com'><body>hi</body></message>")
    assert client.stream_error() == "not-authorized" and client.closed


def test_failed_logins_per_address_are_limited(factory, clock):
    """The 5th failure in a minute closes the stream; the address is refused until a minute passed."""
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    for _ in range(4):
        assert "<not-authorized/>" in client.auth_plain("alice", "wrong")
    assert not client.closed
    client.auth_plain("alice", "wrong")
    assert client.stream_error() == "policy-violation" and client.closed

    again = Client(factory)
    again.starttls()
    again.send(HEADER)
    answer = again.auth_plain("alice", "wonderland")  # even the right password
    assert "<not-authorized/>" in answer and "<success" not in answer and again.closed

    other = Client(factory, host="192.0.2.99")
    assert "<bind" in other.login()

    clock.advance(61)
    late = Client(factory)
    assert "<bind" in late.login()


def test_negotiation_timeout_closes_an_idle_stream(factory, clock):
    """A client that has not bound a resource within the timeout is closed with connection-timeout."""
    client = Client(factory)
    client.send(HEADER)
    clock.advance(factory.negotiation_timeout + 1)
    assert client.stream_error() == "connection-timeout" and client.closed


def test_bind_with_a_resource_returns_that_full_jid(factory):
    """A bind request naming a resource gets that full JID, and the session iq is answered with a result."""
    client = Client(factory)
    client.login()
    answer = client.bind("laptop")
    assert answer == (
        f"<iq id='b1' type='result'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@{DOMAIN}/laptop</jid></bind></iq>"
    )
    answer = client.send("<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    assert answer == f"<iq id='s1' type='result' to='alice@{DOMAIN}/laptop'/>"


def test_bind_without_a_resource_gets_a_generated_one(factory):
    """A bind request without a resource gets a server-generated, unique resource."""
    first, second = Client(factory), Client(factory)
    first.login(), second.login()
    resources = [re.search(r"<jid>alice@[^/]+/([^<]+)</jid>", c.bind()).group(1) for c in (first, second)]
    assert all(len(r) >= 16 for r in resources) and resources[0] != resources[1]


def test_bind_with_an_invalid_resource_is_bad_request(factory):
    """A resource that resourceprep refuses is answered with a bad-request stanza error; the stream stays."""
    client = Client(factory)
    client.login()
    answer = client.bind("private\ue000use")
    assert "type='error'" in answer and "<bad-request" in answer
    assert client.connection.jid is None and not client.closed


def test_conflicting_resource_replaces_the_old_session(factory):
    """Binding a resource already bound on this process closes the old stream with conflict; the new one gets it."""
    old, new = Client(factory), Client(factory)
    old.login(), new.login()
    old.bind("phone")
    assert f"<jid>alice@{DOMAIN}/phone</jid>" in new.bind("phone")
    assert old.stream_error() == "conflict" and old.closed
    assert factory.sessions.get(new.connection.jid) is new.connection
    old.connection.connectionLost(None)  # the old stream's late close leaves the new session alone
    assert factory.sessions.get(new.connection.jid) is new.connection


def test_sessions_per_user_are_capped(factory):
    """Past max_sessions_per_user another bind gets resource-constraint."""
    factory.max_sessions_per_user = 2
    clients = [Client(factory) for _ in range(3)]
    for client in clients:
        client.login()
    clients[0].bind(), clients[1].bind()
    assert "<resource-constraint" in clients[2].bind()


def test_stanza_before_bind_is_not_authorized(factory):
    """After authentication, a stanza other than the bind request closes the stream with not-authorized."""
    client = Client(factory)
    client.login()
    client.send("<message to='bob@chat.example.com'><body>hi</body></message>")
    assert client.stream_error() == "not-authorized" and client.closed


def test_ping_to_the_server_is_answered(factory):
    """An XEP-0199 ping to the domain is answered with an iq result from the domain to the full JID."""
    client = Client(factory)
    client.login()
    client.bind("desk")
    answer = client.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert answer == f"<iq to='alice@{DOMAIN}/desk' from='{DOMAIN}' id='p1' type='result'/>"


def test_unknown_iq_is_service_unavailable(factory):
    """An iq get the server does not handle is answered with a service-unavailable stanza error."""
    client = Client(factory)
    client.login()
    client.bind("desk")
    answer = client.send("<iq type='get' id='v1'><query xmlns='jabber:iq:private'/></iq>")
    assert "type='error'" in answer and "id='v1'" in answer
    assert "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in answer


def test_forged_from_is_invalid_from(factory):
    """A stanza claiming to come from another user closes the stream with invalid-from."""
    client = Client(factory)
    client.login()
    client.bind("desk")
    client.send(f"<message from='bob@{DOMAIN}/x' to='bob@{DOMAIN}'><body>hi</body></message>")
    assert client.stream_error() == "invalid-from" and client.closed


def test_malformed_to_is_jid_malformed(factory):
    """A stanza to an invalid JID gets a jid-malformed stanza error; the stream goes on."""
    client = Client(factory)
    client.login()
    client.bind("desk")
    answer = client.send("<message to='a@@b' id='m1'><body>hi</body></message>")
    assert "<jid-malformed" in answer and not client.closed


def test_message_reaches_every_resource_of_a_bare_jid_stamped_with_the_sender(factory):
    """A chat message to a bare JID goes to each of its resources here, with 'from' set to the sender's full JID."""
    alice, bob_phone, bob_desk = Client(factory), Client(factory), Client(factory)
    alice.login(), bob_phone.login("bob", "builder99"), bob_desk.login("bob", "builder99")
    alice.bind("a"), bob_phone.bind("phone"), bob_desk.bind("desk")
    bob_phone.transport.clear(), bob_desk.transport.clear()
    assert alice.send(f"<message to='bob@{DOMAIN}' type='chat' id='m1'><body>hi</body></message>") == ""
    for bob in (bob_phone, bob_desk):
        received = bob.transport.value().decode()
        assert f"from='alice@{DOMAIN}/a'" in received and "<body>hi</body>" in received


def test_message_to_a_full_jid_reaches_only_that_resource(factory):
    """A message to a bound full JID goes to that resource alone."""
    alice, bob_phone, bob_desk = Client(factory), Client(factory), Client(factory)
    alice.login(), bob_phone.login("bob", "builder99"), bob_desk.login("bob", "builder99")
    alice.bind("a"), bob_phone.bind("phone"), bob_desk.bind("desk")
    bob_phone.transport.clear(), bob_desk.transport.clear()
    alice.send(f"<message to='bob@{DOMAIN}/desk' type='chat'><body>hi</body></message>")
    assert "<body>hi</body>" in bob_desk.transport.value().decode()
    assert bob_phone.transport.value() == b""


def test_message_to_nobody_online_is_service_unavailable(factory):
    """A chat message to a user with no resource on this process bounces with service-unavailable."""
    alice = Client(factory)
    alice.login()
    alice.bind("a")
    answer = alice.send(f"<message to='bob@{DOMAIN}' type='chat' id='m2'><body>hi</body></message>")
    assert "type='error'" in answer and "<service-unavailable" in answer and f"from='bob@{DOMAIN}'" in answer


def test_closing_a_stream_ends_its_session(factory):
    """A lost connection is removed from the sessions, so messages no longer reach it."""
    client = Client(factory)
    client.login()
    client.bind("gone")
    jid = client.connection.jid
    client.connection.connectionLost(None)
    assert factory.sessions.get(jid) is None and factory.sessions.resources(jid.bare()) == []


def test_unsupported_version_is_refused(factory):
    """A stream header without version='1.0' closes the stream with unsupported-version."""
    client = Client(factory)
    client.send(HEADER.replace(b" version='1.0' xml:lang", b" xml:lang"))
    assert client.stream_error() == "unsupported-version" and client.closed


def test_bytes_read_while_a_sasl_step_runs_wait_for_its_answer(factory):
    """Data arriving while credentials are looked up is held, then parsed after the answer (pipelined restart)."""
    pending: list[tuple[defer.Deferred, object, tuple]] = []

    def run_later(f, *args):
        d = defer.Deferred()
        pending.append((d, f, args))
        return d

    factory.run_blocking = run_later
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    client.auth_plain("alice", "wonderland")
    assert client.send(HEADER) == ""  # the restart the client pipelined waits
    d, f, args = pending.pop()
    client.transport.clear()
    d.callback(f(*args))
    answer = client.transport.value().decode()
    assert answer.index("<success") < answer.index("<stream:stream") < answer.index("<bind")


def test_a_crashed_credentials_lookup_is_a_temporary_failure_not_counted(factory):
    """A lookup that raises answers temporary-auth-failure and does not count against the address."""
    factory.run_blocking = lambda f, *args: defer.fail(ConnectionError("MariaDB is away"))
    client = Client(factory)
    client.starttls()
    client.send(HEADER)
    for _ in range(6):
        assert "<temporary-auth-failure/>" in client.auth_plain("alice", "wonderland")
    assert not client.closed and not factory.auth_limiter.blocked("192.0.2.1")


def test_ping_to_the_own_bare_jid_and_without_to_is_answered(factory):
    """A ping to the user's own bare JID, or with no 'to', is answered by the server."""
    client = Client(factory)
    client.login()
    client.bind("desk")
    answer = client.send(f"<iq type='get' id='p2' to='alice@{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert "type='result'" in answer and "id='p2'" in answer
    answer = client.send("<iq type='get' id='p3'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert answer == f"<iq to='alice@{DOMAIN}/desk' id='p3' type='result'/>"


def test_iq_to_a_bound_full_jid_is_delivered(factory):
    """An iq to another user's bound full JID reaches that client, stamped with the sender."""
    alice, bob = Client(factory), Client(factory)
    alice.login(), bob.login("bob", "builder99")
    alice.bind("a"), bob.bind("b")
    bob.transport.clear()
    alice.send(f"<iq type='get' id='v1' to='bob@{DOMAIN}/b'><query xmlns='jabber:iq:version'/></iq>")
    received = bob.transport.value().decode()
    assert f"from='alice@{DOMAIN}/a'" in received and "jabber:iq:version" in received


def test_a_message_to_the_own_bare_jid_is_not_echoed(factory):
    """A message to the sender's own bare JID reaches its other resources, never the sending stream."""
    phone, desk = Client(factory), Client(factory)
    phone.login(), desk.login()
    phone.bind("phone"), desk.bind("desk")
    desk.transport.clear()
    assert phone.send(f"<message to='alice@{DOMAIN}' type='chat'><body>note</body></message>") == ""
    assert "<body>note</body>" in desk.transport.value().decode()


def test_limiter_forgets_the_longest_idle_address_when_full(clock):
    """With max_addresses remembered, a new address evicts the one whose last failure is oldest."""
    limiter = AuthFailureLimiter(max_failures=2, window=60.0, clock=clock, max_addresses=2)
    limiter.record_failure("a"), limiter.record_failure("b"), limiter.record_failure("a")
    assert limiter.blocked("a")
    limiter.record_failure("c")  # evicts "b", the longest idle
    assert limiter.record_failure("a") and limiter.blocked("a")
    assert not limiter.record_failure("b")


def test_two_front_ends_can_listen_on_the_same_port():
    """reuse_port_socket lets a second process (here a second socket) bind the port the first one holds."""
    from hipchat_server.app.xmpp import reuse_port_socket

    first = reuse_port_socket("127.0.0.1", 0)
    try:
        second = reuse_port_socket("127.0.0.1", first.getsockname()[1])
        second.close()
    finally:
        first.close()


def test_session_table_lists_every_bound_stream(factory):
    """SessionTable.connections() returns each bound stream once (used to close them all on shutdown)."""
    first, second = Client(factory), Client(factory)
    first.login(), second.login("bob", "builder99")
    first.bind(), second.bind()
    assert set(factory.sessions.connections()) == {first.connection, second.connection}
    assert len(factory.sessions) == 2


def test_process_builds_two_ports_that_share_sessions_and_limits(tmp_path):
    """The hipchat-xmpp process builds a STARTTLS and a direct-TLS factory over one session table, router and limiter."""
    from hipchat_server.app.xmpp import build_factories
    from hipchat_server.config import Config
    from hipchat_server.server import ChatServer
    from tests.unit.test_config import VALID

    from hipchat_server.storage.sessions import SessionDirectory

    directory = SessionDirectory(redis_primary=None, frontend_id="test:xmpp-0")  # no Redis is touched here
    raw = dict(VALID, archive={"spool_dir": str(tmp_path)})
    starttls, direct = build_factories(ChatServer(Config.parse(raw)), TLS_OPTIONS, directory)
    assert starttls.router.archive.spool.directory.startswith(str(tmp_path))  # the spool is this process's own
    assert (starttls.direct_tls, direct.direct_tls) == (False, True)
    assert starttls.sessions is direct.sessions and starttls.router is direct.router
    assert starttls.auth_limiter is direct.auth_limiter and starttls.auth_limiter.max_failures == 5
    assert starttls.domain == "chat.example.com" and starttls.max_sessions_per_user == 10
