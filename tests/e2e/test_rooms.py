"""Group rooms (XEP-0045) through the installed appliance, with real slixmpp clients (plugin xep_0045).

Each test makes its own room (a fresh name) and users; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import xml.etree.ElementTree as ET

import pytest
from slixmpp import JID
from slixmpp.exceptions import IqError, PresenceError

from tests.e2e.xmpp_client import TIMEOUT, acked, front_end_of, login, run, sent_count, sm_login

MUC_USER = "http://jabber.org/protocol/muc#user"
DELAY = "urn:xmpp:delay"
OWNER = "http://jabber.org/protocol/muc#owner"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def room_of(endpoint) -> str:
    return f"e2e-room-{uuid.uuid4().hex[:8]}@conference.{endpoint.domain}"


async def member(endpoint, username, resource=None, plugins=()):
    """A logged-in client with MUC, and a queue of the groupchat messages it receives."""
    client, ok = await login(endpoint, username, resource=resource, plugins=("xep_0045", *plugins))
    assert ok
    client.groupchat = asyncio.Queue()
    client.add_event_handler("groupchat_message", client.groupchat.put_nowait)
    return client


async def join(client, room, nick, **options):
    """Join ``room`` as ``nick``: (own presence, subject message, occupant presences, history messages).

    The history (it came before the subject) is taken out of the client's groupchat queue.
    """
    joined = await client.plugin["xep_0045"].join_muc_wait(JID(room), nick, timeout=TIMEOUT, **options)
    while not client.groupchat.empty():
        client.groupchat.get_nowait()
    return joined


async def create(client, room, nick, members_only=False):
    """Create ``room`` (status 201) and accept it as an instant room, or configure it members-only."""
    presence, _, _, _ = await join(client, room, nick)
    assert "201" in status_codes(presence)
    fields = "<field var='muc#roomconfig_membersonly'><value>1</value></field>" if members_only else ""
    iq = client.make_iq_set(ito=room)
    iq.xml.append(ET.fromstring(f"<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>{fields}</x></query>"))
    await iq.send(timeout=TIMEOUT)


def status_codes(stanza) -> list[str]:
    return [s.get("code") for s in stanza.xml.iter(f"{{{MUC_USER}}}status")]


async def next_body(client, timeout=TIMEOUT) -> str:
    return (await asyncio.wait_for(client.groupchat.get(), timeout))["body"]


async def close_all(*clients):
    for client in clients:
        await client.close()


def test_create_join_list_and_talk_with_history_subject_and_nickname_conflict(endpoint, new_user):
    """A room is created on first join, listed in disco#items, keeps its subject and history for those who join later,
    refuses a second user's nickname, and reflects each message to every occupant, the sender too."""
    alice, bob, carol = new_user(), new_user(), new_user()
    room = room_of(endpoint)

    async def scenario():
        a, b, c = await member(endpoint, alice), await member(endpoint, bob), await member(endpoint, carol)
        try:
            await create(a, room, "alice")
            items = await a.plugin["xep_0030"].get_items(jid=f"conference.{endpoint.domain}", timeout=TIMEOUT)
            assert room in [item[0] for item in items["disco_items"]["items"]]
            info = await a.plugin["xep_0030"].get_info(jid=room, timeout=TIMEOUT)
            assert {"http://jabber.org/protocol/muc", "urn:xmpp:mam:2", "muc_open", "muc_persistent"} <= set(info["disco_info"]["features"])
            subject_set = asyncio.get_running_loop().create_future()
            a.add_event_handler("groupchat_subject", lambda m: not subject_set.done() and subject_set.set_result(m))
            a.plugin["xep_0045"].set_subject(room, "Release day")
            assert (await asyncio.wait_for(subject_set, TIMEOUT))["subject"] == "Release day"
            sent = [f"before you came {n} {uuid.uuid4().hex[:4]}" for n in range(3)]
            for body in sent:
                a.send_message(mto=room, mbody=body, mtype="groupchat")
                assert await next_body(a) == body  # the reflection is the sender's confirmation
            presence, subject, occupants, history = await join(b, room, "bob")
            assert [m["body"] for m in history] == sent  # oldest first
            for message in history:
                assert message.xml.find(f"{{{DELAY}}}delay").get("from") == room
            assert subject["subject"] == "Release day"
            assert [p["from"].resource for p in occupants] == ["alice", "bob"]  # those present, then itself
            assert "110" in status_codes(presence)
            with pytest.raises(PresenceError) as conflict:
                await join(c, room, "bob")
            assert conflict.value.condition == "conflict"
            b.send_message(mto=room, mbody="hello everyone", mtype="groupchat")
            assert await next_body(a) == "hello everyone" and await next_body(b) == "hello everyone"
        finally:
            await close_all(a, b, c)

    run(scenario())


def test_private_room_is_refused_to_a_non_member_until_the_owner_adds_them(endpoint, new_user):
    """A members-only room answers registration-required (407) to a non-member, and lets them in once a member;
    it is not listed to non-members."""
    alice, eve = new_user(), new_user()
    room = room_of(endpoint)

    async def scenario():
        a, e = await member(endpoint, alice), await member(endpoint, eve)
        try:
            await create(a, room, "alice", members_only=True)
            with pytest.raises(PresenceError) as refused:
                await join(e, room, "eve")
            assert refused.value.condition == "registration-required"
            items = await e.plugin["xep_0030"].get_items(jid=f"conference.{endpoint.domain}", timeout=TIMEOUT)
            assert room not in [item[0] for item in items["disco_items"]["items"]]
            await a.plugin["xep_0045"].set_affiliation(room, "member", jid=f"{eve}@{endpoint.domain}", timeout=TIMEOUT)
            presence, _, _, _ = await join(e, room, "eve")
            assert presence["muc"]["affiliation"] == "member"
        finally:
            await close_all(a, e)

    run(scenario())


