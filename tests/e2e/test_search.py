"""Search (GET /v2/search) and permalinks (GET /v2/messages/<id>) through the installed appliance's HTTPS port.

Real traffic: slixmpp clients chat in a public room, a private (members-only)
room and one-to-one; the tests wait until the indexer made it searchable,
then search as each user over real HTTPS. The private room's messages must
never show to a non-member: not in hits, totals, facets or highlights.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
import requests

from tests.conftest import wait_for
from tests.e2e.test_history import REFRESH_SECONDS, send_durably_to_room, sm_member
from tests.e2e.test_rooms import OWNER, create, join, room_of
from tests.e2e.xmpp_client import PASSWORD, TIMEOUT, run, send_durably

INDEXING_WAIT = 30.0


class Api:
    """HTTPS requests to the appliance's REST API, trusting its CA."""

    def __init__(self, config):
        self.base = f"https://localhost:{config.http.https_port}/v2"
        self.ca = config.tls.ca_certificate

    def get(self, path: str, user: str | None = None, password: str = PASSWORD, headers=None, **params):
        auth = (user, password) if user else None
        return requests.get(
            f"{self.base}/{path}", params=params, auth=auth, headers=headers, verify=self.ca, timeout=30
        )

    def search(self, user: str, q: str, **params) -> dict:
        response = self.get("search", user, q=q, **params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def api(config):
    return Api(config)


@pytest.fixture(scope="module")
def world(endpoint, new_user, api):
    """alice owns a public and a private room; bob is in the public one only; carol in neither.

    Every message carries a token unique to this run, so the searches see only this run's messages.
    """
    alice, bob, carol = new_user(), new_user(), new_user()
    token = f"tok{uuid.uuid4().hex[:8]}"
    public, private = room_of(endpoint), room_of(endpoint)
    domain = endpoint.domain

    async def chat():
        a, b = await sm_member(endpoint, alice), await sm_member(endpoint, bob)
        try:
            await create(a, public, "alice")
            await create(a, private, "alice", members_only=True)
            await join(b, public, "bob")
            await send_durably_to_room(a, public, f"{token} deploy failed on the api")
            await send_durably_to_room(b, public, f"{token} rollback done")
            await send_durably_to_room(a, private, f"{token} launch secret plans")
            await send_durably(a, f"{bob}@{domain}", f"{token} lunch tomorrow")
            await send_durably(a, f"{carol}@{domain}", f"{token} gossip")
        finally:
            await a.close()
            await b.close()

    run(chat())
    wait_for(
        lambda: api.search(alice, token)["total"] == 5,
        INDEXING_WAIT,
        what="the indexer to make the messages searchable",
    )
    time.sleep(REFRESH_SECONDS)  # every copy of each shard shows them too, not only the one that answered
    return dict(alice=alice, bob=bob, carol=carol, token=token, public=public, private=private, domain=domain)


def bodies(result: dict) -> set[str]:
    return {item["message"] for item in result["items"]}


def test_a_non_member_never_sees_the_private_rooms_messages(api, world):
    """bob: the public room and his own conversation; the private room is not in hits, total, facets or highlights."""
    t = world["token"]
    found = api.search(world["bob"], t)
    assert found["total"] == 3
    assert bodies(found) == {f"{t} deploy failed on the api", f"{t} rollback done", f"{t} lunch tomorrow"}
    assert found["facets"]["rooms"] == [{"room": world["public"], "count": 2}]
    assert sum(f["count"] for f in found["facets"]["months"]) == 3
    assert sum(f["count"] for f in found["facets"]["senders"]) == 3
    text = json.dumps(found)
    assert world["private"] not in text and "launch" not in text and "gossip" not in text
    assert all(f"<em>{t}</em>" in item["highlight"] for item in found["items"])
    # A word only the private room has: nothing at all, not even a facet bucket.
    nothing = api.search(world["bob"], f"{t} launch")
    assert nothing["total"] == 0 and nothing["items"] == []
    assert nothing["facets"] == {"rooms": [], "senders": [], "months": []}


def test_a_member_sees_the_private_room_and_a_stranger_only_the_public_one(api, world):
    t = world["token"]
    alice = api.search(world["alice"], t)
    assert alice["total"] == 5
    assert {f["room"]: f["count"] for f in alice["facets"]["rooms"]} == {world["public"]: 2, world["private"]: 1}
    carol = api.search(world["carol"], t)
    assert bodies(carol) == {f"{t} deploy failed on the api", f"{t} rollback done", f"{t} gossip"}


def test_phrases_shortcuts_and_sorting(api, world):
    t, bob = world["token"], world["bob"]
    assert api.search(bob, f'"deploy failed" {t}')["total"] == 1
    assert api.search(bob, f'"failed deploy" {t}')["total"] == 0
    assert bodies(api.search(bob, f"{t} from:{bob}")) == {f"{t} rollback done"}
    node = world["public"].split("@")[0]
    assert api.search(bob, f"{t} room:{node}")["total"] == 2
    assert api.search(bob, f"{t} in:{node} AND rollback")["total"] == 1
    assert bodies(api.search(bob, f"{t} with:{world['alice']}")) == {f"{t} lunch tomorrow"}
    assert api.search(bob, f"{t} -rollback")["total"] == 2
    # Most relevant first: the same hits (the order depends on each shard's word statistics).
    assert bodies(api.search(bob, t, sort="relevance")) == bodies(api.search(bob, t))


def test_wildcards_within_limits_and_clear_errors_beyond(api, world):
    t, bob = world["token"], world["bob"]
    assert api.search(bob, f"{t[:-2]}*")["total"] == 3
    for q, words in [
        ("a* b* c* d*", "wildcards"),
        (f"*{t[3:]}", "may not start"),
        ("x" * 501, "at most 500"),
    ]:
        response = api.get("search", bob, q=q)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_paging_with_start_index_and_max_results(api, world):
    t, alice = world["token"], world["alice"]
    first = api.search(alice, t, **{"max-results": 2})
    second = api.search(alice, t, **{"max-results": 2, "start-index": 2})
    assert len(first["items"]) == 2 and len(second["items"]) == 2
    assert not bodies(first) & bodies(second)
    assert first["total"] == 5 and "next" in first["links"]
    assert api.get("search", alice, q=t, **{"max-results": 101}).status_code == 400


def test_no_or_wrong_credentials_are_401(api, world):
    assert api.get("search", q="x").status_code == 401
    response = api.get("search", world["bob"], password="not the password", q="x")
    assert response.status_code == 401 and response.json()["error"]["code"] == 401


def test_a_personal_token_authenticates(api, world, chat_server):
    """Authorization: Bearer <token>; the appliance keeps only its SHA-256."""
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import api_tokens, users
    from sqlalchemy import select

    token = secrets.token_urlsafe(24)

    def add(connection):
        user_id = connection.execute(select(users.c.id).where(users.c.username == world["bob"])).scalar()
        connection.execute(
            api_tokens.insert().values(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                label="e2e",
                user_id=user_id,
                scopes=["view_messages"],
            )
        )

    run_in_transaction(chat_server.get_database_engine(), "add_e2e_token", add)
    response = api.get("search", headers={"Authorization": f"Bearer {token}"}, q=world["token"])
    assert response.status_code == 200 and response.json()["total"] == 3
    assert api.get("search", headers={"Authorization": "Bearer nonsense"}, q="x").status_code == 401


def test_a_message_by_id_only_for_who_may_read_it(api, world):
    t = world["token"]
    [secret] = api.search(world["alice"], f"{t} launch")["items"]
    assert secret["room"] == world["private"]
    mine = api.get(f"messages/{secret['id']}", world["alice"])
    assert mine.status_code == 200 and mine.json()["message"] == f"{t} launch secret plans"
    theirs = api.get(f"messages/{secret['id']}", world["bob"])
    assert theirs.status_code == 404 and "launch" not in theirs.text
    assert api.get("messages/01ARZ3NDEKTSV4RRFFQ69G5FAV", world["alice"]).status_code == 404


async def configure(client, room, fields: str) -> None:
    """Submit the owner's configuration form of ``room`` with ``fields`` (data form XML)."""
    iq = client.make_iq_set(ito=room)
    iq.xml.append(ET.fromstring(f"<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>{fields}</x></query>"))
    await iq.send(timeout=TIMEOUT)


async def destroy(client, room) -> None:
    iq = client.make_iq_set(ito=room)
    iq.xml.append(ET.fromstring(f"<query xmlns='{OWNER}'><destroy/></query>"))
    await iq.send(timeout=TIMEOUT)


def test_a_room_made_private_then_destroyed_stops_showing_at_once(endpoint, new_user, api):
    """bob found the public room's messages; made members-only, bob's very next search finds none, alice's
    all; destroyed, alice's very next search finds none either, though the index keeps the messages."""
    alice, bob = new_user(), new_user()
    token = f"tok{uuid.uuid4().hex[:8]}"
    room = room_of(endpoint)

    async def talk():
        a, b = await sm_member(endpoint, alice), await sm_member(endpoint, bob)
        try:
            await create(a, room, "alice")
            await join(b, room, "bob")
            await send_durably_to_room(a, room, f"{token} roadmap draft")
            await send_durably_to_room(b, room, f"{token} roadmap comments")
        finally:
            await a.close()
            await b.close()

    run(talk())
    wait_for(lambda: api.search(bob, token)["total"] == 2, INDEXING_WAIT, what="the messages to be searchable")
    time.sleep(REFRESH_SECONDS)

    async def owner(action):
        a = await sm_member(endpoint, alice)
        try:
            await action(a)
        finally:
            await a.close()

    run(owner(lambda a: configure(a, room, "<field var='muc#roomconfig_membersonly'><value>1</value></field>")))
    hidden = api.search(bob, token)
    assert hidden["total"] == 0 and hidden["items"] == [] and room not in json.dumps(hidden)
    assert api.search(alice, token)["total"] == 2

    run(owner(lambda a: destroy(a, room)))
    for reader in (alice, bob):
        gone = api.search(reader, token)
        assert gone["total"] == 0 and gone["facets"] == {"rooms": [], "senders": [], "months": []}
