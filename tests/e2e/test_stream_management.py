"""Stream Management (XEP-0198) through the installed appliance, with slixmpp's xep_0198 plugin.

A phone that loses its connection resumes its session (often on the other
front end, the kernel picks) and gets every message sent meanwhile exactly
once; a sender's messages are acknowledged only once delivered or stored.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from tests.e2e.xmpp_client import TIMEOUT, acked, collect, event, front_end_of, login, run, send_durably, sent_count, sm_login

ROUNDS = 10  # drop-and-resume rounds; each lands on either front end, so some cross front ends


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
