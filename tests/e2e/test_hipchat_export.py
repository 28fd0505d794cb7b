"""HipChat export and import against the running appliance: a HipChat-format fixture round-trips.

An empty appliance is not available while other tests run on the same one,
and importing into it under a fresh name-space is what a real import into a
populated appliance is anyway: the fixture's users (unique e-mails), rooms
(unique names) and message ids are new to the appliance, so everything in
it is "missing" and gets created, while the bench corpus and other tests'
data stay untouched. The round trip is then: import the fixture (several
months, rooms, notifications, one-to-one) -> export those rooms and users ->
the export says what the fixture said (ids, senders, texts, timestamps to
the microsecond HipChat wrote, memberships) -> importing the export, and the
fixture, again adds nothing. Afterwards the fixture's users, rooms and
documents are deleted.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import VENV_DIR

# HipChat's era, before the bench corpus: the indexer creates these month indices from the records'
# timestamps, and the test deletes the ones it created (adding to and deleting from the bench months
# would leave deleted documents that the indexer's hourly round then merges away, gigabytes rewritten).
MONTHS = ((2019, 3), (2019, 6), (2019, 9))


def build_fixture(directory: str, prefix: str, *, per_room_month: int = 60, private_per_month: int = 20, rooms: int = 2, people: int = 3, seed: int = 6) -> dict:
    """Write a HipChat group export into ``directory``; return what it holds (for the assertions).

    ``prefix`` makes every name and e-mail unique to the run. Ids are UUIDs
    and timestamps carry microseconds, as HipChat wrote them.
    """
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    users = []
    for n in range(people):
        users.append({
            "id": 101 + n,
            "name": f"Person {prefix} {n}",
            "mention_name": f"{prefix.replace('-', '')}P{n}",
            "email": f"{prefix}p{n}@import.example.com",
            "title": "Engineer" if n else "Lead",
            "timezone": "Europe/Berlin",
            "account_type": "admin" if n == 0 else "user",
            "is_group_admin": n == 0,
            "is_deleted": n == people - 1 and people > 2,
            "created": "2019-01-02T03:04:05+00:00",
            "avatar": None,
        })
    room_list, histories, total = [], {}, 0
    for r in range(rooms):
        room = {
            "id": 201 + r,
            "name": f"{prefix} room {r}",
            "topic": f"Topic {r}",
            "privacy": "private" if r % 2 else "public",
            "owner": users[0]["id"],
            "members": [u["id"] for u in users],
            "room_admins": [users[0]["id"], users[1]["id"]],
            "participants": [],
            "created": "2019-02-03T04:05:06+00:00",
            "is_archived": r == rooms - 1 and rooms > 1,
            "guest_access_url": None,
        }
        room_list.append({"Room": room})
        items = []
        for year, month in MONTHS:
            start = datetime(year, month, 1, tzinfo=timezone.utc)
            for i in range(per_room_month):
                moment = start + timedelta(seconds=rng.randrange(27 * 86400), microseconds=rng.randrange(1_000_000))
                if i % 15 == 0:
                    items.append({"NotificationMessage": {
                        "id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "sender": "Jenkins",
                        "message": f"Build <b>#{i}</b> passed" if i % 30 == 0 else f"Deploy {i} done",
                        "message_format": "html" if i % 30 == 0 else "text",
                        "color": "green",
                        "notify": False,
                        "timestamp": _hipchat_time(moment),
                        "attachment": None,
                    }})
                else:
                    person = users[rng.randrange(len(users))]
                    items.append({"UserMessage": {
                        "id": str(uuid.UUID(int=rng.getrandbits(128))),
                        "sender": {"id": person["id"], "name": person["name"], "mention_name": person["mention_name"]},
                        "message": f"message {i} of {year}-{month:02d} in room {r}: bärlauch {rng.random():.6f}",
                        "timestamp": _hipchat_time(moment),
                        "attachment": None,
                        "mentions": [],
                    }})
        items.sort(key=lambda item: next(iter(item.values()))["timestamp"])
        histories[f"rooms/{room['id']}/history.json"] = items
        total += len(items)
    private = {u["id"]: [] for u in users}
    for year, month in MONTHS:
        start = datetime(year, month, 1, tzinfo=timezone.utc)
        for i in range(private_per_month):
            a, b = rng.sample(users[:2], 2)
            moment = start + timedelta(seconds=rng.randrange(27 * 86400), microseconds=rng.randrange(1_000_000))
            item = {"PrivateUserMessage": {
                "id": str(uuid.UUID(int=rng.getrandbits(128))),
                "sender": {"id": a["id"], "name": a["name"], "mention_name": a["mention_name"]},
                "receiver": {"id": b["id"], "name": b["name"], "mention_name": b["mention_name"]},
                "message": f"private {i} of {year}-{month:02d}",
                "timestamp": _hipchat_time(moment),
                "attachment": None,
            }}
            private[a["id"]].append(item)
            private[b["id"]].append(item)  # HipChat writes it in both people's history
            total += 1
    for user_id, items in private.items():
        items.sort(key=lambda item: item["PrivateUserMessage"]["timestamp"])
        histories[f"users/{user_id}/history.json"] = items
    _write(directory, "users.json", [{"User": u} for u in users])
    _write(directory, "rooms.json", room_list)
    for path, items in histories.items():
        _write(directory, path, items)
    return {"users": users, "rooms": [r["Room"] for r in room_list], "histories": histories, "messages": total}


def _hipchat_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") + f" {moment.microsecond:06d}"


def _write(directory: str, path: str, value) -> None:
    full = os.path.join(directory, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False)


# What the appliance holds for the fixture.
def _refresh(client) -> None:
    client.indices.refresh(index="messages-*", request_timeout=120)


def _jids(chat_server, fixture) -> tuple[list[str], list[str]]:
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import rooms, users

    config = chat_server.get_config()
    emails = [u["email"] for u in fixture["users"]]
    names = [r["name"] for r in fixture["rooms"]]

    def work(c):
        people = [r.username for r in c.execute(users.select().where(users.c.email.in_(emails)))]
        nodes = [r.jid_node for r in c.execute(rooms.select().where(rooms.c.name.in_(names)))]
        return people, nodes

    people, nodes = run_in_transaction(chat_server.get_database_engine(), "e2e_hipchat_jids", work)
    return [f"{p}@{config.server.domain}" for p in people], [f"{n}@{config.rooms.service}.{config.server.domain}" for n in nodes]


def _documents(chat_server, fixture) -> list[dict]:
    """Every indexed document of the fixture's rooms and one-to-one conversations (with its index)."""
    client = chat_server.get_opensearch_client()
    user_jids, room_jids = _jids(chat_server, fixture)
    query = {"bool": {"should": [{"terms": {"room": room_jids}}, {"terms": {"participants": user_jids}}], "minimum_should_match": 1}}
    hits = client.search(index="messages-*", body={"query": query, "size": 10_000}, request_timeout=120)["hits"]["hits"]
    return [dict(hit["_source"], _index=hit["_index"]) for hit in hits]


