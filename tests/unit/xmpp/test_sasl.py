"""SASL sessions against an in-memory credentials store, driven by scramp's own SCRAM client."""

from __future__ import annotations

import base64

import pytest
from scramp import ScramClient

from hipchat_server.users import make_scram_credentials
from hipchat_server.xmpp.sasl import (
    Challenge,
    Failure,
    SaslServer,
    SaslStateError,
    Success,
)

DOMAIN = "chat.example.com"
SCRAM = ["SCRAM-SHA-256", "SCRAM-SHA-1"]


class FakeCredentials:
    """A CredentialsStore over dicts; counts lookups, and can fail them like an unreachable database."""

    def __init__(self):
        self.passwords: dict[str, str] = {}
        self.keys: dict[tuple[str, str], object] = {}
        self.disabled: set[str] = set()
        self.broken = False

    def add(self, username: str, password: str) -> None:
        self.passwords[username] = password
        for mechanism in SCRAM:
            self.keys[(username, mechanism)] = make_scram_credentials(password, mechanism)

    def get_scram_credentials(self, username, mechanism):
        if self.broken:
            raise ConnectionError("MariaDB is away")
        return self.keys.get((username, mechanism))

    def check_password(self, username, password):
        return self.passwords.get(username) == password

    def is_active(self, username):
        return username in self.passwords and username not in self.disabled


@pytest.fixture
def credentials():
    store = FakeCredentials()
    store.add("alice", "wonderland")
    return store


@pytest.fixture
def server(credentials):
    return SaslServer(credentials, DOMAIN, fake_salt_secret=b"s" * 32)


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def scram_login(session, mechanism: str, username: str, password: str):
    """Run a whole SCRAM exchange with scramp's client; return (last outcome, client)."""
    client = ScramClient([mechanism], username, password)
    outcome = session.start(mechanism, b64(client.get_client_first()))
    if not isinstance(outcome, Challenge):
        return outcome, client
    client.set_server_first(outcome.data.decode())
    return session.respond(b64(client.get_client_final())), client


def plain(authzid: str, authcid: str, password: str) -> str:
    return b64(f"{authzid}\0{authcid}\0{password}")


def test_mechanisms_without_tls_are_scram_only(server):
    """Without TLS only SCRAM-SHA-256 and SCRAM-SHA-1 are offered, strongest first."""
    assert server.mechanisms(tls_active=False) == ["SCRAM-SHA-256", "SCRAM-SHA-1"]


def test_mechanisms_with_tls_add_plain_and_no_plus_variant(server):
    """With TLS PLAIN is offered after SCRAM; no channel-binding -PLUS variant is offered."""
    offered = server.mechanisms(tls_active=True)
    assert offered == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]
    assert not any(m.endswith("-PLUS") for m in offered)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_exchange_succeeds_and_the_client_verifies_the_server(server, mechanism):
    """A full SCRAM exchange with the right password succeeds; the server signature satisfies the client."""
    session = server.session(tls_active=False)
    outcome, client = scram_login(session, mechanism, "alice", "wonderland")
    assert isinstance(outcome, Success) and outcome.username == "alice"
    client.set_server_final(outcome.data.decode())  # raises if the server signature is wrong
    assert base64.b64decode(outcome.encoded()) == outcome.data
    assert session.succeeded and session.username == "alice" and session.failures == 0


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_without_initial_response_starts_with_an_empty_challenge(server, mechanism):
    """<auth/> without text gets an empty challenge; the client-first then comes as a response."""
    session = server.session(tls_active=True)
    first = session.start(mechanism, "")
    assert first == Challenge(b"") and first.encoded() == ""
    client = ScramClient([mechanism], "alice", "wonderland")
    challenge = session.respond(b64(client.get_client_first()))
    client.set_server_first(challenge.data.decode())
    outcome = session.respond(b64(client.get_client_final()))
    assert isinstance(outcome, Success)


def test_scram_username_is_case_insensitive(server):
    """A client that types Alice logs in as alice (XMPP localparts are case-mapped)."""
    outcome, _ = scram_login(server.session(False), "SCRAM-SHA-256", "Alice", "wonderland")
    assert outcome == Success("alice", outcome.data)


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_wrong_password_is_not_authorized(server, mechanism):
    """A wrong password fails the proof with not-authorized and counts as a failure."""
    session = server.session(False)
    outcome, _ = scram_login(session, mechanism, "alice", "looking-glass")
    assert outcome == Failure("not-authorized")
    assert session.failures == 1 and not session.succeeded


