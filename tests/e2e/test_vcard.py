"""vCards (XEP-0054) and the server's Entity Capabilities (XEP-0115) through the installed appliance.

Real slixmpp clients on real sockets; the users come from `hipchat-appliance user add`
(conftest.py), with the name "Test <username>" and their username as mention name.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from slixmpp.exceptions import IqError
from slixmpp.jid import JID

from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, Client, login, run

VCARD = ("xep_0054",)
# A tiny PNG, as an XEP-0153 avatar travels in a vCard.
PHOTO = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


async def vcard_of(client, jid: str):
    """The vCard the server answers for ``jid``."""
    iq = await asyncio.wait_for(client.plugin["xep_0054"].get_vcard(jid), TIMEOUT)
    return iq["vcard_temp"]


async def error_condition(request) -> str:
    """The stanza error condition a request is answered with."""
    with pytest.raises(IqError) as raised:
        await asyncio.wait_for(request, TIMEOUT)
    return raised.value.condition


def test_a_vcard_set_by_alice_is_what_bob_reads(endpoint, new_user):
    """Alice sets her vCard (name, nickname, photo); bob reads exactly that from alice's bare JID."""
    alice, bob = new_user(), new_user()

    async def scenario():
        alice_client, ok = await login(endpoint, alice, plugins=VCARD)
        assert ok
        bob_client, ok = await login(endpoint, bob, plugins=VCARD)
        assert ok
        try:
            vcard = alice_client.plugin["xep_0054"].make_vcard()
            vcard["FN"] = "Alice & <Co> Liddell"
            vcard["NICKNAME"] = "ally"
            vcard["PHOTO"]["TYPE"] = "image/png"
            vcard["PHOTO"]["BINVAL"] = PHOTO
            await asyncio.wait_for(alice_client.plugin["xep_0054"].publish_vcard(vcard), TIMEOUT)
            seen = await vcard_of(bob_client, f"{alice}@{endpoint.domain}")
            assert seen["FN"] == "Alice & <Co> Liddell"
            assert seen["NICKNAME"] == ["ally"]  # slixmpp reads NICKNAME as a list
            assert seen["PHOTO"]["TYPE"] == "image/png" and seen["PHOTO"]["BINVAL"] == PHOTO
        finally:
            await alice_client.close()
            await bob_client.close()

    run(scenario())


def test_own_vcard_with_no_to_address(endpoint, new_user):
    """A get with no 'to' returns the sender's own vCard as last set (with no 'to' either)."""
    alice = new_user()

    async def scenario():
        client, ok = await login(endpoint, alice, plugins=VCARD)
        assert ok
        try:
            for name in ("Alice First", "Alice Own"):  # the second set replaces the first
                vcard = client.plugin["xep_0054"].make_vcard()
                vcard["FN"] = name
                await asyncio.wait_for(client.plugin["xep_0054"].publish_vcard(vcard), TIMEOUT)
            iq = client.make_iq_get()  # slixmpp's get_vcard() with no JID only reads its local cache
            iq.enable("vcard_temp")
            reply = await asyncio.wait_for(iq.send(), TIMEOUT)
            assert reply["vcard_temp"]["FN"] == "Alice Own"
        finally:
            await client.close()

    run(scenario())


def test_a_user_without_a_vcard_shows_the_names_of_the_users_table(endpoint, new_user):
    """A user who never set a vCard has one with FN (users.name) and NICKNAME (mention name)."""
    bob, carol = new_user(), new_user()

    async def scenario():
        client, ok = await login(endpoint, bob, plugins=VCARD)
        assert ok
        try:
            seen = await vcard_of(client, f"{carol}@{endpoint.domain}")
            assert seen["FN"] == f"Test {carol}"
            assert seen["NICKNAME"] == [carol]
            nobody = f"nobody-{carol}@{endpoint.domain}"
            assert await error_condition(client.plugin["xep_0054"].get_vcard(nobody)) == "item-not-found"
        finally:
            await client.close()

    run(scenario())


def test_setting_another_users_vcard_is_refused(endpoint, new_user):
    """Alice cannot set bob's vCard: forbidden, and bob's vCard keeps his names."""
    alice, bob = new_user(), new_user()

    async def scenario():
        client, ok = await login(endpoint, alice, plugins=VCARD)
        assert ok
        try:
            vcard = client.plugin["xep_0054"].make_vcard()
            vcard["FN"] = "Not Bob"
            forged = client.plugin["xep_0054"].publish_vcard(vcard, jid=JID(f"{bob}@{endpoint.domain}"))
            assert await error_condition(forged) == "forbidden"
            assert (await vcard_of(client, f"{bob}@{endpoint.domain}"))["FN"] == f"Test {bob}"
        finally:
            await client.close()

    run(scenario())


def test_a_vcard_over_the_size_limit_is_not_acceptable(endpoint, new_user):
    """A vCard with a 96 KiB photo is refused with not-acceptable; the stored one stays."""
    alice = new_user()

    async def scenario():
        client, ok = await login(endpoint, alice, plugins=VCARD)
        assert ok
        try:
            vcard = client.plugin["xep_0054"].make_vcard()
            vcard["PHOTO"]["TYPE"] = "image/png"
            vcard["PHOTO"]["BINVAL"] = bytes(72 * 1024)  # 96 KiB once in base64
            assert await error_condition(client.plugin["xep_0054"].publish_vcard(vcard)) == "not-acceptable"
            assert (await vcard_of(client, f"{alice}@{endpoint.domain}"))["FN"] == f"Test {alice}"
        finally:
            await client.close()

    run(scenario())


def test_server_disco_info_lists_vcard_and_matches_its_stream_caps(endpoint, new_user):
    """disco#info of the server lists vcard-temp and caps; its hash is the ver of the <c/> in stream features,
    and disco#info to that node#ver answers the same (slixmpp's own XEP-0115 code computes the hash)."""
    alice = new_user()

    async def scenario():
        client = Client(endpoint, alice, PASSWORD, None, False, plugins=("xep_0115",))
        advertised = asyncio.get_running_loop().create_future()

        def caps_seen(presence):
            if presence["from"] == JID(endpoint.domain) and not advertised.done():
                advertised.set_result(presence["caps"])

        client.add_event_handler("entity_caps", caps_seen)
        assert await client.log_in()
        try:
            caps, disco = client.plugin["xep_0115"], client.plugin["xep_0030"]
            info = (await asyncio.wait_for(disco.get_info(jid=endpoint.domain), TIMEOUT))["disco_info"]
            assert {"vcard-temp", "http://jabber.org/protocol/caps"} <= set(info["features"])
            # Stream features come before the session starts: the <c/> was seen by now, or never sent.
            assert advertised.done(), "no <c xmlns='http://jabber.org/protocol/caps'/> in the stream features"
            c = advertised.result()
            assert c["hash"] == "sha-1" and c["node"]
            assert caps.generate_verstring(info, "sha-1") == c["ver"]
            node = f"{c['node']}#{c['ver']}"
            at_node = (await asyncio.wait_for(disco.get_info(jid=endpoint.domain, node=node), TIMEOUT))["disco_info"]
            assert at_node["node"] == node
            assert caps.generate_verstring(at_node, "sha-1") == c["ver"]
        finally:
            await client.close()

    run(scenario())
