"""XMPP clients (slixmpp, real sockets) against the installed appliance: TLS, every SASL mechanism, chat.

Users are made with `hipchat-appliance user add` under a name unique to this
run and deleted from MariaDB afterwards (fixtures in conftest.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import pytest

from tests.e2e.xmpp_client import TIMEOUT, front_end_of, login, run


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


def test_message_to_an_unknown_user_is_refused(endpoint, alice, prefix):
    """A chat message to a user who does not exist comes back as service-unavailable (nothing is stored)."""

    async def scenario():
        sender, ok = await login(endpoint, alice)
        assert ok
        try:
            sender.send_message(mto=f"{prefix}nobody@{endpoint.domain}", mbody="anyone?", mtype="chat")
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