def test_kick_and_ban(endpoint, new_user):
    """A kicked occupant gets 307 and may come back; a banned user gets 301 and then forbidden (403)."""
    alice, bob, carol = new_user(), new_user(), new_user()
    room = room_of(endpoint)

    async def scenario():
        a, b, c = await member(endpoint, alice), await member(endpoint, bob), await member(endpoint, carol)
        try:
            await create(a, room, "alice")
            for client, nick in ((b, "bob"), (c, "carol")):
                await join(client, room, nick)
            left = asyncio.get_running_loop().create_future()
            b.add_event_handler(f"muc::{room}::self-presence", lambda p: p["type"] == "unavailable" and not left.done() and left.set_result(p))
            await a.plugin["xep_0045"].set_role(room, "bob", "none", reason="cool off", timeout=TIMEOUT)
            kicked = await asyncio.wait_for(left, TIMEOUT)
            assert "307" in status_codes(kicked)
            await join(b, room, "bob")  # a kick is not a ban
            banned_future = asyncio.get_running_loop().create_future()
            c.add_event_handler(f"muc::{room}::self-presence", lambda p: p["type"] == "unavailable" and not banned_future.done() and banned_future.set_result(p))
            await a.plugin["xep_0045"].set_affiliation(room, "outcast", jid=f"{carol}@{endpoint.domain}", reason="spam", timeout=TIMEOUT)
            banned = await asyncio.wait_for(banned_future, TIMEOUT)
            assert "301" in status_codes(banned)
            with pytest.raises(PresenceError) as refused:
                await join(c, room, "carol")
            assert refused.value.condition == "forbidden"
            outcasts = await a.plugin["xep_0045"].get_affiliation_list(room, "outcast", timeout=TIMEOUT)
            assert [str(j) for j in outcasts] == [f"{carol}@{endpoint.domain}"]
            with pytest.raises(IqError) as not_moderator:
                await b.plugin["xep_0045"].set_role(room, "alice", "none", timeout=TIMEOUT)
            assert not_moderator.value.condition in ("forbidden", "not-allowed")
        finally:
            await close_all(a, b, c)

    run(scenario())


def test_invitation_reaches_the_invitee(endpoint, new_user):
    """A mediated invitation arrives from the room, naming the inviter; into a private room it makes the invitee a member."""
    alice, bob = new_user(), new_user()
    room = room_of(endpoint)

    async def scenario():
        a, b = await member(endpoint, alice), await member(endpoint, bob)
        try:
            await create(a, room, "alice", members_only=True)
            invited = asyncio.get_running_loop().create_future()
            b.add_event_handler("groupchat_invite", lambda m: not invited.done() and invited.set_result(m))
            a.plugin["xep_0045"].invite(room, f"{bob}@{endpoint.domain}", reason="standup")
            invitation = await asyncio.wait_for(invited, TIMEOUT)
            assert invitation["from"].bare == room
            invite = invitation.xml.find(f"{{{MUC_USER}}}x/{{{MUC_USER}}}invite")
            assert invite.get("from") == f"{alice}@{endpoint.domain}"
            presence, _, _, _ = await join(b, room, "bob")  # the private room lets the invitee in
            assert presence["muc"]["affiliation"] == "member"
        finally:
            await close_all(a, b)

    run(scenario())


def test_messages_reach_occupants_on_both_front_ends(config, endpoint, new_user):
    """Occupants spread over both XMPP front ends each receive every message of the room, in the order sent."""
    room = room_of(endpoint)

    async def scenario():
        clients, where = [], {}
        for _ in range(12):  # the kernel spreads connections; log in until both front ends hold occupants
            username = new_user()
            client = await member(endpoint, username)
            clients.append(client)
            where.setdefault(front_end_of(config, username, client.boundjid.resource), []).append(client)
            if len(where) >= 2 and len(clients) >= 4:
                break
        try:
            assert len(where) >= 2, f"every session landed on {list(where)}"
            await create(clients[0], room, "owner")
            for n, client in enumerate(clients[1:], 1):
                await join(client, room, f"user{n}")
            bodies = [f"to both front ends {n}" for n in range(5)]
            for body in bodies:
                clients[-1].send_message(mto=room, mbody=body, mtype="groupchat")
            for client in clients:
                assert [await next_body(client) for _ in bodies] == bodies
        finally:
            await close_all(*clients)

    run(scenario())


def test_a_room_message_is_acknowledged_only_once_it_is_durable(config, endpoint, new_user):
    """With XEP-0198, the server's ack for a groupchat message means it is already in the room's recent list in Redis."""
    from hipchat_server.storage.redis import primary_client

    alice = new_user()
    room = room_of(endpoint)
    redis = primary_client(config.redis)

    async def scenario():
        a = await sm_login(endpoint, alice)
        a.register_plugin("xep_0045")
        a.groupchat = asyncio.Queue()
        a.add_event_handler("groupchat_message", a.groupchat.put_nowait)
        try:
            await create(a, room, "alice")
            for n in range(5):
                body = f"durable {n} {uuid.uuid4().hex[:6]}"
                mark = sent_count(a) + 1
                a.send_message(mto=room, mbody=body, mtype="groupchat")
                await acked(a, mark)
                recent = [json.loads(item) for item in redis.lrange(f"archive:recent:room:{room}", 0, 0)]
                assert recent and recent[0]["body"] == body and recent[0]["sender_name"] == "alice"
                assert await next_body(a) == body
        finally:
            await a.close()

    run(scenario())
