"""REST API v2 rooms through the installed appliance: real HTTPS, MariaDB, Redis, and slixmpp occupants on real sockets.

A notification or message posted over HTTP must reach XMPP occupants as a
room message, sit in the room's Redis recent list (``history?date=recent``)
and be readable by id at once; a private room must not show its history,
members or participants to a non-member; what the API changes (topic,
deletion) reaches the occupants at once.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import requests

from tests.conftest import run_appliance_cli
from tests.e2e.test_history import send_durably_to_room, sm_member
from tests.e2e.test_rooms import close_all, create, join, member, next_body
from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, run

HIPCHAT_ROOM_NS = "http://hipchat.com/protocol/muc#room"


class Api:
    """HTTPS requests to ``/v2`` as one caller (Basic with a user's password, or a Bearer token)."""

    def __init__(self, config, user: str | None = None, token: str | None = None):
        self.base = f"https://localhost:{config.http.https_port}/v2"
        self.ca = config.tls.ca_certificate
        self.auth = (user, PASSWORD) if user else None
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, json=None, **params) -> requests.Response:
        return requests.request(
            method, f"{self.base}/{path}", json=json, params=params, auth=self.auth, headers=self.headers, verify=self.ca, timeout=30
        )

    def get(self, path, **params):
        return self.request("GET", path, **params)

    def post(self, path, body):
        return self.request("POST", path, json=body)

    def put(self, path, body=None):
        return self.request("PUT", path, json=body)

    def delete(self, path):
        return self.request("DELETE", path)

    def ok(self, method: str, path: str, body=None, status: int = 200, **params):
        response = self.request(method, path, json=body, **params)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None


def room_name() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


def room_token(room: str, label: str) -> str:
    result = run_appliance_cli("token", "create", "--room", room, "--label", label)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[0]


async def in_thread(function, *args, **kwargs):
    """A blocking HTTP call while the slixmpp clients keep reading their sockets."""
    return await asyncio.to_thread(function, *args, **kwargs)


def test_a_notification_posted_over_https_reaches_an_xmpp_occupant_and_recent_history(config, endpoint, new_user):
    """The room token's notification arrives as a groupchat message with a plain body and HipChat's extension;
    history?date=recent has it, with its color and the sanitised HTML."""
    alice = new_user()
    api = Api(config, alice)
    created = api.ok("POST", "room", {"name": room_name()}, status=201)
    room = api.ok("GET", f"room/{created['id']}")
    token = room_token(str(created["id"]), "CI bot")
    bot = Api(config, token=token)

    async def scenario():
        a = await member(endpoint, alice)
        try:
            await join(a, room["xmpp_jid"], "alice")
            response = await in_thread(
                bot.post,
                f"room/{created['id']}/notification",
                {"message": "Build <b>#7</b> <a href='https://ci.example.com/7'>passed</a><script>x()</script>", "color": "green", "notify": True},
            )
            assert response.status_code == 204, response.text
            assert response.headers["X-Ratelimit-Limit"] and response.headers["X-FloodControl-Remaining"]
            message = await asyncio.wait_for(a.groupchat.get(), TIMEOUT)
            assert message["body"] == "Build #7 passed"
            assert str(message["from"]) == f"{room['xmpp_jid']}/CI bot"
            extension = message.xml.find(f"{{{HIPCHAT_ROOM_NS}}}x")
            assert extension is not None and extension.findtext(f"{{{HIPCHAT_ROOM_NS}}}color") == "green"
            assert extension.findtext(f"{{{HIPCHAT_ROOM_NS}}}notify") == "1"
        finally:
            await a.close()

    run(scenario())
    recent = api.ok("GET", f"room/{created['id']}/history", date="recent")
    [item] = recent["items"]
    assert item["type"] == "notification" and item["color"] == "green" and item["from"] == "CI bot"
    assert "<b>#7</b>" in item["message"] and "script" not in item["message"]
    # The token reaches its own room only.
    other = api.ok("POST", "room", {"name": room_name()}, status=201)
    assert bot.post(f"room/{other['id']}/notification", {"message": "x"}).status_code in (403, 404)
    assert bot.get(f"room/{created['id']}/history").status_code == 403