def test_scram_unknown_user_gets_a_stable_fake_salt_then_not_authorized(server):
    """An unknown user gets a challenge like a real one, with the same salt each time, then not-authorized."""
    salts = []
    for _ in range(2):
        client = ScramClient(["SCRAM-SHA-256"], "nobody", "whatever1")
        challenge = server.session(False).start("SCRAM-SHA-256", b64(client.get_client_first()))
        assert isinstance(challenge, Challenge)
        salts.append(dict(p.split("=", 1) for p in challenge.data.decode().split(","))["s"])
    assert salts[0] == salts[1]
    outcome, _ = scram_login(server.session(False), "SCRAM-SHA-256", "nobody", "whatever1")
    assert outcome == Failure("not-authorized")


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_disabled_user_with_the_right_password_is_account_disabled(server, credentials, mechanism):
    """A disabled user who proves the password gets account-disabled."""
    credentials.disabled.add("alice")
    outcome, _ = scram_login(server.session(False), mechanism, "alice", "wonderland")
    assert outcome.condition == "account-disabled"


def test_scram_disabled_user_with_a_wrong_password_learns_nothing(server, credentials):
    """A disabled account is only revealed to a client that knows the password."""
    credentials.disabled.add("alice")
    outcome, _ = scram_login(server.session(False), "SCRAM-SHA-256", "alice", "looking-glass")
    assert outcome == Failure("not-authorized")


def test_scram_lookup_failure_is_a_temporary_auth_failure(server, credentials):
    """When the credentials store fails, the client gets temporary-auth-failure, not a crash."""
    credentials.broken = True
    outcome, _ = scram_login(server.session(False), "SCRAM-SHA-256", "alice", "wonderland")
    assert outcome.condition == "temporary-auth-failure"


def test_scram_with_an_authzid_is_invalid_authzid(server):
    """A SCRAM client-first naming an authorization identity is refused with invalid-authzid."""
    outcome = server.session(False).start("SCRAM-SHA-256", b64("n,a=bob@chat.example.com,n=alice,r=abcdefgh"))
    assert outcome.condition == "invalid-authzid"


def test_scram_asking_for_channel_binding_is_malformed(server):
    """A client demanding channel binding (p=) on a mechanism without it is refused as malformed-request."""
    outcome = server.session(True).start("SCRAM-SHA-256", b64("p=tls-server-end-point,,n=alice,r=abcdefgh"))
    assert outcome.condition == "malformed-request"


def test_scram_client_saying_it_could_bind_is_accepted(server):
    """The GS2 flag "y" (client supports binding, thinks the server does not) is accepted: we offer no -PLUS."""
    challenge = server.session(True).start("SCRAM-SHA-1", b64("y,,n=alice,r=abcdefgh"))
    assert isinstance(challenge, Challenge)


@pytest.mark.parametrize("message", [b"hello", b"n,,", b"n,,n=alice", b"\xff\xfe", b""])
def test_scram_garbage_client_first_is_malformed_request(server, message):
    """A client-first that is not a SCRAM message (or not UTF-8) is malformed-request."""
    outcome = server.session(False).start("SCRAM-SHA-256", b64(message) or "=")
    assert outcome.condition == "malformed-request"


def test_scram_garbage_client_final_is_malformed_request(server):
    """A client-final that is not a SCRAM message is malformed-request."""
    session = server.session(False)
    client = ScramClient(["SCRAM-SHA-256"], "alice", "wonderland")
    session.start("SCRAM-SHA-256", b64(client.get_client_first()))
    assert session.respond(b64("c=biws,r=wrong")).condition == "malformed-request"


def test_plain_without_tls_is_encryption_required(server):
    """PLAIN on an unencrypted stream is refused with encryption-required, even with the right password."""
    session = server.session(tls_active=False)
    assert session.start("PLAIN", plain("", "alice", "wonderland")).condition == "encryption-required"
    assert not session.succeeded


def test_plain_with_tls_logs_in(server):
    """PLAIN inside TLS with the right password succeeds without additional data."""
    outcome = server.session(True).start("PLAIN", plain("", "alice", "wonderland"))
    assert outcome == Success("alice") and outcome.encoded() == ""


def test_plain_without_initial_response_takes_it_as_a_response(server):
    """PLAIN without an initial response gets an empty challenge and reads the credentials from <response/>."""
    session = server.session(True)
    assert session.start("PLAIN", None) == Challenge(b"")
    assert session.respond(plain("", "alice", "wonderland")) == Success("alice")


def test_plain_wrong_password_unknown_user_and_empty_fields_are_not_authorized(server):
    """PLAIN with a wrong password, an unknown user or an empty field is not-authorized."""
    for data in (plain("", "alice", "wrong"), plain("", "nobody", "x"), plain("", "", "wonderland"), plain("", "alice", "")):
        assert server.session(True).start("PLAIN", data) == Failure("not-authorized")


def test_plain_disabled_user_is_account_disabled(server, credentials):
    """A disabled user with the right PLAIN password gets account-disabled."""
    credentials.disabled.add("alice")
    assert server.session(True).start("PLAIN", plain("", "alice", "wonderland")).condition == "account-disabled"


