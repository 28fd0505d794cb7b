"""REST API v2 users through the installed appliance: the directory, private messages to XMPP clients, one-to-one history."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.conftest import run_appliance_cli
from tests.e2e.test_api_rooms import Api, in_thread
from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, login, run


@pytest.fixture(scope="module")
def admin(prefix, tmp_path_factory):
    """A group administrator (admin_group over Basic)."""
    password_file = tmp_path_factory.mktemp("admin") / "password"
    password_file.write_text(PASSWORD + "\n")
    username = f"{prefix}adm{uuid.uuid4().hex[:4]}"
    result = run_appliance_cli(
        "user", "add", username, "--name", f"Admin {username}", "--email", f"{username}@e2e.example.com", "--admin", "--password-file", str(password_file)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return username


def test_a_group_admin_creates_finds_updates_and_deletes_a_user(config, admin, new_user, prefix):
    api = Api(config, admin)
    mention = f"{prefix}{uuid.uuid4().hex[:6]}".replace("-", "")[:40]
    email = f"{mention}@e2e.example.com"
    created = api.ok("POST", "user", {"name": "Api Person", "email": email, "mention_name": mention, "password": "a long password 1"}, status=201)
    assert created["links"]["self"].endswith(f"/v2/user/{created['id']}")
    by_id = api.ok("GET", f"user/{created['id']}")
    assert by_id["email"] == email and by_id["mention_name"] == mention and by_id["xmpp_jid"].endswith(f"@{config.server.domain}")
    assert api.ok("GET", f"user/{email}")["id"] == created["id"]
    assert api.ok("GET", f"user/@{mention}")["id"] == created["id"]
    assert api.post("user", {"name": "Dup", "email": email}).status_code == 409
    api.ok("PUT", f"user/{created['id']}", {"name": "Renamed Person", "title": "Ops"}, status=204)
    assert api.ok("GET", f"user/{created['id']}")["name"] == "Renamed Person"
    # A user who is not a group administrator may read the directory but not change it.
    someone = Api(config, new_user())
    assert someone.ok("GET", f"user/{created['id']}")["name"] == "Renamed Person"
    refused = someone.post("user", {"name": "x", "email": f"x{uuid.uuid4().hex[:6]}@e2e.example.com"})
    assert refused.status_code == 403 and "admin_group" in refused.json()["error"]["message"]
    api.ok("DELETE", f"user/{created['id']}", status=204)
    assert api.get(f"user/{created['id']}").status_code == 404
    listed = api.ok("GET", "user", **{"include-deleted": "true", "max-results": 1000})
    assert listed["links"]["self"].endswith("/v2/user")
    assert "items" in listed and listed["maxResults"] == 1000


def test_a_private_message_reaches_the_users_xmpp_client_and_both_sides_history(config, endpoint, new_user):
    alice, bob = new_user(), new_user()
    api = Api(config, alice)
    bob_id = Api(config, bob).ok("GET", f"user/@{bob}")["id"]

    async def scenario():
        b, ok = await login(endpoint, bob)
        assert ok
        try:
            response = await in_thread(api.post, f"user/{bob_id}/message", {"message": "psst, from the API"})
            assert response.status_code == 204, response.text
            message = await asyncio.wait_for(b.received.get(), TIMEOUT)
            assert message["body"] == "psst, from the API" and message["from"].bare == f"{alice}@{endpoint.domain}"
        finally:
            await b.close()

    run(scenario())
    mine = api.ok("GET", f"user/{bob_id}/history")
    assert [i["message"] for i in mine["items"]] == ["psst, from the API"]
    alice_id = api.ok("GET", f"user/@{alice}")["id"]
    theirs = Api(config, bob).ok("GET", f"user/{alice_id}/history/latest")
    assert [i["message"] for i in theirs["items"]] == ["psst, from the API"]
    assert theirs["items"][0]["from"]["mention_name"] == alice


def test_a_private_message_to_an_offline_user_waits_for_their_next_login(config, endpoint, new_user):
    alice, carol = new_user(), new_user()
    api = Api(config, alice)
    assert api.post(f"user/@{carol}/message", {"message": "read this later"}).status_code == 204

    async def scenario():
        c, ok = await login(endpoint, carol)
        assert ok
        try:
            message = await asyncio.wait_for(c.received.get(), TIMEOUT)
            assert message["body"] == "read this later"
        finally:
            await c.close()

    run(scenario())


def test_emoticons_are_listed_and_found_by_shortcut(config, new_user):
    api = Api(config, new_user())
    listed = api.ok("GET", "emoticon")
    shortcuts = [e["shortcut"] for e in listed["items"]]
    assert "shipit" in shortcuts and listed["links"]["self"].endswith("/v2/emoticon")
    shipit = api.ok("GET", "emoticon/shipit")
    assert api.ok("GET", f"emoticon/{shipit['id']}")["shortcut"] == "shipit"
    assert api.get("emoticon/nope").status_code == 404


def test_a_users_presence_and_last_active_follow_their_xmpp_client(config, endpoint, new_user):
    """The user object shows the XMPP presence (show, status, online) and the time of the last change."""
    watcher, dana = Api(config, new_user()), new_user()
    dana_id = watcher.ok("GET", f"user/@{dana}")["id"]
    never_seen = watcher.ok("GET", f"user/{dana_id}")
    assert never_seen["presence"]["is_online"] is False and never_seen["last_active"] is None

    async def scenario():
        client, ok = await login(endpoint, dana)
        assert ok
        try:
            client.send_presence(pshow="dnd", pstatus="in a review")
            await asyncio.sleep(0.5)
            online = await in_thread(watcher.ok, "GET", f"user/{dana_id}")
            assert online["presence"] == {"status": "in a review", "idle": None, "show": "dnd", "client": None, "is_online": True}
            assert online["last_active"] is not None
            return online["last_active"]
        finally:
            await client.close()

    while_online = run(scenario())
    deadline = time.monotonic() + TIMEOUT
    while (after := watcher.ok("GET", f"user/{dana_id}"))["presence"]["is_online"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after["presence"]["is_online"] is False
    assert after["last_active"] >= while_online