def test_a_message_posted_over_https_reaches_occupants_and_is_readable_by_id_at_once(config, endpoint, new_user):
    alice, bob = new_user(), new_user()
    api = Api(config, alice)
    created = api.ok("POST", "room", {"name": room_name(), "topic": "start"}, status=201)
    jid = api.ok("GET", f"room/{created['id']}")["xmpp_jid"]

    async def scenario():
        b = await member(endpoint, bob)
        try:
            await join(b, jid, "bob")
            posted = await in_thread(api.ok, "POST", f"room/{created['id']}/message", {"message": "hello from the API"}, 201)
            assert await next_body(b) == "hello from the API"
            return posted
        finally:
            await b.close()

    posted = run(scenario())
    assert posted["id"] and posted["timestamp"].endswith("Z")
    one = api.ok("GET", f"room/{created['id']}/history/{posted['id']}")
    assert one["message"]["message"] == "hello from the API" and one["message"]["from"]["mention_name"] == alice
    assert api.get(f"room/{created['id']}/history/01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404
    latest = api.ok("GET", f"room/{created['id']}/history/latest", **{"not-before": posted["id"]})
    assert [i["id"] for i in latest["items"]] == [posted["id"]]
    stats = api.ok("GET", f"room/{created['id']}/statistics")
    assert stats["messages_sent"] == 1 and stats["last_active"] == posted["timestamp"]


def test_recent_history_is_the_last_75_from_redis_oldest_first(config, endpoint, new_user):
    """80 messages sent over XMPP: date=recent answers the newest 75 (Redis keeps 75), oldest first; max-results trims it."""
    alice = new_user()
    api = Api(config, alice)
    created = api.ok("POST", "room", {"name": room_name()}, status=201)
    jid = api.ok("GET", f"room/{created['id']}")["xmpp_jid"]

    async def scenario():
        a = await sm_member(endpoint, alice)
        try:
            await join(a, jid, "alice")
            for n in range(80):
                await send_durably_to_room(a, jid, f"m{n:02d}")
        finally:
            await a.close()

    run(scenario())
    recent = api.ok("GET", f"room/{created['id']}/history", date="recent", **{"max-results": 200})
    assert [i["message"] for i in recent["items"]] == [f"m{n:02d}" for n in range(5, 80)]
    assert all(i["from"]["mention_name"] == alice for i in recent["items"])
    newest = api.ok("GET", f"room/{created['id']}/history", date="recent", reverse="false", **{"max-results": 3})
    assert [i["message"] for i in newest["items"]] == ["m79", "m78", "m77"]


def test_a_private_rooms_history_members_and_participants_are_not_for_non_members(config, endpoint, new_user):
    alice, bob, carol = new_user(), new_user(), new_user()
    owner, stranger = Api(config, alice), Api(config, carol)
    created = owner.ok("POST", "room", {"name": room_name(), "privacy": "private"}, status=201)
    owner.ok("PUT", f"room/{created['id']}/member/@{bob}", status=204)
    owner.ok("POST", f"room/{created['id']}/message", {"message": "secret plans"}, status=201)
    for path in ("history", "history/latest", "member", "participant", "statistics", ""):
        response = stranger.get(f"room/{created['id']}/{path}".rstrip("/"))
        assert response.status_code in (403, 404), f"{path}: {response.status_code}"
        assert "secret" not in response.text
    assert created["id"] not in [r["id"] for r in stranger.ok("GET", "room", **{"max-results": 1000})["items"]]
    members = Api(config, bob).ok("GET", f"room/{created['id']}/member")
    assert sorted(m["mention_name"] for m in members["items"]) == sorted([alice, bob])
    assert Api(config, bob).ok("GET", f"room/{created['id']}/history")["items"][0]["message"] == "secret plans"
    # Removing bob takes his access away again.
    owner.ok("DELETE", f"room/{created['id']}/member/@{bob}", status=204)
    assert Api(config, bob).get(f"room/{created['id']}/history").status_code in (403, 404)


def test_topic_and_deletion_over_https_reach_the_occupants(config, endpoint, new_user):
    alice, bob = new_user(), new_user()
    api = Api(config, alice)
    name = room_name()
    created = api.ok("POST", "room", {"name": name}, status=201)
    jid = api.ok("GET", f"room/{name}")["xmpp_jid"]  # by name as well as by id

    async def scenario():
        b = await member(endpoint, bob)
        subjects: asyncio.Queue = asyncio.Queue()
        gone: asyncio.Queue = asyncio.Queue()
        b.add_event_handler("groupchat_subject", subjects.put_nowait)
        b.add_event_handler("groupchat_presence", lambda p: p["type"] == "unavailable" and gone.put_nowait(p))
        try:
            await join(b, jid, "bob")
            while not subjects.empty():
                subjects.get_nowait()
            assert (await in_thread(api.put, f"room/{created['id']}/topic", {"topic": "release day"})).status_code == 204
            subject = await asyncio.wait_for(subjects.get(), TIMEOUT)
            assert subject["subject"] == "release day"
            participants = await in_thread(api.ok, "GET", f"room/{created['id']}/participant")
            assert [p["mention_name"] for p in participants["items"]] == [bob]
            assert (await in_thread(api.delete, f"room/{created['id']}")).status_code == 204
            presence = await asyncio.wait_for(gone.get(), TIMEOUT)
            assert presence.xml.find(".//{http://jabber.org/protocol/muc#user}destroy") is not None
        finally:
            await b.close()

    run(scenario())
    assert api.get(f"room/{created['id']}").status_code == 404


def test_rooms_are_created_listed_updated_and_refused_with_clear_errors(config, new_user):
    alice, bob = new_user(), new_user()
    api = Api(config, alice)
    name = room_name()
    created = api.ok("POST", "room", {"name": name, "topic": "t"}, status=201)
    assert created["links"]["self"].endswith(f"/v2/room/{created['id']}")
    assert api.post("room", {"name": name}).status_code == 409
    bad = api.post("room", {"name": "x", "privacy": "secret"})
    assert bad.status_code == 400 and "privacy" in bad.json()["error"]["message"]
    assert Api(config, bob).put(f"room/{created['id']}", {"is_archived": True}).status_code == 403
    api.ok("PUT", f"room/{created['id']}", {"name": name + "-renamed", "is_archived": True}, status=204)
    room = api.ok("GET", f"room/{created['id']}")
    assert room["name"] == name + "-renamed" and room["is_archived"] is True and room["topic"] == "t"
    listed = api.ok("GET", "room", **{"max-results": 1000})
    assert created["id"] not in [r["id"] for r in listed["items"]]
    archived = api.ok("GET", "room", **{"max-results": 1000, "include-archived": "true"})
    assert created["id"] in [r["id"] for r in archived["items"]]
    assert archived["links"]["self"].endswith("/v2/room")
    assert api.get("room/no-such-room-anywhere").status_code == 404