def test_plain_authzid_must_be_the_user_itself(server):
    """PLAIN accepts an authzid equal to the user's own JID and refuses another with invalid-authzid."""
    assert isinstance(server.session(True).start("PLAIN", plain(f"alice@{DOMAIN}", "alice", "wonderland")), Success)
    outcome = server.session(True).start("PLAIN", plain(f"bob@{DOMAIN}", "alice", "wonderland"))
    assert outcome.condition == "invalid-authzid"


@pytest.mark.parametrize("data", [b64("alice\0wonderland"), b64(b"\0alice\0wonder\xffland"), b64("a\0b\0c\0d")])
def test_plain_malformed_message_is_malformed_request(server, data):
    """A PLAIN message without exactly three NUL-separated UTF-8 fields is malformed-request."""
    assert server.session(True).start("PLAIN", data).condition == "malformed-request"


@pytest.mark.parametrize("text", ["not base64!", "YWxpY2U", "YW=xp", "w6k=\u00e9", b"\xff\xfe"])
def test_malformed_base64_is_incorrect_encoding(server, text):
    """Initial-response text that is not valid base64 is incorrect-encoding."""
    assert server.session(True).start("SCRAM-SHA-256", text) == Failure("incorrect-encoding")


def test_malformed_base64_in_a_response_is_incorrect_encoding(server):
    """A <response/> whose text is not valid base64 is incorrect-encoding and ends the exchange."""
    session = server.session(True)
    session.start("SCRAM-SHA-1", None)
    assert session.respond("%%%") == Failure("incorrect-encoding")
    assert not session.in_progress


def test_equals_sign_is_an_empty_initial_response(server):
    """An initial response of "=" is zero-length data (RFC 6120 6.4.2), not a missing one."""
    assert server.session(True).start("PLAIN", "=").condition == "malformed-request"


def test_base64_with_surrounding_whitespace_is_accepted(server):
    """Whitespace around the base64 text (pretty-printed XML) is ignored."""
    assert server.session(True).start("PLAIN", "\n  " + plain("", "alice", "wonderland") + "\n") == Success("alice")


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512", "scram-sha-1", "", "X-OAUTH2"])
def test_unknown_mechanism_is_invalid_mechanism(server, mechanism):
    """A mechanism we do not offer (including -PLUS variants and wrong case) is invalid-mechanism."""
    assert server.session(True).start(mechanism, "=") == Failure("invalid-mechanism")


def test_abort_ends_the_exchange_and_a_new_one_can_start(server):
    """<abort/> mid-exchange gives aborted; the client may then authenticate afresh."""
    session = server.session(False)
    client = ScramClient(["SCRAM-SHA-256"], "alice", "wonderland")
    session.start("SCRAM-SHA-256", b64(client.get_client_first()))
    assert session.abort() == Failure("aborted")
    assert not session.in_progress
    outcome, _ = scram_login(session, "SCRAM-SHA-256", "alice", "wonderland")
    assert isinstance(outcome, Success)


def test_retry_after_a_wrong_password_succeeds_and_failures_are_counted(server):
    """After a failure the same session can start again; failures counts each failed attempt."""
    session = server.session(False)
    scram_login(session, "SCRAM-SHA-1", "alice", "bad password")
    scram_login(session, "SCRAM-SHA-1", "alice", "bad password")
    outcome, _ = scram_login(session, "SCRAM-SHA-1", "alice", "wonderland")
    assert isinstance(outcome, Success) and session.failures == 2


def test_a_new_auth_mid_exchange_replaces_the_old_one(server):
    """A second <auth/> while an exchange waits for a response abandons the first and runs the second."""
    session = server.session(True)
    session.start("SCRAM-SHA-256", None)
    assert session.start("PLAIN", plain("", "alice", "wonderland")) == Success("alice")


def test_response_without_an_exchange_is_malformed_request(server):
    """A <response/> when no exchange is in progress is malformed-request."""
    assert server.session(False).respond(b64("anything")).condition == "malformed-request"


def test_a_succeeded_session_refuses_further_use(server):
    """After success the protocol layer must restart the stream; using the session again is an error."""
    session = server.session(True)
    session.start("PLAIN", plain("", "alice", "wonderland"))
    for use in (lambda: session.start("PLAIN", "="), lambda: session.respond("="), session.abort):
        with pytest.raises(SaslStateError):
            use()


def test_replayed_client_final_does_not_log_in(server):
    """A client-final captured from one exchange does not authenticate another (the server nonce differs)."""
    first = server.session(False)
    client = ScramClient(["SCRAM-SHA-256"], "alice", "wonderland", c_nonce="fixednonce")
    challenge = first.start("SCRAM-SHA-256", b64(client.get_client_first()))
    client.set_server_first(challenge.data.decode())
    captured = b64(client.get_client_final())
    second = server.session(False)
    second.start("SCRAM-SHA-256", b64(ScramClient(["SCRAM-SHA-256"], "alice", "x" * 8, c_nonce="fixednonce").get_client_first()))
    assert isinstance(second.respond(captured), Failure)

