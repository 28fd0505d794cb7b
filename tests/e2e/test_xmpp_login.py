"""XMPP clients (slixmpp, real sockets) against the installed appliance: TLS, every SASL mechanism, chat.

Users are made with `hipchat-appliance user add` under a name unique to this
run and deleted from MariaDB afterwards. slixmpp runs on its own asyncio loop
inside each test (``asyncio.run``), every wait bounded so a failure never hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import uuid

import pytest
import slixmpp

from tests.conftest import run_appliance_cli

TIMEOUT = 20.0  # seconds for any one step: connect, log in, receive
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def prefix(chat_server):
    """A username prefix unique to this run; its users are deleted at the end."""
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import users

    prefix = f"e2e-xmpp-{uuid.uuid4().hex[:6]}-"
    yield prefix
    run_in_transaction(
        chat_server.get_database_engine(),
        "delete_e2e_xmpp_users",
        lambda c: c.execute(users.delete().where(users.c.username.like(f"{prefix}%"))),
    )


@pytest.fixture(scope="module")
def new_user(prefix, tmp_path_factory):
    """Add a user through the CLI; return its username."""
    password_file = tmp_path_factory.mktemp("xmpp") / "password"
    password_file.write_text(PASSWORD + "\n")

    def add() -> str:
        username = f"{prefix}{uuid.uuid4().hex[:6]}"
        result = run_appliance_cli(
            "user",
            "add",
            username,
            "--name",
            f"Test {username}",
            "--email",
            f"{username}@e2e.example.com",
            "--password-file",
            str(password_file),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return username

    return add


@pytest.fixture(scope="module")
def alice(new_user):
    return new_user()


@pytest.fixture(scope="module")
def bob(new_user):
    return new_user()


class Endpoint:
    """Where and how to reach the appliance's XMPP ports."""

    def __init__(self, config):
        self.domain = config.server.domain
        self.c2s_port = config.xmpp.c2s_port
        self.c2s_tls_port = config.xmpp.c2s_tls_port
        self.ca_certificate = config.tls.ca_certificate


@pytest.fixture(scope="module")
def endpoint(config):
    return Endpoint(config)


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that reports the end of its login as a future: True (bound) or False (refused)."""

    def __init__(self, endpoint: Endpoint, username: str, password: str, mechanism: str | None, direct_tls: bool):
        super().__init__(f"{username}@{endpoint.domain}/e2e-{uuid.uuid4().hex[:4]}", password, sasl_mech=mechanism)
        self.endpoint, self.direct_tls = endpoint, direct_tls
        self.ssl_context = ssl.create_default_context(cafile=endpoint.ca_certificate)
        self.enable_direct_tls, self.enable_starttls, self.enable_plaintext = direct_tls, not direct_tls, False
        self.logged_in: asyncio.Future = asyncio.get_running_loop().create_future()
        self.received: asyncio.Queue = asyncio.Queue()
        self.add_event_handler("session_start", lambda _: self._settle(True))
        self.add_event_handler("failed_all_auth", lambda _: self._settle(False))
        self.add_event_handler("connection_failed", lambda _: self._settle(False))
        self.add_event_handler("disconnected", lambda _: self._settle(False))
        self.add_event_handler("message", self.received.put_nowait)
        self.add_event_handler("message_error", self.received.put_nowait)
        self.register_plugin("xep_0030")  # service discovery
        self.register_plugin("xep_0092")  # software version

    def _settle(self, result: bool) -> None:
        if not self.logged_in.done():
            self.logged_in.set_result(result)

    async def log_in(self) -> bool:
        """Connect to the port of this client's TLS mode; True once a resource is bound."""
        port = self.endpoint.c2s_tls_port if self.direct_tls else self.endpoint.c2s_port
        self.connect("127.0.0.1", port)
        try:
            return await asyncio.wait_for(self.logged_in, TIMEOUT)
        finally:
            if not self.logged_in.done() or not self.logged_in.result():
                self.cancel_connection_attempt()  # no reconnection loop after a refusal

    async def close(self) -> None:
        self.cancel_connection_attempt()
        if self.transport is not None:
            self.disconnect(wait=1.0)
            try:
                await asyncio.wait_for(self.disconnected, 5)
            except asyncio.TimeoutError:
                self.abort()


def run(coroutine):
    """Run a test's coroutine on a fresh asyncio loop, bounded by a timeout."""

    async def bounded():
        return await asyncio.wait_for(coroutine, 4 * TIMEOUT)

    return asyncio.run(bounded())