def _cleanup(chat_server, fixture) -> None:
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import rooms, users

    client = chat_server.get_opensearch_client()
    user_jids, room_jids = _jids(chat_server, fixture)
    if user_jids or room_jids:
        query = {"bool": {"should": [{"terms": {"room": room_jids}}, {"terms": {"participants": user_jids}}], "minimum_should_match": 1}}
        client.delete_by_query(index="messages-*", body={"query": query}, refresh=True, conflicts="proceed", request_timeout=600)

    def work(c):
        c.execute(rooms.delete().where(rooms.c.name.in_([r["name"] for r in fixture["rooms"]])))
        c.execute(users.delete().where(users.c.email.in_([u["email"] for u in fixture["users"]])))

    run_in_transaction(chat_server.get_database_engine(), "e2e_hipchat_cleanup", work)


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([f"{VENV_DIR}/bin/hipchat-appliance", *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ, COLUMNS="200"))


@pytest.fixture(scope="module")
def imported(chat_server, tmp_path_factory):
    """The fixture, imported once through the CLI: (directory, what it holds, the CLI's result)."""
    prefix = f"e2e-hcx-{uuid.uuid4().hex[:6]}"
    directory = str(tmp_path_factory.mktemp("hipchat") / "fixture")
    fixture = build_fixture(directory, prefix)
    client = chat_server.get_opensearch_client()
    months = [f"messages-{year:04d}.{month:02d}" for year, month in MONTHS]
    existed = {name for name in months if client.indices.exists(index=name)}
    result = _cli("import", directory)
    _refresh(client)
    yield directory, fixture, result
    _cleanup(chat_server, fixture)
    for name in set(months) - existed:
        if client.indices.exists(index=name) and client.count(index=name)["count"] == 0:
            client.indices.delete(index=name)


