"""A slixmpp client for the end-to-end tests, and helpers to run its scenarios with bounded waits.

slixmpp runs on its own asyncio loop inside each test (``run``), every wait
bounded so a failure never hangs the suite.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid

import slixmpp

TIMEOUT = 20.0  # seconds for any one step: connect, log in, receive
PASSWORD = "correct horse battery"


class Endpoint:
    """Where and how to reach the appliance's XMPP ports."""

    def __init__(self, config):
        self.config = config
        self.domain = config.server.domain
        self.c2s_port = config.xmpp.c2s_port
        self.c2s_tls_port = config.xmpp.c2s_tls_port
        self.ca_certificate = config.tls.ca_certificate


class Client(slixmpp.ClientXMPP):
    """A slixmpp client that reports the end of its login as a future: True (bound) or False (refused).

    Like a real client it sends initial presence once bound (``available``),
    which is what makes it receive messages to its bare JID.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        username: str,
        password: str,
        mechanism: str | None,
        direct_tls: bool,
        *,
        resource: str | None = None,
        available: bool = True,
        plugins: tuple[str, ...] = (),
        plugin_config: dict[str, dict] | None = None,
    ):
        resource = resource or f"e2e-{uuid.uuid4().hex[:4]}"
        super().__init__(f"{username}@{endpoint.domain}/{resource}", password, sasl_mech=mechanism)
        self.available = available
        self.endpoint, self.direct_tls = endpoint, direct_tls
        self.ssl_context = ssl.create_default_context(cafile=endpoint.ca_certificate)
        self.enable_direct_tls, self.enable_starttls, self.enable_plaintext = direct_tls, not direct_tls, False
        self.logged_in: asyncio.Future = asyncio.get_running_loop().create_future()
        self.received: asyncio.Queue = asyncio.Queue()
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("failed_all_auth", lambda _: self._settle(False))
        self.add_event_handler("connection_failed", lambda _: self._settle(False))
        self.add_event_handler("disconnected", lambda _: self._settle(False))
        self.add_event_handler("message", self.received.put_nowait)
        self.add_event_handler("message_error", self.received.put_nowait)
        self.register_plugin("xep_0030")  # service discovery
        self.register_plugin("xep_0092")  # software version
        for plugin in plugins:
            self.register_plugin(plugin, pconfig=(plugin_config or {}).get(plugin))

    def _on_session_start(self, _event) -> None:
        if self.available:
            self.send_presence()
        self._settle(True)

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


async def login(endpoint, username, password=PASSWORD, mechanism=None, direct_tls=False, **options) -> tuple[Client, bool]:
    """Log ``username`` in; ``options`` go to `Client` (resource, available, plugins, plugin_config)."""
    client = Client(endpoint, username, password, mechanism, direct_tls, **options)
    ok = await client.log_in()
    return client, ok


def front_end_of(config, username: str, resource: str) -> str | None:
    """The front end the session directory in Redis names for a bound session."""
    from hipchat_server.storage.redis import primary_client

    value = primary_client(config.redis).hget(f"xmpp:sessions:{username}@{config.server.domain}", resource)
    return value.decode() if value else None


# Stream Management (XEP-0198) helpers: a message counts as sent once the server acknowledged it.
async def event(client, name: str) -> asyncio.Future:
    """A future for the next ``name`` event of ``client`` (registered before the action that causes it)."""
    future = asyncio.get_running_loop().create_future()

    def fire(data):
        if not future.done():
            future.set_result(data)

    client.add_event_handler(name, fire, disposable=True)
    return future


def sent_count(client) -> int:
    """How many stanzas the client sent under Stream Management so far (its presence included)."""
    return client.plugin["xep_0198"].seq


async def acked(client, count: int) -> None:
    """Once the client's send queue wrote ``count`` stanzas, ask for acks until the server acknowledged them all."""
    plugin = client.plugin["xep_0198"]
    deadline = time.monotonic() + TIMEOUT
    while plugin.seq < count:
        assert time.monotonic() < deadline, f"only {plugin.seq} of {count} stanzas were sent"
        await asyncio.sleep(0.02)
    while plugin.last_ack != count:
        assert time.monotonic() < deadline, f"only {plugin.last_ack} of {count} stanzas acknowledged"
        plugin.request_ack()
        await asyncio.sleep(0.05)


async def send_durably(sender, to: str, body: str) -> None:
    """Send one chat message and wait until the server acknowledged it.

    One at a time, so the order they arrive in is the order sent whatever
    path each takes (concurrent messages from one sender may take two paths).
    """
    mark = sent_count(sender) + 1
    sender.send_message(mto=to, mbody=body, mtype="chat")
    await acked(sender, mark)


async def collect(queue: asyncio.Queue, count: int) -> list[str]:
    """``count`` message bodies, then whatever else arrives within a second (a duplicate would)."""
    bodies = [(await asyncio.wait_for(queue.get(), TIMEOUT))["body"] for _ in range(count)]
    try:
        while True:
            bodies.append((await asyncio.wait_for(queue.get(), 1.0))["body"])
    except asyncio.TimeoutError:
        return bodies


async def sm_login(endpoint, username, resource=None):
    client, ok = await login(endpoint, username, resource=resource, plugins=("xep_0198",))
    assert ok
    plugin = client.plugin["xep_0198"]
    deadline = time.monotonic() + TIMEOUT
    while plugin.sm_id is None:  # <enabled/> follows the bind
        assert time.monotonic() < deadline, "stream management was not enabled"
        await asyncio.sleep(0.05)
    return client


async def send_acked(client, stanza) -> None:
    """Send a prepared stanza and wait until the server acknowledged it (XEP-0198)."""
    mark = sent_count(client) + 1
    stanza.send()
    await acked(client, mark)
