"""One-to-one delivery through the installed appliance: several devices (carbons) and offline storage.

Real slixmpp clients on real sockets; the users come from `hipchat-appliance user add`.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.e2e.xmpp_client import TIMEOUT, login, run

DELAY_NS = "urn:xmpp:delay"


def body_of(message) -> str:
    return message["body"]


async def next_body(queue: asyncio.Queue) -> str:
    return body_of(await asyncio.wait_for(queue.get(), TIMEOUT))


async def nothing_arrives(queue: asyncio.Queue, seconds: float = 1.0) -> bool:
    try:
        await asyncio.wait_for(queue.get(), seconds)
    except asyncio.TimeoutError:
        return True
    return False


def test_three_devices_of_one_user_all_see_the_conversation(endpoint, new_user):
    """Message Carbons (XEP-0280): alice's laptop, phone and tablet each see what the others send and receive."""
    alice, bob = new_user(), new_user()

    async def scenario():
        devices = {}
        for resource in ("laptop", "phone", "tablet"):
            client, ok = await login(endpoint, alice, resource=resource, plugins=("xep_0280",))
            assert ok
            client.carbons_in, client.carbons_out = asyncio.Queue(), asyncio.Queue()
            client.add_event_handler("carbon_received", lambda m, c=client: c.carbons_in.put_nowait(m["carbon_received"]))
            client.add_event_handler("carbon_sent", lambda m, c=client: c.carbons_out.put_nowait(m["carbon_sent"]))
            await asyncio.wait_for(client.plugin["xep_0280"].enable(), TIMEOUT)
            devices[resource] = client
        sender, ok = await login(endpoint, bob)
        assert ok
        try:
            # To the bare JID: every available device gets the message itself.
            sender.send_message(mto=f"{alice}@{endpoint.domain}", mbody="to all of you", mtype="chat")
            for device in devices.values():
                assert await next_body(device.received) == "to all of you"
            # To one device: the others get a "received" carbon copy.
            sender.send_message(mto=devices["phone"].boundjid.full, mbody="to the phone", mtype="chat")
            assert await next_body(devices["phone"].received) == "to the phone"
            for name in ("laptop", "tablet"):
                copy = await asyncio.wait_for(devices[name].carbons_in.get(), TIMEOUT)
                assert copy["body"] == "to the phone" and copy["from"].bare == f"{bob}@{endpoint.domain}"
            # From one device: the others get a "sent" carbon copy; the sender's own stream gets nothing back.
            devices["laptop"].send_message(mto=f"{bob}@{endpoint.domain}", mbody="from the laptop", mtype="chat")
            assert await next_body(sender.received) == "from the laptop"
            for name in ("phone", "tablet"):
                copy = await asyncio.wait_for(devices[name].carbons_out.get(), TIMEOUT)
                assert copy["body"] == "from the laptop" and copy["to"].bare == f"{bob}@{endpoint.domain}"
            assert await nothing_arrives(devices["laptop"].carbons_out)
        finally:
            for client in (*devices.values(), sender):
                await client.close()

    run(scenario())


def test_messages_to_an_offline_user_are_stored_and_delivered_in_order_at_next_login(endpoint, new_user):
    """Offline storage (XEP-0160): no error to the sender, and every message arrives with its delay stamp."""
    bob, carol = new_user(), new_user()
    bodies = [f"while you were out {n} {uuid.uuid4().hex[:4]}" for n in range(3)]

    async def scenario():
        sender, ok = await login(endpoint, bob)
        assert ok
        try:
            for body in bodies:
                sender.send_message(mto=f"{carol}@{endpoint.domain}", mbody=body, mtype="chat")
            assert await nothing_arrives(sender.received, 2.0), "the sender got an error back"
        finally:
            await sender.close()
        # A session that has not sent presence yet is not "available": nothing is handed over.
        silent, ok = await login(endpoint, carol, available=False)
        assert ok
        assert await nothing_arrives(silent.received, 1.0)
        await silent.close()
        receiver, ok = await login(endpoint, carol)
        assert ok
        try:
            got = [await asyncio.wait_for(receiver.received.get(), TIMEOUT) for _ in bodies]
            assert [m["body"] for m in got] == bodies
            for message in got:
                assert message.xml.find(f"{{{DELAY_NS}}}delay") is not None
            assert await nothing_arrives(receiver.received, 1.0)  # delivered once, then removed
        finally:
            await receiver.close()
        again, ok = await login(endpoint, carol)
        assert ok
        try:
            assert await nothing_arrives(again.received, 1.5)
        finally:
            await again.close()

    run(scenario())