def _unique_messages(fixture) -> dict[str, tuple[str, dict]]:
    """Export message id -> (entry kind, message) over every history file (one-to-one ones once)."""
    found = {}
    for items in fixture["histories"].values():
        for item in items:
            (kind, message), = item.items()
            found[message["id"]] = (kind, message)
    return found


def test_import_creates_users_rooms_and_memberships(chat_server, imported):
    """Every user and room of the export is created, with HipChat's attributes and the room members; users get no known password."""
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.rooms import RoomStore
    from hipchat_server.storage.schema import audit_log
    from hipchat_server.storage.users import UserStore

    directory, fixture, result = imported
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{fixture['messages']:,}" in result.stdout
    store_users = {u["email"]: u for u in _user_rows(chat_server, fixture)}
    assert set(store_users) == {u["email"] for u in fixture["users"]}
    for user in fixture["users"]:
        row = store_users[user["email"]]
        assert row["mention_name"] == user["mention_name"] and row["name"] == user["name"] and row["timezone"] == user["timezone"]
        assert bool(row["is_admin"]) == user["is_group_admin"]
        assert bool(row["is_active"]) == (not user["is_deleted"])
        assert row["created_at"].isoformat() == "2019-01-02T03:04:05"
    audited = run_in_transaction(
        chat_server.get_database_engine(), "e2e_hipchat_audit",
        lambda c: {r.target for r in c.execute(audit_log.select().where(audit_log.c.action == "user_imported", audit_log.c.target.in_([r["username"] for r in store_users.values()])))},
    )
    assert audited == {r["username"] for r in store_users.values()}
    store = UserStore(chat_server.get_database_engine())
    for row in store_users.values():  # a password (random, told to nobody): the SCRAM keys and hash exist
        assert row["password_hash"] and store.credential_mechanisms(row["id"]) == {"SCRAM-SHA-256", "SCRAM-SHA-1"}
    config = chat_server.get_config()
    room_store = RoomStore(chat_server.get_database_engine(), f"{config.rooms.service}.{config.server.domain}")
    by_id = {u["id"]: store_users[u["email"]]["username"] for u in fixture["users"]}
    for room in fixture["rooms"]:
        details = room_store.details(room["name"])
        assert details is not None, room["name"]
        assert details.topic == room["topic"] and details.is_archived == room["is_archived"]
        assert details.room.config.members_only == (room["privacy"] == "private")
        assert details.created_at.isoformat() == "2019-02-03T04:05:06"
        assert details.owner == by_id[room["owner"]]
        members = {m["username"]: m["affiliation"] for m in room_store.members(details.room.jid_node)}
        assert set(members) == {by_id[i] for i in room["members"]}
        assert {u for u, a in members.items() if a in ("owner", "admin")} == {by_id[i] for i in room["room_admins"]}


def _user_rows(chat_server, fixture) -> list[dict]:
    from hipchat_server.storage.database import run_in_transaction
    from hipchat_server.storage.schema import users

    emails = [u["email"] for u in fixture["users"]]
    return run_in_transaction(
        chat_server.get_database_engine(), "e2e_hipchat_users", lambda c: [dict(r) for r in c.execute(users.select().where(users.c.email.in_(emails))).mappings()]
    )


