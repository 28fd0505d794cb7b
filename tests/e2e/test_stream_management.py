"""Stream Management (XEP-0198) through the installed appliance, with slixmpp's xep_0198 plugin.

A phone that loses its connection resumes its session (often on the other
front end, the kernel picks) and gets every message sent meanwhile exactly
once; a sender's messages are acknowledged only once delivered or stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from tests.e2e.xmpp_client import TIMEOUT, front_end_of, login, run

ROUNDS = 10  # drop-and-resume rounds; each lands on either front end, so some cross front ends


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


def test_a_dropped_connection_resumes_with_nothing_lost_or_duplicated(config, endpoint, new_user):
    """alice's TCP connection is cut (no </stream>); bob keeps writing; alice resumes and gets each message once.

    Repeated until at least one resumption landed on another front end than
    the one holding the hibernating session (the kernel spreads connections).
    """
    alice, bob = new_user(), new_user()

    async def scenario():
        phone = await sm_login(endpoint, alice, resource="phone")
        sender = await sm_login(endpoint, bob)
        sm_id = phone.plugin["xep_0198"].sm_id
        sent, crossed = [], 0
        try:
            for round_ in range(ROUNDS):
                before = front_end_of(config, alice, "phone")
                # Messages the phone receives while connected.
                for n in range(2):
                    sent.append(f"round {round_} online {n} {uuid.uuid4().hex[:4]}")
                    await send_durably(sender, phone.boundjid.full, sent[-1])
                assert await collect(phone.received, 2) == sent[-2:]
                # The network goes: the socket closes without </stream>.
                disconnected = await event(phone, "disconnected")
                phone.transport.abort()
                await asyncio.wait_for(disconnected, TIMEOUT)
                await asyncio.sleep(0.3)  # the server notices the lost connection
                away = [f"round {round_} away {n} {uuid.uuid4().hex[:4]}" for n in range(3)]
                for body in away:  # each durable (queued in the hibernating session) before the next
                    await send_durably(sender, phone.boundjid.full, body)
                # The phone comes back and resumes.
                resumed = await event(phone, "session_resumed")
                phone.connect("127.0.0.1", endpoint.c2s_port)
                await asyncio.wait_for(resumed, TIMEOUT)
                assert phone.plugin["xep_0198"].sm_id == sm_id
                assert await collect(phone.received, len(away)) == away
                await asyncio.sleep(0.3)  # the directory entry follows the session
                after = front_end_of(config, alice, "phone")
                assert after is not None
                crossed += before != after
                if crossed and round_ >= 1:
                    break
            assert crossed, f"no resumption landed on another front end in {ROUNDS} rounds"
            # The resumed session works both ways.
            phone.send_message(mto=sender.boundjid.full, mbody="back again", mtype="chat")
            assert (await asyncio.wait_for(sender.received.get(), TIMEOUT))["body"] == "back again"
        finally:
            await phone.close()
            await sender.close()

    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    run(scenario())


def test_messages_are_acknowledged_only_once_stored_or_delivered(chat_server, endpoint, new_user):
    """bob's <a h/> counts a message to an offline user only once it is in offline storage, and one to an online user once delivered."""
    from hipchat_server.storage.offline import OfflineStore

    alice, bob, carol = new_user(), new_user(), new_user()
    offline = OfflineStore(chat_server.get_database_engine())

    async def scenario():
        sender = await sm_login(endpoint, bob)
        receiver, ok = await login(endpoint, alice)
        assert ok
        try:
            mark = sent_count(sender) + 1
            sender.send_message(mto=f"{carol}@{endpoint.domain}", mbody="for later", mtype="chat")
            await acked(sender, mark)
            assert offline.count(carol) == 1, "acknowledged before it was stored"
            bodies = [f"now {n}" for n in range(5)]
            mark = sent_count(sender) + len(bodies)
            for body in bodies:
                sender.send_message(mto=receiver.boundjid.full, mbody=body, mtype="chat")
            await acked(sender, mark)
            received = [(await asyncio.wait_for(receiver.received.get(), 2.0))["body"] for _ in bodies]
            assert received == bodies
        finally:
            await sender.close()
            await receiver.close()

    logging.getLogger("slixmpp").setLevel(logging.WARNING)
    run(scenario())


@pytest.fixture(autouse=True)
def _two_front_ends():
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.fail("this host runs one front end; resumption across front ends needs two")
