"""The `hypchat` client library from PyPI, unchanged, against the appliance: rooms, notifications, history, users.

Existing HipChat bots use libraries like this one: it picks object types by
matching each object's ``links.self``, follows ``links`` for members and
paging, and reads the rate-limit headers on every response. It must work by
pointing its endpoint at the appliance's public URL, nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings

import pytest

from tests.conftest import run_appliance_cli
from tests.e2e.test_rooms import join, member
from tests.e2e.xmpp_client import TIMEOUT, run

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the 2016 package has invalid escape sequences in its regexes
    import hypchat
    from hypchat.restobject import HistoryCollection, Room, RoomCollection, User, UserCollection

SCOPES = "admin_room,manage_rooms,send_message,send_notification,view_group,view_messages"


def personal_token(username: str) -> str:
    result = run_appliance_cli("token", "create", "--user", username, "--scopes", SCOPES, "--label", "hypchat")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[0]


@pytest.fixture(scope="module")
def hc(config, alice):
    return hypchat.HypChat(personal_token(alice), endpoint=config.server.public_url.rstrip("/"), verify=config.tls.ca_certificate)


def test_hypchat_creates_a_room_posts_and_reads_history(hc, alice, endpoint):
    name = f"hypchat-{uuid.uuid4().hex[:8]}"
    created = hc.create_room(name)
    room = hc.get_room(created["id"])
    assert isinstance(room, Room) and room["name"] == name and room["owner"]["mention_name"] == alice
    assert isinstance(room["owner"], User)

    async def scenario():
        a = await member(endpoint, alice)
        try:
            await join(a, room["xmpp_jid"], "alice")
            await asyncio.to_thread(room.notification, "deploy <b>done</b>", color="purple", notify=True)
            message = await asyncio.wait_for(a.groupchat.get(), TIMEOUT)
            assert message["body"] == "deploy done"
        finally:
            await a.close()

    run(scenario())
    room.message("plain words")
    room.topic("hypchat topic")
    history = room.history()
    assert isinstance(history, HistoryCollection)
    assert [i["message"] for i in history["items"]] == ["deploy <b>done</b>", "plain words"]
    assert history["items"][0]["date"].tzinfo is not None  # hypchat parsed our dates
    assert history["items"][0]["color"] == "purple" and history["items"][1]["from"]["mention_name"] == alice
    latest = room.latest(maxResults=1)
    assert [i["message"] for i in latest["items"]] == ["plain words"]
    assert hc.get_room(created["id"])["topic"] == "hypchat topic"


def test_hypchat_lists_rooms_and_follows_paging_links(hc):
    names = [f"hypchat-list-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    ids = {hc.create_room(n)["id"] for n in names}
    page = hc.rooms(max_results=1)  # hypchat turns max_results into max-results
    assert isinstance(page, RoomCollection) and len(page["items"]) == 1 and "next" in page["links"]
    # Following links.next page by page: 200 a page, so a host with hundreds of rooms (a benchmark
    # corpus) stays well inside the token's 500 requests per 5 minutes.
    seen = {r["id"] for r in hc.rooms(max_results=200).contents()}
    assert ids <= seen


def test_hypchat_manages_members_of_a_private_room_and_messages_users(hc, bob):
    created = hc.create_room(f"hypchat-private-{uuid.uuid4().hex[:6]}", privacy="private")
    room = hc.get_room(created["id"])
    user = hc.get_user(f"@{bob}")
    assert isinstance(user, User) and user["mention_name"] == bob
    members = room.members()
    members.add(user)
    assert bob in [m["mention_name"] for m in room.members()["items"]]
    members.remove(user)
    assert bob not in [m["mention_name"] for m in room.members()["items"]]
    users = hc.users()
    assert isinstance(users, UserCollection) and users["items"]
    user.message("hello from hypchat")
    assert [i["message"] for i in user.history()["items"]][-1] == "hello from hypchat"