def test_messages_are_indexed_in_the_month_of_their_original_time(chat_server, imported):
    """Each message is one document, in the month index of its HipChat timestamp, with that time (to the ms) and its text."""
    from appliance.backup.hipchat_import import message_id_for, parse_hipchat_timestamp
    from hipchat_server.archive import timestamp_of

    directory, fixture, result = imported
    expected = _unique_messages(fixture)
    documents = {d["id"]: d for d in _documents(chat_server, fixture)}
    assert len(documents) == len(expected) == fixture["messages"]
    for original, (kind, message) in expected.items():
        ms = parse_hipchat_timestamp(message["timestamp"])
        document = documents[message_id_for(original, ms)]
        assert document["timestamp"] == timestamp_of(ms)
        assert document["_index"] == f"messages-{document['timestamp'][:4]}.{document['timestamp'][5:7]}"
        assert document["hipchat_id"] == original
        assert document["type"] == ("chat" if kind == "PrivateUserMessage" else "groupchat")
        if kind != "NotificationMessage":
            assert document["body"] == message["message"]


def test_imported_history_is_searchable(chat_server, imported):
    """Full-text search finds the imported room messages by a word of their text (the message_english analyzer stems it)."""
    directory, fixture, result = imported
    user_jids, room_jids = _jids(chat_server, fixture)
    query = {"bool": {"filter": [{"terms": {"room": room_jids}}], "must": [{"match": {"body": "bärlauch"}}]}}
    found = chat_server.get_opensearch_client().count(index="messages", body={"query": query})["count"]
    expected = sum(1 for kind, _ in _unique_messages(fixture).values() if kind == "UserMessage")
    assert found == expected > 0


def _normalised(directory: str) -> dict:
    """An export's content with ids of users and rooms replaced by e-mails and names (those differ between appliances)."""
    with open(os.path.join(directory, "users.json")) as f:
        users = [item["User"] for item in json.load(f)]
    with open(os.path.join(directory, "rooms.json")) as f:
        rooms = [item["Room"] for item in json.load(f)]
    email = {u["id"]: u["email"] for u in users}
    person = lambda p: email.get(p["id"]) if isinstance(p, dict) else p  # noqa: E731
    content = {
        "users": {u["email"]: {k: u.get(k) for k in ("name", "mention_name", "title", "timezone", "account_type", "is_group_admin", "is_deleted", "created")} for u in users},
        "rooms": {},
        "private": {},
    }
    for room in rooms:
        with open(os.path.join(directory, "rooms", str(room["id"]), "history.json")) as f:
            history = [
                (kind, m["id"], person(m["sender"]), m["message"], m["timestamp"], m.get("color"), m.get("message_format"))
                for item in json.load(f) for kind, m in item.items()
            ]
        content["rooms"][room["name"]] = {
            "topic": room["topic"], "privacy": room["privacy"], "is_archived": room["is_archived"], "created": room["created"],
            "owner": email[room["owner"]], "members": sorted(email[i] for i in room["members"]),
            "room_admins": sorted(email[i] for i in room["room_admins"]), "history": history,
        }
    for user in users:
        path = os.path.join(directory, "users", str(user["id"]), "history.json")
        with open(path) as f:
            content["private"][user["email"]] = sorted(
                (m["id"], person(m["sender"]), person(m["receiver"]), m["message"], m["timestamp"]) for item in json.load(f) for m in item.values()
            )
    return content


def test_export_says_what_the_imported_export_said(chat_server, imported, tmp_path):
    """Exporting the imported rooms and users gives the fixture back: same users, rooms, members, and every message with its id, sender, text and time."""
    directory, fixture, result = imported
    usernames = [r["username"] for r in _user_rows(chat_server, fixture)]
    rooms = [r["name"] for r in fixture["rooms"]]
    target = str(tmp_path / "export")
    exported = _cli("export", "--to", target, "--rooms", ",".join(rooms), "--users", ",".join(usernames))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert _normalised(target) == _normalised(directory)


