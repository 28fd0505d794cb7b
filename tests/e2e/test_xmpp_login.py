"""XMPP clients (slixmpp, real sockets) against the installed appliance: TLS, every SASL mechanism, chat.

Users are made with `hipchat-appliance user add` under a name unique to this
run and deleted from MariaDB afterwards. slixmpp runs on its own asyncio loop
inside each test (``asyncio.run``), every wait bounded so a failure never hangs.
"""

from __future__ import annotations

import asyncio
import logging
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


def test_two_users_exchange_a_message(endpoint, alice, bob):
    """A chat message from one user to the other's bare JID arrives with the sender's full JID and the body.

    Until routing through Redis lands, a message reaches only users on the same
    front-end process; the kernel spreads connections over the processes, so
    the sender reconnects until its message is not bounced (service-unavailable).
    """

    async def scenario():
        receiver, ok = await login(endpoint, bob)
        assert ok
        try:
            for attempt in range(12):
                sender, ok = await login(endpoint, alice)
                assert ok
                try:
                    body = f"hello {attempt} {uuid.uuid4().hex[:6]}"
                    sender.send_message(mto=f"{bob}@{endpoint.domain}", mbody=body, mtype="chat")
                    waits = [asyncio.ensure_future(c.received.get()) for c in (receiver, sender)]
                    done, pending = await asyncio.wait(waits, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
                    for wait in pending:
                        wait.cancel()
                    assert done, "neither a delivery nor a bounce arrived"
                    message = done.pop().result()
                    if message["type"] == "error":
                        assert message["error"]["condition"] == "service-unavailable"
                        continue  # on another front end: try again
                    assert message["body"] == body
                    assert message["from"] == sender.boundjid
                    return
                finally:
                    await sender.close()
            pytest.fail("the two users never landed on the same front-end process")
        finally:
            await receiver.close()

    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    run(scenario())