async def login(endpoint, username, password=PASSWORD, mechanism=None, direct_tls=False) -> tuple[Client, bool]:
    client = Client(endpoint, username, password, mechanism, direct_tls)
    ok = await client.log_in()
    return client, ok


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"])
def test_login_with_each_sasl_mechanism_over_starttls(endpoint, alice, mechanism):
    """On the client port a user logs in after STARTTLS with SCRAM-SHA-256, SCRAM-SHA-1 or PLAIN and gets a full JID."""

    async def scenario():
        client, ok = await login(endpoint, alice, mechanism=mechanism)
        try:
            assert ok, f"login with {mechanism} failed"
            assert client.boundjid.bare == f"{alice}@{endpoint.domain}"
            assert client.boundjid.resource
            assert client.plugin["feature_mechanisms"].mech.name == mechanism
        finally:
            await client.close()

    run(scenario())


def test_login_over_direct_tls(endpoint, alice):
    """On the direct-TLS port a user logs in with TLS from the first byte (the certificate verifies with the CA)."""

    async def scenario():
        client, ok = await login(endpoint, alice, mechanism="SCRAM-SHA-256", direct_tls=True)
        try:
            assert ok and client.boundjid.bare == f"{alice}@{endpoint.domain}"
        finally:
            await client.close()

    run(scenario())


def test_wrong_password_is_refused(endpoint, alice):
    """A wrong password never binds a session."""

    async def scenario():
        client, ok = await login(endpoint, alice, password="not the password", mechanism="SCRAM-SHA-256")
        await client.close()
        assert not ok

    run(scenario())


def front_end_of(config, username: str, resource: str) -> str | None:
    """The front end the session directory in Redis names for a bound session."""
    from hipchat_server.storage.redis import primary_client

    value = primary_client(config.redis).hget(f"xmpp:sessions:{username}@{config.server.domain}", resource)
    return value.decode() if value else None


async def exchange(sender, receiver, body: str):
    """Send ``body`` from sender to receiver's bare JID; return what the receiver got."""
    sender.send_message(mto=receiver.boundjid.bare, mbody=body, mtype="chat")
    return await asyncio.wait_for(receiver.received.get(), TIMEOUT)


def test_two_users_on_different_front_ends_chat_both_ways_in_order(config, endpoint, alice, bob):
    """Users held by two different front-end processes exchange messages both ways, in the order sent.

    The kernel spreads connections over the front ends; the sender reconnects
    until the session directory in Redis shows it on another front end than
    the receiver, so the cross-process path (Redis pub/sub) is what is tested.
    """
    if (os.cpu_count() or 1) < 2:
        pytest.fail("this host runs one front end; the test needs two")

    async def scenario():
        receiver, ok = await login(endpoint, bob)
        assert ok
        sender = None
        try:
            for _ in range(20):
                sender, ok = await login(endpoint, alice)
                assert ok
                await asyncio.sleep(0.3)  # the directory entry is written right after binding
                where = (
                    front_end_of(config, bob, receiver.boundjid.resource),
                    front_end_of(config, alice, sender.boundjid.resource),
                )
                assert None not in where, f"a bound session is missing from the directory: {where}"
                if where[0] != where[1]:
                    break
                await sender.close()
                sender = None
            assert sender is not None, "the sender never landed on another front end"
            bodies = [f"message {n} {uuid.uuid4().hex[:6]}" for n in range(5)]
            received = [await exchange(sender, receiver, body) for body in bodies]
            assert [m["body"] for m in received] == bodies
            assert all(m["from"] == sender.boundjid for m in received)
            reply = await exchange(receiver, sender, "and back")
            assert reply["body"] == "and back"
        finally:
            if sender is not None:
                await sender.close()
            await receiver.close()

    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    run(scenario())


def test_message_to_a_user_with_no_session_is_refused(endpoint, alice, bob):
    """A chat message to a user who is not connected comes back as service-unavailable (no offline storage yet)."""

    async def scenario():
        sender, ok = await login(endpoint, alice)
        assert ok
        try:
            sender.send_message(mto=f"{bob}@{endpoint.domain}", mbody="anyone?", mtype="chat")
            message = await asyncio.wait_for(sender.received.get(), TIMEOUT)
            assert message["type"] == "error"
            assert message["error"]["condition"] == "service-unavailable"
        finally:
            await sender.close()

    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    run(scenario())


def test_server_answers_disco_info_and_version(endpoint, alice):
    """A real client discovers the server (identity server/im, ping among the features) and reads its version."""

    async def scenario():
        client, ok = await login(endpoint, alice)
        assert ok
        try:
            info = await client.plugin["xep_0030"].get_info(jid=endpoint.domain, timeout=TIMEOUT)
            assert ("server", "im") in {(c, t) for c, t, _lang, _name in info["disco_info"]["identities"]}
            assert "urn:xmpp:ping" in info["disco_info"]["features"]
            version = await client.plugin["xep_0092"].get_version(endpoint.domain, timeout=TIMEOUT)
            assert version["software_version"]["name"] == "HipChat Server"
        finally:
            await client.close()

    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    run(scenario())