def test_importing_again_adds_nothing(chat_server, imported, tmp_path):
    """The same export imported a second time, and an export of the imported data (as .tar.gz), create nothing and leave the document count as it was."""
    from appliance.backup.hipchat_export import export_group
    from appliance.backup.hipchat_import import import_group

    directory, fixture, result = imported
    before = len(_documents(chat_server, fixture))
    again = import_group(chat_server, directory)
    assert (again.users.created, again.rooms.created, again.memberships.created, again.messages.created) == (0, 0, 0, 0)
    assert again.messages.existing == fixture["messages"] and again.drained
    archive = str(tmp_path / "export.tar.gz")
    usernames = [r["username"] for r in _user_rows(chat_server, fixture)]
    export_group(chat_server, archive, rooms=[r["name"] for r in fixture["rooms"]], users=usernames)
    cli = _cli("import", archive)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    _refresh(chat_server.get_opensearch_client())
    assert len(_documents(chat_server, fixture)) == before == fixture["messages"]


def test_an_export_without_users_json_is_refused(tmp_path):
    """A directory that is not an export is refused with exit 1 and a sentence saying what is missing."""
    (tmp_path / "rooms.json").write_text("[]")
    result = _cli("import", str(tmp_path))
    assert result.returncode == 1
    assert "users.json is missing" in result.stderr


def test_imported_history_through_mam_once_an_administrator_sets_a_password(chat_server, imported, endpoint, tmp_path):
    """Once an administrator sets an imported user's password (`user passwd`), MAM returns every imported message of a room and of a one-to-one conversation, at its original time."""
    from appliance.backup.hipchat_import import message_id_for, parse_hipchat_timestamp
    from tests.e2e.test_history import walk
    from tests.e2e.xmpp_client import PASSWORD, login, run

    directory, fixture, result = imported
    by_email = {r["email"]: r["username"] for r in _user_rows(chat_server, fixture)}
    owner, other = by_email[fixture["users"][0]["email"]], by_email[fixture["users"][1]["email"]]
    room = fixture["rooms"][0]
    user_jids, room_jids = _jids(chat_server, fixture)
    node = next(j for j in room_jids if j.startswith(_node_of(chat_server, room["name"]) + "@"))
    expected_room = {}
    for item in fixture["histories"][f"rooms/{room['id']}/history.json"]:
        (kind, m), = item.items()
        expected_room[message_id_for(m["id"], parse_hipchat_timestamp(m["timestamp"]))] = m["timestamp"][:19]
    expected_private = {
        message_id_for(m["id"], parse_hipchat_timestamp(m["timestamp"]))
        for item in fixture["histories"][f"users/{fixture['users'][0]['id']}/history.json"] for m in item.values()
    }

    # No login attempt with a wrong password here: failures are limited per minute for the whole
    # host (127.0.0.1), shared with every other test running meanwhile.
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    changed = _cli("user", "passwd", owner, "--password-file", str(password_file))
    assert changed.returncode == 0, changed.stdout + changed.stderr

    async def scenario():
        client, ok = await login(endpoint, owner, PASSWORD)
        assert ok
        try:
            room_pages = await walk(client, None, backwards=False, to=node)
            private_pages = await walk(client, f"{other}@{endpoint.domain}", backwards=False)
        finally:
            await client.close()
        return room_pages, private_pages

    room_pages, private_pages = run(scenario())
    got = {r[0]: r[2] for page in room_pages for r in page.results}
    assert set(got) == set(expected_room)
    assert all(got[i].startswith(expected_room[i]) for i in got)  # the delay stamp is the original time
    assert {r[0] for page in private_pages for r in page.results} == expected_private


def _node_of(chat_server, name: str) -> str:
    from hipchat_server.storage.rooms import RoomStore

    config = chat_server.get_config()
    return RoomStore(chat_server.get_database_engine(), f"{config.rooms.service}.{config.server.domain}").details(name).room.jid_node
